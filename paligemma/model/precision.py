"""The base weights' dtype: named, or ``auto``, bfloat16 only where this CPU computes bf16 natively.

A frozen bf16 base with fp32 LoRA weights and optimizer halves the weights' memory, but is only faster where
the CPU has bf16 instructions (AVX512-BF16 or AMX). Elsewhere (AVX2) torch's bf16 matmul falls back to scalar
code, many times slower than fp32, so ``auto`` keeps float32 there. GPUs are not ``auto``'s business: their
configs name bfloat16 (conf/model/paligemma*-*.yaml).
"""

import torch

from paligemma.model.config import DTYPES

DTYPE_NAMES = (*DTYPES, "auto")


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX tiles)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_dtype(name: str) -> tuple[torch.dtype, str]:
    """(dtype, why), for a name of ``DTYPE_NAMES``; ``why`` is what a run's summary says about it."""
    if name != "auto":
        return DTYPES[name], f"{name} (model.dtype={name})"
    capability = torch.backends.cpu.get_cpu_capability()
    if native_bf16_cpu() and not torch.cuda.is_available():
        return torch.bfloat16, f"bfloat16 base, float32 LoRA (auto: the CPU has native bf16, {capability})"
    return (
        torch.float32,
        f"float32 (auto: no native bf16 on this CPU, {capability}; model.dtype=bfloat16 forces it)",
    )
