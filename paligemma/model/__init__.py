"""The PaliGemma model in plain PyTorch (torch, safetensors, peft): nothing here knows about training or data."""

from paligemma.model.config import DTYPES, GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from paligemma.model.paligemma import PaliGemmaForConditionalGeneration

__all__ = [
    "DTYPES",
    "GemmaConfig",
    "PaliGemmaConfig",
    "PaliGemmaForConditionalGeneration",
    "SiglipVisionConfig",
]
