"""What decoding carries from one step to the next, one row per sequence (beam search reorders the rows)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paligemma.model.kv_cache import KVCache


@dataclass
class DecodeState:
    """Masks over every slot of the call (prompt + max_new_tokens), the last position fed, and the caches.

    ``length`` counts the slots fed so far: the prompt's width, then one per decode step.
    """

    attention_mask: torch.Tensor  # (N, L) 1 for a real token, 0 for padding and slots not yet fed
    prefix_mask: torch.Tensor  # (N, L) True for the bidirectional image + prompt prefix
    last_position: torch.Tensor  # (N, 1) position id of the last token fed
    caches: list[KVCache]
    length: int

    def advance(self) -> None:
        """Make room for one more fed token: its slot becomes valid, its position the next one."""
        self.attention_mask[:, self.length] = 1
        self.last_position = self.last_position + 1
        self.length += 1

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (M,), in that order; M may differ from N (beams expanding their prompt)."""
        self.attention_mask = self.attention_mask[rows]
        self.prefix_mask = self.prefix_mask[rows]
        self.last_position = self.last_position[rows]
        for cache in self.caches:
            cache.reorder(rows)
