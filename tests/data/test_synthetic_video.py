"""Synthetic clips: deterministic, balanced questions that the frames together answer and no single frame does."""

import re

import datasets
import numpy as np
import pytest

from paligemma.data.datamodule import PaliGemmaDataModule
from paligemma.data.synthetic import COLORS, SHAPES
from paligemma.data.synthetic_video import KINDS, STEPS, make_clips_dataset, neighbour
from paligemma.errors import ConfigError
from tests.helpers import IMAGE_SIZE, NUM_IMAGE_TOKENS, batches, drawn, from_config

FRAMES = 4


@pytest.fixture(scope="module")
def clips():
    return make_clips_dataset(num_train=80, num_val=8, image_size=64, num_frames=FRAMES, seed=0)


def answer_and_views(kind: str, question: str, clip: list[set]) -> tuple[str, list[set[str]]]:
    """The answer that the clip decides, and per frame the answers that this frame alone (and knowing which
    frame of the clip it is) leaves open."""
    last = len(clip) - 1
    if kind == "move":
        (shape,) = re.fullmatch(r"which side does the (\w+) move to\?", question).groups()  # pyright: ignore[reportOptionalMemberAccess]
        cells = [[c for _, s, c in frame if s == shape] for frame in clip]
        assert all(len(c) == 1 for c in cells)
        start, end = cells[0][0], cells[-1][0]
        assert len({c[0] for c in cells}) == 2
        (answer,) = [d for d in STEPS if neighbour(start, d) == end]
        views = []
        for t, frame in enumerate(clip):
            (cell,) = cells[t]
            free = {neighbour(cell, d) for d in STEPS} - {c for _, _, c in frame} - {None}
            as_start = {d for d in STEPS if neighbour(cell, d) in free} if t < last else set()
            opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
            as_end = {opposite[d] for d in STEPS if neighbour(cell, d) in free} if t > 0 else set()
            views.append(as_start | as_end)
        return answer, views
    if kind == "appear":
        assert question == "which shape appears?"
        (answer,) = {s for _, s, _ in clip[-1]} - {s for _, s, _ in clip[0]}
        views = [{s for _, s, _ in f} if len(f) == 2 else set(SHAPES) - {s for _, s, _ in f} for f in clip]
        return answer, views
    if kind == "color":
        before, shape = re.fullmatch(r"what color does the (\w+) (\w+) become\?", question).groups()  # pyright: ignore[reportOptionalMemberAccess]
        (cell,) = [c for col, s, c in clip[0] if (col, s) == (before, shape)]
        (answer,) = [col for col, s, c in clip[-1] if (s, c) == (shape, cell)]
        assert answer != before
        views = []
        for frame in clip:
            colors = {col for col, s, _ in frame if s == shape}
            views.append(set(COLORS) - colors if before in colors else colors - {before})
        return answer, views
    assert kind == "count"
    (color,) = re.fullmatch(r"in how many frames is the (\w+) shape visible\?", question).groups()  # pyright: ignore[reportOptionalMemberAccess]
    shown = [[c for c, _, _ in frame].count(color) for frame in clip]
    assert set(shown) <= {0, 1}
    counts = range(1, len(clip) + 1)
    return str(sum(shown)), [{str(n) for n in counts if n < len(clip) or s} for s in shown]


def test_clips_are_deterministic_and_splits_differ(clips):
    again = make_clips_dataset(num_train=80, num_val=8, image_size=64, num_frames=FRAMES, seed=0)
    raw = datasets.List(datasets.Image(decode=False))
    pngs = {}
    for split in ("train", "validation"):
        a, b = clips[split].cast_column("frames", raw), again[split].cast_column("frames", raw)
        assert a[:] == b[:]
        pngs[split] = {frame["bytes"] for row in a["frames"] for frame in row}
    assert not pngs["train"] & pngs["validation"]
    assert make_clips_dataset(8, 0, seed=1)["train"]["question"] != clips["train"]["question"][:8]
    assert all(len(row) == FRAMES for row in clips["train"].cast_column("frames", raw)["frames"])


