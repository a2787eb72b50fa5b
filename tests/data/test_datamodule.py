"""PaliGemmaDataModule: configs on hub-schema files, bad rows, truncation, per-epoch reference draws, split errors."""

import json
from pathlib import Path

import datasets
import lightning as L
import pytest
import torch
from PIL import Image

from paligemma.data.batches import TrainBatch, ValBatch
from paligemma.data.datamodule import PaliGemmaDataModule
from paligemma.data.processor import IGNORE_INDEX, PaliGemmaProcessor
from paligemma.data.tasks import references
from paligemma.errors import ConfigError, DataError
from tests.helpers import (
    COCO_FEATURES,
    IMAGE_SIZE,
    NUM_IMAGE_TOKENS,
    VQAV2_FEATURES,
    awkward_and_bad_rows,
    batches,
    from_config,
    noise,
    png,
    vqav2_rows,
    write_parquet,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def test_synthetic_config_batches(processor_dir):
    dm = from_config("synthetic", processor_dir, **{"synthetic.num_train": 24, "synthetic.num_val": 8})
    dm.setup("fit")
    assert dm.settings.task == "vqa" and dm.processor.image_size == IMAGE_SIZE
    train = batches(dm, dm.train_dataloader())
    assert [b.inputs.input_ids.shape[0] for b in train] == [16, 8]
    batch = train[0]
    assert isinstance(batch, TrainBatch) and batch.inputs.segment_ids is None  # not packed
    assert set(batch.inputs.as_kwargs()) == {"input_ids", "attention_mask", "token_type_ids", "labels",
                                             "pixel_values"}  # fmt: skip
    assert batch.rows == 16 and batch.inputs.pixel_values.shape == (16, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (batch.inputs.labels[:, :NUM_IMAGE_TOKENS] == IGNORE_INDEX).all()
    assert (batch.inputs.labels != IGNORE_INDEX).sum() == batch.inputs.token_type_ids.sum()
    (val,) = batches(dm, dm.val_dataloader())
    assert isinstance(val, ValBatch) and val.rows == 8
    assert val.row_ids == list(range(8)) and set(val.kinds) == {"color", "shape", "count", "position"}
    assert all(p.startswith("answer en ") and p.endswith("?") for p in val.prompts)
    assert all(len(r) == 1 for r in val.references) and val.images[0].size == (IMAGE_SIZE, IMAGE_SIZE)
    prompt = val.prompt
    assert set(prompt.as_kwargs()) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values"}
    assert (prompt.attention_mask[:, -1] == 1).all()  # left padded
    assert (prompt.token_type_ids == 0).all()
    assert torch.equal(prompt.pixel_values, val.inputs.pixel_values)
    decoded = dm.processor.batch_decode(val.inputs.input_ids, skip_special_tokens=True)
    assert decoded[0] == val.prompts[0] + "\n" + val.references[0][0]


def test_vqav2_config_on_hub_schema_parquet(tmp_path, processor_dir):
    (tmp_path / "data").mkdir()
    data = datasets.Dataset.from_dict(vqav2_rows(40), features=VQAV2_FEATURES)
    data.to_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet")
    dm = from_config("vqav2", processor_dir, path=str(tmp_path))
    dm.setup("fit")
    assert (len(dm.train_data), len(dm.val_data)) == (38, 2)  # validation[:95%] / validation[95%:]
    (val,) = batches(dm, dm.val_dataloader())
    assert val.row_ids == [0, 1] and val.kinds == ["other", "yes/no"]  # rows 38, 39 of the file
    assert val.prompts == ["answer en question number 38?", "answer en question number 39?"]
    assert val.references[1] == ["yes"] * 6 + ["no"] * 4
    ids, types = val.inputs.input_ids[1], val.inputs.token_type_ids[1]
    assert dm.processor.decode(ids[types == 1]) == "yes<eos>"  # the loss uses the most common answer
    train = batches(dm, dm.train_dataloader())
    assert sum(b.inputs.input_ids.shape[0] for b in train) == 38 and dm.skipped == 0


def test_coco_captions_config_on_hub_schema_parquet(tmp_path, processor_dir):
    (tmp_path / "data").mkdir()
    for split, n in (("train", 6), ("validation", 3)):
        caps = [
            [f"a cat number {i} on a mat", f"a photo {i}", "a cat", "two cats", "a mat"] for i in range(n)
        ]
        rows = {
            "image": [{"bytes": png(noise(seed=i)), "path": None} for i in range(n)],
            "image_id": list(range(n)), "text": [c[0] for c in caps], "captions": caps, "split": [split] * n,
        }  # fmt: skip
        path = tmp_path / "data" / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_dict(rows, features=COCO_FEATURES).to_parquet(path)
    dm = from_config("coco_captions", processor_dir, path=str(tmp_path))
    dm.setup("fit")
    (val,) = batches(dm, dm.val_dataloader())
    assert val.prompts == ["caption en"] * 3 and val.kinds == ["caption"] * 3
    assert [len(r) for r in val.references] == [5, 5, 5]
    targets = {dm.train_data[(row, epoch)]["target"] for row in range(6) for epoch in range(8)}
    assert len(targets) > 5  # drawn among the five captions, not always the first


def test_imagefolder_with_metadata(tmp_path, processor_dir):
    for split, n in (("train", 4), ("validation", 2)):
        (tmp_path / split).mkdir()
        with open(tmp_path / split / "metadata.jsonl", "w") as f:
            for i in range(n):
                noise(seed=i).save(tmp_path / split / f"{i}.png")
                f.write(
                    json.dumps({"file_name": f"{i}.png", "question": "what is it?", "answers": ["noise"]})
                    + "\n"
                )
    dm = from_config("vqa", processor_dir, path=str(tmp_path))
    dm.setup("fit")
    (train,) = batches(dm, dm.train_dataloader())
    assert train.inputs.pixel_values.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    (val,) = batches(dm, dm.val_dataloader())
    assert val.references == [["noise"], ["noise"]] and dm.skipped == 0
    direct = dm.processor(text=["x"], images=[Image.open(tmp_path / "validation" / "1.png")])["pixel_values"]
    assert torch.equal(val.inputs.pixel_values[1:], direct)  # our early resize changes nothing


def test_save_to_disk_dirs(tmp_path, processor_dir, shapes):
    shapes.save_to_disk(tmp_path / "dict")
    dm = PaliGemmaDataModule(path=str(tmp_path / "dict"), task="caption", processor_path=str(processor_dir))
    dm.setup("fit")
    assert (len(dm.train_data), len(dm.val_data)) == (200, 12)
    shapes["validation"].save_to_disk(tmp_path / "single")  # one Dataset: the split "train", sliced
    dm = PaliGemmaDataModule(
        path=str(tmp_path / "single"),
        processor_path=str(processor_dir),
        train_split="train[:75%]",
        val_split="train[75%:]",
    )
    dm.setup("fit")
    assert (len(dm.train_data), len(dm.val_data)) == (9, 3)
    assert batches(dm, dm.val_dataloader())[0].references == [[a] for a in shapes["validation"]["answer"][9:]]


def test_bad_rows_skipped_once_and_awkward_images_kept(tmp_path, processor_dir, caplog):
    awkward_and_bad_rows().save_to_disk(tmp_path)
    dm = PaliGemmaDataModule(
        path=str(tmp_path), processor_path=str(processor_dir), batch_size=4, val_batch_size=1, max_length=80
    )
    dm.setup("fit")
    for _ in range(2):  # a second epoch counts nothing new
        train = batches(dm, dm.train_dataloader())
        assert sum(b.rows for b in train) == 7 and dm.skipped == 4
        assert [b.inputs.input_ids.shape[0] for b in train] == [max(b.rows, 1) for b in train]
    val = batches(dm, dm.val_dataloader())
    assert val[0].row_ids == [0] and dm.skipped == 6
    for empty in val[1:]:  # no good row: one blank placeholder row, no per-row entries
        assert empty.rows == 0 and empty.row_ids == empty.references == empty.images == []
        assert empty.inputs.input_ids.shape[0] == empty.prompt.input_ids.shape[0] == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for where in (
        "train row 7",
        "train row 8",
        "train row 9",
        "train row 10",
        "validation row 1",
        "validation row 2",
    ):
        assert where in logged
    assert "missing image" in logged and "empty target" in logged and "missing question" in logged

    strict = PaliGemmaDataModule(path=str(tmp_path), processor_path=str(processor_dir), on_bad_sample="raise")
    strict.setup("validate")
    with pytest.raises(ValueError, match=r"bad validation row 1: UnidentifiedImageError"):
        batches(strict, strict.val_dataloader())


@pytest.mark.slow  # DataLoader worker processes: seconds of start-up
def test_bad_rows_counted_across_worker_processes(tmp_path, processor_dir):
    awkward_and_bad_rows().save_to_disk(tmp_path)
    dm = PaliGemmaDataModule(
        path=str(tmp_path), processor_path=str(processor_dir), batch_size=2, num_workers=2
    )
    dm.setup("fit")
    for _ in range(2):
        train = batches(dm, dm.train_dataloader())
    assert dm.skipped == 4 and all(isinstance(b, TrainBatch) for b in train)
    val = batches(dm, dm.val_dataloader())  # pictures and texts come through the workers too
    assert dm.skipped == 6 and [b.row_ids for b in val] == [[0], []]
    assert val[0].images[0].size == (IMAGE_SIZE, IMAGE_SIZE) and val[0].prompts == ["answer en what is it?"]


def test_max_length_truncates_targets_and_skips_prompts_that_cannot_fit(tmp_path, processor_dir, shapes):
    shapes.save_to_disk(tmp_path)
    processor = PaliGemmaProcessor.from_pretrained(processor_dir)
    n_prompt = (
        NUM_IMAGE_TOKENS + 1 + len(processor.tokenizer.encode("caption en\n", add_special_tokens=False))
    )
    assert processor.prompt_length("caption en") == n_prompt
    dm = PaliGemmaDataModule(  # room for two caption tokens and <eos>
        path=str(tmp_path),
        task="caption",
        processor_path=str(processor_dir),
        batch_size=50,
        max_length=n_prompt + 3,
    )
    dm.setup("fit")
    inputs = batches(dm, dm.train_dataloader())[0].inputs
    assert inputs.input_ids.shape[1] == n_prompt + 3
    assert ((inputs.input_ids == dm.processor.eos_token_id).sum(1) == 1).all() and dm.truncated == 200
    tight = PaliGemmaDataModule(
        path=str(tmp_path), processor_path=str(processor_dir), max_length=NUM_IMAGE_TOKENS + 3
    )
    with pytest.raises(
        DataError,
        match=rf"row 0: prompt of (\d+) tokens \(1 picture x {NUM_IMAGE_TOKENS} image tokens \+ \d+ more\) leaves no "
        rf"room in max_length={NUM_IMAGE_TOKENS + 3} for the target: \d+ over; raise data.max_length ",
    ):
        tight.setup("validate")  # every validation prompt is too long: the run stops before it starts


def test_reference_draw_is_seeded_per_epoch(tmp_path, processor_dir):
    rows = {
        "image": [{"bytes": png(noise()), "path": None}] * 20,
        "question": ["which?"] * 20,
        "answers": [[f"answer {k}" for k in range(10)]] * 20,
    }
    features = datasets.Features(
        image=datasets.Image(),
        question=datasets.Value("string"),
        answers=[datasets.Value("string")],
    )
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=features)).save_to_disk(tmp_path)

    def draws(seed, epoch):
        dm = PaliGemmaDataModule(
            path=str(tmp_path), processor_path=str(processor_dir), seed=seed, val_split="train"
        )
        dm.setup("fit")
        return [dm.train_data[(row, epoch)]["target"] for row in range(20)]

    assert draws(0, 0) == draws(0, 0)
    assert draws(0, 0) != draws(0, 1) and draws(0, 0) != draws(1, 0)
    dm = PaliGemmaDataModule(path=str(tmp_path), processor_path=str(processor_dir), val_split="train")
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    first = list(sampler)
    sampler.set_epoch(1)
    assert {e for _, e in first} == {0} and {e for _, e in sampler} == {1}
    assert sorted(r for r, _ in first) == list(range(20)) and [r for r, _ in sampler] != [r for r, _ in first]
    assert [it["target"] for it in map(dm.val_data.__getitem__, range(3))] == [
        "answer 0"
    ] * 3  # first on ties


