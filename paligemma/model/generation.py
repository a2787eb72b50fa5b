"""Batched generation on the model's prefill / decode-step API: greedy, sampled, or beam search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from paligemma.model.beam_search import BeamSearch
from paligemma.model.decode_weights import DecodeWeights

if TYPE_CHECKING:
    from paligemma.model.vision_language import VisionLanguageModel

# Building decode weights writes a copy of every weight, which takes as long as several decode steps save
# (bench/bench_decode.py's packing column says how many): generate builds them by default from this many new
# tokens on.
DECODE_WEIGHTS_PAY_FROM = 16


def sample_next(logits, do_sample=False, temperature=1.0, top_k=None, top_p=None, generator=None):
    """(B, V) logits -> (B,) token ids: argmax, or a draw after temperature, top-k and top-p filtering."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-5)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def default_decode_weights(model: VisionLanguageModel, max_new_tokens: int) -> DecodeWeights | None:
    """``generate``'s default: decode weights built for the call where they pay, from ``DECODE_WEIGHTS_PAY_FROM``
    new tokens on (and where ``DecodeWeights.build`` builds any: bf16, a CPU with bf16 instructions)."""
    return DecodeWeights.build(model) if max_new_tokens >= DECODE_WEIGHTS_PAY_FROM else None


@torch.inference_mode()
def generate(
    model: VisionLanguageModel,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    fixed_length: bool = False,
    decode_weights: DecodeWeights | Literal["auto"] | None = "auto",
    image_position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate up to max_new_tokens per row of a left-padded prompt batch; returns only the new tokens.

    The vision tower and the prompt run once (``model.prefill``), then one ``model.decode_step`` per token.
    Rows stop at a stop id (the eos by default; any of a list) and are padded with the pad id afterwards.
    ``fixed_length`` runs all max_new_tokens steps even when every row has stopped, so that processes that
    must run equally many forward passes (FSDP ranks) do; the tokens returned are the same, padded wider.
    num_beams > 1 runs beam search (see `beam_search`) and returns each row's best hypothesis.
    ``decode_weights``: the ``DecodeWeights`` the decoder's and LM head's products run on (a bf16 model on a CPU
    with bf16 instructions: paligemma/model/decode_weights.py; the same tokens, faster), None for the plain
    products. "auto" (the default, ``default_decode_weights``) builds them for the call from
    ``DECODE_WEIGHTS_PAY_FROM`` new tokens on, below which building them costs more time than it saves. A loop of
    calls (validation) builds them once (``DecodeWeights.build``) and passes them to each.
    ``image_position_ids``: the patch positions of families whose images come as patch rows (Gemma 4).
    """
    text = model.config.text_config
    if num_beams > 1 and do_sample:
        raise NotImplementedError("beam sampling is not supported: use num_beams=1 with do_sample=True")
    if num_beams > 1 and fixed_length:
        raise NotImplementedError("beam search stops when no row can improve: fixed_length needs num_beams=1")
    stop_ids = text.stop_token_ids if eos_token_id is None else eos_token_id
    stop_ids = torch.tensor(stop_ids, dtype=torch.long, device=input_ids.device).flatten()  # (S,)
    pad_id = pad_token_id if pad_token_id is not None else text.pad_token_id
    if max_new_tokens <= 0:
        return input_ids.new_zeros(input_ids.shape[0], 0)
    if decode_weights == "auto":
        decode_weights = default_decode_weights(model, max_new_tokens)
    image_inputs = {} if image_position_ids is None else {"image_position_ids": image_position_ids}
    logits, state = model.prefill(
        input_ids,
        pixel_values,
        attention_mask,
        token_type_ids,
        max_new_tokens,
        decode_weights,
        **image_inputs,
    )
    if num_beams > 1:
        search = BeamSearch(num_beams, max_new_tokens, stop_ids, length_penalty, early_stopping)
        return search.run(model, logits, state, pad_id, decode_weights)

    generator = torch.Generator(input_ids.device).manual_seed(seed) if seed is not None else None
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    new_tokens = []
    for step in range(max_new_tokens):
        token = sample_next(logits, do_sample, temperature, top_k, top_p, generator)
        token = token.masked_fill(finished, pad_id)
        new_tokens.append(token)
        finished |= torch.isin(token, stop_ids)
        if (finished.all() and not fixed_length) or step == max_new_tokens - 1:
            break
        logits = model.decode_step(token, state, decode_weights)
    return torch.stack(new_tokens, dim=1)
