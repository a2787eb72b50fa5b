"""Gemma decoder, 1, 2 and 3 by config (paligemma/model/gemma_config.py): RMSNorm, rotary embeddings, grouped-query attention with a KV cache,
GeGLU MLP. Gemma 2 (PaliGemma 2) adds norms after attention and around the MLP, tanh soft-capping of
attention scores and logits, and a sliding window on alternate layers. Gemma 3 drops the soft-caps, norms each
query and key head, and gives sliding and full layers RoPE bases of their own."""

from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from paligemma.model.attention import QUERY_CHUNK_SIZE, chunked_attention, grouped_decoding_is_faster
from paligemma.model.decode_weights import DecodeWeights, product, products
from paligemma.model.gemma_config import GemmaConfig
from paligemma.model.kv_cache import KVCache, PassThroughKV, SharedKVCache, SlidingKVCache


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
    """RMSNorm in float32, scaled by ``offset + w`` (Gemma 1-3 store the offset from 1, a fresh norm ``w = 0``;
    Gemma 4 stores the scale, ``offset=0``, a fresh norm ``w = 1``), or by nothing (``scaled=False``: no weight)."""

    def __init__(self, dim: int, eps: float = 1e-6, offset: float = 1.0, scaled: bool = True):
        super().__init__()
        self.eps = eps
        self.offset = offset
        if scaled:
            self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), x.shape[-1:], eps=self.eps)  # x * rsqrt(mean(x^2) + eps), in float32
        if self.weight is None:
            return y.type_as(x)
        scale = self.offset + self.weight.float() if self.offset else self.weight.float()
        return (y * scale).type_as(x)


