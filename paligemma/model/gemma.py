"""Gemma decoder, 1, 2 and 3 by config (paligemma/model/gemma_config.py): RMSNorm, rotary embeddings, grouped-query attention with a KV cache,
GeGLU MLP. Gemma 2 (PaliGemma 2) adds norms after attention and around the MLP, tanh soft-capping of
attention scores and logits, and a sliding window on alternate layers. Gemma 3 drops the soft-caps, norms each
query and key head, and gives sliding and full layers RoPE bases of their own."""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from paligemma.model.attention import QUERY_CHUNK_SIZE, chunked_attention, grouped_decoding_is_faster
from paligemma.model.decode_weights import DecodeWeights, product, products
from paligemma.model.gemma_config import GemmaConfig
from paligemma.model.kv_cache import KVCache, SlidingKVCache


class ModelOutput(dict):
    """A dict whose keys read as attributes too: ``out["logits"]`` and ``out.logits``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def attention_mask_4d(
    valid_kv: torch.Tensor,
    q_positions: torch.Tensor,
    spans_kv: torch.Tensor | None = None,
    window: int | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask (B, 1, T, L), True where query t may attend to key l: causal, and both ways inside a span.

    valid_kv: (B, L) 1 for real tokens, 0 for padding. q_positions: (T,) key index of each query.
    spans_kv: (B, L) the bidirectional spans (``same_span``; PaliGemma: its prefix is one); None means purely causal.
    window: a sliding window over the causal part (t - window < l <= t, counted in slots as transformers
    does); a span stays whole. Spans are unmasked first and padding masked after, so a span never sees a pad.
    segment_ids: (B, L) the packed row (segment) of each token; a token attends only within its own, so spans,
    windows and causal parts all stop at segment boundaries.
    """
    kv_idx = torch.arange(valid_kv.shape[1], device=valid_kv.device)
    causal = kv_idx[None, :] <= q_positions[:, None]  # (T, L)
    if window is not None:
        causal = causal & (kv_idx[None, :] > q_positions[:, None] - window)
    allowed = causal[None]  # (1, T, L)
    if spans_kv is not None:
        allowed = allowed | same_span(spans_kv, q_positions)
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, q_positions, None] == segment_ids[:, None, :])  # (B, T, L)
    allowed = allowed & valid_kv[:, None, :].bool()
    allowed = allowed | (kv_idx[None, :] == q_positions[:, None])  # a pad query sees itself: no empty rows
    return allowed[:, None]


