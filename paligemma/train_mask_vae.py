"""Train the segmentation mask VQ-VAE (``MaskVAE``) on generated outlines; write it with ``save_pretrained``.

    python -m paligemma.train_mask_vae --out assets/tiny-mask-vae/mask_vae.safetensors [--steps 1600 --threads 1]

The masks come from ``paligemma.data.outlines`` (synthetic shapes and other outlines, cropped to their box as the
data pipeline crops them). Standard VQ-VAE training: BCE-with-logits reconstruction, codebook + commitment loss,
the straight-through estimator, and codes that go unused re-initialised from the batch's encodings. At the end it
prints the reconstruction IoU on held-out masks ((decoded > 0) vs (target >= 0.5), per mask, averaged), overall
and per kind, and how many codes they use.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from paligemma.data.outlines import KINDS, batch, outlines
from paligemma.errors import ConfigError, RunError, one_line
from paligemma.model.mask_vae import GRID, MaskVAE

TRAIN_STREAM, HELD_OUT_STREAM = 0, 1
COMMITMENT = 0.25  # beta: the encoder's pull towards its codes, against the codes' pull towards it
USAGE_DECAY = 0.99  # the running count of each code's uses per step
DEAD_USAGE = 1.0  # a code used less than once per step (running count) is re-initialised
RESTART_UNTIL = 0.8  # no re-initialising in the last 20% of the steps: the decoder settles on the codes
COUNTS = ("steps", "batch_size", "embedding_dim", "num_embeddings", "held_out", "log_every", "threads")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a mask VQ-VAE (MaskVAE) on generated outlines.")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (Adam, cosine decay)")
    parser.add_argument("--widths", default="8,16,32,64", help="the encoder's 4 conv widths, comma-separated")
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--num-embeddings", type=int, default=128)
    parser.add_argument("--held-out", type=int, default=800, help="held-out masks to measure the IoU on")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads (default: all cores); 1 is faster where other work shares them")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def check_options(args: argparse.Namespace) -> tuple[int, ...]:
    """The widths; an option no training can run with is a ConfigError naming it."""
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        raise ConfigError(f"--widths: {args.widths!r} is not comma-separated integers") from None
    if len(widths) != 4 or min(widths) < 1:
        raise ConfigError(f"--widths takes 4 positive widths (64 px / 2**4 = {GRID}), got {args.widths!r}")
    for option in COUNTS:
        if getattr(args, option) < 1:
            raise ConfigError(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if not args.lr > 0:
        raise ConfigError(f"--lr must be above 0, got {args.lr}")
    out = Path(args.out)
    if out.suffix != ".safetensors" or out.is_dir():
        raise ConfigError(f"--out: {args.out} is not a .safetensors file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out: cannot make the directory {out.parent} ({error.strerror})") from None
    return widths


def quantised_forward(
    vae: MaskVAE, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``vae.decode(vae.encode(masks))`` with gradients: (B, 64, 64) -> logits (B, 64, 64), the codebook +
    commitment loss, the encodings (B * 16, D, detached) and their codes (B * 16,). The straight-through
    estimator carries the decoder's gradient past the codebook lookup to the encoder."""
    B = masks.shape[0]
    z = vae.encoder(2 * (masks[:, None] - 0.5))  # (B, D, 4, 4), inputs in [-1, 1] as encode scales them
    z = z.permute(0, 2, 3, 1).reshape(B * GRID * GRID, -1)  # (B*16, D), row-major cells as encode orders them
    codes = vae._vq_vae(z.detach())  # (B*16,)
    e = vae._vq_vae._embedding[codes]  # (B*16, D)
    vq_loss = F.mse_loss(e, z.detach()) + COMMITMENT * F.mse_loss(z, e.detach())
    zq = (z + (e - z).detach()).view(B, GRID, GRID, -1).permute(0, 3, 1, 2)  # (B, D, 4, 4): e, z's gradient
    return vae.decoder(zq)[:, 0], vq_loss, z.detach(), codes


