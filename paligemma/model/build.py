"""The training network from its settings: the base weights (dtype, quantization), what trains, LoRA or a saved
adapter, gradient checkpointing and the feature cache. No Lightning: the LightningModule, bench/ and tests take
what ``build_model`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from paligemma.errors import ConfigError
from paligemma.model.families import model_class
from paligemma.model.feature_cache import ImageFeatureCache
from paligemma.model.gemma_config import Gemma2Config
from paligemma.model.lora import LoraSettings, add_lora, load_adapter
from paligemma.model.precision import DTYPE_NAMES, resolve_dtype
from paligemma.model.quantize import QUANTIZATIONS, QuantSettings, load_quantized
from paligemma.model.vision_language import VisionLanguageModel

if TYPE_CHECKING:
    import peft


@dataclass
class ModelSettings:
    """``model.*`` in the Hydra config (whose defaults these are): the base and which of its weights train.

    ``path``: an HF-format dir or hub id. ``dtype``: of the frozen base weights (``auto``: paligemma/model/
    precision.py). ``quantization`` (nf4, fp4, int8) stores the decoder's linear layers (and the vision tower's,
    with ``quantize_vision``) through bitsandbytes, 4-bit ones computing in ``compute_dtype`` (null: ``dtype``).
    ``final_logit_softcap=False`` turns PaliGemma 2's soft-capping of the logits off (big_vision fine-tunes so).
    ``cache_image_features`` computes each image's features once (frozen towers only). ``adapter``: a saved PEFT
    adapter dir (train.py writes <run>/adapter), loaded frozen on the base: what evaluate.py scores. ``lr``: the
    learning rate this base fine-tunes at (the default: the embedded tiny model's), which ``optim.lr`` takes unless
    set. ``chat_template``: rows in the checkpoint's chat template (the Gemma 3 -it ones), which
    ``data.chat_template`` takes.
    """

    path: str
    dtype: str = "auto"
    quantization: str | None = None
    compute_dtype: str | None = None
    quantize_vision: bool = False
    train_vision: bool = False
    train_projector: bool = False
    gradient_checkpointing: bool = False
    cache_image_features: bool = False
    final_logit_softcap: bool = True
    adapter: str | None = None
    lr: float = 2e-3
    chat_template: bool = False

    def __post_init__(self):
        for key in ("dtype", "compute_dtype"):
            value = getattr(self, key)
            if value not in DTYPE_NAMES and (key == "dtype" or value is not None):
                raise ConfigError(f"model.{key}: {value!r} is not one of {', '.join(DTYPE_NAMES)}")
        if self.quantization not in (None, *QUANTIZATIONS):
            raise ConfigError(
                f"model.quantization: {self.quantization!r} is not one of {', '.join(QUANTIZATIONS)}"
            )
        trained = [f"model.{key}=true" for key in ("train_vision", "train_projector") if getattr(self, key)]
        if self.cache_image_features and trained:
            raise ConfigError(
                f"model.cache_image_features=true needs a frozen vision tower and projector, but {trained[0]}"
            )
        if self.quantization is not None and self.quantize_vision and self.train_vision:
            raise ConfigError(
                "model.train_vision=true with model.quantize_vision=true: quantized weights are frozen"
            )

    def check_adapters(self, lora: bool) -> None:
        """The conflicts of these settings with LoRA (``lora``: whether new LoRA weights train)."""
        if self.adapter is not None and lora:
            raise ConfigError(
                f"model.adapter={self.adapter} loads a saved adapter frozen (evaluate.py), and lora.* would add new "
                "LoRA weights to train: drop model.adapter, or set lora=null; ckpt_path=... resumes a run"
            )
        if self.adapter is not None:
            return
        if self.train_vision and lora:
            raise ConfigError(
                "model.train_vision=true needs lora=null: a LoRA adapter would not hold the vision weights"
            )
        if self.quantization is not None and not lora:
            raise ConfigError(
                f"model.quantization={self.quantization} needs LoRA: quantized weights are frozen, and lora=null "
                "trains the whole decoder; set lora.r=... or model.quantization=null"
            )


@dataclass
class BuiltModel:
    """What ``build_model`` returns: the network, its peft wrapper (None when the decoder trains fully), what a run's
    summary says of the base weights' dtype, the quantization of the base (None: full precision), and the settings
    it was built from."""

    net: VisionLanguageModel
    peft_model: peft.PeftModel | None
    precision: str
    quantization: QuantSettings | None
    settings: ModelSettings
    lora: LoraSettings | None


def build_model(
    settings: ModelSettings,
    lora: LoraSettings | None,
    bf16_refused_by: str | None = None,
    device: str = "cpu",
) -> BuiltModel:
    """The base loaded and frozen, then LoRA added (``lora``), a saved adapter loaded frozen (``settings.adapter``), or the
    decoder left to train fully (both None). ``bf16_refused_by``: what in the run cannot take a bf16 base, so that
    ``dtype=auto`` picks float32 (training.checks.bf16_refusal). ``device``: where the weights are loaded to
    (Lightning moves them later; the benchmarks load straight onto the GPU)."""
    settings.check_adapters(lora is not None)
    dtype, precision = resolve_dtype(settings.dtype, bf16_refused_by)
    quantization = None
    if settings.quantization is not None:
        compute_dtype = (
            resolve_dtype(settings.compute_dtype, bf16_refused_by)[0] if settings.compute_dtype else dtype
        )
        quantization = QuantSettings(settings.quantization, compute_dtype, settings.quantize_vision)
    net = load_base(settings.path, dtype, quantization, device)
    text = net.config.text_config
    if not settings.final_logit_softcap and isinstance(text, Gemma2Config):  # Gemma 1 caps nothing
        text.final_logit_softcapping = None
    net.requires_grad_(False)
    net.model.multi_modal_projector.requires_grad_(settings.train_projector)
    if settings.adapter is not None:
        peft_model = load_adapter(net, settings.adapter, base=settings.path)
    elif lora is None:  # full fine-tuning of the decoder (pre-training the tiny base, for example)
        net.model.language_model.requires_grad_(True)
        peft_model = None
    else:
        peft_model = add_lora(net, lora, train_projector=settings.train_projector)
    net.model.vision_tower.requires_grad_(settings.train_vision)
    if settings.gradient_checkpointing:
        net.gradient_checkpointing_enable()
    if settings.cache_image_features:
        net.model.feature_cache = ImageFeatureCache()
    return BuiltModel(net, peft_model, precision, quantization, settings, lora)


def load_base(
    path: str, dtype: torch.dtype, quantization: QuantSettings | None, device: str = "cpu"
) -> VisionLanguageModel:
    """The checkpoint at ``path`` as its family's class (paligemma/model/families.py), quantized or not."""
    cls = model_class(path)
    if quantization is None:
        return cls.from_pretrained(path, dtype=dtype, device=device)
    return load_quantized(cls, path, quantization, dtype, device)
