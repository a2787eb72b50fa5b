"""Segmentation on the synthetic shapes (paligemma/data/synthetic.py): the renderer knows every pixel of each shape.

Each picture holds 1-3 shapes; a row asks for the shapes of one description, or of two on every
``two_names_every``-th row (when the picture has two), in the mix checkpoints' style::

    names   ["red circle"]                   prompt  "segment red circle"
    names   ["blue square", "red circle"]    prompt  "segment blue square ; red circle"

with a mask per named shape (an "L" PNG, 255 inside) in scene order, so the other shapes are distractors. ``kind``
is the named shape ("circle", "square", "triangle"), or "two names", for per-shape scores.
"""

from __future__ import annotations

import io

import datasets
import numpy as np
from PIL import Image

from paligemma.data.synthetic import _scene, render_scene
from paligemma.errors import ConfigError

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "names": datasets.Sequence(datasets.Value("string")),
        "mask": datasets.Sequence(datasets.Image()),
        "kind": datasets.Value("string"),
        "image_id": datasets.Value("string"),
    }
)
TWO_NAMES = "two names"


def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _make_split(
    num: int, image_size: int, seed: int, stream: int, split: str, two_names_every: int
) -> datasets.Dataset:
    rng = np.random.default_rng([seed, stream])
    rows = {name: [] for name in FEATURES}
    for i in range(num):
        scene = _scene(rng)
        rendered = render_scene(scene, image_size, rng)
        described = [f"{color} {shape}" for color, shape, _ in scene]
        distinct = sorted(set(described))
        count = (
            2 if two_names_every and i % two_names_every == two_names_every - 1 and len(distinct) > 1 else 1
        )
        chosen = set(rng.choice(distinct, size=count, replace=False).tolist())
        picked = [j for j, name in enumerate(described) if name in chosen]
        rows["image"].append({"bytes": rendered.png, "path": None})
        rows["names"].append([described[j] for j in picked])
        rows["mask"].append([_png(rendered.masks[j]) for j in picked])
        rows["kind"].append(TWO_NAMES if count == 2 else next(iter(chosen)).split()[1])
        rows["image_id"].append(f"segment-{split}-{i:06d}")
    return datasets.Dataset.from_dict(rows, features=FEATURES, split=split)  # pyright: ignore[reportArgumentType] -- datasets annotates NamedSplit, takes and keeps a str


def make_segmentation_dataset(
    num_train: int, num_val: int, image_size: int = 64, seed: int = 0, two_names_every: int = 4
) -> datasets.DatasetDict:
    """Splits "train" and "validation" (independent seed streams, as the shapes dataset's)."""
    if image_size < 16:
        raise ConfigError(
            f"data.synthetic.image_size must be at least 16 px to draw shapes, got {image_size}"
        )
    return datasets.DatasetDict(
        {
            "train": _make_split(num_train, image_size, seed, 0, "train", two_names_every),
            "validation": _make_split(num_val, image_size, seed, 1, "validation", two_names_every),
        }
    )
