"""Batched generation with a KV cache, and a command for one image:

python -m paligemma.generate --model DIR --image PATH --prompt "caption en"
"""

from __future__ import annotations

import argparse

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def decode_step(model, token, step, state) -> torch.Tensor:
    """Feed (N,) tokens as new token number `step` (0-based) after the cached prompt; return (N, V) logits.

    state: (valid_all (N, L), prefix_all (N, L), prompt positions (N, P), KV caches), from `generate`.
    """
    valid_all, prefix_all, positions, caches = state
    end = positions.shape[1] + step + 1  # prompt width + tokens fed so far
    valid_all[:, end - 1] = 1
    step_positions = positions[:, -1:] + step + 1  # (N, 1)
    embeds = model.language_model.embed(token[:, None])  # (N, 1, D)
    hidden = model.model(embeds, valid_all[:, :end], prefix_all[:, :end], step_positions, caches)
    return model.lm_head(hidden[:, -1])


@torch.inference_mode()
def generate(
    model,
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
    **unused,
) -> torch.Tensor:
    """Generate up to max_new_tokens per row of a left-padded prompt batch; returns only the new tokens.

    The vision tower and the prompt run once; the KV cache is allocated once for prompt + max_new_tokens.
    Rows stop at a stop id (the eos by default) and are padded with the pad id afterwards.
    num_beams > 1 runs beam search (see `beam_search`) and returns each row's best hypothesis.
    """
    text = model.config.text_config
    B, P = input_ids.shape
    device = input_ids.device
    valid = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    if not bool(valid[:, -1].all()):
        raise ValueError("generate needs left-padded prompts: use the processor with padding_side='left'")
    if num_beams > 1 and do_sample:
        raise NotImplementedError("beam sampling is not supported: use num_beams=1 with do_sample=True")
    stop_ids = torch.tensor(eos_token_id if eos_token_id is not None else text.eos_token_id, device=device)
    stop_ids = stop_ids.flatten()  # (S,)
    pad_id = pad_token_id if pad_token_id is not None else text.pad_token_id
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    if max_new_tokens <= 0:
        return input_ids.new_zeros(B, 0)

    max_len = P + max_new_tokens
    caches = model.language_model.make_kv_caches(B, max_len, model.dtype, device)
    valid_all = torch.zeros(B, max_len, dtype=torch.long, device=device)
    valid_all[:, :P] = valid
    prefix_all = torch.zeros(B, max_len, dtype=torch.bool, device=device)
    prompt_prefix = (
        token_type_ids == 0 if token_type_ids is not None else torch.ones_like(valid, dtype=torch.bool)
    )
    prefix_all[:, :P] = prompt_prefix & valid.bool()
    positions = valid.long().cumsum(-1).clamp(min=1)  # (B, P), 1-indexed per row

    features = model.model.image_features(pixel_values) if pixel_values is not None else None
    embeds = model.model.embed(input_ids, features)
    hidden = model.model(embeds, valid_all[:, :P], prefix_all[:, :P], positions, caches)
    logits = model.lm_head(hidden[:, -1])  # (B, V)
    state = (valid_all, prefix_all, positions, caches)
    if num_beams > 1:
        beam_options = dict(length_penalty=length_penalty, early_stopping=early_stopping)
        return beam_search(model, logits, state, max_new_tokens, num_beams, stop_ids, pad_id, **beam_options)

    finished = torch.zeros(B, dtype=torch.bool, device=device)
    new_tokens = []
    for step in range(max_new_tokens):
        token = sample_next(logits, do_sample, temperature, top_k, top_p, generator)
        token = token.masked_fill(finished, pad_id)
        new_tokens.append(token)
        finished |= torch.isin(token, stop_ids)
        if finished.all() or step == max_new_tokens - 1:
            break
        logits = decode_step(model, token, step, state)
    return torch.stack(new_tokens, dim=1)


