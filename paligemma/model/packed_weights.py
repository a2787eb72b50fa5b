"""bf16 generation on a CPU with bf16 instructions, through oneDNN with the decoder's weights packed once.

``F.linear`` in bf16 runs oneDNN's matmul there, which first reorders the weight into its blocked layout: on every
call, so a decode step (one row per sequence) spends more time packing than multiplying. While ``packed_weights``
is open, each plain bf16 ``nn.Linear`` of the decoder and the LM head (peft's LoRA wraps them and calls them as
before) multiplies by a copy packed once, with the same kernel: the products are bit-identical, and the copy is a
view for decoding only. State dicts, peft, exports and checkpoints never see it; closing frees it. It costs a copy
of those weights while open. Where the CPU lacks bf16 instructions (AVX2: oneDNN refuses bf16 there), in fp32 (the
packed fp32 kernel rounds differently from MKL's) and with gradients on, nothing changes.

Private torch ops, as inductor's freezing pass uses them: tests/model/test_packed_weights.py checks them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from paligemma.model.precision import native_bf16_cpu

if TYPE_CHECKING:
    from paligemma.model.paligemma import PaliGemmaForConditionalGeneration

PACKED = "_packed_for_decode"  # set on the model while its weights are packed
# Packing writes a copy of every weight, which takes as long as several decode steps save (bench/bench_decode.py's
# packing column says how many): a generation call packs by default from this many new tokens on.
PACKING_PAYS_FROM = 16


def packable(linear: nn.Module) -> bool:
    """A plain bf16 ``nn.Linear`` on the CPU (not LoRA's own layers, nor bitsandbytes' quantized ones)."""
    return (
        type(linear) is nn.Linear
        and type(linear.weight) is nn.Parameter
        and linear.weight.dtype == torch.bfloat16
        and linear.weight.device.type == "cpu"
    )


def packed_linear(linear: nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` through the packed copy of its weight; with gradients on, the plain product."""
    if torch.is_grad_enabled() or x.dtype != torch.bfloat16:
        return F.linear(x, linear.weight, linear.bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, linear.bias, "none", [], "")


@contextmanager
def packed_weights(model: PaliGemmaForConditionalGeneration, enabled: bool = True) -> Iterator[None]:
    """While open, the decoder's and LM head's bf16 products run on weights packed once. Re-entrant: an inner
    call, with the weights already packed, does nothing. The weights must not change while it is open."""
    if not enabled or not native_bf16_cpu() or getattr(model, PACKED, False):
        yield
        return
    linears = [m for m in [*model.language_model.modules(), model.lm_head] if packable(m)]
    with torch.no_grad():
        for linear in linears:
            # the batch size is a layout hint: any row count gives the same products, and as fast
            packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight, 1)
            linear.forward = partial(packed_linear, linear, packed)
    setattr(model, PACKED, True)
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward  # the class's forward again; the packed copy goes with the partial
        delattr(model, PACKED)
