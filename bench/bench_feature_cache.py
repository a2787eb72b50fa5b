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
from paligemma.model.lora import add_lora  # noqa: E402
from paligemma.tiny import random_batch  # noqa: E402
from paligemma.training.feature_cache import attach_feature_cache  # noqa: E402


def epochs(config, batches, cached: bool, n_epochs: int = 2) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config)
    if cached:
        attach_feature_cache(model, train_vision=False, train_projector=False)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small-vocab")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PaliGemmaConfig.from_dict(SHAPES[args.shape])
    n = args.batch_size
    batches = [random_batch(config, [8] * n, [6] * n, seed=i) for i in range(args.batches)]
    plain, plain_losses = epochs(config, batches, cached=False)
    cached, cached_losses = epochs(config, batches, cached=True)
    gap = max(abs(a - b) for a, b in zip(plain_losses, cached_losses, strict=True))
    print(
        f"shape={args.shape} batches={args.batches} batch={n} threads={torch.get_num_threads()} (LoRA dropout on)"
    )
    for epoch in range(2):
        print(f"epoch {epoch + 1}: plain {plain[epoch]:6.1f} s   cached {cached[epoch]:6.1f} s   "
              f"speed-up x{plain[epoch] / cached[epoch]:.2f}")  # fmt: skip
    print(f"largest loss gap, cached vs plain: {gap:.2e}")


if __name__ == "__main__":
    main()
