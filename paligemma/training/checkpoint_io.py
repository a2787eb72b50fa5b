"""Checkpoint files that a kill at any moment leaves whole, loaded without unpickling code.

Lightning's ``_atomic_save`` stages the bytes with fsspec in the system temp dir and ``shutil.move``s them over
the target: a copy, not a rename, when /tmp is another filesystem (a tmpfs, a container layer), never fsync'd.
A SIGKILL or power cut during that copy leaves a torn ``last.ckpt``. Here a local checkpoint is written to a
temporary file beside the target, flushed to disk, then renamed over it (``os.replace`` is atomic on POSIX):
the path holds the previous checkpoint or the new one, never part of one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from paligemma.errors import CheckpointError, one_line


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes and ``weights_only=True`` loading by default."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: fsspec's transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        directory = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def load_checkpoint(
        self, path, *args: Any, weights_only: bool | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        weights_only = True if weights_only is None else weights_only  # Trainer.fit passes None by default
        try:
            return super().load_checkpoint(path, *args, weights_only=weights_only, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as error:  # whatever torch.load raises on bytes it cannot read
            reason = one_line(error)[:200]
            raise CheckpointError(f"ckpt_path: {path} cannot be read as a checkpoint ({reason})") from None
