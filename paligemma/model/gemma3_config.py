"""Gemma 3's vision-language config, read from and written to HF ``config.json`` (``model_type`` "gemma3").

Fields a file leaves out take transformers' ``Gemma3Config`` defaults; the text config is a ``Gemma3TextConfig``, and
``Gemma3Config()`` has Gemma 3's tower, SigLIP So400m/14 at 896 px without its pooling head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from paligemma.errors import UnsupportedConfigError
from paligemma.model.config import SiglipVisionConfig, VisionLanguageConfig
from paligemma.model.config_fields import known_fields
from paligemma.model.gemma_config import Gemma3TextConfig, text_config_from_dict
from paligemma.model.presets import SO400M


@dataclass
class Gemma3Config(VisionLanguageConfig):
    vision_config: SiglipVisionConfig = field(
        default_factory=lambda: SiglipVisionConfig.from_dict(dict(SO400M, image_size=896))
    )
    text_config: Gemma3TextConfig = field(default_factory=Gemma3TextConfig)
    image_token_index: int = 262_144
    mm_tokens_per_image: int = 256  # each image's patches average-pooled to this many tokens
    boi_token_index: int = 255_999  # <start_of_image>, before each image's tokens
    eoi_token_index: int = 256_000  # <end_of_image>, after them

    def __post_init__(self):
        super().__post_init__()
        side, patches_per_side = (
            math.isqrt(self.mm_tokens_per_image),
            self.vision_config.image_size // self.vision_config.patch_size,
        )
        if side * side != self.mm_tokens_per_image or patches_per_side % side:
            raise UnsupportedConfigError(
                f"mm_tokens_per_image={self.mm_tokens_per_image} must be the square of a divisor of the "
                f"{patches_per_side} patches per image side: the projector average-pools the patch grid"
            )

    @property
    def num_image_tokens(self) -> int:
        return self.mm_tokens_per_image

    @property
    def logit_softcap(self) -> float | None:
        """None, whatever ``text_config.final_logit_softcapping`` says (hub files say null): transformers'
        Gemma3ForConditionalGeneration caps no logits (its text-only Gemma3ForCausalLM does)."""
        return None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gemma3Config:
        model_type = d.get("model_type", "gemma3")
        if model_type != "gemma3":
            raise UnsupportedConfigError(f"model_type={model_type!r} is not a Gemma 3 config")
        text = {"model_type": Gemma3TextConfig.model_type, **(d.get("text_config") or {})}
        # Top-level token ids win over the decoder's: hub files list eos [1, 106] (<end_of_turn>) there only, and
        # transformers 5 writes the text config's default (1) beside it.
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if d.get(key) is not None:
                text[key] = d[key]
        text_config = text_config_from_dict(text)
        if not isinstance(text_config, Gemma3TextConfig):
            raise UnsupportedConfigError(
                f"text_config.model_type={text_config.model_type!r}: Gemma 3's decoder is 'gemma3_text'"
            )
        d = dict(
            d,
            vision_config=SiglipVisionConfig.from_dict(d.get("vision_config") or {}),
            text_config=text_config,
        )
        for alias in ("image_token", "boi_token", "eoi_token"):  # transformers 5's names
            if f"{alias}_id" in d:
                d.setdefault(f"{alias}_index", d[f"{alias}_id"])
        return cls(**known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        text = self.text_config
        return {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "mm_tokens_per_image": self.mm_tokens_per_image,
            "boi_token_index": self.boi_token_index,
            "eoi_token_index": self.eoi_token_index,
            "image_token_index": self.image_token_index,
            "pad_token_id": text.pad_token_id,
            "bos_token_id": text.bos_token_id,
            "eos_token_id": text.eos_token_id,
            "tie_word_embeddings": True,
            "text_config": text.to_dict(),
            "vision_config": self.vision_config.to_dict(),
        }
