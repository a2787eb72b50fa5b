"""A key/value cache for one attention layer, allocated once per generation call."""

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
        return self.k_cache[:, :, :end], self.v_cache[:, :, :end]

    def reorder(self, indices: torch.Tensor) -> None:
        """Keep batch rows `indices` (N,), in that order: N may differ from the batch (beam expansion)."""
        self.k_cache = self.k_cache.index_select(0, indices)
        self.v_cache = self.v_cache.index_select(0, indices)
