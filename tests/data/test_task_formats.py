"""Each task's data through the data module: prompts and languages, prefix / suffix files, detection annotations."""

import json
from pathlib import Path

import datasets
import pytest

from paligemma.data.boxes import Box, parse_boxes
from paligemma.data.datamodule import PaliGemmaDataModule
from paligemma.errors import ConfigError
from tests.helpers import (
    batches,
    from_config,
    noise,
    png,
    write_jsonl_dir,
)


def test_prompt_language_and_template(processor_dir):
    sizes = {"synthetic.num_train": 4, "synthetic.num_val": 4}
    dm = from_config("synthetic", processor_dir, lang="fr", **sizes)
    dm.setup("validate")
    (val,) = batches(dm, dm.val_dataloader())
    assert all(p.startswith("answer fr ") for p in val.prompts)
    dm = from_config("synthetic_captions", processor_dir, prompt="describe in {lang}:", lang="de", **sizes)
    dm.setup("validate")
    assert batches(dm, dm.val_dataloader())[0].prompts == ["describe in de:"] * 4
    with pytest.raises(
        ConfigError, match=r"data.prompt 'answer {question} in {language}'.*\{lang\}, \{question\}"
    ):
        PaliGemmaDataModule(path="synthetic", prompt="answer {question} in {language}")


def test_prefix_suffix_from_jsonl_plus_images(tmp_path, processor_dir):
    dm = from_config(
        "prefix_suffix", processor_dir, path=str(write_jsonl_dir(tmp_path / "jsonl")), num_workers=0
    )
    dm.setup("fit")
    assert dm.settings.metric_name == "exact_match"
    (train,) = batches(dm, dm.train_dataloader())
    decoded = dm.processor.batch_decode(train.inputs.input_ids, skip_special_tokens=True)
    assert sorted(decoded) == [f"answer fr combien ?\n{i}" for i in range(3)]
    (val,) = batches(dm, dm.val_dataloader())
    assert val.prompts == ["ocr"] and val.references == [["STOP", "stop"]]
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
    assert dm.settings.metric_name == "map"
    (val,) = batches(dm, dm.val_dataloader())
    assert val.prompts == ["detect cat ; dog"]  # the crowd box is left out, as COCO's evaluation does
    (target,) = val.references[0]
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
    assert val.prompts == ["detect helmet ; person"]
    boxes = parse_boxes(val.references[0][0])
    assert [(b.name, b.x_max) for b in boxes] == [("helmet", 512 / 1023), ("person", 1.0)]


def test_jsonl_rows_with_a_list_of_pictures(tmp_path, processor_dir):
    directory = tmp_path / "pairs"
    directory.mkdir()
    for i in range(3):
        noise(seed=i).save(directory / f"{i}.png")
    lines = [{"image": ["0.png", "1.png"], "prefix": "which is brighter?", "suffix": "left"},
             {"image": "2.png", "prefix": "ocr", "suffix": "x"},
             {"image": ["0.png", "gone.png"], "prefix": "which?", "suffix": "right"}]  # fmt: skip
    for split in ("train", "validation"):
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dm = from_config("prefix_suffix", processor_dir, path=str(directory), num_workers=0, batch_size=3)
    dm.setup("fit")
    (train,) = batches(dm, dm.train_dataloader())
    assert train.rows == 2 and train.inputs.pixel_values.shape[0] == 3 and dm.skipped == 1
