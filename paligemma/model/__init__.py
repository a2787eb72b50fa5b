"""The PaliGemma model in plain PyTorch (torch, safetensors, peft): nothing here knows about training or data."""

from paligemma.model.config import DTYPES, PaliGemmaConfig, SiglipVisionConfig
from paligemma.model.gemma3 import Gemma3ForConditionalGeneration
from paligemma.model.gemma3_config import Gemma3Config
from paligemma.model.gemma4_config import Gemma4TextConfig  # its row of gemma_config.TEXT_CONFIGS
from paligemma.model.gemma_config import Gemma2Config, Gemma3TextConfig, GemmaConfig
from paligemma.model.paligemma import PaliGemmaForConditionalGeneration

__all__ = [
    "DTYPES",
    "Gemma2Config",
    "Gemma3Config",
    "Gemma3ForConditionalGeneration",
    "Gemma3TextConfig",
    "Gemma4TextConfig",
    "GemmaConfig",
    "PaliGemmaConfig",
    "PaliGemmaForConditionalGeneration",
    "SiglipVisionConfig",
]