def restart_dead_codes(
    codebook: torch.Tensor, usage: torch.Tensor, z: torch.Tensor, gen: torch.Generator
) -> int:
    """Codes used less than ``DEAD_USAGE`` times a step (``usage``, running) take random encodings of the batch
    (``z``, (N, D)); returns how many were dead."""
    dead = (usage < DEAD_USAGE).nonzero()[:, 0]
    codebook.data[dead] = z[torch.randint(len(z), (len(dead),), generator=gen)]
    usage[dead] = DEAD_USAGE
    return len(dead)


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5% of the steps, then cosine decay to a tenth of the peak."""
    warmup = max(1, steps // 20)
    return peak * min(1.0, (step + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * step / steps))


def train(args: argparse.Namespace, widths: tuple[int, ...]) -> MaskVAE:
    torch.manual_seed(args.seed)
    vae = MaskVAE(widths, args.num_embeddings, args.embedding_dim)
    optimizer = torch.optim.Adam(vae.parameters(), lr=args.lr)
    usage = torch.zeros(args.num_embeddings)  # all dead: the first step draws the codebook from encodings
    stream, gen = outlines(args.seed, TRAIN_STREAM), torch.Generator().manual_seed(args.seed)
    start, sums = time.time(), torch.zeros(3)  # since the last line: reconstruction loss, vq loss, restarts
    seen = torch.zeros(args.num_embeddings, dtype=torch.bool)  # codes chosen since the last line
    for step in range(args.steps):
        masks, _ = batch(stream, args.batch_size)  # (B, 64, 64) in [0, 1]
        logits, vq_loss, z, codes = quantised_forward(vae, masks)
        rec_loss = F.binary_cross_entropy_with_logits(logits, masks)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        optimizer.zero_grad(set_to_none=True)
        (rec_loss + vq_loss).backward()
        optimizer.step()
        seen[codes] = True
        usage.mul_(USAGE_DECAY).add_(torch.bincount(codes, minlength=len(usage)), alpha=1 - USAGE_DECAY)
        sums[:2] += torch.tensor([rec_loss.item(), vq_loss.item()])
        if step < RESTART_UNTIL * args.steps:
            sums[2] += restart_dead_codes(vae._vq_vae._embedding, usage, z, gen)
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            n = (step % args.log_every) + 1
            print(
                f"step {step + 1}/{args.steps}  reconstruction {sums[0] / n:.4f}  vq {sums[1] / n:.4f}  "
                f"codes used {seen.sum()}/{len(seen)}  restarted {int(sums[2])}  "
                f"{time.time() - start:.0f} s",
                flush=True,
            )
            sums.zero_()
            seen.zero_()
    return vae.eval()


@torch.no_grad()
def evaluate(vae: MaskVAE, masks: torch.Tensor, kinds: list[str]) -> tuple[dict[str, float], int]:
    """The reconstruction IoU of (B, 64, 64) masks, (decoded > 0) vs (mask >= 0.5) per mask, averaged overall
    ("all") and per kind; and how many distinct codes the masks use."""
    codes = torch.cat([vae.encode(chunk) for chunk in masks.split(256)])  # (B, 16)
    decoded = torch.cat([vae.decode(chunk) > 0 for chunk in codes.split(256)])  # (B, 64, 64)
    inside = masks >= 0.5
    iou = (decoded & inside).sum((1, 2)) / (decoded | inside).sum((1, 2))  # (B,): every mask has an inside
    per_kind = {
        k: iou[[i for i, kind in enumerate(kinds) if kind == k]].mean().item() for k in KINDS if k in kinds
    }
    return {"all": iou.mean().item(), **per_kind}, codes.unique().numel()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        widths = check_options(args)
        torch.set_num_threads(args.threads)
        start = time.time()
        train(args, widths).save_pretrained(args.out)
        print(f"wrote {args.out} after {time.time() - start:.0f} s")
        held_out = batch(outlines(args.seed, HELD_OUT_STREAM), args.held_out)
        iou, used = evaluate(MaskVAE.from_pretrained(args.out), *held_out)
    except RunError as error:
        sys.exit(f"error: {one_line(error)}")
    print(
        f"held-out reconstruction IoU ({args.held_out} masks): "
        + "  ".join(f"{k} {v:.4f}" for k, v in iou.items())
    )
    print(f"held-out codes used: {used}/{args.num_embeddings}")


if __name__ == "__main__":
    main()
