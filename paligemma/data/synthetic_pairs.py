"""Synthetic pairs: two-picture VQA on the shapes of paligemma/data/synthetic.py, whose answers need both pictures.

Rows have the columns of the synthetic clips (paligemma/data/synthetic_video.py), two pictures in "frames", and
two question kinds in turn (50% each in every split):

    more    "which picture has more shapes?"              -> "first" or "second"
            two scenes of 1 .. 4 shapes, never as many in both
    differ  "what is different in the second picture?"    -> "color", "shape" or "place"
            the same scene twice (1-3 shapes), one of its shapes changes colour, kind, or cell

One picture alone does not decide: a scene's count says nothing of the other's but for 1 (then "second") or 4
("first"), and either picture of "differ" is an ordinary scene. Same seeds, same PNG bytes, as the clips.
"""

from __future__ import annotations

import datasets
import numpy as np

from paligemma.data.synthetic import COLORS, SHAPES
from paligemma.data.synthetic_video import Clip, Shape, make_split, pick
from paligemma.errors import ConfigError

CHANGES = ["color", "shape", "place"]


def _scene(rng: np.random.Generator, n: int) -> list[Shape]:
    cells = pick(rng, list(range(4)), k=n)
    return [(pick(rng, list(COLORS))[0], pick(rng, SHAPES)[0], cell) for cell in cells]


def _more(rng: np.random.Generator, num_frames: int) -> tuple[Clip, str, str]:
    counts = pick(rng, [1, 2, 3, 4], k=2)
    pair = [_scene(rng, n) for n in counts]
    return pair, "which picture has more shapes?", "first" if counts[0] > counts[1] else "second"


def _differ(rng: np.random.Generator, num_frames: int) -> tuple[Clip, str, str]:
    first = _scene(rng, int(rng.integers(1, 4)))
    change = pick(rng, CHANGES)[0]
    color, shape, cell = first[-1]
    if change == "color":
        changed = (pick(rng, list(COLORS), exclude=(color,))[0], shape, cell)
    elif change == "shape":
        changed = (color, pick(rng, SHAPES, exclude=(shape,))[0], cell)
    else:
        changed = (color, shape, pick(rng, list(range(4)), exclude=[c for _, _, c in first])[0])
    return [first, [*first[:-1], changed]], "what is different in the second picture?", change


MAKERS = {"more": _more, "differ": _differ}
KINDS = list(MAKERS)


def make_pairs_dataset(
    num_train: int, num_val: int, image_size: int = 64, seed: int = 0
) -> datasets.DatasetDict:
    """Splits "train" and "validation" of the synthetic pairs dataset (see the module docstring)."""
    if image_size < 16:
        raise ConfigError(
            f"data.synthetic.image_size must be at least 16 px to draw shapes, got {image_size}"
        )
    return datasets.DatasetDict(
        {
            "train": make_split("pairs", MAKERS, num_train, image_size, 2, seed, 0, "train"),
            "validation": make_split("pairs", MAKERS, num_val, image_size, 2, seed, 1, "validation"),
        }
    )
