"""Gemma 4's mixture of experts (26B-A4B: 128 experts, 8 a token), which runs beside the dense MLP of each layer.

``ExpertRouter`` (transformers' Gemma4TextRouter): a scale-free RMSNorm of the layer's residual stream, times a
learned scale and ``hidden_size ** -0.5``, a linear map to one score per expert, softmax in float32, the top k,
renormalised to sum to 1, each times its expert's learned scale. ``Experts`` (Gemma4TextExperts): each expert a
GeGLU MLP whose gate and up weights are stored side by side (``gate_up_proj``: experts x 2 * moe_intermediate x
hidden; ``down_proj``: experts x hidden x moe_intermediate), run on the tokens routed to it, its output weighted.

transformers computes no auxiliary (load-balancing) loss for Gemma 4: the router's probabilities are only recorded
(``output_router_logits``) and its causal-LM loss is the cross-entropy alone; so is ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from paligemma.model.gemma import GemmaRMSNorm
from paligemma.model.gemma_config import GemmaConfig


class ExpertRouter(nn.Module):
    def __init__(self, config: GemmaConfig, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.root_size = config.hidden_size**-0.5
        self.norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps, scaled=False)
        self.proj = nn.Linear(config.hidden_size, num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(config.hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, D) -> the (N, E) float32 probabilities, and per token its top k experts' (N, k) weights and ids."""
        scores = self.proj(self.norm(x) * self.scale * self.root_size)
        probabilities = F.softmax(scores, dim=-1, dtype=torch.float32)
        weights, index = torch.topk(probabilities, k=self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return probabilities, weights * self.per_expert_scale[index], index


class Experts(nn.Module):
    def __init__(self, config: GemmaConfig, num_experts: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.zeros(num_experts, 2 * intermediate_size, config.hidden_size))
        self.down_proj = nn.Parameter(torch.zeros(num_experts, config.hidden_size, intermediate_size))

    def forward(self, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(N, D) tokens, their (N, k) experts and weights -> (N, D), summed over each token's experts in
        transformers' order (expert by expert; within one, by rank, then token)."""
        out = torch.zeros_like(x)
        for expert in index.unique().tolist():  # ascending
            rank, token = torch.where(expert == index.T)
            gate, up = F.linear(x[token], self.gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(F.gelu(gate, approximate="tanh") * up, self.down_proj[expert])
            out.index_add_(0, token, (y * weights[token, rank, None]).to(out.dtype))
        return out
