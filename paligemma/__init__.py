"""PaliGemma in plain PyTorch, with a Lightning fine-tuning stack around it.

Layers, each importable on its own, arrows pointing down only:
    paligemma.training   LightningModule, exports, distributed helpers, callbacks, config checks
    paligemma.data       tokenizer, processor, synthetic data, DataModule
    paligemma.model      the model: torch, safetensors and peft only
The names below load on first use, so that importing one layer does not import the others; type checkers read
them from the imports under ``TYPE_CHECKING`` (tests/typing/exports.py checks that they do).
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from paligemma.data.gemma3_processor import Gemma3Processor as Gemma3Processor
    from paligemma.data.processor import PaliGemmaProcessor as PaliGemmaProcessor
    from paligemma.model.config import PaliGemmaConfig as PaliGemmaConfig
    from paligemma.model.config import SiglipVisionConfig as SiglipVisionConfig
    from paligemma.model.gemma3 import Gemma3ForConditionalGeneration as Gemma3ForConditionalGeneration
    from paligemma.model.gemma3_config import Gemma3Config as Gemma3Config
    from paligemma.model.gemma4 import Gemma4ForConditionalGeneration as Gemma4ForConditionalGeneration
    from paligemma.model.gemma4_config import Gemma4Config as Gemma4Config
    from paligemma.model.gemma_config import Gemma2Config as Gemma2Config
    from paligemma.model.gemma_config import Gemma3TextConfig as Gemma3TextConfig
    from paligemma.model.gemma_config import GemmaConfig as GemmaConfig
    from paligemma.model.mask_vae import MaskVAE as MaskVAE
    from paligemma.model.paligemma import (
        PaliGemmaForConditionalGeneration as PaliGemmaForConditionalGeneration,
    )

_EXPORTS = {
    "Gemma2Config": "paligemma.model.gemma_config",
    "Gemma3Config": "paligemma.model.gemma3_config",
    "Gemma3ForConditionalGeneration": "paligemma.model.gemma3",
    "Gemma3Processor": "paligemma.data.gemma3_processor",
    "Gemma3TextConfig": "paligemma.model.gemma_config",
    "Gemma4Config": "paligemma.model.gemma4_config",
    "Gemma4ForConditionalGeneration": "paligemma.model.gemma4",
    "GemmaConfig": "paligemma.model.gemma_config",
    "MaskVAE": "paligemma.model.mask_vae",
    "PaliGemmaConfig": "paligemma.model.config",
    "SiglipVisionConfig": "paligemma.model.config",
    "PaliGemmaForConditionalGeneration": "paligemma.model.paligemma",
    "PaliGemmaProcessor": "paligemma.data.processor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'paligemma' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
