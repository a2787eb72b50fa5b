"""A rank that dies or hangs ends the whole job, with one line naming it, instead of leaving the others waiting.

Two ways of noticing, both ending in :func:`fail_job` (one ``error: ...`` line, the local ranks killed, status 1):

- :class:`RankWatch`, a thread of the process that started this machine's other ranks (Lightning re-runs the
  command line for them), notices within a second that one of them died. It replaces Lightning's observer, which
  SIGKILLs everything without a word, and also took a rank that stops on preemption for a crash.
- A collective that fails (a peer's connection lost, or no answer within ``trainer.strategy.timeout``) raises on
  the ranks still alive; inside :func:`lost_ranks_fail_the_job` (train.py), :func:`fail_collective` finds the
  ranks that stopped answering by a roll call over the process group's store: every rank left alive checks in,
  those that do not are named.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import NoReturn

import torch.distributed as dist

from paligemma.errors import PREEMPTED_EXIT_STATUS

ROLL_CALL_SECONDS = 5.0  # how long the ranks left alive take to check in after a collective failed
_report_lock = threading.Lock()  # one line per process, whichever of its threads notices first


def fail_job(message: str, children: Sequence[subprocess.Popen] = (), speak: bool = True) -> NoReturn:
    """Print ``error: <message>`` (when ``speak``), kill the ranks this process started, exit with status 1 at once:
    the main thread may sit in a collective that would otherwise wait for the timeout."""
    with _report_lock:
        if speak:
            print(f"error: {message}", file=sys.stderr, flush=True)
        for child in children:
            child.kill()
            child.wait(timeout=10)
        os._exit(1)


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


class RankWatch(threading.Thread):
    """Polls the ranks this process started; one that ends other than by finishing (status 0) or by preemption
    (``PREEMPTED_EXIT_STATUS``) fails the job, naming it."""

    def __init__(self, children: list[subprocess.Popen], ranks: list[int], period: float = 1.0):
        super().__init__(daemon=True, name="rank-watch")
        self.children, self.ranks, self.period = children, ranks, period

    def run(self) -> None:
        while True:
            time.sleep(self.period)
            codes = [child.poll() for child in self.children]
            for rank, child, code in zip(self.ranks, self.children, codes, strict=True):
                if code not in (None, 0, PREEMPTED_EXIT_STATUS):
                    fail_job(
                        f"rank {rank} (pid {child.pid}) {how_it_ended(code)}; the job stops", self.children
                    )
            if None not in codes:
                return


def is_collective_failure(error: BaseException) -> bool:
    """A collective that lost a peer or timed out: torch's DistError (NCCL), or gloo's RuntimeError."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    return isinstance(error, dist.DistError) or "gloo" in str(error)


def roll_call(seconds: float = ROLL_CALL_SECONDS) -> list[int]:
    """The ranks that do not check in within ``seconds``, after this one did. Rank 0, whose process hosts the
    store, then waits for the others to be done with theirs before it goes. Raises when the store cannot be
    reached."""
    # private: torch.distributed has no public accessor of the process group's store (test_private_apis.py)
    store, rank, world = dist.distributed_c10d._get_default_store(), dist.get_rank(), dist.get_world_size()
    store.set_timeout(timedelta(seconds=seconds))
    store.set(f"paligemma/alive/{rank}", "1")
    missing = _absent(store, "paligemma/alive", range(world), seconds)
    store.set(f"paligemma/done/{rank}", "1")
    if rank == 0:
        _absent(store, "paligemma/done", [r for r in range(world) if r not in missing], seconds)
    return missing


def _absent(store, prefix: str, ranks, seconds: float) -> list[int]:
    """The ranks whose key under ``prefix`` is still not in ``store`` after ``seconds`` (or none, sooner)."""
    deadline = time.monotonic() + seconds
    while True:
        absent = [r for r in ranks if not store.check([f"{prefix}/{r}"])]
        if not absent or time.monotonic() > deadline:
            return absent
        time.sleep(0.1)


@contextmanager
def lost_ranks_fail_the_job(trainer) -> Iterator[None]:
    """Around everything a trainer's ranks do together: a collective that fails ends this rank, naming the ranks
    that stopped answering. Of the ranks left alive, the lowest prints the line."""
    try:
        yield
    except Exception as error:
        if is_collective_failure(error):
            fail_collective(getattr(trainer.strategy.launcher, "procs", []))
        raise


def fail_collective(children: Sequence[subprocess.Popen]) -> NoReturn:
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        missing = roll_call()
    except Exception:  # the store lives in rank 0's process
        missing = [0]
    if not missing:
        fail_job("every rank is alive, but a collective failed: the ranks ran out of step", children)
    lowest_alive = min(set(range(world)) - set(missing))
    names = f"rank {missing[0]}" if len(missing) == 1 else f"ranks {', '.join(map(str, missing))}"
    message = f"{names} stopped answering (died, or hung past trainer.strategy.timeout); the job stops"
    fail_job(message, children, speak=rank == lowest_alive)