def beam_search(
    model,
    logits,
    state,
    max_new_tokens,
    num_beams,
    stop_ids,
    pad_id,
    *,
    length_penalty=1.0,
    early_stopping=False,
) -> torch.Tensor:
    """Beam search from the prompt's (B, V) next-token logits; `state` (masks, positions, caches) holds B rows.

    Step for step what transformers' `GenerationMixin._beam_search` computes (5.x, no logits processors):
    each row keeps K = num_beams live beams scored by their summed float32 log-softmax. A step ranks the
    top C = max(2, 1 + #stop ids) * K candidates over all K * V continuations; the best K that did not stop
    live on, and those among the first K that stopped (a stop id, or max_new_tokens reached) become finished
    hypotheses scored sum_logprob / generated_len ** length_penalty, where generated_len counts the new
    tokens, the stop id included and the prompt excluded. A row keeps its best K finished hypotheses; with
    early_stopping=False it stops adding them once its best live beam, scored at its current length (at
    max_new_tokens for "never" with length_penalty > 0), cannot beat the worst of K full ones; with True,
    once it holds K. The search ends when no row can improve, or every candidate stopped. Returns each row's
    best finished hypothesis, (B, <= max_new_tokens) new tokens padded with pad_id to the longest one.
    """
    B, V = logits.shape
    K, device = num_beams, logits.device
    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,): K copies of each prompt row
    *tensors, caches = state
    for cache in caches:
        cache.reorder(rows)
    state, logits = (*(t[rows] for t in tensors), caches), logits[rows]
    C = max(2, 1 + stop_ids.numel()) * K  # enough candidates to keep K live beams if the top ones stop
    in_top_k = torch.arange(C, device=device) < K  # (C,): only these may become finished hypotheses

    seqs = torch.full((B, K, max_new_tokens), pad_id, dtype=torch.long, device=device)  # live beams
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = -1e9  # the K beams start identical: only beam 0's continuations count at first
    done_seqs = seqs.clone()  # (B, K, max_new_tokens) finished hypotheses, best first
    done_scores = torch.full((B, K), -1e9, device=device)
    done_lens = torch.zeros(B, K, dtype=torch.long, device=device)
    is_done = torch.zeros(B, K, dtype=torch.bool, device=device)  # the slot holds a real hypothesis
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)

    def pick(x, index):  # x (B, N, ...) -> (B, M, ...) along dim 1 by index (B, M)
        return x.gather(1, index.view(*index.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))

    for step in range(max_new_tokens):
        logprobs = logits.float().log_softmax(-1).view(B, K, V) + scores[:, :, None]  # (B, K, V)
        cand_scores, flat = logprobs.view(B, K * V).topk(C)  # (B, C), best first
        cand_beam, cand_token = flat // V, flat % V
        cand_seqs = pick(seqs, cand_beam)  # (B, C, max_new_tokens)
        cand_seqs[:, :, step] = cand_token
        stopped = torch.isin(cand_token, stop_ids) | (step + 1 == max_new_tokens)  # (B, C)

        # the best K candidates that did not stop live on
        live_scores = cand_scores + stopped.float() * -1e9
        live = live_scores.topk(K).indices  # (B, K) into C
        seqs, scores = pick(cand_seqs, live), pick(live_scores, live)

        # stopped candidates among the first K compete with the finished hypotheses kept so far
        just_done = stopped & in_top_k
        final = cand_scores / ((step + 1) ** length_penalty)
        final += (is_done.all(-1, keepdim=True) & (early_stopping is True)).float() * -1e9
        final += (~improvable).float() * -1e9
        final += (~just_done).float() * -1e9
        merged = torch.cat([done_scores, final], 1)  # (B, K + C)
        keep = merged.topk(K).indices
        done_seqs = pick(torch.cat([done_seqs, cand_seqs], 1), keep)
        done_scores = pick(merged, keep)
        done_lens = pick(torch.cat([done_lens, torch.full_like(flat, step + 1)], 1), keep)
        is_done = pick(torch.cat([is_done, just_done], 1), keep)

        # could a live beam still beat the worst finished hypothesis? (transformers' heuristic)
        best_len = max_new_tokens if early_stopping == "never" and length_penalty > 0.0 else step + 1
        best_possible = scores[:, :1] / (best_len**length_penalty)  # (B, 1)
        worst_done = torch.where(is_done, done_scores.min(1, keepdim=True).values, -1e9)  # (B, K)
        improvable &= (best_possible > worst_done).any(-1, keepdim=True)
        if not improvable.any() or (is_done.all() and early_stopping is True) or stopped.all():
            break

        # feed the live beams' new tokens, each cache row taken from the beam it extends
        source = pick(cand_beam, live) + torch.arange(B, device=device)[:, None] * K  # (B, K) flat rows
        for cache in caches:
            cache.reorder(source.flatten())
        logits = decode_step(model, seqs[:, :, step].flatten(), step, state)
    return done_seqs[:, 0, : int(done_lens[:, 0].max())]


def main(argv: list[str] | None = None) -> None:
    from PIL import Image

    from paligemma.model import PaliGemmaForConditionalGeneration
    from paligemma.processing import PaliGemmaProcessor

    parser = argparse.ArgumentParser(description="Generate text for one image with a PaliGemma checkpoint.")
    parser.add_argument("--model", required=True, help="HF-format checkpoint directory or hub id")
    parser.add_argument("--image", required=True, help="path of the image")
    parser.add_argument("--prompt", default="caption en", help='task prefix, e.g. "caption en"')
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams if > 1")
    args = parser.parse_args(argv)

    processor = PaliGemmaProcessor.from_pretrained(args.model)
    model = PaliGemmaForConditionalGeneration.from_pretrained(
        args.model, dtype=DTYPES[args.dtype], device=args.device
    ).eval()
    with Image.open(args.image) as image:
        batch = processor(text=[args.prompt], images=[image], padding_side="left")
    batch = {k: v.to(args.device) for k, v in batch.items()}
    new_tokens = model.generate(
        **batch,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        num_beams=args.num_beams,
    )
    print(processor.batch_decode(new_tokens, skip_special_tokens=True)[0])


if __name__ == "__main__":
    main()
