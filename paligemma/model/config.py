"""Model configuration, read from and written to HF ``config.json``: the vision tower's (``SiglipVisionConfig``),
what every family's config holds (``VisionLanguageConfig``) and PaliGemma's (``PaliGemmaConfig``). The decoder's,
one class per Gemma generation, are in paligemma/model/gemma_config.py; Gemma 3's in gemma3_config.py.

Hub files written by transformers 4.4x leave many fields to their class defaults; the defaults here are
PaliGemma-3B's, so those files read correctly (SigLIP: So400m/14, gelu_pytorch_tanh, layer_norm_eps 1e-6, image 224).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from paligemma.errors import MissingFileError, UnsupportedConfigError
from paligemma.model.config_fields import check_activation, known_fields
from paligemma.model.gemma4_vision_config import Gemma4VisionConfig
from paligemma.model.gemma_config import GemmaConfig, text_config_from_dict
from paligemma.paths import read_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class SiglipVisionConfig:
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    attention_dropout: float = 0.0

    def __post_init__(self):
        check_activation(self.hidden_act, "vision_config")
        if self.hidden_size % self.num_attention_heads:
            raise UnsupportedConfigError(
                f"vision_config.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise UnsupportedConfigError(
                f"vision_config.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiglipVisionConfig:
        return cls(**known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "siglip_vision_model", **asdict(self), "vision_use_head": False}


@dataclass
class VisionLanguageConfig(ABC):
    """What the model code (paligemma/model/vision_language.py) reads of every family's config: the towers, the image
    token, the loss's ignore index, how many tokens an image takes and the logits' soft-cap."""

    vision_config: SiglipVisionConfig | Gemma4VisionConfig  # Gemma 4: patch rows of any aspect ratio
    text_config: GemmaConfig
    image_token_index: int
    ignore_index: int = -100

    def __post_init__(self):
        if not 0 <= self.image_token_index < self.text_config.vocab_size:
            raise UnsupportedConfigError(
                f"image_token_index={self.image_token_index} is outside the text vocabulary "
                f"(vocab_size={self.text_config.vocab_size})"
            )

    @property
    @abstractmethod
    def num_image_tokens(self) -> int:
        """The image tokens a prompt holds per image."""

    @property
    def logit_softcap(self) -> float | None:
        """The tanh soft-cap of the LM head's logits (None: none): the decoder's."""
        return self.text_config.logit_softcap

    @classmethod
    @abstractmethod
    def from_dict(cls, d: dict[str, Any]) -> VisionLanguageConfig: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_pretrained(cls, path: str | Path):
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise MissingFileError(f"{path} is not a model checkpoint directory: no config.json in it")
        return cls.from_dict(read_json(config_file))

    def save_pretrained(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass
class PaliGemmaConfig(VisionLanguageConfig):
    """PaliGemma 1 and 2: SigLIP, a linear projector to the decoder's width, Gemma 1 or 2 (``GemmaConfig`` or
    ``Gemma2Config``). Defaults: PaliGemma-3B at 224 px."""

    vision_config: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)
    text_config: GemmaConfig = field(default_factory=GemmaConfig)
    image_token_index: int = 257152

    @property
    def projection_dim(self) -> int:
        """The projector's output width: the decoder's (image features join the text embedding stream)."""
        return self.text_config.hidden_size

    @property
    def num_image_tokens(self) -> int:
        return self.vision_config.num_patches

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PaliGemmaConfig:
        model_type = d.get("model_type", "paligemma")
        if model_type != "paligemma":
            raise UnsupportedConfigError(f"model_type={model_type!r} is not a PaliGemma config")
        text = dict(d.get("text_config") or {})
        # Top-level token ids and vocab apply to the decoder when its own config leaves them out.
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "vocab_size"):
            if key in d and d[key] is not None:
                text.setdefault(key, d[key])
        text_config = text_config_from_dict(text)
        if d.get("projection_dim", text_config.hidden_size) != text_config.hidden_size:
            raise UnsupportedConfigError(
                f"projection_dim={d['projection_dim']} must equal text_config.hidden_size="
                f"{text_config.hidden_size}: image features are placed in the text embedding stream"
            )
        d = dict(
            d,
            vision_config=SiglipVisionConfig.from_dict(d.get("vision_config") or {}),
            text_config=text_config,
        )
        if "image_token_id" in d:  # transformers 5's name
            d.setdefault("image_token_index", d["image_token_id"])
        return cls(**known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        text = self.text_config.to_dict()
        text["num_image_tokens"] = self.num_image_tokens
        vision = self.vision_config.to_dict()
        vision["projection_dim"] = self.projection_dim
        return {
            "architectures": ["PaliGemmaForConditionalGeneration"],
            "model_type": "paligemma",
            "image_token_index": self.image_token_index,
            "projection_dim": self.projection_dim,
            "hidden_size": self.projection_dim,
            "ignore_index": self.ignore_index,
            "pad_token_id": self.text_config.pad_token_id,
            "bos_token_id": self.text_config.bos_token_id,
            "eos_token_id": self.text_config.eos_token_id,
            "vocab_size": self.text_config.vocab_size,
            "tie_word_embeddings": True,
            "text_config": text,
            "vision_config": vision,
        }
