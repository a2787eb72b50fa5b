"""What decoding carries from one step to the next, one row per sequence (beam search reorders the rows)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paligemma.model.kv_cache import KVCache


@dataclass
class DecodeState:
    """Everything a decode step reads, made once per generation call at prefill; a step only slices it.

    Step k (0-based) feeds slot ``prompt_len + k``: its query's mask row is ``masks[...][:, :, k]`` and its
    rotary angles ``cos[:, k]``, ``sin[:, k]``. ``length`` counts the slots fed so far.
    """

    # layer type -> (N, 1, max_new_tokens, L) bool over the slots of its layers' caches (``KVCache.slot_mask``):
    # L = prompt + max_new_tokens, or a sliding cache's window (its first slots fill as ``length`` grows)
    masks: dict[str, torch.Tensor]
    cos: torch.Tensor  # (N, max_new_tokens, head_dim) for the positions the new tokens take
    sin: torch.Tensor
    caches: list[KVCache]
    prompt_len: int
    length: int

    @property
    def step(self) -> int:
        """Decode steps fed so far."""
        return self.length - self.prompt_len

    def advance(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Make room for one more fed token; return its (N, 1, 1, length) masks and (N, 1, hd) cos, sin."""
        k = self.step
        self.length += 1
        masks = {name: mask[:, :, k : k + 1, : self.length] for name, mask in self.masks.items()}
        return masks, self.cos[:, k : k + 1], self.sin[:, k : k + 1]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (M,), in that order; M may differ from N (beams expanding their prompt)."""
        self.masks = {name: mask[rows] for name, mask in self.masks.items()}
        self.cos, self.sin = self.cos[rows], self.sin[rows]
        for cache in self.caches:
            cache.reorder(rows)
