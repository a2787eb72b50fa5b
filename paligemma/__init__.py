"""PaliGemma in plain PyTorch, with a Lightning fine-tuning stack around it."""

from paligemma.config import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from paligemma.model import PaliGemmaForConditionalGeneration
from paligemma.processing import PaliGemmaProcessor

__all__ = [
    "GemmaConfig",
    "PaliGemmaConfig",
    "PaliGemmaForConditionalGeneration",
    "PaliGemmaProcessor",
    "SiglipVisionConfig",
]
