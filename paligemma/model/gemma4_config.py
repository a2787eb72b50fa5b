"""Gemma 4's decoder config (``Gemma4TextConfig``, transformers' ``gemma4_text``), read from and written to a
``text_config`` dict in transformers' layout, with transformers' field names and defaults.

What it adds to Gemma 3's layer, as capabilities the layers read (gemma_config.py's ``GemmaConfig``):

- norms that store their scale (``norm_offset = 0``), a scale-free norm of the values (``v_norm``), attention
  scores unscaled (``attention_scale = 1``: the query and key norms set their size), a stored scalar per layer;
- full layers with heads of their own width (``global_head_dim``, 512), their own KV head count where keys are
  values (``num_global_key_value_heads`` with ``attention_k_eq_v``: 26B, 31B) and RoPE on a quarter of each head
  (``rope_parameters.full_attention``: "proportional", ``partial_rotary_factor`` 0.25, theta 1e6);
- KV sharing: the last ``num_kv_shared_layers`` layers attend to the keys and values of the last earlier layer of
  their type (``kv_sources``), with MLPs twice as wide where ``use_double_wide_mlp``;
- per-layer embeddings (``hidden_size_per_layer_input``: paligemma/model/per_layer_embeddings.py) and experts
  beside the MLP (``enable_moe_block``: paligemma/model/experts.py).

transformers 5.25 writes the full layers' head width and KV heads as ``per_layer_config`` ({layer: {"head_dim",
"num_key_value_heads"}}); the hub's files as ``global_head_dim`` and ``num_global_key_value_heads``. Both read the
same; ours writes the latter, which transformers reads too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from paligemma.errors import UnsupportedConfigError
from paligemma.model.config import VisionLanguageConfig
from paligemma.model.config_fields import known_fields
from paligemma.model.gemma4_vision_config import Gemma4VisionConfig
from paligemma.model.gemma_config import LAYER_TYPES, TEXT_CONFIGS, Gemma3TextConfig, every_nth_full


@dataclass
class Gemma4TextConfig(Gemma3TextConfig):
    """Gemma 4's decoder. Defaults: transformers' Gemma4TextConfig (5.25)."""

    model_type: ClassVar[str] = "gemma4_text"
    v_norm: ClassVar[bool] = True
    norm_offset: ClassVar[float] = 0.0
    layer_scalar: ClassVar[bool] = True

    vocab_size: int = 262_144
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 30
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    max_position_embeddings: int = 131_072
    sliding_window: int | None = 512
    rope_theta: float = 1_000_000.0  # the full layers' RoPE base
    rope_local_base_freq: float = 10_000.0  # the sliding layers'
    partial_rotary_factor: float = 0.25  # the share of a full layer's head that RoPE turns ("proportional")
    global_head_dim: int = 512  # the full layers' head width
    num_global_key_value_heads: int | None = None  # the full layers' KV heads where attention_k_eq_v
    attention_k_eq_v: bool = False  # the full layers' values are their keys' projection
    num_kv_shared_layers: int = 0
    use_double_wide_mlp: bool = False
    vocab_size_per_layer_input: int = 262_144
    hidden_size_per_layer_input: int = 256  # 0: no per-layer embeddings
    enable_moe_block: bool = False
    num_experts: int | None = None
    top_k_experts: int | None = None
    moe_intermediate_size: int | None = None
    use_bidirectional_attention: str | None = None  # "vision": image spans (the assembled model's masks)

    def __post_init__(self):
        super().__post_init__()
        self.layer_types[-1] = "full_attention"  # as transformers forces it (with a warning)
        if self.use_bidirectional_attention not in (None, "vision"):
            raise UnsupportedConfigError(
                f"text_config.use_bidirectional_attention={self.use_bidirectional_attention!r} is not supported: "
                "Gemma 4's text is causal (None or 'vision')"
            )
        n, shared = self.num_hidden_layers, self.num_kv_shared_layers
        first_shared = n - shared
        if not 0 <= shared < n or set(self.layer_types[first_shared:]) - set(self.layer_types[:first_shared]):
            raise UnsupportedConfigError(
                f"text_config.num_kv_shared_layers={shared} needs, for each layer type among the last {shared} "
                f"of the {n} layers, a layer of that type before them"
            )
        if self.enable_moe_block and not (
            self.num_experts and self.top_k_experts and self.moe_intermediate_size
        ):
            raise UnsupportedConfigError(
                "text_config.enable_moe_block needs num_experts, top_k_experts and moe_intermediate_size"
            )

    def default_layer_types(self) -> list[str]:
        return every_nth_full(self.num_hidden_layers)

    @property
    def attention_scale(self) -> float:
        return 1.0

    def head_dim_of(self, layer_type: str) -> int:
        return self.global_head_dim if layer_type == "full_attention" else self.head_dim

    def kv_heads_of(self, layer_type: str) -> int:
        """transformers gives the full layers ``num_global_key_value_heads`` only where ``attention_k_eq_v``."""
        if layer_type == "full_attention" and self.attention_k_eq_v and self.num_global_key_value_heads:
            return self.num_global_key_value_heads
        return self.num_key_value_heads

    def keys_are_values(self, layer_type: str) -> bool:
        return self.attention_k_eq_v and layer_type == "full_attention"

    def rotary_fraction_of(self, layer_type: str) -> float:
        return self.partial_rotary_factor if layer_type == "full_attention" else 1.0

    @property
    def kv_sources(self) -> list[int | None]:
        """The last ``num_kv_shared_layers`` layers read the last earlier layer of their type."""
        first_shared = self.num_hidden_layers - self.num_kv_shared_layers
        last_of = {layer_type: i for i, layer_type in enumerate(self.layer_types[:first_shared])}
        return [None if i < first_shared else last_of[t] for i, t in enumerate(self.layer_types)]

    def intermediate_size_of(self, layer_idx: int) -> int:
        doubled = self.use_double_wide_mlp and self.kv_sources[layer_idx] is not None
        return self.intermediate_size * (2 if doubled else 1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gemma4TextConfig:
        d = dict(d, hidden_act=d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh")
        for name in ("attention_bias", "use_clipped_linears"):
            if d.get(name):
                raise UnsupportedConfigError(f"text_config.{name}=true is not supported")
        params = d.get("rope_parameters") or {}
        full, sliding = params.get("full_attention") or {}, params.get("sliding_attention") or {}
        for layer_type, rope, allowed in (
            ("full_attention", full, ("default", "proportional")),
            ("sliding_attention", sliding, ("default",)),
        ):
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            if rope_type not in allowed:
                raise UnsupportedConfigError(
                    f"text_config rope_type={rope_type!r} on {layer_type} layers is not supported"
                )
        if full.get("factor", 1.0) != 1.0:
            raise UnsupportedConfigError(f"text_config rope factor={full['factor']} is not supported")
        d["rope_theta"] = full.get("rope_theta", cls.rope_theta)
        d["rope_local_base_freq"] = sliding.get("rope_theta", cls.rope_local_base_freq)
        if not full:  # transformers' default: proportional, a quarter
            d["partial_rotary_factor"] = cls.partial_rotary_factor
        elif full.get("rope_type", full.get("type")) == "proportional":
            d["partial_rotary_factor"] = full.get("partial_rotary_factor", 1.0)
        else:
            d["partial_rotary_factor"] = 1.0
        if d.get("layer_types") is None:
            d.pop("layer_types", None)
        d.update(cls.per_layer_fields(d))
        return cls(**known_fields(cls, d))

    @classmethod
    def per_layer_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
        """``global_head_dim`` and ``num_global_key_value_heads`` from transformers 5.25's ``per_layer_config``,
        which must set only those, the same on every full layer and on no other."""
        per_layer = d.get("per_layer_config")
        if not per_layer:
            return {}
        num_layers = d.get("num_hidden_layers", cls.num_hidden_layers)
        layer_types = d.get("layer_types") or every_nth_full(num_layers)
        full = {str(i) for i, t in enumerate(layer_types) if t == LAYER_TYPES[0]}
        overrides = {str(int(k)): v for k, v in per_layer.items()}  # 5.25 writes '05' as well as '5'
        values = [overrides[i] for i in sorted(full) if i in overrides]
        uniform = set(overrides) == full and all(v == values[0] for v in values)
        if not uniform or set(values[0]) - {"head_dim", "num_key_value_heads"}:
            raise UnsupportedConfigError(
                f"text_config.per_layer_config={per_layer} is not supported: only the full layers' head_dim and "
                "num_key_value_heads, the same on each"
            )
        fields = {"global_head_dim": values[0].get("head_dim", d.get("head_dim", cls.head_dim))}
        if "num_key_value_heads" in values[0]:
            fields["num_global_key_value_heads"] = values[0]["num_key_value_heads"]
        return fields

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for name in (
            "rope_theta",
            "rope_local_base_freq",
            "rope_scaling",
            "rope_scaling_factor",
            "hidden_act",
            "partial_rotary_factor",
            "query_pre_attn_scalar",
            "attn_logit_softcapping",
        ):
            d.pop(name, None)
        full: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.partial_rotary_factor != 1.0:
            full = {**full, "rope_type": "proportional", "partial_rotary_factor": self.partial_rotary_factor}
        sliding = {"rope_type": "default", "rope_theta": self.rope_local_base_freq}
        d["rope_parameters"] = {"sliding_attention": sliding, "full_attention": full}
        return d


TEXT_CONFIGS[Gemma4TextConfig.model_type] = Gemma4TextConfig


@dataclass
class Gemma4Config(VisionLanguageConfig):
    """Gemma 4's vision-language config in transformers' ``Gemma4Config`` layout (``model_type`` "gemma4"): the
    decoder's (``Gemma4TextConfig``), the tower's (``Gemma4VisionConfig``), the image token and the tokens around
    each image. Defaults: transformers' (5.25). An image takes as many tokens as its soft tokens, which vary with
    its aspect ratio (``vision_soft_tokens_per_image``, the processor's most). The audio tower is not implemented:
    a file's ``audio_config`` is read and dropped (the checkpoint's audio weights are skipped on load)."""

    vision_config: Gemma4VisionConfig = field(default_factory=Gemma4VisionConfig)
    text_config: Gemma4TextConfig = field(default_factory=Gemma4TextConfig)
    image_token_index: int = 258_880
    boi_token_index: int = 255_999  # <start_of_image>, before each image's tokens
    eoi_token_index: int = 258_882  # <end_of_image>, after them
    vision_soft_tokens_per_image: int = 280

    def __post_init__(self):
        # No vocabulary check: image tokens are embedded as the pad id (as transformers does), so the image token
        # may lie outside the text vocabulary (tiny test configs).
        pass

    @property
    def num_image_tokens(self) -> int:
        """The most tokens an image takes (fewer where its aspect ratio leaves patches unused)."""
        return self.vision_soft_tokens_per_image

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gemma4Config:
        model_type = d.get("model_type", "gemma4")
        if model_type != "gemma4":
            raise UnsupportedConfigError(f"model_type={model_type!r} is not a Gemma 4 config")
        text = dict(d.get("text_config") or {})
        text_model_type = text.get("model_type", Gemma4TextConfig.model_type)
        if text_model_type != Gemma4TextConfig.model_type:
            raise UnsupportedConfigError(
                f"text_config.model_type={text_model_type!r}: Gemma 4's decoder is 'gemma4_text'"
            )
        d = dict(
            d,
            vision_config=Gemma4VisionConfig.from_dict(d.get("vision_config") or {}),
            text_config=Gemma4TextConfig.from_dict(text),
        )
        for alias in ("image_token", "boi_token", "eoi_token"):  # transformers 5's names
            if f"{alias}_id" in d:
                d.setdefault(f"{alias}_index", d[f"{alias}_id"])
        return cls(**known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return {
            "architectures": ["Gemma4ForConditionalGeneration"],
            "model_type": "gemma4",
            "image_token_id": self.image_token_index,
            "boi_token_id": self.boi_token_index,
            "eoi_token_id": self.eoi_token_index,
            "tie_word_embeddings": True,
            "text_config": self.text_config.to_dict(),
            "vision_config": self.vision_config.to_dict(),
            "audio_config": None,
        }