def test_clip_kinds_are_balanced(clips):
    kinds = list(clips["train"]["kind"])
    assert {k: kinds.count(k) for k in set(kinds)} == dict.fromkeys(KINDS, 20)
    assert sorted(set(clips["validation"]["kind"])) == sorted(KINDS)
    assert all(row["answers"] == [row["answer"]] for row in clips["train"])


def test_the_frames_decide_each_answer_and_no_single_frame_does(clips):
    open_views = {kind: np.zeros(FRAMES) for kind in KINDS}
    answers: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for row in clips["train"]:
        clip = [drawn(frame) for frame in row["frames"]]
        answer, views = answer_and_views(row["kind"], row["question"], clip)
        assert answer == row["answer"], row["question"]
        answers[row["kind"]].add(answer)
        for t, view in enumerate(views):
            assert answer in view  # what one frame shows never contradicts the answer
            open_views[row["kind"]][t] += len(view) >= 2
    shares = {kind: (counts / 20).round(2).tolist() for kind, counts in open_views.items()}
    # every frame (first, last or between) leaves two or more answers open in most rows of every kind
    assert all(min(share) >= 0.6 for share in shares.values()), shares
    assert answers["move"] == set(STEPS) and answers["appear"] == set(SHAPES)
    assert answers["count"] == {str(n) for n in range(1, FRAMES + 1)} and len(answers["color"]) >= 4


def test_only_frame_keeps_one_frame_of_the_same_clips(clips):
    last = make_clips_dataset(num_train=8, num_val=0, image_size=64, num_frames=FRAMES, seed=0, only_frame=-1)
    raw = datasets.List(datasets.Image(decode=False))
    full = clips["train"].select(range(8)).cast_column("frames", raw)
    for one, row in zip(last["train"].cast_column("frames", raw), full, strict=True):
        assert one["frames"] == row["frames"][-1:] and one["question"] == row["question"]
    with pytest.raises(ConfigError, match="data.synthetic.num_frames must be at least 2"):
        make_clips_dataset(2, 2, num_frames=1)


def test_data_module_batches_every_frame(processor_dir):
    dm = from_config("synthetic_video", processor_dir, **{"synthetic.num_train": 8, "synthetic.num_val": 4,
                                                          "synthetic.image_size": 32, "batch_size": 4})  # fmt: skip
    dm.setup("fit")
    (train, _) = batches(dm, dm.train_dataloader())
    assert train.inputs.pixel_values.shape == (4 * FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE)
    image_token = dm.processor.image_token_id
    assert ((train.inputs.input_ids == image_token).sum(1) == FRAMES * NUM_IMAGE_TOKENS).all()
    (val,) = batches(dm, dm.val_dataloader())
    assert val.prompt.pixel_values.shape[0] == 4 * FRAMES
    assert sorted(val.kinds) == sorted(KINDS)
    assert val.images[0].size == (FRAMES * IMAGE_SIZE, IMAGE_SIZE)


def test_frame_token_pool_gives_each_frame_a_quarter_of_its_image_tokens(processor_dir):
    dm = from_config("synthetic_video", processor_dir, **{"synthetic.num_train": 4, "synthetic.num_val": 4,
                                                          "synthetic.image_size": 32, "frame_token_pool": 2})  # fmt: skip
    dm.setup("fit")
    (train,) = batches(dm, dm.train_dataloader())
    assert train.inputs.pixel_values.shape[0] == 4 * FRAMES  # every frame is still seen whole by the tower
    image_tokens = (train.inputs.input_ids == dm.processor.image_token_id).sum(1)
    assert (image_tokens == FRAMES * NUM_IMAGE_TOKENS // 4).all()


@pytest.mark.parametrize(("pool", "message"), [(0, "data.frame_token_pool must be at least 1"),
                                               (3, "frame_token_pool=3 does not divide the 4x4 grid")])  # fmt: skip
def test_a_frame_token_pool_that_does_not_divide_the_patch_grid_is_a_config_error(
    processor_dir, pool, message
):
    with pytest.raises(ConfigError, match=message):
        dm = PaliGemmaDataModule(
            path="synthetic_video", processor_path=str(processor_dir), frame_token_pool=pool
        )
        _ = dm.processor  # made when first asked for
