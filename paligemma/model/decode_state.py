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
    # layer type -> (N, max_new_tokens, head_dim) for the positions the new tokens take
    cos: dict[str, torch.Tensor]
    sin: dict[str, torch.Tensor]
    caches: list[KVCache]
    prompt_len: int
    length: int

    @property
    def step(self) -> int:
        """Decode steps fed so far."""
        return self.length - self.prompt_len

    def advance(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Make room for one more fed token; return its (N, 1, 1, L) masks, over every slot of the caches (the
        unfilled masked), and (N, 1, hd) cos, sin."""
        k = self.step
        self.length += 1
        masks = {name: mask[:, :, k : k + 1] for name, mask in self.masks.items()}
        cos = {name: c[:, k : k + 1] for name, c in self.cos.items()}
        sin = {name: s[:, k : k + 1] for name, s in self.sin.items()}
        return masks, cos, sin

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (M,), in that order; M may differ from N (beams expanding their prompt)."""
        self.masks = {name: mask[rows] for name, mask in self.masks.items()}
        self.cos = {name: c[rows] for name, c in self.cos.items()}
        self.sin = {name: s[rows] for name, s in self.sin.items()}
        for cache in self.caches:
            cache.reorder(rows)
