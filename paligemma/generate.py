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
    **unused,
) -> torch.Tensor:
    """Generate up to max_new_tokens per row of a left-padded prompt batch; returns only the new tokens.

    The vision tower runs once; the KV cache is allocated once for prompt + max_new_tokens.
    Rows stop at a stop id (the eos by default) and are padded with the pad id afterwards.
    """
    text = model.config.text_config
    B, P = input_ids.shape
    device = input_ids.device
    valid = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    if not bool(valid[:, -1].all()):
        raise ValueError("generate needs left-padded prompts: use the processor with padding_side='left'")
    stop_ids = torch.tensor(eos_token_id if eos_token_id is not None else text.eos_token_id, device=device)
    pad_id = pad_token_id if pad_token_id is not None else text.pad_token_id
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None

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

    finished = torch.zeros(B, dtype=torch.bool, device=device)
    new_tokens = []
    for step in range(max_new_tokens):
        token = sample_next(logits, do_sample, temperature, top_k, top_p, generator)
        token = token.masked_fill(finished, pad_id)
        new_tokens.append(token)
        finished |= torch.isin(token, stop_ids)
        if finished.all() or step == max_new_tokens - 1:
            break
        end = P + step + 1
        valid_all[:, end - 1] = 1
        step_positions = positions[:, -1:] + step + 1  # (B, 1)
        embeds = model.language_model.embed(token[:, None])
        hidden = model.model(embeds, valid_all[:, :end], prefix_all[:, :end], step_positions, caches)
        logits = model.lm_head(hidden[:, -1])
    return torch.stack(new_tokens, dim=1) if new_tokens else input_ids.new_zeros(B, 0)


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
    )
    print(processor.batch_decode(new_tokens, skip_special_tokens=True)[0])


if __name__ == "__main__":
    main()
