import pytest
import torch
import transformers
from torch import nn

from paligemma.model.attention import softcap
from paligemma.model.gemma import GemmaModel, GemmaRMSNorm, attention_mask_4d, causal_lm_loss
from paligemma.model.gemma_config import GemmaConfig, text_config_from_dict
from paligemma.model.kv_cache import KVCache
from tests.helpers import randomize_

TEXT = dict(vocab_size=200, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, rope_theta=1000.0)  # fmt: skip
GEMMA2 = dict(TEXT, model_type="gemma2", num_hidden_layers=3, query_pre_attn_scalar=32, sliding_window=3,
              attn_logit_softcapping=5.0, final_logit_softcapping=4.0)  # fmt: skip
# Gemma 3: q/k norms, a RoPE base per layer type with linear scaling on full layers, window 3, final soft-cap (the
# text-only model applies it).
GEMMA3 = dict(TEXT, model_type="gemma3_text", num_hidden_layers=3, query_pre_attn_scalar=32, sliding_window=3,
              sliding_window_pattern=2, rope_local_base_freq=70.0, rope_scaling={"rope_type": "linear", "factor": 2.0},
              final_logit_softcapping=4.0)  # fmt: skip
REFERENCE_CLASSES = {"gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
                     "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
                     "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM)}  # fmt: skip


class CausalLM(nn.Module):
    """The decoder as a text-only causal LM, its head tied to the embeddings and soft-capped as the config says:
    transformers' GemmaForCausalLM (and Gemma 2's, Gemma 3's) in the same module paths."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.config = config
        self.model = GemmaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, attention_mask, labels):
        positions = torch.arange(input_ids.shape[1])
        masks = self.model.attention_masks(attention_mask, positions)
        hidden = self.model(self.model.embed(input_ids), positions[None].expand_as(input_ids), masks)
        logits = softcap(self.lm_head(hidden), self.config.logit_softcap)
        return logits, causal_lm_loss(logits, labels)


@pytest.mark.parametrize("text", [TEXT, GEMMA2, GEMMA3], ids=["gemma", "gemma2", "gemma3"])
def test_decoder_matches_transformers_causal_lm(text):
    config = text_config_from_dict(text)
    config_class, model_class = REFERENCE_CLASSES[config.model_type]
    hf_config = config_class.from_dict(config.to_dict())
    hf_config._attn_implementation = "eager"
    hf = model_class(hf_config).eval()
    randomize_(hf)
    ours = CausalLM(config).eval()
    ours.load_state_dict(hf.state_dict())
    ids = torch.randint(4, 200, (2, 9))
    mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        logits, loss = ours(ids, mask, labels)
    assert (ref.logits - logits)[mask.bool()].abs().max() < 1e-4
    assert abs(ref.loss.item() - loss.item()) < 1e-5


def test_rms_norm_is_one_plus_weight_in_float32():
    norm = GemmaRMSNorm(4, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.0, 1.0, -0.5, 2.0]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    rms = (x.pow(2).mean() + 1e-6).rsqrt()
    torch.testing.assert_close(norm(x), x * rms * torch.tensor([1.0, 2.0, 0.5, 3.0]))
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_mask_unmasks_spans_then_masks_padding():
    valid = torch.tensor([[1, 1, 1, 1, 0]])
    spans = torch.tensor([[1, 1, 0, 0, 1]])  # a pad marked as in the span must stay hidden
    mask = attention_mask_4d(valid, torch.arange(5), spans)[0, 0].int()
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],  # the pad query sees the past and itself (never an empty row)
        ]
    )
    assert torch.equal(mask, expected)


def test_sliding_window_limits_the_causal_part_only():
    valid = torch.tensor([[0, 1, 1, 1, 1, 1, 1]])
    spans = torch.tensor([[0, 1, 1, 1, 1, 0, 0]])
    mask = attention_mask_4d(valid, torch.arange(7), spans, window=2)[0, 0].int()
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],  # a pad query sees itself
            [0, 1, 1, 1, 1, 0, 0],  # the span sees all of itself, beyond the window
            [0, 1, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0],  # suffix: the window's two newest slots
            [0, 0, 0, 0, 0, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)


def test_kv_cache_appends_and_refuses_overflow():
    cache = KVCache(batch_size=2, max_seq_len=4, num_kv_heads=1, head_dim=3, dtype=torch.float32)
    k1, v1 = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    k, v = cache.update(k1, v1)
    assert k.shape == (2, 1, 3, 3) and torch.equal(v, v1)
    k2 = torch.randn(2, 1, 1, 3)
    k, _ = cache.update(k2, k2)
    assert torch.equal(k, torch.cat([k1, k2], 2)) and cache.size == 4
    try:
        cache.update(k2, k2)
    except ValueError as e:
        assert "overflow" in str(e)
    else:
        raise AssertionError("overflow not detected")
