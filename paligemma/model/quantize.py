"""QLoRA's frozen base: the decoder's linear layers (and, by a switch, the vision tower's) stored by bitsandbytes.

nf4 / fp4 are bitsandbytes' ``Linear4bit`` (blocks of 64, double quantization of the block scales, as QLoRA does),
int8 is ``Linear8bitLt`` (LLM.int8(), outlier threshold 6.0, transformers' default). Embeddings, norms, the
projector and the tied LM head stay in full precision. Each layer is quantized as soon as the loader has read its
weight, so no full-precision copy of the decoder is ever held. peft then puts its bitsandbytes LoRA layers on top
(it picks them by ``is_loaded_in_4bit`` / ``is_loaded_in_8bit``, as on a transformers model).

bitsandbytes is an optional dependency (``pip install paligemma-lightning[quant]``): the model layer imports it here
only, when a model is quantized (tests/test_layers.py checks it); training/optim.py loads its 8-bit optimizers.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from paligemma.errors import ConfigError, one_line

if TYPE_CHECKING:
    from paligemma.model.weights import ModelT

log = logging.getLogger(__name__)

QUANTIZATIONS = ("nf4", "fp4", "int8")
# The decoder's projections (not Gemma 3's q_norm / k_norm, which sit in self_attn too) and the tower's layers.
DECODER_LAYERS = re.compile(r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj")
VISION_LAYERS = re.compile(r"model\.vision_tower\.encoder\.layers\.\d+\.(self_attn|mlp)\.\w+")
INT8_THRESHOLD = 6.0
PACKED_CPU_SWITCH = "support_avx512bf16_for_cpu"  # bitsandbytes' Linear4bit: see keep_off_packed_cpu_path_
PACKED_BLOCK_N = (
    32  # rows per tile of that packed layout (bitsandbytes.functional._convert_weight_packed_for_cpu)
)


@dataclass
class QuantSettings:
    """``model.quantization``, ``model.compute_dtype`` (of the 4-bit matmuls; int8 computes in the input's dtype)
    and ``model.quantize_vision``."""

    kind: str
    compute_dtype: torch.dtype = torch.bfloat16
    vision: bool = False

    def __post_init__(self):
        if self.kind not in QUANTIZATIONS:
            raise ConfigError(f"model.quantization: {self.kind!r} is not one of {', '.join(QUANTIZATIONS)}")

    def covers(self, layer_name: str) -> bool:
        """Whether the linear layer of this name is stored quantized."""
        patterns = (DECODER_LAYERS, VISION_LAYERS) if self.vision else (DECODER_LAYERS,)
        return any(p.fullmatch(layer_name) for p in patterns)


def bitsandbytes():
    try:
        import bitsandbytes
        import bitsandbytes.functional  # imported by bitsandbytes itself: named here for type checkers

        return bitsandbytes
    except ImportError:
        raise ConfigError(
            "model.quantization needs bitsandbytes: pip install 'paligemma-lightning[quant]'"
        ) from None


def quantized_linear(linear: nn.Linear, settings: QuantSettings) -> nn.Module:
    """A bitsandbytes layer holding ``linear``'s weight quantized on its device (the bias stays as it is).

    Where bitsandbytes cannot dequantize rows of this width exactly here (see ``dequantizes_exactly``), a frozen
    ``nn.Linear`` holding the 4-bit values, dequantized in ``linear``'s dtype, stands in for it."""
    bnb = bitsandbytes()
    bias, device = linear.bias is not None, linear.weight.device
    weight = linear.weight.detach()
    # bitsandbytes' annotations (py.typed) are wrong three ways below: bnb.nn imports its classes without
    # re-exporting them; Int8Params and Params4bit take their arguments in __new__ but leave torch's
    # Parameter.__init__ to be checked; and their .to() overloads bind self to nn.Module.
    if settings.kind == "int8":
        layer = bnb.nn.Linear8bitLt(  # pyright: ignore[reportPrivateImportUsage] -- not re-exported
            linear.in_features, linear.out_features, bias, False, INT8_THRESHOLD, device="meta"
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to(device)  # pyright: ignore[reportPrivateImportUsage, reportCallIssue, reportAttributeAccessIssue] -- the three above
    else:
        layer = bnb.nn.Linear4bit(  # pyright: ignore[reportPrivateImportUsage] -- not re-exported
            linear.in_features, linear.out_features, bias, settings.compute_dtype,
            compress_statistics=True, quant_type=settings.kind, device="meta",
        )  # fmt: skip
        layer.weight = bnb.nn.Params4bit(  # pyright: ignore[reportPrivateImportUsage] -- not re-exported
            weight, requires_grad=False, compress_statistics=True, quant_type=settings.kind, module=layer  # pyright: ignore[reportCallIssue] -- __new__ takes them
        ).to(device)  # pyright: ignore[reportAttributeAccessIssue] -- .to() typed for nn.Module  # fmt: skip
        keep_off_packed_cpu_path_(layer)
        if not dequantizes_exactly(linear.in_features, settings.kind, settings.compute_dtype, device.type):
            values = reference_dequantize_4bit(layer.weight, layer.weight.quant_state).to(weight.dtype)  # pyright: ignore[reportAttributeAccessIssue] -- a Params4bit, typed as nn.Linear's Parameter
            layer = nn.Linear(linear.in_features, linear.out_features, bias, device="meta")
            layer.weight = nn.Parameter(values, requires_grad=False)
    if bias:
        layer.bias = linear.bias
    return layer


@functools.cache
def dequantizes_exactly(width: int, kind: str, dtype: torch.dtype, device: str) -> bool:
    """Whether bitsandbytes' 4-bit dequantization (which every 4-bit matmul runs through) of rows ``width`` wide
    gives on ``device`` the values it stored, as ``reference_dequantize_4bit`` reads them.

    bitsandbytes 0.50's AVX512 CPU kernel does not for widths that are a multiple of 16 but not of the block (64):
    4304, the MLP width of SigLIP So400m, or 32 (max |d| 1.7 on weights of magnitude 3). A 64-row probe decides."""
    bnb = bitsandbytes()
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(64, width, generator=generator).to(device, dtype)
    packed, state = bnb.functional.quantize_4bit(
        probe, blocksize=64, compress_statistics=True, quant_type=kind
    )
    return torch.equal(
        bnb.functional.dequantize_4bit(packed, state), reference_dequantize_4bit(packed, state)
    )


def reference_dequantize_4bit(packed: torch.Tensor, state) -> torch.Tensor:
    """bitsandbytes' 4-bit layout read in plain torch: the weight flattened into blocks, two codes per byte (high
    nibble first), each block scaled by its absmax (itself 8-bit quantized in blocks of 256 when nested)."""
    absmax = state.absmax
    if state.nested:
        scales = state.state2
        absmax = scales.code[absmax.long()] * scales.absmax[blocks(absmax, scales.blocksize)] + state.offset
    codes = packed.view(torch.uint8).flatten()
    codes = torch.stack([codes >> 4, codes & 0xF], dim=-1).flatten()[: math.prod(state.shape)]
    values = bitsandbytes().functional.get_4bit_type(state.quant_type, device=codes.device)[codes.long()]
    values = values * absmax[blocks(values, state.blocksize)]
    return values.reshape(state.shape).to(state.dtype)


def blocks(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """The block each element of ``flat`` belongs to."""
    return torch.arange(flat.numel(), device=flat.device) // blocksize


def keep_off_packed_cpu_path_(module: nn.Module) -> None:
    """Keep every ``Linear4bit`` in ``module`` computing as it was quantized, on every CPU.

    On a CPU with AVX512-BF16, bitsandbytes repacks a ``Linear4bit`` weight in place the first time the layer runs
    in eval mode on an input without grad (any validation pass). From then on it computes through ``gemv_4bit`` in
    bf16, in training too, and its input gets no gradient, so LoRA layers below it train on part of their gradient.
    Its attribute ``support_avx512bf16_for_cpu`` gates that; off, every CPU computes what an AVX2 one does.
    """
    for layer in module.modules():
        if hasattr(layer, PACKED_CPU_SWITCH):
            setattr(layer, PACKED_CPU_SWITCH, False)


def allow_packed_cpu_path_(module: nn.Module) -> list[str]:
    """Let bitsandbytes repack the ``Linear4bit`` layers of ``module`` for its AVX512-BF16 kernel at their first
    eval pass without grad, where its shape rules hold (out_features a multiple of 32, in_features of the block);
    returns the names of those layers. For inference only: a repacked layer computes in bf16 with bf16 block
    scales (outputs ~3e-3 apart, relative), and its input gets no gradient. A CPU without AVX512-BF16 never
    repacks."""
    from bitsandbytes.functional import has_avx512bf16

    allowed = []
    for name, layer in module.named_modules():
        state = getattr(getattr(layer, "weight", None), "quant_state", None)
        if hasattr(layer, PACKED_CPU_SWITCH) and state is not None:
            out_features, in_features = state.shape
            fits = out_features % PACKED_BLOCK_N == 0 and in_features % state.blocksize == 0
            setattr(layer, PACKED_CPU_SWITCH, fits and has_avx512bf16())
            allowed += [name] if fits else []
    return allowed


def quantize_layer_(model: nn.Module, tensor_name: str, settings: QuantSettings) -> None:
    """Replace the linear layer that ``tensor_name`` (just loaded) is the weight of, if ``settings`` cover it."""
    layer_name, _, attr = tensor_name.rpartition(".")
    if attr != "weight" or not settings.covers(layer_name):
        return
    parent_name, _, child = layer_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    setattr(parent, child, quantized_linear(getattr(parent, child), settings))


def mark_quantized_(model: nn.Module, settings: QuantSettings) -> None:
    """What peft reads to wrap bitsandbytes layers in its bitsandbytes LoRA layers (as transformers sets it)."""
    # torch annotates Module.__setattr__ for tensors and modules; any other value is set as a plain attribute
    model.is_loaded_in_4bit = settings.kind != "int8"  # pyright: ignore[reportArgumentType] -- see above
    model.is_loaded_in_8bit = settings.kind == "int8"  # pyright: ignore[reportArgumentType] -- see above


def load_quantized(
    cls: type[ModelT],
    path: str | Path,
    settings: QuantSettings,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> ModelT:
    """``cls.from_pretrained(path, dtype)`` with the layers ``settings`` cover quantized as they are read."""
    from paligemma.model import weights

    check_supported(settings, torch.device(device))
    model = weights.load_pretrained(
        cls, path, dtype=dtype, device=device, on_loaded=lambda m, name: quantize_layer_(m, name, settings)
    )
    mark_quantized_(model, settings)
    dequantized = [n for n, m in model.named_modules() if settings.covers(n) and not is_quantized(m)]
    if dequantized:
        widths = sorted({cast(nn.Linear, model.get_submodule(n)).in_features for n in dequantized})
        log.warning(
            f"bitsandbytes {bitsandbytes().__version__} dequantizes {settings.kind} rows {widths} wide wrongly on "
            f"this {device} ({torch.backends.cpu.get_cpu_capability()}): {len(dequantized)} layers, e.g. "
            f"{dequantized[0]}, hold their {settings.kind} values dequantized in {dtype} instead"
        )
    return model


def check_supported(settings: QuantSettings, device: torch.device) -> None:
    """One small layer through bitsandbytes on ``device``: a kind it has no kernel for there is a one-line error."""
    bnb = bitsandbytes()
    probe = nn.Linear(64, 64, bias=False, device=device)
    try:
        with torch.no_grad():
            quantized_linear(probe, settings)(torch.ones(1, 64, device=device, dtype=settings.compute_dtype))
    except Exception as e:  # whatever bitsandbytes raises for a device it has no kernel for
        reason = one_line(e)[:200]
        raise ConfigError(
            f"model.quantization={settings.kind}: bitsandbytes {bnb.__version__} cannot run it on {device} "
            f"({reason})"
        ) from None


def is_quantized(layer: nn.Module) -> bool:
    return type(layer).__module__.startswith("bitsandbytes.")


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The full-precision (out, in) weight a bitsandbytes layer stores."""
    from peft.utils.integrations import dequantize_bnb_weight

    return dequantize_bnb_weight(cast(nn.Parameter, layer.weight), state=getattr(layer, "state", None))


def dequantized_state_dict(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as a full-precision model has it: bitsandbytes weights dequantized, all in ``dtype``."""
    tensors, persistent = {}, model.state_dict(keep_vars=True).keys()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if is_quantized(module):
            tensors[prefix + "weight"] = dequantized_weight(module)
            bias = cast("torch.Tensor | None", module.bias)
            if bias is not None:
                tensors[prefix + "bias"] = bias.detach()
            continue
        buffers = [(k, b) for k, b in module.named_buffers(recurse=False) if prefix + k in persistent]
        for key, tensor in [*module.named_parameters(recurse=False), *buffers]:
            tensors[prefix + key] = tensor.detach()
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
