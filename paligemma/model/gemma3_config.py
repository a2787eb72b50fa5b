"""Gemma 3's vision-language config, read from and written to HF ``config.json`` (``model_type`` "gemma3").

Fields a file leaves out take transformers' ``Gemma3Config`` defaults (the vision config's: ``SiglipVisionConfig``'s);
the text config is a ``GemmaConfig`` of ``model_type`` "gemma3_text", and ``Gemma3Config()`` has Gemma 3's tower,
SigLIP So400m/14 at 896 px without its pooling head.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paligemma.errors import MissingFileError, UnsupportedConfigError
from paligemma.model.config import GemmaConfig, SiglipVisionConfig, _known_fields
from paligemma.paths import read_json

SO400M_896 = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    patch_size=14,
    image_size=896,
)


@dataclass
class Gemma3Config:
    vision_config: SiglipVisionConfig = field(
        default_factory=lambda: SiglipVisionConfig.from_dict(SO400M_896)
    )
    text_config: GemmaConfig = field(
        default_factory=lambda: GemmaConfig.from_dict({"model_type": "gemma3_text"})
    )
    mm_tokens_per_image: int = 256  # each image's patches average-pooled to this many tokens
    boi_token_index: int = 255_999  # <start_of_image>, before each image's tokens
    eoi_token_index: int = 256_000  # <end_of_image>, after them
    image_token_index: int = 262_144
    ignore_index: int = -100

    # The generated __init__ as type checkers should see it (keep it in step with the fields): __post_init__
    # converts dicts.
    if TYPE_CHECKING:

        def __init__(
            self,
            vision_config: SiglipVisionConfig | dict[str, Any] = ...,
            text_config: GemmaConfig | dict[str, Any] = ...,
            mm_tokens_per_image: int = ...,
            boi_token_index: int = ...,
            eoi_token_index: int = ...,
            image_token_index: int = ...,
            ignore_index: int = ...,
        ) -> None: ...

    def __post_init__(self):
        if isinstance(self.vision_config, dict):
            self.vision_config = SiglipVisionConfig.from_dict(self.vision_config)
        if isinstance(self.text_config, dict):
            self.text_config = GemmaConfig.from_dict({"model_type": "gemma3_text", **self.text_config})
        if self.text_config.model_type != "gemma3_text":
            raise UnsupportedConfigError(
                f"text_config.model_type={self.text_config.model_type!r}: Gemma 3's decoder is 'gemma3_text'"
            )
        side, patches_per_side = (
            math.isqrt(self.mm_tokens_per_image),
            self.vision_config.image_size // self.vision_config.patch_size,
        )
        if side * side != self.mm_tokens_per_image or patches_per_side % side:
            raise UnsupportedConfigError(
                f"mm_tokens_per_image={self.mm_tokens_per_image} must be the square of a divisor of the "
                f"{patches_per_side} patches per image side: the projector average-pools the patch grid"
            )
        if not 0 <= self.image_token_index < self.text_config.vocab_size:
            raise UnsupportedConfigError(
                f"image_token_index={self.image_token_index} is outside the text vocabulary "
                f"(vocab_size={self.text_config.vocab_size})"
            )

    @property
    def num_image_tokens(self) -> int:
        return self.mm_tokens_per_image

    @property
    def image_token_id(self) -> int:
        return self.image_token_index

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gemma3Config:
        model_type = d.get("model_type", "gemma3")
        if model_type != "gemma3":
            raise UnsupportedConfigError(f"model_type={model_type!r} is not a Gemma 3 config")
        d = dict(d)
        text = dict(d.get("text_config") or {})
        # Top-level token ids win over the decoder's: hub files list eos [1, 106] (<end_of_turn>) there only, and
        # transformers 5 writes the text config's default (1) beside it.
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if d.get(key) is not None:
                text[key] = d[key]
        d["text_config"] = text
        d["vision_config"] = dict(d.get("vision_config") or {})
        for alias in ("image_token", "boi_token", "eoi_token"):
            if f"{alias}_id" in d:
                d.setdefault(f"{alias}_index", d[f"{alias}_id"])
        return cls(**_known_fields(cls, d))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Gemma3Config:
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise MissingFileError(f"{path} is not a Gemma 3 checkpoint directory: no config.json in it")
        return cls.from_dict(read_json(config_file))

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

    def save_pretrained(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
