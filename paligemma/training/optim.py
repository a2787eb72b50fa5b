"""The optimizer of the trainable weights and its learning-rate schedule (``optim.*`` in the Hydra config)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from paligemma.errors import ConfigError

# optim.name -> (module, class). bitsandbytes' 8-bit AdamW keeps both moments in 8 bits (block-wise quantized;
# tensors under 4,096 elements keep 32-bit state); the paged one pages them to CPU memory under CUDA memory
# pressure, and runs unpaged on other devices (bitsandbytes warns so).
OPTIMIZERS = {
    "adamw": ("torch.optim", "AdamW"),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "paged_adamw8bit": ("bitsandbytes.optim", "PagedAdamW8bit"),
}


@dataclass
class OptimSettings:
    """AdamW with linear warm-up and cosine decay; the Hydra config's defaults are these.

    ``lr`` suits LoRA on the embedded tiny model; the 3B model configs set their own (2e-4)."""

    name: str = "adamw"  # adamw | adamw8bit | paged_adamw8bit (the last two: bitsandbytes)
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    skip_nonfinite: bool = False  # a NaN/inf loss or gradient stops the run (true: skip that optimizer step)

    def __post_init__(self):
        optimizer_class(self.name)  # an unknown name, or bitsandbytes missing, fails before anything loads


def warmup_cosine(total_steps: int, warmup_ratio: float, min_lr_ratio: float = 0.0):
    """LR multiplier: linear warm-up over warmup_ratio of the run, then cosine decay to min_lr_ratio."""
    warmup = max(1, int(warmup_ratio * total_steps))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def build_optimizer(params: Iterable[torch.nn.Parameter], settings: OptimSettings, total_steps: int) -> dict:
    """What ``LightningModule.configure_optimizers`` returns: the optimizer and its per-step schedule."""
    optimizer = optimizer_class(settings.name)(
        params, lr=settings.lr, weight_decay=settings.weight_decay, betas=tuple(settings.betas)
    )
    schedule = warmup_cosine(total_steps, settings.warmup_ratio, settings.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class AdamWClass(Protocol):
    """An optimizer class of OPTIMIZERS: each takes AdamW's arguments."""

    def __call__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        weight_decay: float,
        betas: tuple[float, ...],
    ) -> torch.optim.Optimizer: ...


def optimizer_class(name: str) -> AdamWClass:
    if name not in OPTIMIZERS:
        raise ConfigError(f"optim.name: {name!r} is not one of {', '.join(OPTIMIZERS)}")
    module, cls = OPTIMIZERS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError:
        raise ConfigError(
            f"optim.name={name} needs bitsandbytes: pip install 'paligemma-lightning[quant]'"
        ) from None
