import pytest
import torch

from paligemma.model.kv_cache import KVCache, SlidingKVCache


def masked_attention(q, k, v, mask):
    """q (B, n_kv, 1, hd); k, v (B, n_kv, L, hd); mask (B, 1, 1, L): plain softmax attention."""
    scores = (q @ k.transpose(2, 3)).masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def window_mask(batch_size: int, total: int, window: int, seed: int = 0) -> torch.Tensor:
    """(B, 1, total, total) random bits inside each query's window (q - window < a <= q), the query's own key
    always on: any pattern a sliding layer's mask can take, padding and prefix included."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.arange(total)
    in_window = (a[None, :] <= a[:, None]) & (a[None, :] > a[:, None] - window)
    bits = torch.rand(batch_size, 1, total, total, generator=gen) < 0.6
    return (bits & in_window) | torch.eye(total, dtype=torch.bool)


@pytest.mark.parametrize(
    ("prompt_len", "window"),
    [(7, 3), (2, 4), (4, 1)],
    ids=["prompt-past-window", "decode-crosses", "window-1"],
)
def test_ring_attends_as_the_full_cache_does(prompt_len, window):
    """Every decode step over the ring's slots, masked by ``slot_mask``, equals attention over every key so far
    with the sequence mask; the ring's buffers stay window wide."""
    B, n_kv, hd, steps = 2, 2, 4, 9
    total = prompt_len + steps
    gen = torch.Generator().manual_seed(1)
    keys, values, queries = (torch.randn(B, n_kv, total, hd, generator=gen) for _ in range(3))
    mask = window_mask(B, total, window)
    full, ring = (
        KVCache(B, total, n_kv, hd, torch.float32),
        SlidingKVCache(B, window, n_kv, hd, torch.float32),
    )
    q_positions = torch.arange(prompt_len, total)
    full_masks = full.slot_mask(mask[:, :, prompt_len:], q_positions)
    ring_masks = ring.slot_mask(mask[:, :, prompt_len:], q_positions)
    assert ring_masks.shape == (B, 1, steps, window)

    prompt_k, prompt_v = ring.update(keys[:, :, :prompt_len], values[:, :, :prompt_len])
    assert torch.equal(prompt_k, keys[:, :, :prompt_len]) and torch.equal(prompt_v, values[:, :, :prompt_len])
    full.update(keys[:, :, :prompt_len], values[:, :, :prompt_len])
    for step, q in enumerate(q_positions.tolist()):
        new = slice(q, q + 1)
        k, v = ring.update(keys[:, :, new], values[:, :, new])
        assert k.shape[2] == min(q + 1, window) and ring.k_cache.shape == (B, n_kv, window, hd)
        got = masked_attention(queries[:, :, new], k, v, ring_masks[:, :, step : step + 1, : q + 1])
        k, v = full.update(keys[:, :, new], values[:, :, new])
        expected = masked_attention(queries[:, :, new], k, v, full_masks[:, :, step : step + 1, : q + 1])
        torch.testing.assert_close(got, expected)
    assert ring.size == full.size == total


def test_slot_mask_reads_the_sequence_slot_each_ring_slot_holds():
    """Window 3, queries at slots 1 to 4: ring slot r holds the latest sequence slot a <= q with a % 3 == r."""
    mask = torch.rand(2, 1, 4, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    held = torch.tensor([[0, 1, -1], [0, 1, 2], [3, 1, 2], [3, 4, 2]])  # -1: not filled yet
    expected = mask.gather(-1, held.clamp(min=0).expand(2, 1, -1, -1)) & (held >= 0)
    ring = SlidingKVCache(2, 3, 1, 2, torch.float32)
    assert torch.equal(ring.slot_mask(mask, torch.arange(1, 5)), expected)


def test_ring_reorder_expands_and_permutes_rows():
    ring = SlidingKVCache(2, 3, 1, 2, torch.float32)
    # slots 2, 3, 4 of the prompt stay, in ring slots 2, 0, 1
    k = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 1, 5, 2)
    ring.update(k, -k)
    ring.reorder(torch.tensor([1, 0, 0]))
    keys, values = ring.update(torch.zeros(3, 1, 1, 2), torch.ones(3, 1, 1, 2))  # slot 5 -> ring slot 2
    assert keys.shape == (3, 1, 3, 2) and ring.size == 6
    assert torch.equal(keys[:, :, :2], k[[1, 0, 0]][:, :, [3, 4]]) and (keys[:, :, 2] == 0).all()
    assert torch.equal(values[:, :, :2], -k[[1, 0, 0]][:, :, [3, 4]]) and (values[:, :, 2] == 1).all()


def test_ring_takes_several_tokens_only_as_its_first_update():
    ring = SlidingKVCache(1, 3, 1, 2, torch.float32)
    ring.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    with pytest.raises(ValueError, match="first update"):
        ring.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
