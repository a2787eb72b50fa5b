"""Gemma 4's vision tower config, in transformers' ``vision_config`` layout (``Gemma4VisionConfig``: its field names
and defaults, which are E2B's and E4B's: 768 wide, 16 layers; 26B and 31B are 1152 x 27 with ``standardize``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from paligemma.errors import UnsupportedConfigError
from paligemma.model.config_fields import TANH_GELU_NAMES, known_fields

DEFAULT_ROPE = {"rope_type": "axial", "rope_theta": 100.0}


@dataclass
class Gemma4VisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 16
    num_attention_heads: int = 12
    num_key_value_heads: int = 12
    head_dim: int = 64
    hidden_activation: str = "gelu_pytorch_tanh"
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 131_072  # unused by the tower, kept for the file
    attention_bias: bool | None = False  # transformers builds no biases whatever it says; neither do we
    attention_dropout: float | None = 0.0
    rope_parameters: dict[str, Any] | None = None  # None: axial, theta 100
    pooling_kernel_size: int = 3
    patch_size: int = 16
    position_embedding_size: int = 10 * 1024
    use_clipped_linears: bool = False
    standardize: bool = False
    initializer_range: float = 0.02

    def __post_init__(self):
        self.rope_parameters = {**DEFAULT_ROPE, **(self.rope_parameters or {})}
        problem = self.unsupported()
        if problem:
            raise UnsupportedConfigError(f"vision_config.{problem}")

    def unsupported(self) -> str | None:
        """What of this config the tower does not implement (None: nothing)."""
        assert self.rope_parameters is not None
        if self.hidden_activation not in TANH_GELU_NAMES:
            return (
                f"hidden_activation={self.hidden_activation!r} is not supported; Gemma 4 uses the tanh GELU"
            )
        if self.rope_parameters["rope_type"] != "axial":
            return f"rope_parameters.rope_type={self.rope_parameters['rope_type']!r} is not supported, only 'axial'"
        if self.head_dim % 4:
            return f"head_dim={self.head_dim} is not a multiple of 4: 2D RoPE rotates x and y in pairs"
        if self.num_attention_heads % self.num_key_value_heads:
            return (
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.pooling_kernel_size < 2:
            k = self.pooling_kernel_size
            return f"pooling_kernel_size={k} is not supported (at 1 transformers keeps the padding patches)"
        return None

    @property
    def rope_theta(self) -> float:
        assert self.rope_parameters is not None
        return float(self.rope_parameters["rope_theta"])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gemma4VisionConfig:
        return cls(**known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "gemma4_vision", **asdict(self)}
