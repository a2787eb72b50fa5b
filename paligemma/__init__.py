"""PaliGemma in plain PyTorch, with a Lightning fine-tuning stack around it."""

from paligemma.config import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from paligemma.model import PaliGemmaForConditionalGeneration

__all__ = ["GemmaConfig", "PaliGemmaConfig", "PaliGemmaForConditionalGeneration", "SiglipVisionConfig"]