class Probe(L.LightningModule):
    """Records each epoch's training targets and the placeholder validation batches (rows all bad)."""

    def __init__(self, processor):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.processor, self.targets, self.placeholder_val_batches = processor, {}, 0

    def training_step(self, batch, batch_idx):
        n, inputs = batch.rows, batch.inputs
        for ids, types in zip(inputs.input_ids[:n], inputs.token_type_ids[:n], strict=True):
            target = self.processor.decode(ids[types == 1], skip_special_tokens=True)
            self.targets.setdefault(self.current_epoch, []).append(target)
        return (self.weight**2).sum()

    def validation_step(self, batch, batch_idx):
        self.placeholder_val_batches += batch.rows == 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_counts_bad_rows_and_redraws_targets_each_epoch(tmp_path, processor_dir):
    rows = awkward_and_bad_rows()["train"].select([7, 9] + [0] * 12)  # corrupt image, empty answer, 12 good
    answers = [["corrupt"], [" "]] + [[f"answer {k}" for k in range(10)]] * 12  # validation: the first 3
    rows = rows.remove_columns("answers").add_column("answers", answers)
    datasets.DatasetDict(train=rows).save_to_disk(tmp_path)
    dm = PaliGemmaDataModule(
        path=str(tmp_path),
        processor_path=str(processor_dir),
        val_split="train[:3]",
        batch_size=4,
        val_batch_size=2,
    )
    probe = Probe(dm.processor)
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(probe, datamodule=dm)
    assert (
        dm.skipped == 4 and probe.placeholder_val_batches == 3
    )  # 2 train rows + 2 val rows; 1 val batch of bad rows only an epoch
    for epoch in range(3):
        expected = sorted(dm.train_data[(row, epoch)]["target"] for row in range(2, 14))
        assert sorted(probe.targets[epoch]) == expected
    assert probe.targets[0] != probe.targets[1]