class GemmaRotaryEmbedding(nn.Module):
    """Rotary angles per layer type: (base, linear scaling factor) from ``GemmaConfig.rope_by_layer_type``, over
    the layer type's ``head_dim_of``; where ``rotary_fraction_of`` < 1 (Gemma 4's full layers) only the first
    ``int(fraction * head_dim // 2)`` angles turn, the others are 0 (cos 1, sin 0: transformers' "proportional")."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.rope = config.rope_by_layer_type
        self.dims = {
            layer_type: (config.head_dim_of(layer_type), config.rotary_fraction_of(layer_type))
            for layer_type in self.rope
        }

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[dict, dict]:
        """position_ids (B, T) -> cos, sin: layer type -> (B, T, head_dim) in x's dtype; sin's first half
        negated (see ``apply_rotary``)."""
        cos, sin = {}, {}
        for layer_type, (theta, factor) in self.rope.items():
            head_dim, fraction = self.dims[layer_type]
            exponents = torch.arange(0, head_dim, 2, device=x.device).float() / head_dim
            inv_freq = 1.0 / (theta**exponents) / factor
            if fraction < 1.0:
                inv_freq[int(fraction * head_dim // 2) :] = 0.0
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
    """Grouped-query attention. Per layer type (``GemmaConfig``): head width and KV heads (``head_dim_of``,
    ``kv_heads_of``), no value projection where values are the keys' projection (``keys_are_values``: before the
    key norm and RoPE), a scale-free norm of the values (``v_norm``). ``shares_kv``: the layer has no key or
    value projection and attends to an earlier layer's keys and values, read from its cache (``SharedKVCache``)."""

    def __init__(self, config: GemmaConfig, layer_type: str = "full_attention", shares_kv: bool = False):
        super().__init__()
        self.layer_type = layer_type  # which of the decoder's masks this layer reads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.kv_heads_of(layer_type)
        self.head_dim = config.head_dim_of(layer_type)
        self.scale = config.attention_scale
        self.softcap = config.attention_softcap
        self.dropout = config.attention_dropout
        self.query_chunk_size = QUERY_CHUNK_SIZE
        self.shares_kv = shares_kv
        kv_width = self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        if not shares_kv:
            self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
            if not config.keys_are_values(layer_type):
                self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        norm = partial(GemmaRMSNorm, self.head_dim, eps=config.rms_norm_eps, offset=config.norm_offset)
        self.qk_norm = config.qk_norm
        if self.qk_norm:
            self.q_norm = norm()
            if not shares_kv:
                self.k_norm = norm()
        self.v_norm = norm(scaled=False) if config.v_norm and not shares_kv else None

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
        if self.qk_norm:
            q = self.q_norm(q)
        q = apply_rotary(q, cos[:, queries_from:], sin[:, queries_from:])  # (B, H, Tq, hd)
        if self.shares_kv:
            if kv_cache is None:
                raise ValueError("a layer that shares another's keys and values needs its SharedKVCache")
            k, v = kv_cache.read()  # what the source layer attended to in this call: (B, n_kv, L, hd)
        else:
            assert k is not None
            k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
            v = k if v is None else v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
            if self.qk_norm:
                k = self.k_norm(k)
            if self.v_norm is not None:
                v = self.v_norm(v)
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

    @property
    def qkv_linears(self) -> tuple[nn.Module, ...]:
        """The projections the layer has, in the order queries, keys, values (a layer sharing KV: queries only;
        K = V: no values). A property: peft replaces the attributes with its wrappers."""
        return tuple(getattr(self, name) for name in ("q_proj", "k_proj", "v_proj") if hasattr(self, name))

    def project_qkv(
        self, x: torch.Tensor, queries_from: int = 0, decode_weights: DecodeWeights | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(B, T, D) -> queries (B, T - queries_from, H * hd), keys and values (B, T, n_kv * hd); None for the
        projections the layer lacks (``qkv_linears``)."""
        linears = self.qkv_linears
        if not queries_from:  # one product where decode_weights holds them side by side
            out = products(linears, x, decode_weights)
        else:
            q = product(linears[0], x[:, queries_from:], decode_weights)
            out = (q, *(product(linear, x, decode_weights) for linear in linears[1:]))
        q, k, v = (*out, None, None)[:3]
        assert q is not None
        return q, k, v


class GemmaMLP(nn.Module):
    def __init__(self, config: GemmaConfig, intermediate_size: int | None = None):
        super().__init__()
        width = intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=False)

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
    pre_ and post_feedforward_layernorm (transformers' names, so state dicts match). ``layer_idx`` picks the
    layer's MLP width (``intermediate_size_of``) and whether it shares an earlier layer's KV (``kv_sources``)."""

    def __init__(self, config: GemmaConfig, layer_type: str = "full_attention", layer_idx: int = 0):
        super().__init__()
        norm = partial(GemmaRMSNorm, config.hidden_size, eps=config.rms_norm_eps, offset=config.norm_offset)
        self.sandwich_norms = config.sandwich_norms
        self.input_layernorm = norm()
        shares_kv = config.kv_sources[layer_idx] is not None
        self.self_attn = GemmaAttention(config, layer_type, shares_kv)
        self.post_attention_layernorm = norm()
        self.mlp = GemmaMLP(config, config.intermediate_size_of(layer_idx))
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
        return x + self.post_feedforward_layernorm(self.feed_forward(x, decode_weights))

    def feed_forward(self, x: torch.Tensor, decode_weights: DecodeWeights | None = None) -> torch.Tensor:
        """The sandwich layer's feed-forward branch between its outer norms (Gemma 4 adds experts beside it)."""
        return self.mlp(self.pre_feedforward_layernorm(x), decode_weights)


class GemmaModel(nn.Module):
    layer_class: type[GemmaDecoderLayer] = GemmaDecoderLayer

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.layers = nn.ModuleList(
            self.layer_class(config, layer_type, i) for i, layer_type in enumerate(config.layer_types)
        )
        self.norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps, offset=config.norm_offset)
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
        """One cache per layer for ``max_seq_len`` slots; a sliding layer's holds only its window's; a layer that
        shares an earlier layer's keys and values (``kv_sources``) reads that layer's cache and holds none."""
        c = self.config
        caches: list[KVCache] = []
        for layer_type, source in zip(c.layer_types, c.kv_sources, strict=True):
            shape = (c.kv_heads_of(layer_type), c.head_dim_of(layer_type), dtype, device)
            if source is not None:
                caches.append(SharedKVCache(caches[source]))
            elif layer_type == "sliding_attention" and c.window:
                caches.append(SlidingKVCache(batch_size, min(c.window, max_seq_len), *shape))
            else:
                caches.append(KVCache(batch_size, max_seq_len, *shape))
        return caches

    def call_kv_caches(self) -> list[KVCache | None] | None:
        """A forward without caches (training): where layers share KV, the source layers pass their keys and
        values through (``PassThroughKV``) to the layers that read them (``SharedKVCache``), as in decoding."""
        sources = self.config.kv_sources
        if all(source is None for source in sources):
            return None
        read = {source for source in sources if source is not None}
        caches: list[KVCache | None] = [PassThroughKV() if i in read else None for i in range(len(sources))]
        for i, source in enumerate(sources):
            if source is not None:
                caches[i] = SharedKVCache(cast(KVCache, caches[source]))
        return caches

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        masks: dict[str, torch.Tensor],
        kv_caches: list[KVCache] | None = None,
        outputs_from: int = 0,
        decode_weights: DecodeWeights | None = None,
        per_layer_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, D) embeddings -> (B, T - outputs_from, D) final-normed hidden states of the positions from
        ``outputs_from`` on (the last layer computes only those); ``masks`` from ``attention_masks``;
        ``per_layer_inputs``: see ``run_layers``."""
        cos, sin = self.rotary_emb(inputs_embeds, position_ids)
        return self.run_layers(
            inputs_embeds, cos, sin, masks, kv_caches, outputs_from, decode_weights, per_layer_inputs
        )

    def run_layers(
        self,
        x,
        cos,
        sin,
        masks: dict,
        kv_caches=None,
        outputs_from: int = 0,
        decode_weights=None,
        per_layer_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``forward`` with the rotary angles given: decoding computes them once per generation call.
        ``per_layer_inputs`` (B, T, num_layers, P): each layer's own input (Gemma 4's per-layer embeddings)."""
        if kv_caches is None:
            kv_caches = self.call_kv_caches()
        for i, layer in enumerate(self.layers):
            cache = kv_caches[i] if kv_caches is not None else None
            queries_from = outputs_from if i == len(self.layers) - 1 else 0
            extra = () if per_layer_inputs is None else (per_layer_inputs[:, :, i],)
            if self.gradient_checkpointing and self.training:
                x = checkpoint(
                    layer, x, cos, sin, masks, cache, queries_from, None, *extra, use_reentrant=False
                )
            else:
                x = layer(x, cos, sin, masks, cache, queries_from, decode_weights, *extra)
        return self.norm(x)