def same_span(spans_kv: torch.Tensor, q_positions: torch.Tensor) -> torch.Tensor:
    """(B, T, L) True where query t and key l lie in one bidirectional span. spans_kv: (B, L) long, k > 0 on the
    tokens of a row's k-th span, 0 on the others (they attend causally only)."""
    spans_q = spans_kv[:, q_positions]  # (B, T)
    return (spans_q[:, :, None] == spans_kv[:, None, :]) & (spans_q[:, :, None] > 0)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy in float32; position t predicts labels[t + 1]."""
    shifted = F.pad(labels, (0, 1), value=ignore_index)[:, 1:]
    return F.cross_entropy(logits.float().flatten(0, 1), shifted.flatten(), ignore_index=ignore_index)


class GemmaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), x.shape[-1:], eps=self.eps)  # x * rsqrt(mean(x^2) + eps), in float32
        return (y * (1.0 + self.weight.float())).type_as(x)


class GemmaRotaryEmbedding(nn.Module):
    """Rotary angles per layer type: (base, linear scaling factor) from ``GemmaConfig.rope_by_layer_type``."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.rope = config.rope_by_layer_type

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[dict, dict]:
        """position_ids (B, T) -> cos, sin: layer type -> (B, T, head_dim) in x's dtype; sin's first half
        negated (see ``apply_rotary``)."""
        exponents = torch.arange(0, self.head_dim, 2, device=x.device).float() / self.head_dim
        cos, sin = {}, {}
        for layer_type, (theta, factor) in self.rope.items():
            inv_freq = 1.0 / (theta**exponents) / factor
            freqs = position_ids[..., None].float() * inv_freq  # (B, T, hd/2)
            emb = torch.cat((freqs, freqs), dim=-1)
            sin_first, sin_second = emb.sin().chunk(2, dim=-1)
            cos[layer_type] = emb.cos().to(x.dtype)
            sin[layer_type] = torch.cat((-sin_first, sin_second), dim=-1).to(x.dtype)  # see apply_rotary
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd); cos, sin (B, T, hd), sin's first half negated. x * cos + rotate_half(x) * sin with
    rotate_half(x) = (-x2, x1), as one roll of the halves, the sign carried by sin: the same bits, fewer calls."""
    half = x.shape[-1] // 2
    return x * cos[:, None] + x.roll(half, dims=-1) * sin[:, None]


class GemmaAttention(nn.Module):
    def __init__(self, config: GemmaConfig, layer_type: str = "full_attention"):
        super().__init__()
        self.layer_type = layer_type  # which of the decoder's masks this layer reads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.attention_scale
        self.softcap = config.attention_softcap
        self.dropout = config.attention_dropout
        self.query_chunk_size = QUERY_CHUNK_SIZE
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.qk_norm = config.qk_norm
        if self.qk_norm:
            self.q_norm = GemmaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = GemmaRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        x,
        cos,
        sin,
        masks: dict,
        kv_cache: KVCache | None = None,
        queries_from: int = 0,
        decode_weights: DecodeWeights | None = None,
    ):
        """(B, T, D) -> (B, T - queries_from, D): keys and values from every position, queries from
        ``queries_from`` on (training's last layer: only the positions the loss reads). cos, sin and masks map
        layer types to their tensors; the products run on ``decode_weights`` where given (decode_weights.py)."""
        B, T, _ = x.shape
        Tq = T - queries_from
        cos, sin = cos[self.layer_type], sin[self.layer_type]  # (B, T, hd)
        q, k, v = self.project_qkv(x, queries_from, decode_weights)
        q = q.view(B, Tq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Tq, hd)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q, cos[:, queries_from:], sin[:, queries_from:])  # (B, H, Tq, hd)
        k = apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, n_kv, L, hd)
        grouped_decoding = kv_cache is not None and Tq == 1 and grouped_decoding_is_faster(q)
        if kv_cache is not None and grouped_decoding and q.dtype == torch.bfloat16:
            k, v = kv_cache.every_slot()  # the same shapes every step (oneDNN)
        mask = masks[self.layer_type][:, :, queries_from:, : k.shape[2]]  # decoding's masks span every slot
        dropout = self.dropout if self.training else 0.0
        if self.softcap is None and not grouped_decoding:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                scale=self.scale,
                enable_gqa=self.num_kv_heads != self.num_heads,
            )  # (B, H, T, hd)
        else:
            y = chunked_attention(q, k, v, mask, self.scale, self.softcap, dropout, self.query_chunk_size)
        return product(self.o_proj, y.transpose(1, 2).reshape(B, Tq, -1), decode_weights)

    def project_qkv(
        self, x: torch.Tensor, queries_from: int = 0, decode_weights: DecodeWeights | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(B, T, D) -> queries (B, T - queries_from, H * hd), keys and values (B, T, n_kv * hd)."""
        if not queries_from:  # one product where decode_weights holds the three side by side
            return products((self.q_proj, self.k_proj, self.v_proj), x, decode_weights)
        q = product(self.q_proj, x[:, queries_from:], decode_weights)
        return q, product(self.k_proj, x, decode_weights), product(self.v_proj, x, decode_weights)


class GemmaMLP(nn.Module):
    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, decode_weights: DecodeWeights | None = None) -> torch.Tensor:
        gate, up = self.project_gate_up(x, decode_weights)
        return product(self.down_proj, F.gelu(gate, approximate="tanh") * up, decode_weights)

    def project_gate_up(
        self, x: torch.Tensor, decode_weights: DecodeWeights | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(B, T, D) -> gate, up (B, T, intermediate_size)."""
        return products((self.gate_proj, self.up_proj), x, decode_weights)


class GemmaDecoderLayer(nn.Module):
    """Pre-norm residual block. In Gemma 1, post_attention_layernorm is the MLP's input norm; Gemma 2
    (``config.sandwich_norms``) norms the attention output with it, and the MLP's input and output with
    pre_ and post_feedforward_layernorm (transformers' names, so state dicts match)."""

    def __init__(self, config: GemmaConfig, layer_type: str = "full_attention"):
        super().__init__()
        norm = partial(GemmaRMSNorm, config.hidden_size, eps=config.rms_norm_eps)
        self.sandwich_norms = config.sandwich_norms
        self.input_layernorm = norm()
        self.self_attn = GemmaAttention(config, layer_type)
        self.post_attention_layernorm = norm()
        self.mlp = GemmaMLP(config)
        if self.sandwich_norms:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()

    def forward(
        self,
        x,
        cos,
        sin,
        masks: dict,
        kv_cache: KVCache | None = None,
        queries_from: int = 0,
        decode_weights: DecodeWeights | None = None,
    ):
        """(B, T, D) -> (B, T - queries_from, D), see ``GemmaAttention``."""
        attention = self.self_attn(
            self.input_layernorm(x), cos, sin, masks, kv_cache, queries_from, decode_weights
        )
        x = x[:, queries_from:]
        if not self.sandwich_norms:
            x = x + attention
            return x + self.mlp(self.post_attention_layernorm(x), decode_weights)
        x = x + self.post_attention_layernorm(attention)
        return x + self.post_feedforward_layernorm(
            self.mlp(self.pre_feedforward_layernorm(x), decode_weights)
        )


class GemmaModel(nn.Module):
    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(config, layer_type) for layer_type in config.layer_types
        )
        self.norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = GemmaRotaryEmbedding(config)
        self.gradient_checkpointing = False

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings times sqrt(hidden_size), the factor rounded to the weights' dtype."""
        weight = self.embed_tokens.weight
        normalizer = torch.tensor(self.config.hidden_size**0.5, dtype=weight.dtype, device=weight.device)
        return self.embed_tokens(input_ids) * normalizer

    def attention_masks(
        self,
        valid_kv: torch.Tensor,
        q_positions: torch.Tensor,
        spans_kv: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        mask_4d=attention_mask_4d,
    ) -> dict[str, torch.Tensor]:
        """The (B, 1, T, L) masks of ``mask_4d``, one per layer type the decoder has: ``attention_mask_4d``, or
        a function of the same arguments (Gemma 3: ``windowed_spans_mask_4d``)."""
        windows = {"full_attention": None, "sliding_attention": self.config.window}
        return {
            layer_type: mask_4d(valid_kv, q_positions, spans_kv, windows[layer_type], segment_ids)
            for layer_type in set(self.config.layer_types)
        }

    def make_kv_caches(self, batch_size: int, max_seq_len: int, dtype, device) -> list[KVCache]:
        """One cache per layer for ``max_seq_len`` slots; a sliding layer's holds only its window's."""
        c = self.config
        shape = (c.num_key_value_heads, c.head_dim, dtype, device)
        return [
            SlidingKVCache(batch_size, min(c.window, max_seq_len), *shape)
            if layer_type == "sliding_attention" and c.window
            else KVCache(batch_size, max_seq_len, *shape)
            for layer_type in c.layer_types
        ]

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        masks: dict[str, torch.Tensor],
        kv_caches: list[KVCache] | None = None,
        outputs_from: int = 0,
        decode_weights: DecodeWeights | None = None,
    ) -> torch.Tensor:
        """(B, T, D) embeddings -> (B, T - outputs_from, D) final-normed hidden states of the positions from
        ``outputs_from`` on (the last layer computes only those); ``masks`` from ``attention_masks``."""
        cos, sin = self.rotary_emb(inputs_embeds, position_ids)
        return self.run_layers(inputs_embeds, cos, sin, masks, kv_caches, outputs_from, decode_weights)

    def run_layers(
        self, x, cos, sin, masks: dict, kv_caches=None, outputs_from: int = 0, decode_weights=None
    ) -> torch.Tensor:
        """``forward`` with the rotary angles given: decoding computes them once per generation call."""
        for i, layer in enumerate(self.layers):
            cache = kv_caches[i] if kv_caches is not None else None
            queries_from = outputs_from if i == len(self.layers) - 1 else 0
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, masks, cache, queries_from, use_reentrant=False)
            else:
                x = layer(x, cos, sin, masks, cache, queries_from, decode_weights)
        return self.norm(x)
