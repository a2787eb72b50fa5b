"""The base weights' dtype: named, or ``auto``, bfloat16 only where this CPU computes bf16 natively and the rest of
the run can take a bf16 base.

A frozen bf16 base with fp32 LoRA weights and optimizer halves the weights' memory, but is only faster where
the CPU has bf16 instructions (AVX512-BF16 or AMX). Elsewhere (AVX2) torch's bf16 matmul falls back to scalar
code, many times slower than fp32, so ``auto`` keeps float32 there. It keeps float32 too where a bf16 base would be
refused or trained in bf16 (``bf16_refused_by`` names why: FSDP, a trained base weight): a configuration that runs
on one CPU kind runs on every kind. GPUs are not ``auto``'s business: their configs name bfloat16
(conf/model/paligemma*-*.yaml).
"""

import functools

import torch

from paligemma.model.config import DTYPES

DTYPE_NAMES = (*DTYPES, "auto")


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX tiles). Private torch functions: the
    public ``torch.backends.cpu.get_cpu_capability()`` says "AVX512" either way (test_private_apis.py checks them)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_dtype(name: str, bf16_refused_by: str | None = None) -> tuple[torch.dtype, str]:
    """(dtype, why), for a name of ``DTYPE_NAMES``; ``why`` is what a run's summary says about it.
    ``bf16_refused_by``: what in the run cannot take a bf16 base (``auto`` then picks float32)."""
    if name != "auto":
        return DTYPES[name], f"{name} (model.dtype={name})"
    capability = torch.backends.cpu.get_cpu_capability()
    if not native_bf16_cpu() or torch.cuda.is_available():
        return (
            torch.float32,
            f"float32 (auto: no native bf16 on this CPU, {capability}; model.dtype=bfloat16 forces it)",
        )
    if bf16_refused_by is not None:
        return (
            torch.float32,
            f"float32 (auto: {bf16_refused_by}, though this CPU has native bf16, {capability})",
        )
    return torch.bfloat16, f"bfloat16 base, float32 LoRA (auto: the CPU has native bf16, {capability})"
