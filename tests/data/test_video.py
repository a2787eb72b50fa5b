"""Video cells as frames (paligemma/data/video.py): which frames, from paths, bytes and datasets rows; bad clips."""

import sys

import datasets
import numpy as np
import pytest

from paligemma.data.datamodule import PaliGemmaDataModule
from paligemma.data.video import read_frames
from paligemma.errors import ConfigError
from tests.helpers import IMAGE_SIZE, NUM_IMAGE_TOKENS, batches, write_clip, write_parquet

av = pytest.importorskip("av")

LEVELS = [12 * i for i in range(20)]  # write_clip's: a 2 s clip, frame i a flat grey of level 12 i


def frame_indices(frames) -> list[int]:
    """Which frame of LEVELS each picture is (the nearest grey level: the codec is lossy)."""
    return [
        int(np.argmin([abs(np.asarray(f, dtype=float).mean() - level) for level in LEVELS])) for f in frames
    ]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mp4")


def test_uniform_frames_are_the_first_at_the_middle_of_each_equal_span(clip):
    frames = read_frames(str(clip), num_frames=4)  # middles: 0.25, 0.75, 1.25, 1.75 s of 2 s
    assert frame_indices(frames) == [3, 8, 13, 18]
    assert all(f.mode == "RGB" and f.size == (32, 32) for f in frames)


def test_frames_at_fps_from_the_start_and_every_kind_of_cell_reads_the_same(clip):
    expected = frame_indices(read_frames(str(clip), num_frames=3, fps=2))
    assert expected == [0, 5, 10]
    data = clip.read_bytes()
    for cell in (data, {"bytes": data, "path": None}, {"bytes": None, "path": str(clip)}):
        assert frame_indices(read_frames(cell, num_frames=3, fps=2)) == expected


def test_a_clip_too_short_or_not_a_video_is_a_bad_row_reason(clip, tmp_path):
    with pytest.raises(ValueError, match=r"video has 19 of the 25 frames asked for \(data.num_frames\)"):
        read_frames(str(clip), num_frames=25)  # spans of 0.08 s: frame 0 (at 0 s) is before the first middle
    with pytest.raises(ValueError, match="video has 10 of the 12 frames"):
        read_frames(str(clip), num_frames=12, fps=5)  # 0 .. 2.2 s: the clip ends at 2 s
    with pytest.raises(ValueError, match="video does not decode"):
        read_frames(b"not a video at all", num_frames=2)
    with pytest.raises(ValueError, match="missing video"):
        read_frames({"bytes": None, "path": None}, num_frames=2)


def test_video_rows_batch_num_frames_pictures_each_and_skip_bad_clips(tmp_path, clip, processor_dir):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    n = 6
    rows = {
        "video": [str(clip)] * 3 + [str(tmp_path / "broken.mp4")] + [str(clip)] * 2,
        "question": ["what happens?"] * n,
        "answers": [["it gets brighter"]] * n,
    }
    features = datasets.Features(video=datasets.Value("string"), question=datasets.Value("string"),
                                 answers=[datasets.Value("string")])  # fmt: skip
    path = write_parquet(tmp_path / "data", {"train": (rows, features), "validation": (rows, features)})
    dm = PaliGemmaDataModule(path=str(path), processor_path=str(processor_dir), video_column="video",
                             num_frames=4, batch_size=n, val_batch_size=n, num_workers=0)  # fmt: skip
    dm.setup("fit")
    (train,) = batches(dm, dm.train_dataloader())
    assert train.rows == 5 and train.inputs.pixel_values.shape == (20, 3, IMAGE_SIZE, IMAGE_SIZE)
    image_tokens = (train.inputs.input_ids == dm.processor.image_token_id).sum(1)
    assert image_tokens.tolist() == [4 * NUM_IMAGE_TOKENS] * 5 and dm.skipped == 1
    (val,) = batches(dm, dm.val_dataloader())
    assert val.images[0].size == (4 * IMAGE_SIZE, IMAGE_SIZE)  # the frames side by side


def test_video_without_pyav_is_one_line_naming_the_install(tmp_path, processor_dir, monkeypatch):
    rows = {"video": ["clip.mp4"], "question": ["what?"], "answers": [["x"]]}
    path = write_parquet(tmp_path, {"train": (rows, None), "validation": (rows, None)})
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed: importing it fails
    dm = PaliGemmaDataModule(path=str(path), processor_path=str(processor_dir), video_column="video")
    with pytest.raises(
        ConfigError, match=r"data.video_column needs PyAV .*pip install 'paligemma-lightning\[video\]'"
    ):
        dm.setup("fit")


@pytest.mark.parametrize(("option", "value", "message"), [("num_frames", 0, "data.num_frames must be at least 1"),
                                                          ("fps", 0.0, "data.fps must be a positive number")])  # fmt: skip
def test_impossible_frame_settings_are_config_errors(processor_dir, option, value, message):
    with pytest.raises(ConfigError, match=message):
        PaliGemmaDataModule(path="synthetic", processor_path=str(processor_dir), **{option: value})
