import peft
import pytest
import torch

from paligemma import PaliGemmaConfig
from paligemma.model.attention import chunked_attention, grouped_attention, softcap
from paligemma.model.gemma import GemmaAttention, attention_mask_4d
from paligemma.model.lora import LoraSettings, add_lora, lora_config
from paligemma.tiny import random_batch
from tests.helpers import SMALL_CONFIGS, hf_reference, ours_from_hf, randomize_


def eager_attention(q, k, v, mask, scale: float, cap: float | None) -> torch.Tensor:
    """The reference: transformers' eager Gemma 2 attention (keys and values repeated per head, full scores)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, H, L, hd)
    scores = softcap(torch.matmul(q, k.transpose(2, 3)) * scale, cap)  # (B, H, T, L)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.matmul(scores.softmax(-1, dtype=torch.float32), v)


def inputs(n_kv: int, queries: int, window: int | None, seed: int = 0):
    """q (2, 4, queries, 8) over 23 keys: row 0 has 3 pads at the end, row 1 a 9-token prefix; the queries are
    the last ``queries`` key slots (a cache's continuation or the last layer's answer positions)."""
    gen = torch.Generator().manual_seed(seed)
    L = 23
    q = torch.randn(2, 4, queries, 8, generator=gen, requires_grad=True)
    k = torch.randn(2, n_kv, L, 8, generator=gen, requires_grad=True)
    v = torch.randn(2, n_kv, L, 8, generator=gen, requires_grad=True)
    valid = torch.ones(2, L, dtype=torch.long)
    valid[0, -3:] = 0
    prefix = torch.zeros(2, L, dtype=torch.bool)
    prefix[0, :6], prefix[1, :9] = True, True
    mask = attention_mask_4d(valid, torch.arange(L - queries, L), prefix, window)
    return q, k, v, mask


@pytest.mark.parametrize("cap", [None, 2.0], ids=["no-cap", "cap"])
@pytest.mark.parametrize("n_kv", [1, 2, 4], ids=["mqa", "gqa", "mha"])
@pytest.mark.parametrize("window", [None, 4], ids=["global", "sliding"])
@pytest.mark.parametrize("queries", [23, 11])
def test_chunked_attention_matches_eager_with_gradients(cap, n_kv, window, queries):
    """Chunks of 5 queries (the last one short): output and the gradients of q, k and v equal the eager
    reference's, with padding, a bidirectional prefix, a window and grouped heads."""
    q, k, v, mask = inputs(n_kv, queries, window)
    grad_out = torch.randn(2, 4, queries, 8, generator=torch.Generator().manual_seed(1))
    results = []
    for attend in (eager_attention, lambda *a: chunked_attention(*a, chunk_size=5)):
        out = attend(q, k, v, mask, 0.3, cap)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        results.append((out, *grads))
    for name, ours, reference in zip(("out", "dq", "dk", "dv"), results[1], results[0], strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_attention_without_autograd_and_one_query():
    """Under no_grad the chunks run without checkpoints; one query (decoding) takes the whole-sequence path."""
    q, k, v, mask = inputs(2, 23, None)
    with torch.no_grad():
        torch.testing.assert_close(chunked_attention(q, k, v, mask, 0.3, 2.0, chunk_size=4),
                                   eager_attention(q, k, v, mask, 0.3, 2.0), rtol=1e-5, atol=1e-6)  # fmt: skip
        one = (q[:, :, -1:], k, v, mask[:, :, -1:], 0.3, 2.0)
        torch.testing.assert_close(grouped_attention(*one), eager_attention(*one), rtol=1e-5, atol=1e-6)


def test_chunks_save_no_scores_for_backward():
    """What autograd keeps for the backward pass is the inputs (q, k, v and the mask), no chunk's scores."""
    q, k, v = (torch.randn(1, 4, 64, 4, requires_grad=True) for _ in range(3))
    mask = torch.ones(1, 1, 64, 64, dtype=torch.bool)
    storages = set()

    def pack(t):
        storages.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_attention(q, k, v, mask, 0.5, 2.0, chunk_size=8)
    inputs = {t.untyped_storage().data_ptr() for t in (q, k, v, mask)}
    assert storages and storages <= inputs


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_chunked_paligemma2_lora_step_matches_transformers_eager(checkpointing):
    """PaliGemma 2 with 3-query chunks (prompts of up to 13 tokens, a window of 5) against transformers' eager
    attention + peft, every weight random: equal logits, loss and LoRA gradients."""
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["gemma2"])
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    attention_layers = [m for m in ours.modules() if isinstance(m, GemmaAttention)]
    for layer in attention_layers:
        layer.query_chunk_size = 3
    if checkpointing:
        ours.gradient_checkpointing_enable()
    batch = random_batch(config, prefix_lens=[3, 7, 5, 1], suffix_lens=[4, 2, 0, 6])
    assert batch["input_ids"].shape[1] > 3 * attention_layers[0].query_chunk_size
    with torch.no_grad():
        logits_gap = (hf(**batch).logits - ours(**batch).logits)[batch["attention_mask"].bool()].abs().max()
    assert logits_gap < 1e-4
    settings = LoraSettings(dropout=0.0)
    hf_lora = peft.get_peft_model(hf, lora_config(settings)).train()
    ours_lora = add_lora(ours, settings).train()
    randomize_(hf_lora, seed=1)
    ours_lora.load_state_dict(hf_lora.state_dict())
    hf_loss, our_loss = hf_lora(**batch).loss, ours_lora(**batch, return_logits=False).loss
    hf_loss.backward()
    our_loss.backward()
    assert abs(hf_loss.item() - our_loss.item()) < 1e-5
    hf_grads = {n: p.grad for n, p in hf_lora.named_parameters() if p.requires_grad}
    our_grads = {n: p.grad for n, p in ours_lora.named_parameters() if p.requires_grad}
    assert hf_grads.keys() == our_grads.keys() and any("lora_B" in n for n in our_grads)
    for name, grad in hf_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
