"""bf16 generation on a CPU with bf16 instructions, through oneDNN with the decoder's weights packed once.

``F.linear`` in bf16 runs oneDNN's matmul there, which first reorders the weight into its blocked layout: on every
call, so a decode step (one row per sequence) spends more time packing than multiplying. While ``packed_weights``
is open, each plain bf16 ``nn.Linear`` of the decoder and the LM head (peft's LoRA wraps them and calls them as
before) multiplies by a copy packed once, with the same kernel: the products are bit-identical, and the copy is a
view for decoding only. Products of one input by several linears (an attention layer's queries, keys and values;
the MLP's gate and up) run as one, by their weights packed side by side, where none of them is wrapped: one call
instead of three or two, each output column computed as before. State dicts, peft, exports and checkpoints never
see it; closing frees it. It costs a copy of those weights while open. Where the CPU lacks bf16 instructions (AVX2:
oneDNN refuses bf16 there), in fp32 (the packed fp32 kernel rounds differently from MKL's) and with gradients on,
nothing changes.

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

from paligemma.model.gemma import GemmaAttention, GemmaMLP
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


def pack(weight: torch.Tensor) -> torch.Tensor:
    # the batch size is a layout hint: any row count gives the same products, and as fast
    return torch.ops.mkldnn._reorder_linear_weight(weight, 1)


def packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def runs_packed(x: torch.Tensor) -> bool:
    """Whether a product of x runs on the packed weights: bf16, gradients off (not training's forward)."""
    return x.dtype == torch.bfloat16 and not torch.is_grad_enabled()


def packed_linear(linear: nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` through the packed copy of its weight; with gradients on, the plain product."""
    if not runs_packed(x):
        return F.linear(x, linear.weight, linear.bias)
    return packed_product(x, packed, linear.bias)


def packed_qkv(
    attention: GemmaAttention, packed, sizes, x, queries_from: int = 0
) -> tuple[torch.Tensor, ...]:
    """``GemmaAttention.project_qkv`` as one product; queries of their own (training's last layer): the three."""
    if queries_from or not runs_packed(x):
        return GemmaAttention.project_qkv(attention, x, queries_from)
    return packed_product(x, packed).split(sizes, -1)


def packed_gate_up(mlp: GemmaMLP, packed, sizes, x) -> tuple[torch.Tensor, ...]:
    """``GemmaMLP.project_gate_up`` as one product."""
    if not runs_packed(x):
        return GemmaMLP.project_gate_up(mlp, x)
    return packed_product(x, packed).split(sizes, -1)


# module class -> (its method computing products of one input, their linears in output order, the method packed)
SHARED_INPUT_PRODUCTS = {
    GemmaAttention: ("project_qkv", ("q_proj", "k_proj", "v_proj"), packed_qkv),
    GemmaMLP: ("project_gate_up", ("gate_proj", "up_proj"), packed_gate_up),
}


def shared_input_linears(module: nn.Module) -> list[nn.Linear]:
    """The linears of ``module``'s products of one input (``SHARED_INPUT_PRODUCTS``) where they all pack, else none."""
    if type(module) not in SHARED_INPUT_PRODUCTS:
        return []
    linears = [getattr(module, name) for name in SHARED_INPUT_PRODUCTS[type(module)][1]]
    return linears if all(packable(linear) and linear.bias is None for linear in linears) else []


@contextmanager
def packed_weights(model: PaliGemmaForConditionalGeneration, enabled: bool = True) -> Iterator[None]:
    """While open, the decoder's and LM head's bf16 products run on weights packed once. Re-entrant: an inner
    call, with the weights already packed, does nothing. The weights must not change while it is open."""
    if not enabled or not native_bf16_cpu() or getattr(model, PACKED, False):
        yield
        return
    modules = [*model.language_model.modules(), model.lm_head]
    shared = {module: linears for module in modules if (linears := shared_input_linears(module))}
    in_shared = {linear for linears in shared.values() for linear in linears}
    replaced = []  # (module, the name of its method replaced)
    with torch.no_grad():
        for module, linears in shared.items():
            method, _, packed_method = SHARED_INPUT_PRODUCTS[type(module)]
            packed = pack(torch.cat([linear.weight for linear in linears]))
            sizes = [linear.out_features for linear in linears]
            setattr(module, method, partial(packed_method, module, packed, sizes))
            replaced.append((module, method))
        for linear in (m for m in modules if packable(m) and m not in in_shared):
            linear.forward = partial(packed_linear, linear, pack(linear.weight))
            replaced.append((linear, "forward"))
    setattr(model, PACKED, True)
    try:
        yield
    finally:
        for module, method in replaced:
            delattr(module, method)  # the class's method again; the packed copy goes with the partial
        delattr(model, PACKED)
