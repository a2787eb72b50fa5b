"""Second-epoch speed-up of ``model.cache_image_features``: LoRA training epochs over the same images.

    python bench/bench_feature_cache.py [--shape small-vocab --batches 6 --batch-size 4 --threads 1]

Runs the training step (forward + backward, LM head at the answer tokens) for two epochs over the same
batches, without and with the feature cache, and prints each epoch's seconds and the losses' largest gap.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_decode import SHAPES  # noqa: E402

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration  # noqa: E402
from paligemma.model.feature_cache import ImageFeatureCache  # noqa: E402
from paligemma.model.lora import add_lora  # noqa: E402
from paligemma.tiny import random_batch  # noqa: E402


def epochs(config, batches, cached: bool, n_epochs: int = 2) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config)
    if cached:
        model.model.feature_cache = ImageFeatureCache()
    lora = add_lora(model).train()
    model.model.vision_tower.eval()
    seconds, losses = [], []
    for _ in range(n_epochs):
        start = time.perf_counter()
        for batch in batches:
            lora.zero_grad(set_to_none=True)
            loss = lora(**batch, return_logits=False).loss
            loss.backward()
            losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
    return seconds, losses


def measure(shape: str, n_batches: int, batch_size: int) -> dict:
    """Seconds of each of two epochs without and with the cache, and the losses' largest gap."""
    config = PaliGemmaConfig.from_dict(SHAPES[shape])
    batches = [random_batch(config, [8] * batch_size, [6] * batch_size, seed=i) for i in range(n_batches)]
    plain, plain_losses = epochs(config, batches, cached=False)
    cached, cached_losses = epochs(config, batches, cached=True)
    gap = max(abs(a - b) for a, b in zip(plain_losses, cached_losses, strict=True))
    return {"shape": shape, "batches": n_batches, "batch": batch_size, "plain_s": plain, "cached_s": cached,
            "loss_gap": gap}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small-vocab")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure(args.shape, args.batches, args.batch_size)
    print(f"shape={args.shape} batches={args.batches} batch={args.batch_size} threads={torch.get_num_threads()} "
          "(LoRA dropout on)")  # fmt: skip
    for epoch, (plain, cached) in enumerate(zip(r["plain_s"], r["cached_s"], strict=True), 1):
        print(
            f"epoch {epoch}: plain {plain:6.1f} s   cached {cached:6.1f} s   speed-up x{plain / cached:.2f}"
        )
    print(f"largest loss gap, cached vs plain: {r['loss_gap']:.2e}")


if __name__ == "__main__":
    main()
