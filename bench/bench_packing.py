"""Tokens/s of LoRA training steps and the padding fraction, packed (``data.packing``) vs padded batches.

    python bench/bench_packing.py [--shape tiny --batch-size 16 --max-length 512 --batches 8 --repeats 5 --threads 1]

The caption set: one picture and "caption en" per row, captions of uniformly varied lengths (4 to 160 tokens by
default, random ids), drawn once; the same rows are trained padded (each batch to its longest row) and packed
(paligemma/data/packing.py, sequences of at most ``--max-length`` tokens). A step is forward + backward (LM head at
the answer tokens, as training runs it) + AdamW on the LoRA weights. Tokens/s counts real (non-pad) tokens; the
padding fraction is pad tokens / tokens fed. Medians of interleaved passes over every batch, after a warm-up pass.
"""

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_decode import SMALL_SHAPES as DECODE_SHAPES  # noqa: E402

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration  # noqa: E402
from paligemma.data.packing import pack_batch  # noqa: E402
from paligemma.model.lora import add_lora  # noqa: E402
from paligemma.tiny import TINY_TEXT, TINY_VISION, random_batch  # noqa: E402

# The embedded tiny model's shape (64 image tokens) with a 512-token vocabulary, and bench_decode's (256).
SHAPES = {
    "tiny": dict(
        vision_config=TINY_VISION,
        text_config=dict(TINY_TEXT, vocab_size=512),
        image_token_index=500,
        projection_dim=TINY_TEXT["hidden_size"],
    ),  # fmt: skip
    **DECODE_SHAPES,
}
PROMPT_TOKENS = 2  # "caption en"


def caption_batches(config, n_batches: int, batch_size: int, lengths: tuple[int, int], seed: int = 0):
    """Padded training batches of caption rows: one picture, "caption en", a caption of ``lengths`` tokens."""
    rng = random.Random(seed)
    return [
        random_batch(
            config, [PROMPT_TOKENS] * batch_size, [rng.randint(*lengths) for _ in range(batch_size)], seed=i
        )
        for i in range(n_batches)
    ]


def train_pass(model, optimizer, batches) -> float:
    """Seconds of one LoRA step per batch."""
    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        model(**batch, return_logits=False).loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def measure(shape: str, batch_size: int, max_length: int, n_batches: int, repeats: int,
            lengths: tuple[int, int] = (4, 160)) -> dict:  # fmt: skip
    """Median tokens/s and the padding fraction, padded and packed."""
    config = PaliGemmaConfig.from_dict(SHAPES[shape])
    padded = caption_batches(config, n_batches, batch_size, lengths)
    pad_id = config.text_config.pad_token_id
    packed = [pack_batch(b, [1] * batch_size, max_length, pad_id) for b in padded]
    real = sum(int(b["attention_mask"].sum()) for b in padded)
    torch.manual_seed(0)
    model = add_lora(PaliGemmaForConditionalGeneration(config)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    modes = {"padded": padded, "packed": packed}
    for batches in modes.values():
        train_pass(model, optimizer, batches[:1])  # warm-up
    seconds = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode, batches in modes.items():
            seconds[mode].append(train_pass(model, optimizer, batches))
    result = {"shape": shape, "batch": batch_size, "max_length": max_length, "lengths": lengths}
    for mode, batches in modes.items():
        fed = sum(b["input_ids"].numel() for b in batches)
        result[f"{mode}_tokens_per_s"] = real / statistics.median(seconds[mode])
        result[f"{mode}_padding"] = 1 - real / fed
        result[f"{mode}_sequences"] = sum(b["input_ids"].shape[0] for b in batches)
    result["speedup"] = result["packed_tokens_per_s"] / result["padded_tokens_per_s"]
    return result


def markdown(r: dict) -> str:
    lines = ["| batches | sequences | padding | tokens/s |", "|---|---|---|---|"]
    for mode in ("padded", "packed"):
        lines.append(f"| {mode} | {r[f'{mode}_sequences']} | {r[f'{mode}_padding']:.1%} | "
                     f"{r[f'{mode}_tokens_per_s']:,.0f} |")  # fmt: skip
    return "\n".join(lines) + f"\n\nPacked / padded tokens/s: x{r['speedup']:.2f}."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-caption", type=int, default=4)
    parser.add_argument("--max-caption", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure(args.shape, args.batch_size, args.max_length, args.batches, args.repeats,
                (args.min_caption, args.max_caption))  # fmt: skip
    print(f"{args.shape}, batches of {args.batch_size} captions of {args.min_caption}-{args.max_caption} tokens, "
          f"packed into sequences of at most {args.max_length}:\n")  # fmt: skip
    print(markdown(r))


if __name__ == "__main__":
    main()
