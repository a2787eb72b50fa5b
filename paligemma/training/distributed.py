"""Multi-process training (``trainer=ddp``, ``trainer=fsdp``): what Lightning's strategies leave to the module.

- Validation metrics over the whole val set: each rank validates its own rows (paligemma/data/sampler.py's
  ``ShardSampler``, whose shorter shards end in placeholder batches so that every rank runs as many);
  :func:`gather_records` collects every rank's generations, so VQA accuracy and CIDEr equal a single process's.
  The module sums the validation loss and its tokens over ranks the same way.
- Counts over ranks (:func:`union_over_ranks`): each rank skips the bad rows of its own shard.
- Generation under FSDP: every forward pass all-gathers each decoder layer's shards, a collective, so every
  rank must run as many passes: validation generates with ``fixed_length=True``.

The strategies are in paligemma/training/strategies.py. The train loader's sampler (paligemma/data/sampler.py) is
a ``DistributedSampler``, which Lightning keeps, and gives rank r every world_size-th row of one permutation per
(seed, epoch).
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import torch.distributed as dist

from paligemma.training.scoring import Record

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")  # in parameter names under FSDP


def clean_name(name: str) -> str:
    """A parameter's name as in the unwrapped module (and in state dicts, which FSDP keeps clean)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def gather_records(records: list[Record]) -> list[Record]:
    """Every rank's validation records, on every rank: each row once, in row order (a single process's order).

    Images (for the predictions table) stay with the rank that made them: only the text crosses processes.
    Outside a process group of two or more ranks the records are returned unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return records
    parts: list[list[Record] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, [replace(r, image=None) for r in records])
    gathered = cast(list[list[Record]], parts)  # all_gather_object filled every slot
    by_row = {r.row_id: r for part in gathered for r in part}  # a repeated row is the same row: one entry
    by_row.update({r.row_id: r for r in records})  # this rank's own, with their images
    return [by_row[row] for row in sorted(by_row)]


def union_over_ranks(items) -> set:
    """The union of every rank's items (hashable; lists become tuples), on every rank: e.g. the data module's
    skipped rows, which each rank counts on its own shard."""
    mine = {tuple(item) if isinstance(item, list) else item for item in items}
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mine
    parts: list[list | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, sorted(mine))
    gathered = cast(list[list], parts)  # all_gather_object filled every slot
    return {item for part in gathered for item in part}
