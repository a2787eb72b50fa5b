"""Attention kernels: grouped-query attention with optional tanh soft-capping, whole or in query chunks.

Each query row's softmax is independent of the others, so splitting the queries into chunks is exact. In training
each chunk is checkpointed: its scores are recomputed in the backward pass instead of saved, so the memory of a
layer's attention grows linearly with the sequence, not with its square. Layers without a soft-cap run SDPA
instead, whose flash kernel (picked on CPU with a boolean mask and grouped heads too) holds no scores either.
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from paligemma.model.precision import native_bf16_cpu

QUERY_CHUNK_SIZE = 512  # queries per chunk; a sequence up to this long (224 px: ~280) runs in one piece


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma 2's tanh soft-capping into (-cap, cap), in x's dtype; cap None leaves x as it is."""
    return x if cap is None else torch.tanh(x / cap) * cap


def grouped_decoding_is_faster(q: torch.Tensor) -> bool:
    """Whether one query's attention (a decode step) runs faster as ``grouped_attention``'s matmuls than as SDPA:
    in fp32, and in bf16 on a CPU with bf16 instructions, where torch's SDPA kernel, tiled for many queries, is
    several times slower at one. Without them bf16 matmuls are emulated and SDPA wins (bench/bench_decode.py)."""
    native_bf16 = q.dtype == torch.bfloat16 and q.device.type == "cpu" and native_bf16_cpu()
    return q.dtype == torch.float32 or native_bf16


def grouped_attention(q, k, v, mask, scale: float, cap: float | None, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention with scores soft-capped before mask and softmax (when ``cap``), softmax in float32, as
    transformers' eager Gemma computes it. The query heads of a KV group share one product with its keys:
    keys and values are never repeated per head.

    q (B, H, T, hd); k, v (B, n_kv, L, hd); mask (B, 1, T, L) boolean, True where allowed. Returns (B, H, T, hd).
    """
    B, H, T, hd = q.shape
    n_kv, L = k.shape[1], k.shape[2]
    q = q.reshape(B * n_kv, H // n_kv * T, hd)  # heads of a group are adjacent: group-major rows
    # bmm on 3-d views: matmul copies the keys of a lone group (B * n_kv = 1) before multiplying
    k, v = k.reshape(B * n_kv, L, hd), v.reshape(B * n_kv, L, hd)
    scores = softcap(torch.bmm(q, k.transpose(1, 2)) * scale, cap).view(B, n_kv, H // n_kv, T, L)
    scores = scores.masked_fill(~mask[:, :, None], torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return torch.bmm(probs.view(B * n_kv, -1, L), v).view(B, H, T, hd)


def chunked_attention(
    q, k, v, mask, scale: float, cap: float | None, dropout_p: float = 0.0, chunk_size: int = QUERY_CHUNK_SIZE
) -> torch.Tensor:
    """``grouped_attention`` over chunks of ``chunk_size`` queries, each checkpointed when autograd records:
    peak memory O(chunk_size * L) instead of O(T * L), same result."""
    if q.shape[2] <= chunk_size:
        return grouped_attention(q, k, v, mask, scale, cap, dropout_p)
    records = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    outputs = []
    for start in range(0, q.shape[2], chunk_size):
        q_chunk, mask_chunk = q[:, :, start : start + chunk_size], mask[:, :, start : start + chunk_size]
        args = (q_chunk, k, v, mask_chunk, scale, cap, dropout_p)
        if records:
            outputs.append(checkpoint(grouped_attention, *args, use_reentrant=False))
        else:
            outputs.append(grouped_attention(*args))
    return torch.cat(outputs, dim=2)  # (B, H, T, hd)
