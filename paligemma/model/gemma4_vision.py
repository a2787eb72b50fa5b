"""Gemma 4's vision tower and its projector: transformers' ``Gemma4VisionModel`` and ``Gemma4MultimodalEmbedder``.

Images come as Gemma4ImageProcessor makes them: a row of P patches per image (p x p pixels in [0, 1], flattened
(p, p, 3) as the processor orders them), with (B, P, 2) long (x, y) patch positions, (-1, -1) on the padding
patches that fill each row up to P. The tower embeds the patches linearly (pixels moved to [-1, 1]), adds a learned
x and a learned y embedding, runs pre/post-normed ("sandwich") encoder layers with 2D RoPE (x on the first half of
each head, y on the second), q/k norms and a scale-free v norm and attention scale 1, then averages each k x k block
of patches into a soft token, scaled by sqrt(width) (and standardised on 26B and 31B). The padding is dropped: an
image of n real patches gives n / k^2 soft tokens, and the batch's tokens come out flat, image after image.

Module names are transformers' under its prefixes (``model.vision_tower.``, ``model.embed_vision.``), so its state
dict loads as it is, the clip bounds (buffers) included.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from paligemma.model.gemma4_vision_config import Gemma4VisionConfig


class Gemma4RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) in float32 times ``weight`` (not ``1 + w``: a fresh norm is ones), as transformers
    computes it; ``with_scale=False``: no weight."""

    def __init__(self, dim: int, eps: float, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.pow(x32.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.type_as(x)


class ClippedLinear(nn.Module):
    """transformers' ``Gemma4ClippableLinear``: a bias-free ``nn.Linear`` (``linear``) whose input and output are
    clamped, with ``clip`` (E2B, E4B), to bounds kept as scalar buffers (±inf until a checkpoint sets them).

    peft refuses this wrapper; LoRA goes on the inner ``linear`` (target ``...\\.(q_proj|...|down_proj)\\.linear``),
    so the clamps bound the adapted layer: input clamped before base and LoRA, their sum clamped after."""

    input_min: torch.Tensor
    input_max: torch.Tensor
    output_min: torch.Tensor
    output_max: torch.Tensor

    def __init__(self, in_features: int, out_features: int, clip: bool):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.clip = clip
        if clip:
            for name, bound in (("input_min", -1), ("input_max", 1), ("output_min", -1), ("output_max", 1)):
                self.register_buffer(name, torch.tensor(bound * float("inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.clip:
            return self.linear(x)
        y = self.linear(torch.clamp(x, self.input_min, self.input_max))
        return torch.clamp(y, self.output_min, self.output_max)


class Gemma4VisionPatchEmbedder(nn.Module):
    def __init__(self, config: Gemma4VisionConfig):
        super().__init__()
        self.input_proj = nn.Linear(3 * config.patch_size**2, config.hidden_size, bias=False)
        table = torch.ones(2, config.position_embedding_size, config.hidden_size)  # x, y
        self.position_embedding_table = nn.Parameter(table)

    def forward(self, pixel_values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, P, 3 p^2) pixels in [0, 1], (B, P, 2) positions -> (B, P, D). Padding takes position (0, 0):
        transformers zeroes its position embedding, but no real patch sees a padding one: no token changes."""
        x = self.input_proj((2 * (pixel_values - 0.5)).to(self.input_proj.weight.dtype))
        xy = positions.clamp(min=0)
        table = self.position_embedding_table
        position = F.embedding(xy[..., 0], table[0]) + F.embedding(xy[..., 1], table[1])  # (B, P, D)
        return x + position  # x and y summed first, as transformers: the same bf16 bits


def rope_2d(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """(B, P, 2) positions -> cos, sin (B, P, head_dim) in ``dtype``: x's angles on the first half, y's on the
    second, each half laid out as 1D RoPE's (``rotate_half`` pairs channel i with i + head_dim / 4)."""
    exponents = torch.arange(0, head_dim // 2, 2, device=positions.device).float() / (head_dim // 2)
    freqs = positions[..., None].float() * (1.0 / theta**exponents)  # (B, P, 2, head_dim / 4)
    x, y = freqs[:, :, 0], freqs[:, :, 1]
    angles = torch.cat((x, x, y, y), dim=-1)  # (B, P, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, P, H, hd); cos, sin (B, P, hd). Each half of a head rotated as 1D RoPE rotates a whole head."""
    parts = x.unflatten(-1, (2, 2, -1))  # (B, P, H, axis, half, hd / 4)
    rotated = torch.stack((-parts[..., 1, :], parts[..., 0, :]), dim=-2).flatten(-3)  # rotate_half per axis
    return x * cos[:, :, None] + rotated * sin[:, :, None]


class Gemma4VisionAttention(nn.Module):
    def __init__(self, config: Gemma4VisionConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.groups = config.num_attention_heads // config.num_key_value_heads
        self.dropout = config.attention_dropout or 0.0
        q_width = config.num_attention_heads * self.head_dim
        kv_width = config.num_key_value_heads * self.head_dim
        clip = config.use_clipped_linears
        self.q_proj = ClippedLinear(config.hidden_size, q_width, clip)
        self.k_proj = ClippedLinear(config.hidden_size, kv_width, clip)
        self.v_proj = ClippedLinear(config.hidden_size, kv_width, clip)
        self.o_proj = ClippedLinear(q_width, config.hidden_size, clip)
        self.q_norm = Gemma4RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = Gemma4RMSNorm(self.head_dim, config.rms_norm_eps)
        self.v_norm = Gemma4RMSNorm(self.head_dim, config.rms_norm_eps, with_scale=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """x (B, P, D); valid (B, P): the keys every query sees (all patches of its image, no padding)."""
        B, P, _ = x.shape
        heads = (B, P, -1, self.head_dim)
        q = apply_rope_2d(self.q_norm(self.q_proj(x).view(heads)), cos, sin).transpose(1, 2)  # (B, H, P, hd)
        k = apply_rope_2d(self.k_norm(self.k_proj(x).view(heads)), cos, sin).transpose(1, 2)  # (B, KV, P, hd)
        v = self.v_norm(self.v_proj(x).view(heads)).transpose(1, 2)
        if self.groups > 1:
            k, v = k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)
        dropout = self.dropout if self.training else 0.0
        mask = valid[:, None, None, :]  # (B, 1, 1, P)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, P, -1))  # y: (B, H, P, hd)


class Gemma4VisionMLP(nn.Module):
    def __init__(self, config: Gemma4VisionConfig):
        super().__init__()
        clip = config.use_clipped_linears
        self.gate_proj = ClippedLinear(config.hidden_size, config.intermediate_size, clip)
        self.up_proj = ClippedLinear(config.hidden_size, config.intermediate_size, clip)
        self.down_proj = ClippedLinear(config.intermediate_size, config.hidden_size, clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Gemma4VisionEncoderLayer(nn.Module):
    def __init__(self, config: Gemma4VisionConfig):
        super().__init__()
        eps = config.rms_norm_eps
        self.self_attn = Gemma4VisionAttention(config)
        self.mlp = Gemma4VisionMLP(config)
        self.input_layernorm = Gemma4RMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = Gemma4RMSNorm(config.hidden_size, eps)
        self.pre_feedforward_layernorm = Gemma4RMSNorm(config.hidden_size, eps)
        self.post_feedforward_layernorm = Gemma4RMSNorm(config.hidden_size, eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, valid))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma4VisionEncoder(nn.Module):
    def __init__(self, config: Gemma4VisionConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(Gemma4VisionEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, P, D), positions (B, P, 2), valid (B, P) -> (B, P, D)."""
        cos, sin = rope_2d(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, valid)
        return x


def pool_patches(x: torch.Tensor, positions: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P, D) patch features (zero on padding), (B, P, 2) positions -> (B, P / k^2, D) float32 means of each
    k x k block of an image's patch grid, its blocks row-major from the first, and (B, P / k^2) bool: the blocks
    that hold patches. Padding counts as patch (0, 0), adding zero.

    As transformers, a (B, P, P / k^2) matrix of weights 1 / k^2 times the patches: the same sums in the same
    order, so bf16 tokens equal its bit for bit (a scatter-add's differ in the last bit now and then). The matrix
    holds P^2 / k^2 floats an image: 2.8 MB at 280 soft tokens, 45 MB at 1120."""
    B, P, D = x.shape
    if P % k**2:
        raise ValueError(
            f"{P} patches per image cannot pool {k} x {k}: the processor pads to a multiple of {k**2}"
        )
    xy = positions.clamp(min=0)
    columns = (xy[..., 0].amax(-1, keepdim=True) + 1) // k  # (B, 1): blocks per row of each image
    block = xy[..., 0] // k + columns * (xy[..., 1] // k)  # (B, P)
    weights = x.new_zeros(B, P, P // k**2, dtype=torch.float32).scatter_(2, block[..., None], 1 / k**2)
    return weights.transpose(1, 2) @ x.float(), weights.amax(1) > 0


def soft_tokens_per_image(image_position_ids: torch.Tensor, pooling_kernel_size: int) -> torch.Tensor:
    """(B, P, 2) positions -> (B,) long: the soft tokens each image gives (its real patches / k^2)."""
    return (image_position_ids != -1).all(-1).sum(-1) // pooling_kernel_size**2


class Gemma4VisionModel(nn.Module):
    """Patches -> soft tokens (see the module's docstring); ``standardize``: minus ``std_bias``, times
    ``std_scale`` (buffers, as transformers keeps them)."""

    std_bias: torch.Tensor
    std_scale: torch.Tensor

    def __init__(self, config: Gemma4VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embedder = Gemma4VisionPatchEmbedder(config)
        self.encoder = Gemma4VisionEncoder(config)
        if config.standardize:
            self.register_buffer("std_bias", torch.zeros(config.hidden_size))
            self.register_buffer("std_scale", torch.ones(config.hidden_size))

    def forward(self, pixel_values: torch.Tensor, pixel_position_ids: torch.Tensor) -> torch.Tensor:
        """(B, P, 3 p^2) patches, (B, P, 2) long positions -> (S, D) soft tokens in the weights' dtype, each image's
        in turn: S = ``soft_tokens_per_image(pixel_position_ids, k).sum()``."""
        padding = (pixel_position_ids == -1).all(-1)  # (B, P)
        x = self.patch_embedder(pixel_values, pixel_position_ids)
        x = self.encoder(x, pixel_position_ids, ~padding).masked_fill(padding[..., None], 0.0)  # (B, P, D)
        pooled, filled = pool_patches(x, pixel_position_ids, self.config.pooling_kernel_size)
        # sqrt(D) scaling and standardisation in float32, as transformers (the scaled values may pass fp16's range)
        tokens = pooled.to(x.dtype).float()[filled] * self.config.hidden_size**0.5  # (S, D)
        if self.config.standardize:
            tokens = (tokens - self.std_bias.float()) * self.std_scale.float()
        return tokens.to(x.dtype)


class HasHiddenSize(Protocol):
    @property
    def hidden_size(self) -> int: ...


class VisionAndTextConfig(Protocol):
    """What the projector reads of a family config (Gemma 4's): the tower's config and the decoder's width."""

    @property
    def vision_config(self) -> Gemma4VisionConfig: ...

    @property
    def text_config(self) -> HasHiddenSize: ...


class Gemma4MultimodalEmbedder(nn.Module):
    """(S, vision D) soft tokens -> (S, text D): a scale-free RMSNorm (the tower's eps), then a bias-free matrix."""

    def __init__(self, config: VisionAndTextConfig):
        super().__init__()
        vision = config.vision_config
        self.embedding_pre_projection_norm = Gemma4RMSNorm(
            vision.hidden_size, vision.rms_norm_eps, with_scale=False
        )
        self.embedding_projection = nn.Linear(vision.hidden_size, config.text_config.hidden_size, bias=False)

    def forward(self, soft_tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(self.embedding_pre_projection_norm(soft_tokens))
