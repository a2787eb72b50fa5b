"""Key/value caches for one attention layer, allocated once per generation call: every slot of the sequence
(``KVCache``), or a ring of a sliding-window layer's last slots (``SlidingKVCache``).

KV sharing (Gemma 4's last ``num_kv_shared_layers``): a layer that attends to an earlier layer's keys and values
holds a ``SharedKVCache`` on that layer's cache and reads what its last ``update`` returned: in prefill the
prompt's keys, in a decode step every slot it holds, exactly what the source layer itself attended to in that
call. A forward without caches (training) gives the source layers a ``PassThroughKV``, which stores nothing and
hands the same keys and values on: cached and uncached runs share one code path.
"""

import torch
from torch import nn


class KVCache(nn.Module):
    """Fixed-size cache; every row of the batch shares one write position (left padding makes that work)."""

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        shape = (batch_size, num_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.size = 0
        self.latest: tuple[torch.Tensor, torch.Tensor] | None = None  # what the last update returned

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values the last ``update`` returned (a layer sharing this layer's KV attends to them)."""
        if self.latest is None:
            raise ValueError("a shared KV cache was read before its source layer wrote it")
        return self.latest

    @property
    def max_seq_len(self) -> int:
        return self.k_cache.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, n_kv, T, hd) keys and values; return everything cached so far."""
        end = self.size + k.shape[2]
        if end > self.max_seq_len:
            raise ValueError(f"KV cache overflow: {end} positions needed, {self.max_seq_len} allocated")
        self.k_cache[:, :, self.size : end] = k
        self.v_cache[:, :, self.size : end] = v
        self.size = end
        self.latest = self.k_cache[:, :, :end], self.v_cache[:, :, :end]
        return self.latest

    def slot_mask(self, mask: torch.Tensor, q_positions: torch.Tensor) -> torch.Tensor:
        """A (N, 1, T, L) mask over sequence slots, as the keys that ``update`` returns lie: unchanged here."""
        return mask

    def every_slot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every slot's keys and values, filled or not: attention over them, the unfilled masked, is the same.
        oneDNN's bf16 matmuls build a kernel per shape: a decode step over the whole cache has the same shapes
        as the last, and takes ~10x less time."""
        return self.k_cache, self.v_cache

    def reorder(self, indices: torch.Tensor) -> None:
        """Keep batch rows `indices` (N,), in that order: N may differ from the batch (beam expansion)."""
        self.k_cache = self.k_cache.index_select(0, indices)
        self.v_cache = self.v_cache.index_select(0, indices)


class SlidingKVCache(KVCache):
    """The last ``window`` keys and values of a sliding-window layer, in a ring: O(window) memory however long
    the prompt and the generation.

    Sequence slot a (the a-th token fed, padding included) lives in ring slot a % window. A query at slot q
    attends to slots q - window < a <= q at most, so the ring holds every key a decode step can see; a
    prompt attends to all its keys, then the ring keeps its last window.
    """

    @property
    def window(self) -> int:
        return self.k_cache.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed (B, n_kv, T, hd) keys and values. The first update (the prompt, any T) returns them as given; a
        decode step (T = 1) returns the ring's filled slots, which ``slot_mask`` masks."""
        T = k.shape[2]
        if T > 1 and self.size > 0:
            raise ValueError(f"a sliding-window cache takes {T} tokens at once only as its first update")
        if T == 1:
            slot = self.size % self.window
            self.k_cache[:, :, slot : slot + 1] = k
            self.v_cache[:, :, slot : slot + 1] = v
        else:  # the prompt into the empty ring: its last keys, key a at ring slot a % window
            kept = min(T, self.window)
            shift = (T - kept) % self.window
            self.k_cache[:, :, :kept] = k[:, :, T - kept :].roll(shift, dims=2)
            self.v_cache[:, :, :kept] = v[:, :, T - kept :].roll(shift, dims=2)
        self.size += T
        if T > 1:
            self.latest = k, v
        else:
            filled = min(self.size, self.window)
            self.latest = self.k_cache[:, :, :filled], self.v_cache[:, :, :filled]
        return self.latest

    def slot_mask(self, mask: torch.Tensor, q_positions: torch.Tensor) -> torch.Tensor:
        """(N, 1, T, L) over sequence slots -> (N, 1, T, window) over ring slots, for T queries at sequence slots
        ``q_positions`` (T,), each fed one at a time: ring slot r then holds sequence slot
        q - (q - r) % window, or nothing yet where that is negative."""
        ring = torch.arange(self.window, device=mask.device)
        held = q_positions[:, None] - (q_positions[:, None] - ring) % self.window  # (T, window)
        index = held.clamp(min=0).expand(*mask.shape[:2], -1, -1)
        return mask.gather(-1, index) & (held >= 0)


class SharedKVCache(KVCache):
    """The cache of a layer that attends to an earlier layer's keys and values (KV sharing): it holds none,
    ``read`` returns what the source layer's cache last returned, and slots, masks and beam reordering are the
    source's (which reorders itself)."""

    def __init__(self, source: KVCache):
        nn.Module.__init__(self)
        self.source = source

    @property
    def size(self) -> int:
        return self.source.size

    @property
    def max_seq_len(self) -> int:
        return self.source.max_seq_len

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("a layer sharing another layer's keys and values writes none")

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source.read()

    def slot_mask(self, mask: torch.Tensor, q_positions: torch.Tensor) -> torch.Tensor:
        return self.source.slot_mask(mask, q_positions)

    def every_slot(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source.every_slot()

    def reorder(self, indices: torch.Tensor) -> None:
        """Nothing: the source cache reorders its own rows."""


class PassThroughKV(KVCache):
    """A forward without caches, for a layer whose keys and values later layers share: ``update`` keeps nothing
    but returns them as given, and ``read`` returns them again (``SharedKVCache``)."""

    def __init__(self):
        nn.Module.__init__(self)
        self.size = 0
        self.latest = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.latest = k, v
        return k, v

    def every_slot(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.read()

    def reorder(self, indices: torch.Tensor) -> None:
        raise ValueError("a forward without caches has no rows to reorder")
