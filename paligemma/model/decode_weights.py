"""bf16 decoding on a CPU with bf16 instructions: ``DecodeWeights``, the decoder's and LM head's weights reordered
once into oneDNN's blocked layout, passed down the decode path.

``F.linear`` in bf16 runs oneDNN's matmul there, which first reorders the weight into its blocked layout: on every
call, so a decode step (one row per sequence) spends more time reordering than multiplying. ``DecodeWeights.build``
reorders the weight of each plain bf16 ``nn.Linear`` of the decoder layers and the LM head once (under peft's LoRA:
the base layer's); products by these copies run the same kernel and are bit-identical. Products of one input by
several linears (an attention layer's queries, keys and values; the MLP's gate and up) run as one, by their weights
reordered side by side, where none of them is wrapped: one call instead of three or two, each output column computed
as before. ``generate`` passes the view to ``prefill`` and ``decode_step``, and they down to the products
(``product``, ``products``); the modules stay as they are, and state dicts, peft, exports and checkpoints never see
it. None runs the plain products, and so does a product in fp32 (the blocked fp32 kernel rounds differently from
MKL's) or with gradients on. A view costs a copy of those weights while it is referenced and holds while the weights
do not change (a generation call, a validation run). Where the CPU lacks bf16 instructions (AVX2: oneDNN refuses
bf16 there) none is built.

Private torch ops, as inductor's freezing pass uses them: tests/model/test_decode_weights.py checks them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from paligemma.model.precision import native_bf16_cpu

if TYPE_CHECKING:
    from collections.abc import Iterable

    from peft.tuners.lora import Linear as LoraLinear

    from paligemma.model.gemma import GemmaDecoderLayer
    from paligemma.model.vision_language import VisionLanguageModel


def plain_bf16(linear: nn.Module) -> bool:
    """A plain bf16 ``nn.Linear`` on the CPU (not LoRA's own layers, nor bitsandbytes' quantized ones)."""
    return (
        type(linear) is nn.Linear
        and type(linear.weight) is nn.Parameter
        and linear.weight.dtype == torch.bfloat16
        and linear.weight.device.type == "cpu"
    )


def lora_linear(module: nn.Module) -> bool:
    """peft's LoRA layer on a linear (peft is imported only for a module that wraps a base layer: it takes seconds)."""
    if not hasattr(module, "base_layer"):
        return False
    from peft.tuners.lora import Linear

    return type(module) is Linear


def reorder(weight: torch.Tensor) -> torch.Tensor:
    # the batch size is a layout hint: any row count gives the same products, and as fast
    return torch.ops.mkldnn._reorder_linear_weight(weight, 1)


def blocked_product(x: torch.Tensor, blocked: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, blocked, bias, "none", [], "")


def runs_blocked(x: torch.Tensor) -> bool:
    """Whether a product of x runs on the blocked weights: bf16, gradients off (not training's forward)."""
    return x.dtype == torch.bfloat16 and not torch.is_grad_enabled()


class DecodeWeights:
    """The decoder's and LM head's bf16 weights in oneDNN's blocked layout (see the module's docstring)."""

    def __init__(
        self,
        blocked: dict[nn.Module, tuple[torch.Tensor, torch.Tensor | None]],
        side_by_side: dict[tuple[nn.Module, ...], tuple[torch.Tensor, list[int]]],
    ):
        self.blocked = blocked  # a linear, or peft's LoRA layer on one -> (its base weight blocked, its bias)
        # the linears of one input, in output order -> (their weights concatenated and blocked, their widths)
        self.side_by_side = side_by_side

    @classmethod
    def build(cls, model: VisionLanguageModel) -> DecodeWeights | None:
        """The view of ``model``'s decode products, as ``GemmaAttention``, ``GemmaMLP`` and ``lm_logits`` call them;
        None where it would hold nothing: no bf16 instructions, or no plain bf16 linear (fp32, quantized)."""
        if not native_bf16_cpu():
            return None
        groups = []  # the linears of each product of one input
        for layer in cast("Iterable[GemmaDecoderLayer]", model.language_model.layers):
            attention, mlp = layer.self_attn, layer.mlp
            groups += [attention.qkv_linears, (attention.o_proj,)]
            groups += [(mlp.gate_proj, mlp.up_proj), (mlp.down_proj,)]
        groups.append((model.lm_head,))
        blocked, side_by_side = {}, {}
        with torch.no_grad():
            for linears in groups:
                if len(linears) > 1 and all(plain_bf16(linear) and linear.bias is None for linear in linears):
                    weight = reorder(torch.cat([linear.weight for linear in linears]))
                    side_by_side[linears] = (weight, [linear.out_features for linear in linears])
                    continue
                for linear in linears:
                    base = linear.base_layer if lora_linear(linear) else linear
                    if plain_bf16(base):
                        blocked[linear] = (reorder(base.weight), base.bias)
        return cls(blocked, side_by_side) if blocked or side_by_side else None


def product(linear: nn.Module, x: torch.Tensor, decode_weights: DecodeWeights | None) -> torch.Tensor:
    """``linear(x)`` (an ``nn.Linear``, or peft's LoRA layer on one): by the blocked copy of its (base) weight where
    ``decode_weights`` holds one and x runs blocked, else by the module's own forward."""
    entry = decode_weights.blocked.get(linear) if decode_weights is not None and runs_blocked(x) else None
    if entry is None:
        return linear(x)
    if type(linear) is nn.Linear:
        return blocked_product(x, *entry)
    layer = cast("LoraLinear", linear)  # build holds linears and peft's LoRA layers only
    if not plain_lora(layer):
        return linear(x)
    return lora_forward(layer, x, blocked_product(x, *entry))


def products(
    linears: tuple[nn.Module, ...], x: torch.Tensor, decode_weights: DecodeWeights | None
) -> tuple[torch.Tensor, ...]:
    """``linear(x)`` for each of ``linears``: one product where ``decode_weights`` holds them side by side."""
    if decode_weights is not None and runs_blocked(x) and linears in decode_weights.side_by_side:
        weight, sizes = decode_weights.side_by_side[linears]
        return blocked_product(x, weight).split(sizes, -1)
    return tuple(product(linear, x, decode_weights) for linear in linears)


def plain_lora(layer: LoraLinear) -> bool:
    """Whether peft's forward of ``layer`` is its base product plus each active adapter's (``lora_forward``):
    adapters on and unmerged, none a variant (DoRA, ...), inputs cast to the adapters' dtype."""
    variant = any(adapter in layer.lora_variant for adapter in layer.active_adapters)
    casts = getattr(layer, "cast_input_dtype_enabled", True)
    return not (layer.disable_adapters or layer.merged or variant) and casts


def lora_forward(layer: LoraLinear, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """peft's ``lora.Linear.forward`` (plain LoRA, ``plain_lora``) given its base layer's product ``result``:
    ``lora_B(lora_A(dropout(x))) * scaling`` added per active adapter, in peft's order and dtypes.
    tests/model/test_decode_weights.py compares it with peft's, bit for bit."""
    result_dtype = result.dtype
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        lora_A, lora_B = layer.lora_A[adapter], layer.lora_B[adapter]
        x = x.to(lora_A.weight.dtype)  # pyright: ignore[reportArgumentType, reportCallIssue] -- an nn.Linear, typed nn.Module
        result = result + lora_B(lora_A(layer.lora_dropout[adapter](x))) * layer.scaling[adapter]
    return result.to(result_dtype)
