"""The decoder's config, one dataclass per Gemma generation, read from and written to a ``text_config`` dict.

``GemmaConfig`` is Gemma 1 (PaliGemma 1) and the base of the others: the fields every generation has, and the
capabilities the layers read (properties and class constants, Gemma 1's values there). ``Gemma2Config`` (PaliGemma 2)
adds the attention scalar, the soft-caps and the sliding window; ``Gemma3TextConfig`` (Gemma 3) a RoPE base per layer
type and query / key norms. Each class's defaults are what a file that leaves a field out means for that generation:
PaliGemma-3B's for Gemma 1 (transformers' PaliGemmaConfig fills them in), transformers' ``Gemma2Config`` and
``Gemma3TextConfig`` defaults for the others. ``TEXT_CONFIGS`` maps a file's ``model_type`` to its class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from paligemma.errors import UnsupportedConfigError
from paligemma.model.config_fields import check_activation, known_fields

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass
class GemmaConfig:
    """Gemma 1: every layer full attention, a norm before attention and one before the MLP."""

    model_type: ClassVar[str] = "gemma"
    sandwich_norms: ClassVar[bool] = False  # norms after attention and around the MLP too
    qk_norm: ClassVar[bool] = False  # an RMSNorm over each query and key head, before the rotary embedding
    v_norm: ClassVar[bool] = False  # a scale-free RMSNorm over each value head
    norm_offset: ClassVar[float] = 1.0  # RMSNorm scales by (norm_offset + w): Gemma 1-3 store w - 1
    layer_scalar: ClassVar[bool] = False  # each layer's output times a stored scalar (a buffer)

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
    layer_types: list[str] = field(default_factory=list)  # one of LAYER_TYPES per layer; empty: the default

    def __post_init__(self):
        check_activation(self.hidden_act, "text_config")
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedConfigError(
                f"text_config.num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        self.layer_types = list(self.layer_types) or self.default_layer_types()
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if len(self.layer_types) != self.num_hidden_layers or unknown:
            raise UnsupportedConfigError(
                f"text_config.layer_types must name one of {LAYER_TYPES} for each of the "
                f"{self.num_hidden_layers} layers; got {self.layer_types}"
            )
        if "sliding_attention" in self.layer_types and not self.window:
            raise UnsupportedConfigError("text_config.layer_types has sliding layers but no sliding_window")

    def default_layer_types(self) -> list[str]:
        return ["full_attention"] * self.num_hidden_layers

    @property
    def window(self) -> int | None:
        """The sliding layers' window, in slots (None: no layer slides)."""
        return None

    @property
    def attention_scale(self) -> float:
        return self.head_dim**-0.5

    def head_dim_of(self, layer_type: str) -> int:
        """The query, key and value heads' width on layers of ``layer_type``."""
        return self.head_dim

    def kv_heads_of(self, layer_type: str) -> int:
        return self.num_key_value_heads

    def keys_are_values(self, layer_type: str) -> bool:
        """Whether layers of ``layer_type`` have no value projection: values are the keys' projection (K = V)."""
        return False

    def rotary_fraction_of(self, layer_type: str) -> float:
        """The share of each head's dimensions that RoPE rotates (its first angles; the rest see no position)."""
        return 1.0

    @property
    def kv_sources(self) -> list[int | None]:
        """Per layer: the earlier layer whose keys and values it attends to (KV sharing), or None (its own)."""
        return [None] * self.num_hidden_layers

    def intermediate_size_of(self, layer_idx: int) -> int:
        """The width of layer ``layer_idx``'s MLP."""
        return self.intermediate_size

    @property
    def attention_softcap(self) -> float | None:
        """The tanh soft-cap of attention scores (None: none)."""
        return None

    @property
    def logit_softcap(self) -> float | None:
        """The tanh soft-cap of the LM head's logits (None: none)."""
        return None

    @property
    def rope_by_layer_type(self) -> dict[str, tuple[float, float]]:
        """Layer type -> (RoPE base, linear position scaling factor); the dimensions are ``head_dim_of`` and
        ``rotary_fraction_of``'s."""
        return {layer_type: (self.rope_theta, 1.0) for layer_type in set(self.layer_types)}

    @property
    def stop_token_ids(self) -> list[int]:
        ids = self.eos_token_id
        return list(ids) if isinstance(ids, (list, tuple)) else [ids]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GemmaConfig:
        d = dict(d)
        if d.get("use_bidirectional_attention") is False:
            raise UnsupportedConfigError(
                "text_config.use_bidirectional_attention=false is not supported: PaliGemma's image + prompt "
                "prefix attends bidirectionally"
            )
        d.setdefault("hidden_act", d.get("hidden_activation") or "gelu_pytorch_tanh")
        for name in ("head_dim", "layer_types"):
            if d.get(name) is None:
                d.pop(name, None)
        for rope in (d.get("rope_scaling") or {}, d.get("rope_parameters") or {}):
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            if rope_type != "default":
                raise UnsupportedConfigError(f"text_config rope_type={rope_type!r} is not supported")
            if "rope_theta" in rope:
                d["rope_theta"] = rope["rope_theta"]
        return cls(**known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        d = {"model_type": self.model_type, **asdict(self)}
        del d["layer_types"]  # transformers' Gemma 1 config has none: every layer is full
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
        return {**d, "hidden_activation": self.hidden_act, "tie_word_embeddings": True}


@dataclass
class Gemma2Config(GemmaConfig):
    """Gemma 2: the sandwich norms, scores scaled by ``query_pre_attn_scalar ** -0.5``, tanh soft-caps of scores
    and logits, and a sliding window on the even layers. Defaults: transformers' Gemma2Config (PaliGemma 2 3B's
    decoder), with PaliGemma's vocabulary."""

    model_type: ClassVar[str] = "gemma2"
    sandwich_norms: ClassVar[bool] = True

    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    query_pre_attn_scalar: float | None = 256  # None: head_dim
    attn_logit_softcapping: float | None = 50.0
    final_logit_softcapping: float | None = 30.0
    sliding_window: int | None = 4096

    def default_layer_types(self) -> list[str]:
        slides = self.sliding_window is not None
        return [LAYER_TYPES[slides and i % 2 == 0] for i in range(self.num_hidden_layers)]

    @property
    def window(self) -> int | None:
        return self.sliding_window

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def attention_softcap(self) -> float | None:
        return self.attn_logit_softcapping

    @property
    def logit_softcap(self) -> float | None:
        return self.final_logit_softcapping

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "layer_types": self.layer_types}


