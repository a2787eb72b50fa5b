"""Gemma 4's text decoder: ``GemmaModel`` driving ``Gemma4DecoderLayer``, with per-layer embeddings.

The attention (head widths per layer type, K = V, the value norm, partial RoPE, KV sharing through the caches)
and the norms are ``GemmaAttention``'s and ``GemmaRMSNorm``'s options, set by ``Gemma4TextConfig``'s capabilities;
what is Gemma 4's own is here and in its modules: the experts beside the MLP (experts.py), the per-layer
embeddings (per_layer_embeddings.py) and a stored scalar that multiplies each layer's output. Module names and
state dict keys are transformers' ``Gemma4TextModel``'s.

A caller runs it as any ``GemmaModel`` (``embed``, ``attention_masks``, ``make_kv_caches``, ``rotary_emb``,
``forward`` / ``run_layers``), plus ``per_layer_inputs(input_ids, inputs_embeds)``, passed on as
``per_layer_inputs=`` to ``forward`` and ``run_layers`` (None where the config has no per-layer embeddings).
"""

from __future__ import annotations

from functools import partial

import torch

from paligemma.model.decode_weights import DecodeWeights
from paligemma.model.experts import ExpertRouter, Experts
from paligemma.model.gemma import GemmaDecoderLayer, GemmaModel, GemmaRMSNorm
from paligemma.model.gemma4_config import Gemma4TextConfig
from paligemma.model.kv_cache import KVCache
from paligemma.model.per_layer_embeddings import PerLayerEmbeddings, PerLayerInput, ple_width


class Gemma4DecoderLayer(PerLayerInput, GemmaDecoderLayer):
    """Gemma 3's sandwich layer with Gemma 4's options; then, where the config has them, experts beside the MLP
    (their own norms around them, routed from the residual stream), the per-layer input's residual, and the output
    times ``layer_scalar`` (a persistent buffer, as in transformers' checkpoints)."""

    def __init__(self, config: Gemma4TextConfig, layer_type: str = "full_attention", layer_idx: int = 0):
        super().__init__(config, layer_type, layer_idx)
        self.register_buffer("layer_scalar", torch.ones(1))
        self.has_per_layer_input = bool(ple_width(config))
        if self.has_per_layer_input:
            self.init_per_layer_input(config)
        self.has_experts = config.enable_moe_block
        if config.enable_moe_block:
            assert config.num_experts and config.top_k_experts and config.moe_intermediate_size
            norm = partial(
                GemmaRMSNorm, config.hidden_size, eps=config.rms_norm_eps, offset=config.norm_offset
            )
            self.router = ExpertRouter(config, config.num_experts, config.top_k_experts)
            self.experts = Experts(config, config.num_experts, config.moe_intermediate_size)
            self.post_feedforward_layernorm_1 = norm()
            self.post_feedforward_layernorm_2 = norm()
            self.pre_feedforward_layernorm_2 = norm()

    def forward(
        self,
        x,
        cos,
        sin,
        masks: dict,
        kv_cache: KVCache | None = None,
        queries_from: int = 0,
        decode_weights: DecodeWeights | None = None,
        per_layer_input: torch.Tensor | None = None,
    ):
        """(B, T, D) -> (B, T - queries_from, D), see ``GemmaAttention``; ``per_layer_input`` (B, T, width)."""
        x = super().forward(x, cos, sin, masks, kv_cache, queries_from, decode_weights)
        if self.has_per_layer_input:
            if per_layer_input is None:
                raise ValueError("Gemma 4's per-layer embeddings need per_layer_inputs (Gemma4TextModel)")
            x = x + self.per_layer_residual(x, per_layer_input[:, queries_from:])
        return x * self.layer_scalar

    def feed_forward(self, x: torch.Tensor, decode_weights: DecodeWeights | None = None) -> torch.Tensor:
        mlp = super().feed_forward(x, decode_weights)
        if not self.has_experts:
            return mlp
        flat = x.reshape(-1, x.shape[-1])
        _, weights, index = self.router(flat)
        experts = self.experts(self.pre_feedforward_layernorm_2(flat), index, weights).reshape(x.shape)
        return self.post_feedforward_layernorm_1(mlp) + self.post_feedforward_layernorm_2(experts)


class Gemma4TextModel(PerLayerEmbeddings, GemmaModel):
    """transformers' Gemma4TextModel: embeddings, layers, final norm, rotary angles per layer type."""

    layer_class = Gemma4DecoderLayer
    config: Gemma4TextConfig

    def __init__(self, config: Gemma4TextConfig):
        super().__init__(config)
        if ple_width(config):
            self.init_per_layer_embeddings(config)

    def unused_checkpoint_keys(self) -> list[str]:
        """Keys of this module's state dict that hub checkpoints hold and it has no parameter for: the key and
        value projections and norms of the layers that share KV (transformers drops them on load too,
        ``_keys_to_ignore_on_load_unexpected``; they were never used)."""
        names = ("k_proj.weight", "v_proj.weight", "k_norm.weight")
        return [
            f"layers.{i}.self_attn.{name}"
            for i, source in enumerate(self.config.kv_sources)
            if source is not None
            for name in names
        ]
