"""Segmentation through train.py and evaluate.py on a directory in lmms-lab/RefCOCO's schema, and on the
synthetic shapes: the codes are prepared once, a broken mask is one skipped and counted row, and evaluate.py
reproduces the run's scores."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

import evaluate
import train
from tests.helpers import FAST, SYNTHETIC, compose_config, noise, png, random_mask_vae

# lmms-lab/RefCOCO's features and its dataset card's split layout (data/<split>-*.parquet)
REFCOCO = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Sequence(datasets.Value("string")),
        "segmentation": datasets.Sequence(datasets.Value("float32")),
        "bbox": datasets.Sequence(datasets.Value("float32")),
        "iscrowd": datasets.Value("int8"),
        "file_name": datasets.Value("string"),
    }
)
CARD = """---
configs:
- config_name: default
  data_files:
  - split: val
    path: data/val-*
  - split: test
    path: data/test-*
---
"""
QUICK = [o for o in FAST if not o.startswith("generation.max_new_tokens")]  # the task's 20 tokens


def refcoco_rows(n: int, start: int, broken: int | None) -> dict:
    """Rows of 40 x 30 noise with a rectangle polygon each; row ``broken`` has an empty polygon."""
    polygons = [[4.0 + i, 3.0, 30.0, 3.0, 30.0, 25.0, 4.0 + i, 25.0] for i in range(n)]
    if broken is not None:
        polygons[broken] = []
    return {
        "question_id": [str(start + i) for i in range(n)],
        "image": [{"bytes": png(noise(seed=start + i)), "path": None} for i in range(n)],
        "question": ["Please carefully observe the area circled in the image."] * n,
        "answer": [["the left thing", "a box"] for _ in range(n)],
        "segmentation": polygons,
        "bbox": [[4.0 + i, 3.0, 26.0 - i, 22.0] for i in range(n)],
        "iscrowd": [0] * n,
        "file_name": [f"COCO_train2014_{start + i:012d}.jpg" for i in range(n)],
    }


@pytest.fixture
def refcoco_dir(tmp_path):
    directory = tmp_path / "refcoco"
    (directory / "data").mkdir(parents=True)
    for split, rows in {"test": refcoco_rows(8, 0, None), "val": refcoco_rows(5, 100, broken=2)}.items():
        datasets.Dataset.from_dict(rows, features=REFCOCO).to_parquet(
            directory / "data" / f"{split}-00000-of-00001.parquet"
        )
    (directory / "README.md").write_text(CARD)
    return directory


@pytest.mark.slow
def test_a_refcoco_directory_trains_and_evaluates_and_its_broken_mask_is_a_skipped_row(
    tmp_path, tiny_checkpoint, refcoco_dir
):
    vae = random_mask_vae(tmp_path / "vae.safetensors")
    common = [f"model.path={tiny_checkpoint}", "logger=csv", "data=refcoco", f"data.path={refcoco_dir}",
              f"data.mask_vae={vae}"]  # fmt: skip
    results = train.train(compose_config(tmp_path / "run", [*common, *QUICK]))
    assert results["monitor"] == "val/miou" and results["data/skipped"] == 1
    assert {"val/miou", "val/ciou", "val/boxacc@0.5", "val/boxacc@0.75", "val/invalid"} <= results.keys()
    eval_overrides = [*common, f"model.adapter={tmp_path / 'run' / 'adapter'}", "data.num_workers=0",
                      "data.val_batch_size=8"]  # fmt: skip
    evaluated = evaluate.evaluate(compose_config(tmp_path / "eval", eval_overrides, config_name="eval"))
    for key in ("val/miou", "val/ciou", "val/boxacc@0.5", "val/invalid", "data/skipped"):
        assert evaluated[key] == results[key], key
    predictions = [
        json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(predictions) == 4 and {p["prompt"] for p in predictions} == {"the left thing"}
    assert all(p["references"][0].count("<seg") == 16 for p in predictions)


@pytest.mark.slow
def test_synthetic_segmentation_trains_with_masks_drawn_in_wandb(tmp_path, tiny_checkpoint):
    vae = random_mask_vae(tmp_path / "vae.safetensors")
    overrides = [f"model.path={tiny_checkpoint}", "logger=wandb", "data=synthetic_segmentation", f"data.mask_vae={vae}",
                 *QUICK, *SYNTHETIC]  # fmt: skip
    run = tmp_path / "run"
    results = train.train(compose_config(run, overrides))
    kinds = {key.split("/")[-1] for key in results if key.startswith("val/miou/")}
    assert kinds <= {"circle", "square", "triangle", "two names"} and kinds
    # wandb writes each image's predicted and true masks as PNGs of class ids, at the preview's size
    masks = [
        np.asarray(Image.open(m)) for m in run.glob("wandb/offline-run-*/files/media/images/mask/val/*.png")
    ]
    # (identical files once: a blank predicted mask, the same true mask at zero-shot and final validation)
    assert (
        all(m.shape == (32, 32) for m in masks) and sum(bool(m.any()) for m in masks) >= 8
    )  # the 8 rows' truth
