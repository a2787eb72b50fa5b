"""Synthetic shapes: the embedded default dataset, generated deterministically, no download.

Each picture (default 64x64 px) holds 1-3 shapes on a light background with smooth random shading:

    kinds      circle, square, triangle
    colours    red, yellow, green, cyan, blue, purple (hues 60 degrees apart)
    positions  the cells of a 2x2 grid: "top left", "top right", "bottom left", "bottom right"
               (one shape per cell; size and placement jittered within the cell)

Each row carries captions naming every shape, the shapes' boxes ("objects": COCO-style x, y, width, height in
pixels, and the shape names) and one question, its kind cycling
color / shape / count / position so the kinds are balanced (25% each in every split):

    caption   "two shapes: a red circle at the top left and a blue square at the bottom right"
    captions  the caption and four rephrasings (shapes in a random order after the first two):
              "2 shapes: a red circle at the top left and a blue square at the bottom right"
              "blue square at the bottom right and red circle at the top left"
              "circle in red at the top left and square in blue at the bottom right"
              "bottom right has a blue square and top left has a red circle"
    color     "what color is the circle?" (only when exactly one circle)
              "what color is the shape at the top left?"                            -> "red"
    shape     "what shape is the red object?" (only when exactly one red shape)
              "what shape is at the bottom right?"                                  -> "square"
    count     "how many shapes are there?"                                          -> "1" .. "3"
    position  "where is the blue square?" (only when exactly one blue square)       -> "bottom right"

Answers are digits for counts, as in VQAv2. The rephrasings make a caption-trained model emit every
answer word at the start of a text too: there a tokenizer without a dummy prefix (Gemma's) spells a word
without its "▁" ("red", not "▁red"), a different token that captions in one phrasing never train.

Train and validation come from independent seed streams (``[seed, 0]`` and ``[seed, 1]``; the captions'
shuffles from ``[seed, stream, row]``); the same arguments give the same PNG bytes on every run.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import NamedTuple

import datasets
import numpy as np
from PIL import Image, ImageDraw

from paligemma.data.boxes import detection_example, detection_prompt, relative_box
from paligemma.errors import ConfigError

COLORS = {
    "red": (220, 40, 40),
    "yellow": (230, 200, 30),
    "green": (40, 170, 60),
    "cyan": (30, 190, 200),
    "blue": (40, 70, 220),
    "purple": (160, 50, 190),
}
SHAPES = ["circle", "square", "triangle"]
POSITIONS = ["top left", "top right", "bottom left", "bottom right"]  # 2x2 cells, row-major
QUESTION_KINDS = ["color", "shape", "count", "position"]
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "captions": datasets.Sequence(datasets.Value("string")),
        "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("string"),
        "kind": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        # COCO-style boxes (x, y, width, height in pixels) and class names of the shapes, in scene order
        "objects": {
            "bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
            "category": datasets.Sequence(datasets.Value("string")),
        },
        "prefix": datasets.Value("string"),  # "caption en", or "detect circle ; square" (see detect_every)
        "suffix": datasets.Sequence(datasets.Value("string")),  # the captions, or the one detection target
    }
)


def _scene(rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """1-3 (colour, shape, cell) triples in distinct cells, sorted by cell."""
    n = int(rng.integers(1, 4))
    cells = sorted(rng.choice(len(POSITIONS), size=n, replace=False).tolist())
    colors = list(COLORS)
    return [(colors[rng.integers(len(colors))], SHAPES[rng.integers(len(SHAPES))], c) for c in cells]


def _listed(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _caption(scene: list[tuple[str, str, int]]) -> str:
    listed = _listed([f"a {color} {shape} at the {POSITIONS[cell]}" for color, shape, cell in scene])
    noun = "shape" if len(scene) == 1 else "shapes"
    return f"{NUMBER_WORDS[len(scene)]} {noun}: {listed}"


def _captions(scene: list[tuple[str, str, int]], rng: np.random.Generator) -> list[str]:
    """The caption and its rephrasings, which open with a digit, a colour, a shape and a position."""
    caption = _caption(scene)
    shuffled = [scene[i] for i in rng.permutation(len(scene))]
    return [
        caption,
        str(len(scene)) + caption[caption.index(" ") :],
        _listed([f"{color} {shape} at the {POSITIONS[cell]}" for color, shape, cell in shuffled]),
        _listed([f"{shape} in {color} at the {POSITIONS[cell]}" for color, shape, cell in shuffled]),
        _listed([f"{POSITIONS[cell]} has a {color} {shape}" for color, shape, cell in shuffled]),
    ]


def _questions(scene: list[tuple[str, str, int]], kind: str) -> list[tuple[str, str]]:
    """Every unambiguous (question, answer) of ``kind`` for this scene."""
    colors = Counter(color for color, _, _ in scene)
    shapes = Counter(shape for _, shape, _ in scene)
    pairs = Counter((color, shape) for color, shape, _ in scene)
    if kind == "count":
        return [("how many shapes are there?", str(len(scene)))]
    out = []
    for color, shape, cell in scene:
        where = POSITIONS[cell]
        if kind == "color":
            out.append((f"what color is the shape at the {where}?", color))
            if shapes[shape] == 1:
                out.append((f"what color is the {shape}?", color))
        elif kind == "shape":
            out.append((f"what shape is at the {where}?", shape))
            if colors[color] == 1:
                out.append((f"what shape is the {color} object?", shape))
        elif pairs[(color, shape)] == 1:
            out.append((f"where is the {color} {shape}?", where))
    return out


class Rendered(NamedTuple):
    """A scene's PNG bytes, each shape's box (x, y, width, height in pixels) and each shape's mask (an "L" image,
    255 inside, drawn with the same primitives), in scene order."""

    png: bytes
    boxes: list[list[float]]
    masks: list[Image.Image]


def render_scene(scene: list[tuple[str, str, int]], size: int, rng: np.random.Generator) -> Rendered:
    """The picture of a scene: light background shaded by a 4x4 random field, each shape jittered inside its cell."""
    shading = rng.integers(190, 246, size=3) + rng.integers(-12, 13, size=(4, 4, 3))
    image = Image.fromarray(np.clip(shading, 0, 255).astype(np.uint8))
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    cell = size / 2
    boxes, masks = [], []
    for color, shape, index in scene:
        radius = cell * rng.uniform(0.24, 0.36)
        slack = cell / 2 - radius - 1
        cx = (index % 2 + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (index // 2 + 0.5) * cell + rng.uniform(-slack, slack)
        boxes.append([cx - radius, cy - radius, 2 * radius, 2 * radius])
        _draw_shape(draw, shape, cx, cy, radius, COLORS[color])
        masks.append(Image.new("L", (size, size)))
        _draw_shape(ImageDraw.Draw(masks[-1]), shape, cx, cy, radius, 255)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return Rendered(buffer.getvalue(), boxes, masks)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, fill) -> None:
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=fill)


def _make_split(
    num: int, image_size: int, seed: int, stream: int, split: str, detect_every: int
) -> datasets.Dataset:
    rng = np.random.default_rng([seed, stream])
    rows = {name: [] for name in FEATURES}
    for i in range(num):
        kind = QUESTION_KINDS[i % len(QUESTION_KINDS)]
        while not (candidates := _questions(scene := _scene(rng), kind)):
            pass  # e.g. two identical blue squares leave no "where is" question: draw another scene
        question, answer = candidates[rng.integers(len(candidates))]
        png, bboxes, _ = render_scene(scene, image_size, rng)
        captions = _captions(scene, np.random.default_rng([seed, stream, i]))
        names = [shape for _, shape, _ in scene]
        prompt, target = detection_example(
            [relative_box(b, image_size, image_size, "xywh", n) for b, n in zip(bboxes, names, strict=True)]
        )
        detect = detect_every > 0 and i % detect_every == detect_every - 1
        rows["image"].append({"bytes": png, "path": None})
        rows["caption"].append(_caption(scene))
        rows["captions"].append(captions)
        rows["question"].append(question)
        rows["answers"].append([answer])
        rows["answer"].append(answer)
        rows["kind"].append(kind)
        rows["image_id"].append(f"shapes-{split}-{i:06d}")
        rows["objects"].append({"bbox": bboxes, "category": names})
        rows["prefix"].append(prompt if detect else "caption en")
        rows["suffix"].append([target] if detect else captions)
    return datasets.Dataset.from_dict(rows, features=FEATURES, split=split)  # pyright: ignore[reportArgumentType] -- datasets annotates NamedSplit, takes and keeps a str


def make_shapes_dataset(
    num_train: int, num_val: int, image_size: int = 64, seed: int = 0, detect_every: int = 0
) -> datasets.DatasetDict:
    """Splits "train" and "validation" of the synthetic shapes dataset (see the module docstring).

    ``detect_every=k`` > 0 makes every k-th training row a detection example in the "prefix" and "suffix"
    columns (the rest, and every validation row, are captions): the tiny base's pre-training mixture."""
    if image_size < 16:
        raise ConfigError(
            f"data.synthetic.image_size must be at least 16 px to draw shapes, got {image_size}"
        )
    return datasets.DatasetDict(
        {
            "train": _make_split(num_train, image_size, seed, 0, "train", detect_every),
            "validation": _make_split(num_val, image_size, seed, 1, "validation", 0),
        }
    )


def synthetic_texts(dataset: datasets.Dataset | datasets.DatasetDict) -> list[str]:
    """Every text a model sees on this data (task prefixes, captions, questions, answers): a tokenizer corpus."""
    splits = dataset.values() if isinstance(dataset, datasets.DatasetDict) else [dataset]
    texts = ["caption en", "answer en"]
    texts += [detection_prompt(c) for c in (["circle", "square", "triangle"], ["square", "triangle"])]
    for split in splits:
        texts += [text for captions in split["captions"] for text in captions]
        texts += [text for column in ("question", "answer") for text in split[column]]
    return texts
