"""Synthetic shapes and PaliGemmaDataModule: determinism, task templates, hub schemas, bad rows, seeding."""

import json
import re
import tempfile
from pathlib import Path

import datasets
import hydra
import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from paligemma.data.boxes import Box, parse_boxes
from paligemma.data.datamodule import PaliGemmaDataModule
from paligemma.data.processor import IGNORE_INDEX, PaliGemmaProcessor
from paligemma.data.synthetic import COLORS, POSITIONS, make_shapes_dataset, synthetic_texts
from paligemma.data.tasks import references
from paligemma.data.tokenizer import build_tokenizer, save_processor_files
from paligemma.errors import ConfigError, DataError
from tests.helpers import (
    COCO_FEATURES,
    VQAV2_FEATURES,
    awkward_and_bad_rows,
    compose_config,
    noise,
    png,
    vqav2_rows,
    write_jsonl_dir,
    write_parquet,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
IMAGE_SIZE, NUM_IMAGE_TOKENS = 32, 16
SHAPE = re.compile(r"an? (\w+) (\w+) at the ([a-z ]+?)(?:,| and |$)")
REPHRASED = {  # each rephrasing's pattern of one shape, as (colour, shape, position) groups
    "color first": (re.compile(r"(\w+) (\w+) at the ([a-z ]+?)(?:,| and |$)"), (0, 1, 2)),
    "shape first": (re.compile(r"(\w+) in (\w+) at the ([a-z ]+?)(?:,| and |$)"), (1, 0, 2)),
    "position first": (re.compile(r"([a-z]+ [a-z]+) has a (\w+) (\w+)(?:,| and |$)"), (1, 2, 0)),
}


def batches(dm: PaliGemmaDataModule, loader):
    """What the LightningModule receives: each batch after the data module's on_before_batch_transfer."""
    return [dm.on_before_batch_transfer(batch, 0) for batch in loader]


def from_config(name: str, processor_dir: Path, **data_overrides) -> PaliGemmaDataModule:
    """Instantiate conf/data/<name>.yaml as train.py would, with ``model.path`` = processor_dir."""
    cfg = compose_config(Path(tempfile.mkdtemp()), [f"data={name}", f"model.path={processor_dir}"])
    for key, value in data_overrides.items():
        OmegaConf.update(cfg, f"data.{key}", value)
    return hydra.utils.instantiate(cfg.data)


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_dataset(num_train=200, num_val=12, image_size=IMAGE_SIZE * 2, seed=0)


@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory, shapes):
    path = tmp_path_factory.mktemp("processor")
    corpus = synthetic_texts(shapes) + ["a cat on a mat", "what is on the table?", "yes", "two"] * 20
    save_processor_files(path, build_tokenizer(corpus, vocab_size=400), IMAGE_SIZE, NUM_IMAGE_TOKENS)
    return path


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_splits_differ():
    a = make_shapes_dataset(16, 8, seed=3)
    b = make_shapes_dataset(16, 8, seed=3)
    raw = datasets.Image(decode=False)
    for split in ("train", "validation"):
        assert a[split].cast_column("image", raw)[:] == b[split].cast_column("image", raw)[:]
    images = {split: a[split].cast_column("image", raw)["image"] for split in a}
    assert not {im["bytes"] for im in images["train"]} & {im["bytes"] for im in images["validation"]}
    assert make_shapes_dataset(16, 8, seed=4)["train"]["caption"] != a["train"]["caption"]


def test_synthetic_questions_are_balanced_and_answered_by_the_picture(shapes):
    train, val = shapes["train"], shapes["validation"]
    kinds = list(train["kind"])
    assert {k: kinds.count(k) for k in set(kinds)} == dict.fromkeys(
        ["color", "shape", "count", "position"], 50
    )
    assert set(val["kind"]) == {"color", "shape", "count", "position"}
    for row in train:
        scene = SHAPE.findall(row["caption"].split(": ", 1)[1])
        assert len(scene) == ["one", "two", "three"].index(row["caption"].split()[0]) + 1
        caption, digits, *rephrased = row["captions"]
        assert caption == row["caption"] and digits == str(len(scene)) + caption[caption.index(" ") :]
        for text, (pattern, order) in zip(rephrased, REPHRASED.values(), strict=True):
            assert sorted(tuple(m[i] for i in order) for m in pattern.findall(text)) == sorted(scene), text
        assert row["answers"] == [row["answer"]]
        q, a = row["question"], row["answer"]
        if m := re.fullmatch(r"what color is the shape at the (.+)\?", q):
            assert [c for c, _, p in scene if p == m[1]] == [a]
        elif m := re.fullmatch(r"what color is the (\w+)\?", q):
            assert [c for c, s, _ in scene if s == m[1]] == [a]
        elif m := re.fullmatch(r"what shape is at the (.+)\?", q):
            assert [s for _, s, p in scene if p == m[1]] == [a]
        elif m := re.fullmatch(r"what shape is the (\w+) object\?", q):
            assert [s for c, s, _ in scene if c == m[1]] == [a]
        elif m := re.fullmatch(r"where is the (\w+) (\w+)\?", q):
            assert [p for c, s, p in scene if (c, s) == m.groups()] == [a] and a in POSITIONS
        else:
            assert q == "how many shapes are there?" and a == str(len(scene))
        pixels = np.asarray(row["image"], dtype=int)  # every named colour is drawn
        for color, _, _ in scene:
            assert (np.abs(pixels - COLORS[color]).sum(-1) < 10).any()


