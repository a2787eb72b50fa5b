"""The errors a user fixes from the message alone, raised by every layer; and the stop on preemption.

``train.py``, ``evaluate.py`` and ``python -m paligemma.generate`` print a :class:`RunError` as one line,
``error: <message>``, and exit with status 1; anything else is a bug and keeps its traceback. train.py exits
with ``PREEMPTED_EXIT_STATUS`` after :class:`Preempted`, printing how to resume.
"""

from __future__ import annotations

import os
from pathlib import Path

PREEMPTED_EXIT_STATUS = os.EX_TEMPFAIL  # 75 in sysexits.h: a temporary failure, to be tried again (resumed)


class RunError(Exception):
    """A failure whose message names the culprit and the fix (bad config, bad data, diverged training)."""


class ConfigError(RunError, ValueError):
    """A config value, path or file that cannot work."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file that a model, processor or adapter directory must hold is not there."""


class UnsupportedConfigError(ConfigError):
    """A model config describing a model this code does not implement."""


class CheckpointError(RunError, ValueError):
    """Checkpoint files that do not fit the model their config describes."""


class HubError(RunError, OSError):
    """A model or dataset the Hugging Face hub cannot serve here (offline, gated, missing)."""


class DataError(RunError, ValueError):
    """A bad dataset row under ``data.on_bad_sample=raise``, or a split whose first rows are all bad."""


class NonFiniteError(RunError, FloatingPointError):
    """A NaN or infinite loss or gradient (with ``optim.skip_nonfinite=false``)."""


class Preempted(Exception):
    """Every rank stopped after optimizer step ``step`` on a signal; the checkpoint at ``path`` holds that step
    (``path`` None: the signal came outside training, before its first step or after its last, and no checkpoint
    was written for it)."""

    def __init__(self, signal_name: str, step: int, path: Path | None, rank: int):
        where = (
            f"stopped after step {step}, which {path} holds" if path else f"outside training, at step {step}"
        )
        super().__init__(f"preempted by {signal_name}: {where}")
        self.signal_name, self.step, self.path, self.rank = signal_name, step, path, rank


def find_run_error(error: BaseException | None) -> RunError | None:
    """``error`` or the RunError it wraps (hydra.utils.instantiate re-raises a constructor's error as its cause)."""
    while error is not None and not isinstance(error, RunError):
        error = error.__cause__
    return error


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line: a DataLoader worker wraps it in the worker's traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        return text.splitlines()[-1].removeprefix(f"{type(error).__module__}.{type(error).__qualname__}: ")
    return " ".join(text.splitlines()) or type(error).__name__
