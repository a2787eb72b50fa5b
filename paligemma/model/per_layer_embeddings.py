"""Gemma 4's per-layer embeddings (PLE): a second, narrow embedding of each token for every decoder layer.

The decoder holds one table of ``num_hidden_layers * hidden_size_per_layer_input`` columns
(``embed_tokens_per_layer``, scaled by ``sqrt(hidden_size_per_layer_input)``) and a projection of the input
embeddings to the same width (``per_layer_model_projection``, times ``hidden_size ** -0.5``, then normed per layer
by ``per_layer_projection_norm``); a layer's input is the two summed, times ``2 ** -0.5``. Each layer then adds a
residual: its output gated by the tanh GELU of ``per_layer_input_gate``, multiplied by its input, projected back
(``per_layer_projection``) and normed (``post_per_layer_input_norm``). Module names are transformers' (the
decoder's and the layer's own attributes), so state dicts and adapters match.

The token part reads token ids: an assembled model passes its ids with image tokens replaced by the pad id (as
transformers' Gemma4Model does), the projection part the embeddings with the image features in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from paligemma.model.gemma import GemmaRMSNorm
from paligemma.model.gemma_config import GemmaConfig


def ple_width(config: GemmaConfig) -> int:
    """Each layer's per-layer input width; 0 where the config has no per-layer embeddings."""
    return getattr(config, "hidden_size_per_layer_input", 0) or 0


class PerLayerEmbeddings:
    """The decoder's half (a mixin of the decoder module): the table, the projection and its norm."""

    config: GemmaConfig
    embed_tokens_per_layer: nn.Embedding
    per_layer_model_projection: nn.Linear
    per_layer_projection_norm: GemmaRMSNorm

    def init_per_layer_embeddings(self, config: GemmaConfig) -> None:
        width, layers = ple_width(config), config.num_hidden_layers
        vocab = getattr(config, "vocab_size_per_layer_input", config.vocab_size)
        self.embed_tokens_per_layer = nn.Embedding(vocab, layers * width, padding_idx=config.pad_token_id)
        self.per_layer_model_projection = nn.Linear(config.hidden_size, layers * width, bias=False)
        self.per_layer_projection_norm = GemmaRMSNorm(
            width, eps=config.rms_norm_eps, offset=config.norm_offset
        )

    def per_layer_inputs(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor | None:
        """(B, T) ids and their (B, T, D) input embeddings -> (B, T, num_layers, width) each layer's input; None
        without per-layer embeddings."""
        width = ple_width(self.config)
        if not width:
            return None
        shape = (*input_ids.shape, self.config.num_hidden_layers, width)
        weight = self.embed_tokens_per_layer.weight
        scale = torch.tensor(width**0.5, dtype=weight.dtype, device=weight.device)
        tokens = (self.embed_tokens_per_layer(input_ids) * scale).reshape(shape)
        projected = self.per_layer_model_projection(inputs_embeds) * self.config.hidden_size**-0.5
        projected = self.per_layer_projection_norm(projected.reshape(shape))
        return (projected + tokens) * 2.0**-0.5


class PerLayerInput:
    """A decoder layer's half (a mixin of the layer module): the gated residual of its per-layer input."""

    per_layer_input_gate: nn.Linear
    per_layer_projection: nn.Linear
    post_per_layer_input_norm: GemmaRMSNorm

    def init_per_layer_input(self, config: GemmaConfig) -> None:
        width = ple_width(config)
        self.per_layer_input_gate = nn.Linear(config.hidden_size, width, bias=False)
        self.per_layer_projection = nn.Linear(width, config.hidden_size, bias=False)
        self.post_per_layer_input_norm = GemmaRMSNorm(
            config.hidden_size, eps=config.rms_norm_eps, offset=config.norm_offset
        )

    def per_layer_residual(self, x: torch.Tensor, per_layer_input: torch.Tensor) -> torch.Tensor:
        """(B, T, D) layer output, (B, T, width) its per-layer input -> (B, T, D) what the layer adds."""
        gated = F.gelu(self.per_layer_input_gate(x), approximate="tanh") * per_layer_input
        return self.post_per_layer_input_norm(self.per_layer_projection(gated))