def test_missing_column_is_a_one_line_error(tmp_path, processor_dir, shapes):
    shapes.save_to_disk(tmp_path)
    dm = PaliGemmaDataModule(path=str(tmp_path), processor_path=str(processor_dir), question_column="query")
    with pytest.raises(
        ValueError, match=r"no column 'query' \(data.question_column\); available: image, caption"
    ) as err:
        dm.setup("fit")
    assert "\n" not in str(err.value)


def test_references_normalisation():
    assert references(" a cat ") == ["a cat"]
    assert references(["x", "", None, "y"]) == ["x", "y"]
    assert references([{"answer": "2", "answer_id": 1}, {"answer": "two"}]) == ["2", "two"]
    assert references({"answer": ["a", "b"], "answer_id": [1, 2]}) == ["a", "b"]  # Sequence-of-dict layout
    assert references([{"raw": "A man.", "tokens": ["a", "man"]}]) == ["A man."]
    assert references(None) == [] and references("  ") == []


def pictures_per_row(counts: list[int], bad: dict[int, int] | None = None) -> dict:
    """VQA rows whose image cell holds a list of ``counts[i]`` pictures; ``bad``: row -> the index of an image
    in it that does not decode."""
    picture, broken = {"bytes": png(noise()), "path": None}, {"bytes": b"not a png", "path": None}
    images = [
        [broken if (bad or {}).get(i) == j else picture for j in range(n)] for i, n in enumerate(counts)
    ]
    n = len(counts)
    return {"images": images, "question": ["what is it?"] * n, "answers": [["noise"]] * n}


