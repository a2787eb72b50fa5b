"""Video cells as frames: ``num_frames`` pictures sampled from a clip, decoded as the file is read.

PyAV (``pip install 'paligemma-lightning[video]'``) decodes: its wheels carry their own FFmpeg, so it installs
from the package index alone (torchcodec needs the system's FFmpeg libraries). A cell is a path, raw bytes, or
a ``{"bytes", "path"}`` dict (an undecoded ``datasets.Video`` column). Frames are taken uniformly over the clip
(the first frame at or after the middle of each of ``num_frames`` equal spans), or at ``fps`` from the start. The
container is read packet by packet and only the chosen frames are kept. A clip that does not decode, holds no
video stream or has fewer frames than asked for raises ``ValueError``: a bad row.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from paligemma.errors import ConfigError

INSTALL = "pip install 'paligemma-lightning[video]'"


def pyav():
    try:
        import av
        import av.error

        return av
    except ImportError:
        raise ConfigError(f"data.video_column needs PyAV to decode videos: {INSTALL}") from None


def read_frames(value: Any, num_frames: int, fps: float | None = None) -> list[Image.Image]:
    """``num_frames`` RGB frames of the clip in ``value``, in time order."""
    av = pyav()
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        raise ValueError("missing video")
    source = io.BytesIO(value) if isinstance(value, bytes) else str(value)
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            times = sample_times(clip_seconds(container, stream), num_frames, fps)
            frames = frames_at(container.decode(stream), stream.time_base, times)
    except av.error.FFmpegError as error:
        raise ValueError(f"video does not decode ({type(error).__name__}: {error})") from None
    if len(frames) < num_frames:
        raise ValueError(f"video has {len(frames)} of the {num_frames} frames asked for (data.num_frames)")
    return frames


def clip_seconds(container, stream) -> float | None:
    """The clip's length from its headers (None if they do not say)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base: microseconds
    return None


def sample_times(seconds: float | None, num_frames: int, fps: float | None) -> list[float]:
    """When each frame is taken: at ``fps`` from 0, or the middles of ``num_frames`` equal spans of the clip."""
    if fps is not None:
        return [i / fps for i in range(num_frames)]
    if not seconds:
        raise ValueError("video has no duration; set data.fps to sample it from the start")
    return [(i + 0.5) * seconds / num_frames for i in range(num_frames)]


def frames_at(decoded, time_base, times: list[float]) -> list[Image.Image]:
    """For each time, the next decoded frame at or after it (each frame used once); decoding stops at the last."""
    frames: list[Image.Image] = []
    for frame in decoded:
        if len(frames) == len(times):
            break
        if frame.pts is None or float(frame.pts * time_base) + 1e-6 >= times[len(frames)]:
            frames.append(frame.to_image())
    return frames
