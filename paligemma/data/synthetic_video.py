"""Synthetic clips: multi-frame VQA on the shapes of paligemma/data/synthetic.py, whose answers need several frames.

A clip is ``num_frames`` (>= 2) pictures of one scene on the 2x2 grid of the shapes dataset (same colours, shapes,
positions, shading and drawing: each frame is drawn by synthetic.py's renderer from the same random stream, so
what does not change between frames is drawn identically). At one frame (1 .. num_frames - 1) something changes
and stays changed; the question kinds cycle so that they are balanced (25% each in every split):

    move    "which side does the square move to?"             -> "left", "right", "top" or "bottom"
            the square (the only one) jumps to the next cell; 0-1 other shapes stay put
    appear  "which shape appears?"                             -> "circle", "square" or "triangle"
            one shape is there from the start, one of another kind appears in an empty cell
    color   "what color does the red circle become?"           -> a colour
            the red circle turns another colour; another circle, of a third colour, stays as it is
    count   "in how many frames is the blue shape visible?"    -> "1" .. str(num_frames)
            the only blue shape shows in that many frames (any of them); 1-2 other shapes stay put

No single frame decides an answer, but for one case: a frame shows the moved shape in one cell, which may be the
start or the end of the move (one that is known to be the first or the last frame, with the other shape in the
cell beside it, decides: about 1 in 4 moves); the last frame of "appear" holds two shapes of different kinds,
and the first only tells the new one is of another kind (two are left); the last frame of "color" shows two
circles in colours other than the asked one, the first does not show the new colour; any frame of "count" leaves
several counts open (tests/data/test_synthetic_video.py checks each against the pixels).

Train and validation come from independent seed streams (``[seed, 0]`` and ``[seed, 1]``), as in synthetic.py;
the same arguments give the same PNG bytes on every run.
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import numpy as np

from paligemma.data.synthetic import COLORS, SHAPES, render_scene
from paligemma.errors import ConfigError

KINDS = ["move", "appear", "color", "count"]
# 2x2 cells, row-major (synthetic.POSITIONS): the cell one step away in each direction, where there is one
STEPS = {"left": (0, -1), "right": (0, 1), "top": (-1, 0), "bottom": (1, 0)}
FEATURES = datasets.Features(
    {
        "frames": datasets.List(datasets.Image()),
        "question": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "answer": datasets.Value("string"),
        "kind": datasets.Value("string"),
        "clip_id": datasets.Value("string"),
    }
)

Shape = tuple[str, str, int]  # (colour, shape, cell), as synthetic.py's scenes
Clip = list[list[Shape]]  # the shapes of each frame
Maker = Callable[
    [np.random.Generator, int], tuple[Clip, str, str]
]  # (rng, num_frames) -> clip, question, answer


def neighbour(cell: int, direction: str) -> int | None:
    """The cell one step from ``cell`` in ``direction`` on the 2x2 grid, None off the grid."""
    dr, dc = STEPS[direction]
    row, col = cell // 2 + dr, cell % 2 + dc
    return row * 2 + col if 0 <= row < 2 and 0 <= col < 2 else None


def pick(rng: np.random.Generator, options: list, k: int = 1, exclude=()) -> list:
    kept = [o for o in options if o not in exclude]
    return [kept[i] for i in rng.choice(len(kept), size=k, replace=False)]


def _changed_at(rng: np.random.Generator, num_frames: int) -> list[bool]:
    """Per frame, whether the change has happened: from a frame in 1 .. num_frames - 1 on."""
    at = int(rng.integers(1, num_frames))
    return [t >= at for t in range(num_frames)]


def _move(rng: np.random.Generator, num_frames: int) -> tuple[Clip, str, str]:
    shape = pick(rng, SHAPES)[0]
    start = int(rng.integers(4))
    direction = pick(rng, [d for d in STEPS if neighbour(start, d) is not None])[0]
    end = neighbour(start, direction)
    assert end is not None  # picked among the directions that stay on the grid
    others = []
    if rng.random() < 0.5:
        (cell,) = pick(rng, list(range(4)), exclude=(start, end))
        others = [(pick(rng, list(COLORS))[0], pick(rng, SHAPES, exclude=(shape,))[0], cell)]
    color = pick(rng, list(COLORS))[0]
    clip = [[(color, shape, end if moved else start), *others] for moved in _changed_at(rng, num_frames)]
    return clip, f"which side does the {shape} move to?", direction


def _appear(rng: np.random.Generator, num_frames: int) -> tuple[Clip, str, str]:
    old, new = pick(rng, SHAPES, k=2)
    cells = pick(rng, list(range(4)), k=2)
    colors = pick(rng, list(COLORS), k=2)
    first = (colors[0], old, cells[0])
    clip = [[first, (colors[1], new, cells[1])] if on else [first] for on in _changed_at(rng, num_frames)]
    return clip, "which shape appears?", new


def _color(rng: np.random.Generator, num_frames: int) -> tuple[Clip, str, str]:
    shape = pick(rng, SHAPES)[0]
    before, after, other = pick(rng, list(COLORS), k=3)
    cells = pick(rng, list(range(4)), k=3)
    rest = [(other, shape, cells[1])]
    if rng.random() < 0.5:
        rest.append((pick(rng, list(COLORS))[0], pick(rng, SHAPES, exclude=(shape,))[0], cells[2]))
    clip = [[(after if on else before, shape, cells[0]), *rest] for on in _changed_at(rng, num_frames)]
    return clip, f"what color does the {before} {shape} become?", after


def _count(rng: np.random.Generator, num_frames: int) -> tuple[Clip, str, str]:
    n = int(rng.integers(1, 3))
    colors = pick(rng, list(COLORS), k=n + 1)
    cells = pick(rng, list(range(4)), k=n + 1)
    shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=n + 1)]
    static = [(colors[i], shapes[i], cells[i]) for i in range(1, n + 1)]
    count = int(rng.integers(1, num_frames + 1))
    shown = set(rng.choice(num_frames, size=count, replace=False).tolist())
    target = (colors[0], shapes[0], cells[0])
    clip = [static + [target] if t in shown else list(static) for t in range(num_frames)]
    return clip, f"in how many frames is the {colors[0]} shape visible?", str(count)


MAKERS = {"move": _move, "appear": _appear, "color": _color, "count": _count}


def make_split(
    name: str,
    makers: dict[str, Maker],
    num: int,
    image_size: int,
    num_frames: int,
    seed: int,
    stream: int,
    split: str,
    only_frame: int | None = None,
) -> datasets.Dataset:
    """``num`` rows whose kinds cycle through ``makers``' (balanced), drawn from the seed stream ``[seed, stream]``;
    row ids ``<name>-<split>-<index>``."""
    rng = np.random.default_rng([seed, stream])
    rows = {name: [] for name in FEATURES}
    kinds = list(makers)
    for i in range(num):
        kind = kinds[i % len(kinds)]
        clip, question, answer = makers[kind](rng, num_frames)
        # one drawing stream per clip: the shapes kept across frames come first, so draw the same
        draw_seed = int(rng.integers(2**62))
        frames = [render_scene(shapes, image_size, np.random.default_rng(draw_seed)).png for shapes in clip]
        if only_frame is not None:
            frames = [frames[only_frame]]
        rows["frames"].append([{"bytes": png, "path": None} for png in frames])
        rows["question"].append(question)
        rows["answers"].append([answer])
        rows["answer"].append(answer)
        rows["kind"].append(kind)
        rows["clip_id"].append(f"{name}-{split}-{i:06d}")
    return datasets.Dataset.from_dict(rows, features=FEATURES, split=split)  # pyright: ignore[reportArgumentType] -- datasets annotates NamedSplit, takes and keeps a str


def make_clips_dataset(
    num_train: int,
    num_val: int,
    image_size: int = 64,
    num_frames: int = 4,
    seed: int = 0,
    only_frame: int | None = None,
) -> datasets.DatasetDict:
    """Splits "train" and "validation" of the synthetic clips dataset (see the module docstring).

    ``only_frame`` (e.g. -1, the last) keeps that one frame of each clip in "frames", questions and answers
    unchanged: a control, in which one picture has to answer what the clip decides."""
    if image_size < 16:
        raise ConfigError(
            f"data.synthetic.image_size must be at least 16 px to draw shapes, got {image_size}"
        )
    if only_frame is not None and not -num_frames <= only_frame < num_frames:
        raise ConfigError(
            f"data.synthetic.only_frame must index one of the {num_frames} frames, got {only_frame}"
        )
    if num_frames < 2:
        raise ConfigError(
            f"data.synthetic.num_frames must be at least 2 for a clip to change, got {num_frames}"
        )
    return datasets.DatasetDict(
        {
            "train": make_split(
                "clips", MAKERS, num_train, image_size, num_frames, seed, 0, "train", only_frame
            ),
            "validation": make_split(
                "clips", MAKERS, num_val, image_size, num_frames, seed, 1, "validation", only_frame
            ),
        }
    )
