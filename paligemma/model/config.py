"""Model configuration: one dataclass per tower, read from and written to HF ``config.json``.

Hub files written by transformers 4.4x leave many fields to their class defaults; the defaults
below are PaliGemma-3B's, so those files read correctly (SigLIP: gelu_pytorch_tanh, layer_norm_eps 1e-6, image
224; Gemma: head_dim 256, rope_theta 10000, rms_norm_eps 1e-6, a tied LM head). One ``GemmaConfig``
describes every decoder: ``model_type`` "gemma2" (PaliGemma 2) turns on the four norms per layer,
soft-capping and sliding-window attention, with Gemma 2's defaults for the fields a file leaves out;
"gemma3_text" (Gemma 3) adds RMSNorm on each query and key head and a RoPE base per layer type.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from paligemma.errors import MissingFileError, UnsupportedConfigError
from paligemma.paths import read_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Every name the reference maps to the tanh approximation of GELU.
TANH_GELU_NAMES = {"gelu_pytorch_tanh", "gelu_new", "gelu_fast"}


def _known_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls) if f.init}
    return {k: v for k, v in d.items() if k in names}


def _check_activation(name: str, where: str) -> None:
    if name not in TANH_GELU_NAMES:
        raise UnsupportedConfigError(
            f"{where}.hidden_act={name!r} is not supported; PaliGemma uses the tanh GELU "
            f"({', '.join(sorted(TANH_GELU_NAMES))})"
        )


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
        _check_activation(self.hidden_act, "vision_config")
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
        return cls(**_known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "siglip_vision_model", **asdict(self), "vision_use_head": False}


# Fields a PaliGemma 2 text config may leave out: transformers' Gemma2Config defaults (PaliGemma 2 3B).
GEMMA2_DEFAULTS = {
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "sliding_window": 4096,
}
# Fields a Gemma 3 text config may leave out: transformers' Gemma3TextConfig defaults.
GEMMA3_DEFAULTS = {
    "vocab_size": 262208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 131072,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
}
LAYER_TYPES = ("full_attention", "sliding_attention")
MODEL_TYPES = ("gemma", "gemma2", "gemma3_text")


@dataclass
class GemmaConfig:
    model_type: str = "gemma"  # "gemma2": PaliGemma 2's decoder; "gemma3_text": Gemma 3's
    vocab_size: int = 257216
    hidden_size: int = 2048
    intermediate_size: int = 16384
    num_hidden_layers: int = 18
    num_attention_heads: int = 8
    num_key_value_heads: int = 1
    head_dim: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    hidden_act: str = "gelu_pytorch_tanh"
    attention_dropout: float = 0.0
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int | list[int] = 1  # generation stops at any of a list
    # Gemma 2 only (None for Gemma 1): attention scale, tanh soft-caps, window of the sliding layers.
    query_pre_attn_scalar: float | None = None  # scores scaled by its -1/2 power; None: head_dim
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sliding_window: int | None = None
    layer_types: list[str] | None = None  # per layer; Gemma 2 default: even layers slide
    # Gemma 3 only: the sliding layers' RoPE base (None: rope_theta) and the full layers' linear RoPE scaling
    # (positions divided by the factor; 4B+).
    rope_local_base_freq: float | None = None
    rope_scaling_factor: float | None = None

    def __post_init__(self):
        _check_activation(self.hidden_act, "text_config")
        if self.model_type not in MODEL_TYPES:
            raise UnsupportedConfigError(
                f"text_config.model_type={self.model_type!r} is not supported: the decoders are "
                "'gemma' (PaliGemma 1), 'gemma2' (PaliGemma 2) and 'gemma3_text' (Gemma 3)"
            )
        if (
            self.model_type == "gemma3_text"
        ):  # Gemma 3's attention never soft-caps (transformers ignores the field)
            self.attn_logit_softcapping = None
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedConfigError(
                f"text_config.num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.layer_types is None:
            slides = self.model_type == "gemma2" and self.sliding_window is not None
            self.layer_types = [LAYER_TYPES[slides and i % 2 == 0] for i in range(self.num_hidden_layers)]
        self.layer_types = list(self.layer_types)
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if len(self.layer_types) != self.num_hidden_layers or unknown:
            raise UnsupportedConfigError(
                f"text_config.layer_types must name one of {LAYER_TYPES} for each of the "
                f"{self.num_hidden_layers} layers; got {self.layer_types}"
            )
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise UnsupportedConfigError("text_config.layer_types has sliding layers but no sliding_window")

    @property
    def num_kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def sandwich_norms(self) -> bool:
        """Gemma 2's layer (and Gemma 3's): norms after attention and around the MLP too, not only before each."""
        return self.model_type in ("gemma2", "gemma3_text")

    @property
    def qk_norm(self) -> bool:
        """Gemma 3: an RMSNorm over each query and key head, before the rotary embedding."""
        return self.model_type == "gemma3_text"

    @property
    def rope_by_layer_type(self) -> dict[str, tuple[float, float]]:
        """Layer type -> (RoPE base, linear position scaling factor)."""
        assert self.layer_types is not None  # __post_init__ fills it in
        bases = {
            "full_attention": self.rope_theta,
            "sliding_attention": self.rope_local_base_freq or self.rope_theta,
        }
        factors = {"full_attention": self.rope_scaling_factor or 1.0, "sliding_attention": 1.0}
        return {layer_type: (bases[layer_type], factors[layer_type]) for layer_type in set(self.layer_types)}

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def stop_token_ids(self) -> list[int]:
        ids = self.eos_token_id
        return list(ids) if isinstance(ids, (list, tuple)) else [ids]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GemmaConfig:
        d = dict(d)
        model_type = d.setdefault("model_type", "gemma")
        if model_type == "gemma2":
            d = {**GEMMA2_DEFAULTS, **d}
        if model_type == "gemma3_text":
            return cls(**_known_fields(cls, gemma3_fields({**GEMMA3_DEFAULTS, **d})))
        if d.get("use_bidirectional_attention") is False:
            raise UnsupportedConfigError(
                "text_config.use_bidirectional_attention=false is not supported: PaliGemma's image + prompt "
                "prefix attends bidirectionally"
            )
        d.setdefault("hidden_act", d.get("hidden_activation") or "gelu_pytorch_tanh")
        if d.get("head_dim") is None:
            d.pop("head_dim", None)
        for rope in (d.get("rope_scaling") or {}, d.get("rope_parameters") or {}):
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            if rope_type != "default":
                raise UnsupportedConfigError(f"text_config rope_type={rope_type!r} is not supported")
            if "rope_theta" in rope:
                d["rope_theta"] = rope["rope_theta"]
        return cls(**_known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": d["rope_theta"]}
        if self.model_type == "gemma3_text":
            d.update(gemma3_rope_dict(self))
        else:
            del d["rope_local_base_freq"], d["rope_scaling_factor"]
        if self.model_type == "gemma":
            for name in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
                del d[name]
            del d["sliding_window"], d["layer_types"]
        return {**d, "hidden_activation": self.hidden_act, "tie_word_embeddings": True}


def gemma3_fields(d: dict[str, Any]) -> dict[str, Any]:
    """A gemma3_text config dict (defaults filled in) as GemmaConfig fields: transformers 5 writes the RoPE settings
    per layer type (``rope_parameters``), 4.5x as ``rope_theta``, ``rope_local_base_freq`` and ``rope_scaling``;
    ``layer_types`` may be left to ``sliding_window_pattern`` (every 6th layer full)."""
    if d.get("use_bidirectional_attention"):
        raise UnsupportedConfigError(
            "text_config.use_bidirectional_attention=true (an embedding model) is not supported: Gemma 3's text is causal"
        )
    d = dict(d, hidden_act=d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh")
    params = d.get("rope_parameters") or {}
    full = {**(d.get("rope_scaling") or {}), **(params.get("full_attention") or {})}
    sliding = params.get("sliding_attention") or {}
    for layer_type, rope, allowed in (
        ("full_attention", full, ("default", "linear")),
        ("sliding_attention", sliding, ("default",)),
    ):
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in allowed:
            raise UnsupportedConfigError(
                f"text_config rope_type={rope_type!r} on {layer_type} layers is not supported"
            )
    d["rope_theta"] = full.get("rope_theta", d["rope_theta"])
    d["rope_local_base_freq"] = sliding.get("rope_theta", d["rope_local_base_freq"])
    d["rope_scaling_factor"] = (
        full.get("factor") if full.get("rope_type", full.get("type")) == "linear" else None
    )
    if d.get("layer_types") is None:
        pattern = d.get("sliding_window_pattern") or 6
        d["layer_types"] = [LAYER_TYPES[bool((i + 1) % pattern)] for i in range(d["num_hidden_layers"])]
    return d


def gemma3_rope_dict(config: GemmaConfig) -> dict[str, Any]:
    """Gemma 3's RoPE settings in both of transformers' spellings (5: ``rope_parameters``; 4.5x: the rest)."""
    full = {"rope_type": "default", "rope_theta": config.rope_theta}
    scaling = None
    if config.rope_scaling_factor is not None:
        scaling = {"rope_type": "linear", "factor": config.rope_scaling_factor}
        full.update(scaling)
    local_base = config.rope_local_base_freq or config.rope_theta
    return {
        "rope_parameters": {
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": local_base},
        },
        "rope_local_base_freq": local_base,
        "rope_scaling": scaling,
    }


@dataclass
class PaliGemmaConfig:
    vision_config: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)
    text_config: GemmaConfig = field(default_factory=GemmaConfig)
    image_token_index: int = 257152
    projection_dim: int = 2048
    ignore_index: int = -100

    # The generated __init__ as type checkers should see it (keep it in step with the fields): __post_init__
    # converts dicts.
    if TYPE_CHECKING:

        def __init__(
            self,
            vision_config: SiglipVisionConfig | dict[str, Any] = ...,
            text_config: GemmaConfig | dict[str, Any] = ...,
            image_token_index: int = ...,
            projection_dim: int = ...,
            ignore_index: int = ...,
        ) -> None: ...

    def __post_init__(self):
        if isinstance(self.vision_config, dict):
            self.vision_config = SiglipVisionConfig.from_dict(self.vision_config)
        if isinstance(self.text_config, dict):
            self.text_config = GemmaConfig.from_dict(self.text_config)
        if self.projection_dim != self.text_config.hidden_size:
            raise UnsupportedConfigError(
                f"projection_dim={self.projection_dim} must equal text_config.hidden_size="
                f"{self.text_config.hidden_size}: image features are placed in the text embedding stream"
            )
        if not 0 <= self.image_token_index < self.text_config.vocab_size:
            raise UnsupportedConfigError(
                f"image_token_index={self.image_token_index} is outside the text vocabulary "
                f"(vocab_size={self.text_config.vocab_size})"
            )

    @property
    def num_image_tokens(self) -> int:
        return self.vision_config.num_patches

    @property
    def image_token_id(self) -> int:
        return self.image_token_index

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PaliGemmaConfig:
        model_type = d.get("model_type", "paligemma")
        if model_type != "paligemma":
            raise UnsupportedConfigError(f"model_type={model_type!r} is not a PaliGemma config")
        d = dict(d)
        text = dict(d.get("text_config") or {})
        # Top-level token ids and vocab apply to the decoder when its own config leaves them out.
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "vocab_size"):
            if key in d and d[key] is not None:
                text.setdefault(key, d[key])
        d["text_config"] = text
        d["vision_config"] = dict(d.get("vision_config") or {})
        if "image_token_id" in d:
            d.setdefault("image_token_index", d["image_token_id"])
        d.setdefault("projection_dim", GemmaConfig.from_dict(text).hidden_size)
        return cls(**_known_fields(cls, d))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PaliGemmaConfig:
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise MissingFileError(f"{path} is not a PaliGemma checkpoint directory: no config.json in it")
        return cls.from_dict(read_json(config_file))

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

    def save_pretrained(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
