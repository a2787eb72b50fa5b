"""A training DataLoader that Lightning checkpoints mid-epoch and resumes where it stopped; the validation shards.

Lightning 2.x saves ``state_dict()`` of every train loader that has one (``_Stateful``) in the checkpoint's
fit-loop state and calls ``load_state_dict`` before it iterates the loader again. Our state is the sampler's
epoch and the number of batches handed out in it; the first iteration of that epoch after a restore skips
those batches by index, without reading their rows. Lightning does not prefetch a loader with a length, so at
a checkpoint (``on_train_batch_end``) the count is exactly the batches trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, DistributedSampler


class EpochSampler(DistributedSampler):
    """Shuffles by (seed, epoch) on one shard per rank and yields (row, epoch) keys, so that workers, persistent
    or not, draw each row's reference for the current epoch; the first ``skip`` rows are passed over (a resumed
    epoch). Lightning calls ``set_epoch`` and leaves a DistributedSampler in place under DDP."""

    skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rows = list(super().__iter__())[self.skip :]
        return ((row, self.epoch) for row in rows)


class ShardSampler(DistributedSampler):
    """Rank r's rows of an evaluation split, in order: r, r + R, r + 2R, ... A shorter shard ends in ``None``
    fillers (no row: paligemma/data/batches.py) up to the longest one's length, so that every rank runs as many
    batches (FSDP's forward passes are collectives) while each row counts once: Lightning's own
    DistributedSampler repeats rows instead, which would count them twice in the validation loss. Lightning keeps
    a DistributedSampler."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self) -> Iterator[int | None]:
        rows = list(range(self.rank, len(cast(Sized, self.dataset)), self.num_replicas))  # Rows has a length
        return iter(rows + [None] * (self.num_samples - len(rows)))


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` with ``state_dict`` / ``load_state_dict`` (see the module doc).

    Worker seeds come from a generator seeded by (seed, epoch) rather than from torch's global RNG, so that
    starting an epoch (here or after a resume) leaves the global RNG, and with it dropout, untouched."""

    sampler: EpochSampler  # what __init__ hands to DataLoader's
    generator: torch.Generator

    def __init__(self, dataset, sampler: EpochSampler, seed: int = 0, **kwargs: Any):
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), **kwargs)
        self.seed = seed
        self._batches = 0  # handed out in the current epoch
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._resume = dict(state)

    def __iter__(self) -> Iterator[Any]:
        # A generator: this runs at the first batch, after Lightning's set_epoch for the epoch it starts.
        epoch, resume, self._resume = self.sampler.epoch, self._resume, None
        skip = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        assert self.batch_size is not None  # batched: the data module passes batch_size
        self.sampler.skip = skip * self.batch_size
        self.generator.manual_seed(self.seed + epoch)
        self._batches = skip
        for batch in super().__iter__():
            self._batches += 1
            yield batch
