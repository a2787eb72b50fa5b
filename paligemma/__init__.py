"""PaliGemma in plain PyTorch, with a Lightning fine-tuning stack around it.

Layers, each importable on its own, arrows pointing down only:
    paligemma.training   LightningModule, exports, distributed helpers, callbacks, config checks
    paligemma.data       tokenizer, processor, synthetic data, DataModule
    paligemma.model      the model: torch, safetensors and peft only
The names below load on first use, so that importing one layer does not import the others.
"""

import importlib

_EXPORTS = {
    "Gemma3Config": "paligemma.model.gemma3_config",
    "Gemma3ForConditionalGeneration": "paligemma.model.gemma3",
    "Gemma3Processor": "paligemma.data.gemma3_processor",
    "GemmaConfig": "paligemma.model.config",
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
