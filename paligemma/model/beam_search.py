"""Beam search, step for step what transformers' ``GenerationMixin._beam_search`` computes (5.x, no logits
processors).

Each prompt row keeps K = num_beams live beams scored by their summed float32 log-softmax. A step ranks the
top C = max(2, 1 + #stop ids) * K candidates over all K * V continuations; the best K that did not stop live
on, and those among the first K that stopped (a stop id, or max_new_tokens reached) become finished
hypotheses scored sum_logprob / generated_len ** length_penalty, where generated_len counts the new tokens,
the stop id included and the prompt excluded. A row keeps its best K finished hypotheses; with
early_stopping=False it stops adding them once its best live beam, scored at its current length (at
max_new_tokens for "never" with length_penalty > 0), cannot beat the worst of K full ones; with True, once
it holds K. The search ends when no row can improve, or every candidate stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from paligemma.model.decode_state import DecodeState

if TYPE_CHECKING:
    from paligemma.model.vision_language import VisionLanguageModel

NEG_INF = float("-inf")


def gather_beams(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) -> (B, M, ...): the entries ``index`` (B, M) of each row, along dim 1."""
    index = index.view(*index.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


@dataclass
class Beams:
    """Token sequences (B, N, max_new_tokens) with their scores (B, N), best first where ranked."""

    seqs: torch.Tensor
    scores: torch.Tensor

    def select(self, index: torch.Tensor) -> Beams:
        return Beams(gather_beams(self.seqs, index), gather_beams(self.scores, index))


@dataclass
class Candidates:
    """The top C continuations of every row at one step."""

    beams: Beams  # (B, C, max_new_tokens) sequences including this step's token, summed log-probs
    parent: torch.Tensor  # (B, C) the live beam each extends
    stopped: torch.Tensor  # (B, C) ended by a stop id or by max_new_tokens


@dataclass
class Finished:
    """Each row's best K finished hypotheses, best first; ``filled`` marks slots holding one."""

    beams: Beams  # scores length-penalised
    lengths: torch.Tensor  # (B, K) new tokens, the stop id included
    filled: torch.Tensor  # (B, K) bool


class BeamSearch:
    def __init__(
        self, num_beams, max_new_tokens, stop_ids, length_penalty=1.0, early_stopping: bool | str = False
    ):
        self.K, self.max_new_tokens, self.stop_ids = num_beams, max_new_tokens, stop_ids
        self.length_penalty, self.early_stopping = length_penalty, early_stopping
        self.C = max(2, 1 + stop_ids.numel()) * num_beams  # keeps K live beams if the top ones stop

    def run(
        self,
        model: VisionLanguageModel,
        logits: torch.Tensor,
        state: DecodeState,
        pad_id: int,
        decode_weights=None,
    ) -> torch.Tensor:
        """From the prompt's (B, V) next-token logits and B-row state: each row's best finished hypothesis,
        (B, <= max_new_tokens) new tokens padded with pad_id to the longest one. ``decode_weights``: what the
        model's ``decode_step`` multiplies by (paligemma/model/decode_weights.py; None: the plain products)."""
        B, K, T, device = logits.shape[0], self.K, self.max_new_tokens, logits.device
        rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,): K copies of each prompt row
        state.select_rows(rows)
        logits = logits[rows]
        empty = torch.full((B, K, T), pad_id, dtype=torch.long, device=device)
        scores = torch.zeros(B, K, device=device)
        scores[:, 1:] = NEG_INF  # the K beams start identical: only beam 0's continuations count at first
        live = Beams(empty, scores)
        done = Finished(
            Beams(empty.clone(), torch.full((B, K), NEG_INF, device=device)),
            lengths=torch.zeros(B, K, dtype=torch.long, device=device),
            filled=torch.zeros(B, K, dtype=torch.bool, device=device),
        )
        improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
        for step in range(T):
            candidates = self.expand(live, logits, step)
            live, parents = self.keep_live(candidates)
            done = self.collect_finished(done, candidates, step, improvable)
            improvable &= self.can_improve(live, done, step)
            if self.search_over(improvable, done, candidates):
                break
            state.select_rows((parents + torch.arange(B, device=device)[:, None] * K).flatten())
            logits = model.decode_step(live.seqs[:, :, step].flatten(), state, decode_weights)
        return done.beams.seqs[:, 0, : int(done.lengths[:, 0].max())]

    def expand(self, live: Beams, logits: torch.Tensor, step: int) -> Candidates:
        """The top C of the K * V one-token continuations of each row's live beams."""
        B, K = live.scores.shape
        V = logits.shape[-1]
        logprobs = logits.float().log_softmax(-1).view(B, K, V) + live.scores[:, :, None]  # (B, K, V)
        scores, flat = logprobs.view(B, K * V).topk(self.C)  # (B, C), best first
        parent, token = flat // V, flat % V
        seqs = gather_beams(live.seqs, parent)
        seqs[:, :, step] = token
        stopped = torch.isin(token, self.stop_ids) | (step + 1 == self.max_new_tokens)
        return Candidates(Beams(seqs, scores), parent, stopped)

    def keep_live(self, candidates: Candidates) -> tuple[Beams, torch.Tensor]:
        """The best K candidates that did not stop, and the live beam (B, K) each extends."""
        scores = candidates.beams.scores.masked_fill(candidates.stopped, NEG_INF)
        best = scores.topk(self.K).indices  # (B, K) into C
        return Beams(gather_beams(candidates.beams.seqs, best), gather_beams(scores, best)), gather_beams(
            candidates.parent, best
        )

    def collect_finished(
        self, done: Finished, candidates: Candidates, step: int, improvable: torch.Tensor
    ) -> Finished:
        """Stopped candidates among the first K, in rows that still take them, compete with those kept."""
        first_k = torch.arange(self.C, device=improvable.device) < self.K  # (C,)
        full = done.filled.all(-1, keepdim=True) & (self.early_stopping is True)  # (B, 1)
        eligible = candidates.stopped & first_k & improvable & ~full  # (B, C)
        scores = (candidates.beams.scores / (step + 1) ** self.length_penalty).masked_fill(~eligible, NEG_INF)
        merged = Beams(
            torch.cat([done.beams.seqs, candidates.beams.seqs], 1), torch.cat([done.beams.scores, scores], 1)
        )
        keep = merged.scores.topk(self.K).indices  # finished ones outrank every -inf, filled or not
        lengths = torch.cat([done.lengths, torch.full_like(candidates.parent, step + 1)], 1)
        filled = torch.cat([done.filled, eligible], 1)
        return Finished(merged.select(keep), gather_beams(lengths, keep), gather_beams(filled, keep))

    def can_improve(self, live: Beams, done: Finished, step: int) -> torch.Tensor:
        """(B, 1): could the best live beam still beat the worst of K finished ones (transformers' heuristic)?"""
        never = self.early_stopping == "never" and self.length_penalty > 0.0
        length = self.max_new_tokens if never else step + 1
        best_possible = live.scores[:, :1] / length**self.length_penalty
        worst_done = done.beams.scores.min(-1, keepdim=True).values
        return ~done.filled.all(-1, keepdim=True) | (best_possible > worst_done)

    def search_over(self, improvable: torch.Tensor, done: Finished, candidates: Candidates) -> bool:
        every_row_full = bool(done.filled.all()) and self.early_stopping is True
        return not improvable.any() or every_row_full or bool(candidates.stopped.all())
