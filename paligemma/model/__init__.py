"""The PaliGemma model in plain PyTorch (torch, safetensors, peft): nothing here knows about training or data."""

from paligemma.model.config import DTYPES, GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from paligemma.model.gemma3 import Gemma3ForConditionalGeneration
from paligemma.model.gemma3_config import Gemma3Config
from paligemma.model.paligemma import PaliGemmaForConditionalGeneration

__all__ = [
    "DTYPES",
    "Gemma3Config",
    "Gemma3ForConditionalGeneration",
    "GemmaConfig",
    "PaliGemmaConfig",
    "PaliGemmaForConditionalGeneration",
    "SiglipVisionConfig",
]