# ------------------------------------------------------------------------------------------ data module


def test_synthetic_config_batches(processor_dir):
    dm = from_config("synthetic", processor_dir, **{"synthetic.num_train": 24, "synthetic.num_val": 8})
    dm.setup("fit")
    assert dm.task == "vqa" and dm.processor.image_size == IMAGE_SIZE
    train = batches(dm, dm.train_dataloader())
    assert [b["input_ids"].shape[0] for b in train] == [16, 8]
    batch = train[0]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "pixel_values", "rows"}
    assert batch["rows"] == 16 and batch["pixel_values"].shape == (16, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (batch["labels"][:, :NUM_IMAGE_TOKENS] == IGNORE_INDEX).all()
    assert (batch["labels"] != IGNORE_INDEX).sum() == batch["token_type_ids"].sum()
    (val,) = batches(dm, dm.val_dataloader())
    assert set(val) == {"batch", "prompt", "references", "kinds", "prompts", "row_ids", "images", "rows"}
    assert val["row_ids"] == list(range(8)) and set(val["kinds"]) == {"color", "shape", "count", "position"}
    assert all(p.startswith("answer en ") and p.endswith("?") for p in val["prompts"])
    assert all(len(r) == 1 for r in val["references"]) and val["images"][0].size == (IMAGE_SIZE, IMAGE_SIZE)
    prompt = val["prompt"]
    assert set(prompt) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values"}
    assert (prompt["attention_mask"][:, -1] == 1).all()  # left padded
    assert (prompt["token_type_ids"] == 0).all()
    assert torch.equal(prompt["pixel_values"], val["batch"]["pixel_values"])
    decoded = dm.processor.batch_decode(val["batch"]["input_ids"], skip_special_tokens=True)
    assert decoded[0] == val["prompts"][0] + "\n" + val["references"][0][0]


def test_vqav2_config_on_hub_schema_parquet(tmp_path, processor_dir):
    (tmp_path / "data").mkdir()
    data = datasets.Dataset.from_dict(vqav2_rows(40), features=VQAV2_FEATURES)
    data.to_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet")
    dm = from_config("vqav2", processor_dir, path=str(tmp_path))
    dm.setup("fit")
    assert (len(dm.train_data), len(dm.val_data)) == (38, 2)  # validation[:95%] / validation[95%:]
    (val,) = batches(dm, dm.val_dataloader())
    assert val["row_ids"] == [0, 1] and val["kinds"] == ["other", "yes/no"]  # rows 38, 39 of the file
    assert val["prompts"] == ["answer en question number 38?", "answer en question number 39?"]
    assert val["references"][1] == ["yes"] * 6 + ["no"] * 4
    ids, types = val["batch"]["input_ids"][1], val["batch"]["token_type_ids"][1]
    assert dm.processor.decode(ids[types == 1]) == "yes<eos>"  # the loss uses the most common answer
    train = batches(dm, dm.train_dataloader())
    assert sum(b["input_ids"].shape[0] for b in train) == 38 and dm.skipped == 0


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
    assert val["prompts"] == ["caption en"] * 3 and val["kinds"] == ["caption"] * 3
    assert [len(r) for r in val["references"]] == [5, 5, 5]
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
    assert train["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    (val,) = batches(dm, dm.val_dataloader())
    assert val["references"] == [["noise"], ["noise"]] and dm.skipped == 0
    direct = dm.processor(text=["x"], images=[Image.open(tmp_path / "validation" / "1.png")])["pixel_values"]
    assert torch.equal(val["batch"]["pixel_values"][1:], direct)  # our early resize changes nothing


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
    assert batches(dm, dm.val_dataloader())[0]["references"] == [
        [a] for a in shapes["validation"]["answer"][9:]
    ]


def test_bad_rows_skipped_once_and_awkward_images_kept(tmp_path, processor_dir, caplog):
    awkward_and_bad_rows().save_to_disk(tmp_path)
    dm = PaliGemmaDataModule(
        path=str(tmp_path), processor_path=str(processor_dir), batch_size=4, val_batch_size=1, max_length=80
    )
    dm.setup("fit")
    for _ in range(2):  # a second epoch counts nothing new
        train = batches(dm, dm.train_dataloader())
        assert sum(b["rows"] for b in train) == 7 and dm.skipped == 4
        assert [b["input_ids"].shape[0] for b in train] == [max(b["rows"], 1) for b in train]
    val = batches(dm, dm.val_dataloader())
    assert val[0]["row_ids"] == [0] and dm.skipped == 6
    assert [(b["rows"], b["row_ids"], b["references"]) for b in val[1:]] == [(0, [], [])] * 2  # placeholders
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


def test_bad_rows_counted_across_worker_processes(tmp_path, processor_dir):
    awkward_and_bad_rows().save_to_disk(tmp_path)
    dm = PaliGemmaDataModule(
        path=str(tmp_path), processor_path=str(processor_dir), batch_size=2, num_workers=2
    )
    dm.setup("fit")
    for _ in range(2):
        batches(dm, dm.train_dataloader())
    assert dm.skipped == 4


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
    batch = batches(dm, dm.train_dataloader())[0]
    assert batch["input_ids"].shape[1] == n_prompt + 3
    assert ((batch["input_ids"] == dm.processor.eos_token_id).sum(1) == 1).all() and dm.truncated == 200
    tight = PaliGemmaDataModule(
        path=str(tmp_path), processor_path=str(processor_dir), max_length=NUM_IMAGE_TOKENS + 3
    )
    with pytest.raises(
        DataError, match=rf"row 0: prompt of \d+ tokens leaves no room in max_length={NUM_IMAGE_TOKENS + 3} "
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
        n = batch["rows"]
        for ids, types in zip(batch["input_ids"][:n], batch["token_type_ids"][:n], strict=True):
            target = self.processor.decode(ids[types == 1], skip_special_tokens=True)
            self.targets.setdefault(self.current_epoch, []).append(target)
        return (self.weight**2).sum()

    def validation_step(self, batch, batch_idx):
        self.placeholder_val_batches += batch["rows"] == 0

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


# ---------------------------------------------------------------------------- prompts, prefix / suffix, detection


def test_prompt_language_and_template(processor_dir):
    sizes = {"synthetic.num_train": 4, "synthetic.num_val": 4}
    dm = from_config("synthetic", processor_dir, lang="fr", **sizes)
    dm.setup("validate")
    (val,) = batches(dm, dm.val_dataloader())
    assert all(p.startswith("answer fr ") for p in val["prompts"])
    dm = from_config("synthetic_captions", processor_dir, prompt="describe in {lang}:", lang="de", **sizes)
    dm.setup("validate")
    assert batches(dm, dm.val_dataloader())[0]["prompts"] == ["describe in de:"] * 4
    with pytest.raises(
        ConfigError, match=r"data.prompt 'answer {question} in {language}'.*\{lang\}, \{question\}"
    ):
        PaliGemmaDataModule(path="synthetic", prompt="answer {question} in {language}")


def test_prefix_suffix_from_jsonl_plus_images(tmp_path, processor_dir):
    dm = from_config(
        "prefix_suffix", processor_dir, path=str(write_jsonl_dir(tmp_path / "jsonl")), num_workers=0
    )
    dm.setup("fit")
    assert dm.metric == "exact_match"
    (train,) = batches(dm, dm.train_dataloader())
    decoded = dm.processor.batch_decode(train["input_ids"], skip_special_tokens=True)
    assert sorted(decoded) == [f"answer fr combien ?\n{i}" for i in range(3)]
    (val,) = batches(dm, dm.val_dataloader())
    assert val["prompts"] == ["ocr"] and val["references"] == [["STOP", "stop"]]
    assert dm.skipped == 2  # the missing image and the line that is not JSON


def write_coco_dir(directory: Path) -> Path:
    """Roboflow's COCO export: <split>/_annotations.coco.json beside the images."""
    for split, n in (("train", 2), ("valid", 1)):
        (directory / split).mkdir(parents=True)
        for i in range(n):
            noise(size=(40, 20), seed=i).save(directory / split / f"{i}.png")
        coco = {
            "images": [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 20} for i in range(n)],
            "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
            "annotations": [
                {"id": 1, "image_id": 0, "category_id": 2, "bbox": [4, 2, 20, 10], "iscrowd": 0},
                {"id": 2, "image_id": 0, "category_id": 1, "bbox": [0, 10, 40, 10], "iscrowd": 0},
                {"id": 3, "image_id": 0, "category_id": 1, "bbox": [0, 0, 40, 20], "iscrowd": 1},
            ],
        }
        (directory / split / "_annotations.coco.json").write_text(json.dumps(coco))
    return directory


def test_detection_from_coco_annotations(tmp_path, processor_dir):
    dm = from_config("detection", processor_dir, path=str(write_coco_dir(tmp_path / "coco")), num_workers=0,
                     val_split="valid")  # fmt: skip
    dm.setup("fit")
    assert dm.metric == "map"
    (val,) = batches(dm, dm.val_dataloader())
    assert val["prompts"] == ["detect cat ; dog"]  # the crowd box is left out, as COCO's evaluation does
    (target,) = val["references"][0]
    assert parse_boxes(target) == [  # pixels / side, then round(v * 1023) / 1023; 511.5 rounds to even
        Box(102 / 1023, 102 / 1023, 614 / 1023, 614 / 1023, "cat"),
        Box(512 / 1023, 0.0, 1.0, 1.0, "dog"),
    ]
    (train,) = batches(dm, dm.train_dataloader())
    assert dm.skipped == 1  # the second training picture has no boxes: no target


def test_detection_from_a_hub_objects_column_with_class_ids(tmp_path, processor_dir):
    features = datasets.Features({
        "image": datasets.Image(),
        "objects": {"bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                    "category": datasets.Sequence(datasets.ClassLabel(names=["person", "helmet"]))},
    })  # fmt: skip
    rows = {"image": [{"bytes": png(noise(size=(10, 10))), "path": None}],
            "objects": [{"bbox": [[0, 0, 5, 10], [5, 5, 10, 10]], "category": [1, 0]}]}  # fmt: skip
    for split in ("train", "validation"):
        datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / f"{split}.parquet")
    dm = from_config("detection", processor_dir, path=str(tmp_path), box_format="xyxy", num_workers=0)
    dm.setup("validate")
    (val,) = batches(dm, dm.val_dataloader())
    assert val["prompts"] == ["detect helmet ; person"]
    boxes = parse_boxes(val["references"][0][0])
    assert [(b.name, b.x_max) for b in boxes] == [("helmet", 512 / 1023), ("person", 1.0)]


def test_synthetic_detection_targets_are_the_drawn_shapes(processor_dir):
    dm = from_config("synthetic_detection", processor_dir, **{"synthetic.num_train": 8, "synthetic.num_val": 8,
                                                              "synthetic.image_size": 64})  # fmt: skip
    dm.setup("validate")
    (val,) = batches(dm, dm.val_dataloader())
    rows = make_shapes_dataset(8, 8, image_size=64)["validation"]
    for prompt, (target,), row in zip(val["prompts"], val["references"], rows, strict=True):
        assert prompt == "detect " + " ; ".join(sorted(set(row["objects"]["category"])))
        boxes = parse_boxes(target)
        assert [b.name for b in boxes] == row["objects"]["category"]
        pixels = np.asarray(row["image"], dtype=int)
        for b in boxes:  # the box's centre is painted in a shape colour, not the light background
            centre = pixels[int((b.y_min + b.y_max) / 2 * 64), int((b.x_min + b.x_max) / 2 * 64)]
            assert min(np.abs(centre - c).sum() for c in COLORS.values()) < 10 or b.name == "triangle"
    mixture = make_shapes_dataset(8, 4, image_size=64, detect_every=4)
    assert [p.split()[0] for p in mixture["train"]["prefix"]] == ["caption"] * 3 + ["detect"] + [
        "caption"
    ] * 3 + ["detect"]
    assert set(mixture["validation"]["prefix"]) == {"caption en"}


def two_pictures_per_row(n: int) -> dict:
    """VQA rows whose image cell holds a list of two pictures: a layout this code does not read."""
    picture = {"bytes": png(noise()), "path": None}
    images = [[picture, picture] for _ in range(n)]
    return {"images": images, "question": ["what is it?"] * n, "answers": [["noise"]] * n}


TWO_PICTURES = datasets.Features(
    images=datasets.Sequence(datasets.Image()),
    question=datasets.Value("string"),
    answers=[datasets.Value("string")],
)


def test_a_split_whose_first_rows_are_all_bad_stops_before_training_naming_split_column_and_reason(
    tmp_path, processor_dir
):
    splits = {
        "train": (two_pictures_per_row(40), TWO_PICTURES),
        "validation": (two_pictures_per_row(4), TWO_PICTURES),
    }
    dm = PaliGemmaDataModule(path=str(write_parquet(tmp_path, splits)), processor_path=str(processor_dir),
                             image_column="images")  # fmt: skip
    with pytest.raises(DataError) as error:
        dm.setup("fit")
    assert str(error.value) == (
        f"the first 32 rows of the train split of {str(tmp_path)!r} are all bad; row 0: AttributeError: 'list' "
        "object has no attribute 'read' in column 'images' (check the data.*_column options, data.max_length and the "
        "dataset's layout)"
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
