"""The validation shards: each rank its own rows, each row once, every rank as many batches."""

import pytest

from paligemma.data.sampler import ShardSampler


@pytest.mark.parametrize("rows, ranks", [(7, 2), (8, 2), (10, 4), (3, 4), (5, 1)])
def test_shards_hold_every_row_once_and_are_evened_out_with_fillers(rows, ranks):
    shards = [list(ShardSampler(range(rows), num_replicas=ranks, rank=r)) for r in range(ranks)]
    assert len({len(shard) for shard in shards}) == 1  # as many batches on every rank
    kept = [row for shard in shards for row in shard if row is not None]
    assert sorted(kept) == list(range(rows))
    for shard in shards:  # fillers only at the end
        real = [row for row in shard if row is not None]
        assert shard[: len(real)] == real and real == sorted(real)
    assert list(ShardSampler(range(rows))) == list(range(rows))  # one process: every row in order