PICTURE_LISTS = datasets.Features(
    images=datasets.List(datasets.Image()),
    question=datasets.Value("string"),
    answers=[datasets.Value("string")],
)


def test_rows_of_several_pictures_batch_every_picture_and_skip_empty_or_broken_lists(tmp_path, processor_dir):
    counts = [2, 1, 0, 3, 2, 1]  # row 2: no picture; row 4: its second picture is broken
    rows = pictures_per_row(counts, bad={4: 1})
    path = write_parquet(tmp_path, {"train": (rows, PICTURE_LISTS), "validation": (rows, PICTURE_LISTS)})
    dm = PaliGemmaDataModule(path=str(path), processor_path=str(processor_dir), image_column="images",
                             batch_size=6, val_batch_size=6, num_workers=0)  # fmt: skip
    dm.setup("fit")
    (train,) = batches(dm, dm.train_dataloader())
    assert train.rows == 4 and train.inputs.pixel_values.shape == (7, 3, IMAGE_SIZE, IMAGE_SIZE)
    order = sorted(train.inputs.input_ids.tolist(), key=lambda ids: -ids.count(dm.processor.image_token_id))
    assert [ids.count(dm.processor.image_token_id) // NUM_IMAGE_TOKENS for ids in order] == [3, 2, 1, 1]
    assert dm.skipped == 2
    (val,) = batches(dm, dm.val_dataloader())
    assert val.row_ids == [0, 1, 3, 5] and val.prompt.pixel_values.shape[0] == 7
    assert [im.size for im in val.images] == [(2 * IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE, IMAGE_SIZE),
                                                 (3 * IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE, IMAGE_SIZE)]  # fmt: skip
    strict = PaliGemmaDataModule(path=str(path), processor_path=str(processor_dir), image_column="images",
                                 on_bad_sample="raise", num_workers=0)  # fmt: skip
    strict.setup("fit")
    with pytest.raises(DataError, match="bad train row 2: empty list of images in column 'images'"):
        strict.train_data[2]
    with pytest.raises(DataError, match="bad train row 4: image 1 of 2: UnidentifiedImageError"):
        strict.train_data[4]
    tight = PaliGemmaDataModule(path=str(path), processor_path=str(processor_dir), image_column="images",
                                on_bad_sample="raise", num_workers=0, max_length=2 * NUM_IMAGE_TOKENS + 20)  # fmt: skip
    tight.setup("fit")
    assert tight.train_data[0]["images"]  # 2 pictures fit
    with pytest.raises(DataError, match=rf"bad train row 3: prompt of \d+ tokens \(3 pictures x {NUM_IMAGE_TOKENS} "
                       r"image tokens \+ \d+ more\) .* \d+ over; raise data.max_length or use fewer pictures per row"):  # fmt: skip
        tight.train_data[3]


def test_a_split_whose_first_rows_are_all_bad_stops_before_training_naming_split_column_and_reason(
    tmp_path, processor_dir
):
    splits = {
        "train": (pictures_per_row([0] * 40), PICTURE_LISTS),
        "validation": (pictures_per_row([1] * 4), PICTURE_LISTS),
    }
    dm = PaliGemmaDataModule(path=str(write_parquet(tmp_path, splits)), processor_path=str(processor_dir),
                             image_column="images")  # fmt: skip
    with pytest.raises(DataError) as error:
        dm.setup("fit")
    assert str(error.value) == (
        f"the first 32 rows of the train split of {str(tmp_path)!r} are all bad; row 0: empty list of images in "
        "column 'images' (check the data.*_column options, data.max_length and the dataset's layout)"
    )


def test_one_good_row_among_the_first_is_enough_and_an_empty_split_is_named(tmp_path, processor_dir):
    features = datasets.Features(image=datasets.Image(), question=datasets.Value("string"),
                                 answers=[datasets.Value("string")])  # fmt: skip
    picture = {"bytes": png(noise()), "path": None}
    questions = [""] * 31 + ["what is it?"] * 9  # row 31, the last one looked at, is the first good one
    rows = {"image": [picture] * 40, "question": questions, "answers": [["noise"]] * 40}
    path = str(write_parquet(tmp_path, {"train": (rows, features), "validation": (rows, features)}))
    PaliGemmaDataModule(path=path, processor_path=str(processor_dir)).setup("fit")  # bad rows: skipped later
    empty = PaliGemmaDataModule(path=path, processor_path=str(processor_dir), val_split="validation[:0]")
    with pytest.raises(ConfigError, match=r"split 'validation\[:0\]': .* no data.*; check data.train_split"):
        empty.setup("validate")


def test_an_unknown_split_is_a_config_error_naming_the_options(processor_dir):
    dm = PaliGemmaDataModule(path="synthetic", processor_path=str(processor_dir), val_split="valid",
                             synthetic={"num_train": 4, "num_val": 4, "image_size": 32})  # fmt: skip
    with pytest.raises(
        ConfigError, match="split 'valid': Unknown split .*; check data.train_split, data.val_split"
    ):
        dm.setup("validate")
