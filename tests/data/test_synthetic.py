"""Synthetic shapes: deterministic, balanced questions the picture answers, detection targets that are the drawn shapes."""

import re

import datasets
import numpy as np

from paligemma.data.boxes import parse_boxes
from paligemma.data.synthetic import COLORS, POSITIONS, make_shapes_dataset
from tests.helpers import (
    batches,
    from_config,
)

SHAPE = re.compile(r"an? (\w+) (\w+) at the ([a-z ]+?)(?:,| and |$)")
REPHRASED = {  # each rephrasing's pattern of one shape, as (colour, shape, position) groups
    "color first": (re.compile(r"(\w+) (\w+) at the ([a-z ]+?)(?:,| and |$)"), (0, 1, 2)),
    "shape first": (re.compile(r"(\w+) in (\w+) at the ([a-z ]+?)(?:,| and |$)"), (1, 0, 2)),
    "position first": (re.compile(r"([a-z]+ [a-z]+) has a (\w+) (\w+)(?:,| and |$)"), (1, 2, 0)),
}


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


def test_synthetic_detection_targets_are_the_drawn_shapes(processor_dir):
    dm = from_config("synthetic_detection", processor_dir, **{"synthetic.num_train": 8, "synthetic.num_val": 8,
                                                              "synthetic.image_size": 64})  # fmt: skip
    dm.setup("validate")
    (val,) = batches(dm, dm.val_dataloader())
    rows = make_shapes_dataset(8, 8, image_size=64)["validation"]
    for prompt, (target,), row in zip(val.prompts, val.references, rows, strict=True):
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