@dataclass
class Gemma3TextConfig(Gemma2Config):
    """Gemma 3: Gemma 2's layer with query / key norms and no soft-capped attention, five sliding layers to a full
    one, and a RoPE base per layer type (the full layers' positions divided by ``rope_scaling_factor``, 4B+).
    Defaults: transformers' Gemma3TextConfig."""

    model_type: ClassVar[str] = "gemma3_text"
    qk_norm: ClassVar[bool] = True

    vocab_size: int = 262208
    max_position_embeddings: int = 131072
    rope_theta: float = 1_000_000.0
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    rope_local_base_freq: float = 10_000.0  # the sliding layers' RoPE base
    rope_scaling_factor: float | None = None

    def default_layer_types(self) -> list[str]:
        return every_nth_full(self.num_hidden_layers)

    @property
    def attention_softcap(self) -> float | None:
        """None, whatever ``attn_logit_softcapping`` says: transformers' Gemma 3 attention caps no scores."""
        return None

    @property
    def rope_by_layer_type(self) -> dict[str, tuple[float, float]]:
        rope = {
            "full_attention": (self.rope_theta, self.rope_scaling_factor or 1.0),
            "sliding_attention": (self.rope_local_base_freq, 1.0),
        }
        return {layer_type: rope[layer_type] for layer_type in set(self.layer_types)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gemma3TextConfig:
        """transformers 5 writes the RoPE settings per layer type (``rope_parameters``), 4.5x as ``rope_theta``,
        ``rope_local_base_freq`` and ``rope_scaling``; ``layer_types`` may be left to ``sliding_window_pattern``."""
        if d.get("use_bidirectional_attention"):
            raise UnsupportedConfigError(
                "text_config.use_bidirectional_attention=true (an embedding model) is not supported: Gemma 3's "
                "text is causal"
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
        d["rope_theta"] = full.get("rope_theta", d.get("rope_theta", cls.rope_theta))
        d["rope_local_base_freq"] = sliding.get(
            "rope_theta", d.get("rope_local_base_freq", cls.rope_local_base_freq)
        )
        linear = full.get("rope_type", full.get("type")) == "linear"
        d["rope_scaling_factor"] = full.get("factor") if linear else None
        if d.get("layer_types") is None:
            d.pop("layer_types", None)
            if d.get("sliding_window_pattern"):
                num_layers = d.get("num_hidden_layers", cls.num_hidden_layers)
                d["layer_types"] = every_nth_full(num_layers, d["sliding_window_pattern"])
        return cls(**known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        """Also the RoPE settings in both of transformers' spellings (5: ``rope_parameters``; 4.5x: the rest)."""
        full: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        scaling = None
        if self.rope_scaling_factor is not None:
            scaling = {"rope_type": "linear", "factor": self.rope_scaling_factor}
            full.update(scaling)
        sliding = {"rope_type": "default", "rope_theta": self.rope_local_base_freq}
        rope_parameters = {"full_attention": full, "sliding_attention": sliding}
        return {**super().to_dict(), "rope_parameters": rope_parameters, "rope_scaling": scaling}


def every_nth_full(num_layers: int, n: int = 6) -> list[str]:
    """Gemma 3's layer types: every ``n``-th layer full, the others sliding."""
    return [LAYER_TYPES[bool((i + 1) % n)] for i in range(num_layers)]


# config.json's text_config.model_type -> the class that reads it.
TEXT_CONFIGS: dict[str, type[GemmaConfig]] = {
    config.model_type: config for config in (GemmaConfig, Gemma2Config, Gemma3TextConfig)
}


def text_config_from_dict(d: dict[str, Any]) -> GemmaConfig:
    """A ``text_config`` dict as its generation's class (``model_type``; none: Gemma 1)."""
    model_type = d.get("model_type", GemmaConfig.model_type)
    if model_type not in TEXT_CONFIGS:
        raise UnsupportedConfigError(
            f"text_config.model_type={model_type!r} is not supported: the decoders are "
            "'gemma' (PaliGemma 1), 'gemma2' (PaliGemma 2), 'gemma3_text' (Gemma 3) and 'gemma4_text' (Gemma 4)"
        )
    return TEXT_CONFIGS[model_type].from_dict(d)
