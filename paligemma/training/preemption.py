"""Preemption: on a signal (SIGTERM, SIGUSR1, SIGINT by default) the ranks agree on a step, write last.ckpt there
and stop, so that ``ckpt_path=<run>/checkpoints/last.ckpt`` goes on as if never interrupted.

A signal handler runs between two Python bytecodes, anywhere: inside a checkpoint write or between two
collectives. Ours only records the signal. After each optimizer step every rank all-reduces what it recorded
(one number), so that all ranks stop after the same step even when one of them alone was signalled; the
checkpoint is then written, atomically (paligemma/training/checkpoint_io.py), and ``Preempted`` raised on every
rank. A second signal during the write is recorded and changes nothing.

Lightning's own handling is replaced while training runs: its SIGTERM handler broadcasts from inside the handler
(a collective at an arbitrary point, which can pair with another collective of a different size and hang) and
stops each rank at its own step, without a checkpoint; under SLURM it also saves from inside the SIGUSR1 handler
and requeues the job. Lightning registers its handlers just before training starts and restores the previous ones
at teardown; ours go in at ``on_train_start``, replacing them, and come out at the end of training.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from paligemma.errors import ConfigError, Preempted

if TYPE_CHECKING:
    from types import FrameType

    # What signal.signal installs and returns: a function, SIG_DFL or SIG_IGN, or None (one not set from Python).
    Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def signal_numbers(names: Iterable[str]) -> list[signal.Signals]:
    """``["SIGTERM", "SIGUSR1"]`` -> the signals; an unknown name is a ConfigError naming it."""
    try:
        return [signal.Signals[name] for name in names]
    except KeyError as error:
        raise ConfigError(
            f"preemption.signals: unknown signal {error.args[0]!r} (e.g. SIGTERM, SIGUSR1)"
        ) from None


class SignalFlag:
    """Records the first of ``signals`` to arrive; installed, it replaces their handlers until ``restore``.

    The handler does nothing else, so a signal never interrupts what is running (a checkpoint write, a collective).
    DataLoader worker processes forked while it is installed inherit it and ignore the signals too, rather than die
    (SLURM and ``timeout`` signal every process of the job)."""

    def __init__(self, signals: Iterable[signal.Signals]):
        self.signals = list(signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Handler] = {}

    def install(self) -> None:
        """Only Python's main thread may set handlers: elsewhere (a trainer run in a thread) nothing changes."""
        self.received = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in self.signals}

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _record(self, signum: int, frame) -> None:
        self.received = self.received or signal.Signals(signum)


class Preemption(L.Callback):
    """Stops every rank after the same optimizer step once any of them received one of ``signals``, with
    ``<dirpath>/last.ckpt`` written for that step, and raises :class:`Preempted` (train.py exits with status 75,
    saying how to resume).

    Its handlers are in place from ``on_train_start`` to ``on_train_end`` (which first acts on a signal received
    during the last validation). When an exception ends training, Lightning's teardown puts back the handlers of
    before ``fit`` (it saved them all before installing its own), so that a signal during the exception's
    handling cannot reach Lightning's."""

    def __init__(self, dirpath: str, signals: Iterable[str] = ("SIGTERM", "SIGUSR1", "SIGINT")):
        self.path = Path(dirpath) / "last.ckpt"
        self.flag = SignalFlag(signal_numbers(signals))
        self._step = 0  # the global step last checked

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step = trainer.global_step
        self.flag.install()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        if trainer.global_step != self._step:  # else accumulating gradients: not a step boundary
            self._step = trainer.global_step
            self._stop_if_signalled(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled(trainer)
        self.flag.restore()

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        received = torch.tensor(self.flag.received or 0, device=trainer.strategy.root_device)
        signum = int(trainer.strategy.reduce(received, reduce_op="max"))  # 0: none on any rank
        if signum:
            trainer.save_checkpoint(self.path, weights_only=False)  # every rank takes part; rank 0 writes
            raise Preempted(signal.Signals(signum).name, trainer.global_step, self.path, trainer.global_rank)


@contextmanager
def sigterm_outside_training_is_preemption(trainer: L.Trainer) -> Iterator[None]:
    """Outside training (the zero-shot and final validations) Lightning's SIGTERM handler stays in place: it raises
    SIGTERMException, a SystemExit of status 0, as if the run had succeeded. It becomes a Preempted here."""
    try:
        yield
    except SIGTERMException as error:
        raise Preempted("SIGTERM", trainer.global_step, None, trainer.global_rank) from error
