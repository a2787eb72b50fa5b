"""Gemma 4's text decoder against transformers' Gemma4ForCausalLM (5.25), every parameter and buffer randomised."""

from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers

from paligemma.errors import UnsupportedConfigError
from paligemma.model.experts import ExpertRouter, Experts
from paligemma.model.gemma4_config import Gemma4TextConfig
from paligemma.model.gemma4_text import Gemma4ForCausalLM
from paligemma.model.gemma_config import text_config_from_dict
from paligemma.model.kv_cache import SharedKVCache
from paligemma.model.vision_language import token_positions
from tests.helpers import randomize_

# Tiny configs that differ where bugs hide, every sequence longer than the window. "ple_shared" (E2B / E4B-like):
# per-layer embeddings, the last 2 layers sharing the KV of layers 1 (full) and 2 (sliding) with double-wide MLPs,
# full layers with wider heads (32 against 16) and RoPE on a quarter of them, a final soft-cap, GQA. "moe_keqv"
# (26B-A4B-like): 8 experts, top 3, beside the dense MLP; full layers whose values are their keys, with one KV head
# of their own; no per-layer embeddings.
GEMMA4_CONFIGS = {
    "ple_shared": dict(
        vocab_size=300, hidden_size=48, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, global_head_dim=32, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                     "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
                         "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                            "rope_theta": 900.0}},
        vocab_size_per_layer_input=300, hidden_size_per_layer_input=8, num_kv_shared_layers=2,
        use_double_wide_mlp=True, final_logit_softcapping=5.0,
    ),
    "moe_keqv": dict(
        vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, global_head_dim=16, num_global_key_value_heads=1,
        attention_k_eq_v=True, sliding_window=3, layer_types=["sliding_attention", "full_attention",
                                                              "sliding_attention", "full_attention"],
        hidden_size_per_layer_input=0, enable_moe_block=True, num_experts=8, top_k_experts=3,
        moe_intermediate_size=12, final_logit_softcapping=30.0,
    ),
}  # fmt: skip
LENGTHS = [11, 7, 9]  # rows of a batch, padded to 11


@pytest.fixture(params=sorted(GEMMA4_CONFIGS))
def config(request) -> Gemma4TextConfig:
    return Gemma4TextConfig.from_dict(GEMMA4_CONFIGS[request.param])


def hf_reference(config: Gemma4TextConfig, seed: int = 0) -> Any:
    """transformers' Gemma4ForCausalLM from our config dict: every parameter and layer scalar random, eager
    attention and experts (the reference loops)."""
    hf_config = transformers.Gemma4TextConfig.from_dict(config.to_dict())
    hf_config._attn_implementation = "eager"
    hf_config._experts_implementation = "eager"
    model = transformers.Gemma4ForCausalLM(hf_config).eval()
    randomize_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("layer_scalar"):
                buffer.copy_(1.0 + 0.3 * torch.randn(buffer.shape, generator=gen))
    return model


def ours_from_hf(hf) -> Gemma4ForCausalLM:
    model = Gemma4ForCausalLM(Gemma4TextConfig.from_dict(hf.config.to_dict())).eval()
    model.load_state_dict(hf.state_dict(), strict=True)
    return model


def batch(config, padding_side="left", seed=0, lengths=LENGTHS):
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(3, config.vocab_size, (len(lengths), T), generator=gen)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, T - n :] = 1
    if padding_side == "right":
        mask = mask.flip(1)
    ids = ids.masked_fill(mask == 0, config.pad_token_id)
    follows_real = F.pad(mask, (1, 0))[:, :-1].bool()  # a pad's (arbitrary) logits predict no label
    return ids, mask, ids.masked_fill(~(mask.bool() & follows_real), -100)


def non_pad_diff(a, b, mask) -> float:
    return (a - b)[mask.bool()].abs().max().item()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_forward_and_loss_match_transformers(config, padding_side):
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    ids, mask, labels = batch(config, padding_side)
    positions = token_positions(mask)  # transformers counts positions from 0 at each row's first real token
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels, position_ids=positions)
        out = ours(ids, mask, labels)
    assert non_pad_diff(ref.logits, out.logits, mask) < 1e-4
    assert abs(ref.loss.item() - out.loss.item()) < 1e-5


def test_transformers_use_cache_false_shares_kv_too(config):
    """transformers #45242: use_cache=False once broke KV sharing. In 5.25 the shared layers read the states the
    source layer stored in this call (``shared_kv_states``), with or without a cache: both equal ours."""
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    ids, mask, _ = batch(config, "right")
    with torch.no_grad():
        cached = hf(input_ids=ids, attention_mask=mask, use_cache=True).logits
        uncached = hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
        out = ours(ids, mask).logits
    assert non_pad_diff(cached, uncached, mask) < 1e-6
    assert non_pad_diff(uncached, out, mask) < 1e-4


@pytest.mark.parametrize(("prompt", "lengths"), [(2, [11, 11, 10]), (6, LENGTHS)])
def test_no_cache_forward_equals_prefill_and_cached_decode(config, prompt, lengths):
    """Teacher-forced decode steps after a left-padded prompt give the logits of one forward without caches over
    the whole sequence: the shared layers read the same keys and values either way. Prompts of 2 slots leave the
    sliding rings part empty (windows 3 and 4), of 6 fill them; the decode steps go past the windows. (Decoding
    takes every fed token as real: each prompt ends with a real token, as generation requires.)"""
    ours = ours_from_hf(hf_reference(config))
    ids, mask, _ = batch(config, "left", lengths=lengths)
    extra = ids.shape[1] - prompt
    with torch.no_grad():
        full = ours(ids, mask).logits
    logits, state = ours.prefill(ids[:, :prompt], mask[:, :prompt], max_new_tokens=extra)
    steps = [logits]
    for t in range(prompt, ids.shape[1] - 1):
        steps.append(ours.decode_step(ids[:, t], state))
    cached = torch.stack(steps, dim=1)  # the logits of positions prompt - 1 .. T - 2
    assert (cached - full[:, prompt - 1 : -1]).abs().max().item() < 1e-4
    if config.num_kv_shared_layers:
        assert isinstance(state.caches[-1], SharedKVCache)


def test_greedy_generation_matches_transformers(config):
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    ids, mask, _ = batch(config, "left", seed=1)
    hf.generation_config.eos_token_id = None
    got = ours.generate(ids, mask, max_new_tokens=8)
    for use_cache in (True, False):  # transformers' cached decoding, and a full forward per token
        with torch.no_grad():
            expected = hf.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                use_cache=use_cache,
            )[:, ids.shape[1] :]  # fmt: skip
        assert torch.equal(got, expected), use_cache


def test_gradient_checkpointing_keeps_loss_and_gradients(config):
    """Training's path: KV sharing through checkpointed layers (the source's keys recomputed in backward)."""
    model = ours_from_hf(hf_reference(config)).train()
    ids, mask, labels = batch(config, "right")
    losses, grads = [], []
    for checkpointing in (False, True):
        model.zero_grad()
        model.model.gradient_checkpointing = checkpointing
        loss = model(ids, mask, labels).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == losses[1] and grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_router_and_experts_match_transformers():
    config = Gemma4TextConfig.from_dict(GEMMA4_CONFIGS["moe_keqv"])
    hf_layer = hf_reference(config).model.layers[0]
    router = ExpertRouter(config, 8, 3)
    experts = Experts(config, 8, 12)
    router.load_state_dict(hf_layer.router.state_dict())
    experts.load_state_dict(hf_layer.experts.state_dict())
    x = torch.randn(40, config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_probs, ref_weights, ref_index = hf_layer.router(x)
        probs, weights, index = router(x)
        assert torch.equal(index, ref_index)
        torch.testing.assert_close(probs, ref_probs, rtol=0, atol=1e-7)
        torch.testing.assert_close(weights, ref_weights, rtol=0, atol=1e-7)
        torch.testing.assert_close(
            experts(x, index, weights), hf_layer.experts(x, index, weights), rtol=0, atol=1e-6
        )


def test_config_reads_what_transformers_writes_and_back():
    for name, d in GEMMA4_CONFIGS.items():
        ours = Gemma4TextConfig.from_dict(d)
        hf = transformers.Gemma4TextConfig.from_dict(d)  # written as transformers 5.25 does: per_layer_config
        assert Gemma4TextConfig.from_dict(hf.to_dict()) == ours, name
        assert Gemma4TextConfig.from_dict(ours.to_dict()) == ours, name
        back = transformers.Gemma4TextConfig.from_dict(ours.to_dict())
        assert back.to_dict() == hf.to_dict(), name
        assert text_config_from_dict({**d, "model_type": "gemma4_text"}) == ours
    ours = Gemma4TextConfig.from_dict(GEMMA4_CONFIGS["moe_keqv"])
    assert [ours.head_dim_of(t) for t in ("sliding_attention", "full_attention")] == [8, 16]
    assert [ours.kv_heads_of(t) for t in ("sliding_attention", "full_attention")] == [2, 1]
    shared = Gemma4TextConfig.from_dict(GEMMA4_CONFIGS["ple_shared"])
    assert shared.kv_sources == [None, None, None, 2, 1]
    assert [shared.intermediate_size_of(i) for i in range(5)] == [64, 64, 64, 128, 128]


def test_defaults_are_transformers():
    ours, hf = Gemma4TextConfig(), transformers.Gemma4TextConfig()
    assert Gemma4TextConfig.from_dict({"model_type": "gemma4_text"}) == ours
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "sliding_window", "layer_types", "final_logit_softcapping",
                 "hidden_size_per_layer_input", "vocab_size_per_layer_input", "num_kv_shared_layers"):  # fmt: skip
        assert getattr(ours, name) == hf.to_dict()[name], name  # head_dim: ambiguous as an attribute
    assert (ours.global_head_dim, ours.partial_rotary_factor, ours.rope_theta, ours.rope_local_base_freq) == (
        512, 0.25, 1e6, 1e4)  # fmt: skip
    assert ours.rope_by_layer_type == {"full_attention": (1e6, 1.0), "sliding_attention": (1e4, 1.0)}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(num_kv_shared_layers=3), "num_kv_shared_layers=3"),  # the last 3 hold a full layer; none before
        (dict(num_kv_shared_layers=5), "num_kv_shared_layers=5"),
        (dict(enable_moe_block=True), "enable_moe_block"),
        (dict(use_bidirectional_attention="all"), "use_bidirectional_attention='all'"),
        (dict(attention_bias=True), "attention_bias"),
        (dict(rope_parameters={"sliding_attention": {"rope_type": "yarn", "factor": 2.0}}), "yarn"),
        (dict(per_layer_config={"1": {"head_dim": 32}}), "per_layer_config"),  # layer 4 is full too
        (dict(hidden_activation="relu"), "relu"),
    ],
)
def test_unsupported_configs_are_one_line_errors(change, match):
    d = {**GEMMA4_CONFIGS["ple_shared"], **change}
    if change.get("num_kv_shared_layers") == 3:
        d["layer_types"] = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                            "full_attention"]  # fmt: skip
    with pytest.raises(UnsupportedConfigError, match=match) as error:
        Gemma4TextConfig.from_dict(d)
    assert "\n" not in str(error.value)


# Real-scale shapes (26B-A4B-like: experts, K = V; E2B-like: per-layer embeddings, 20 of 35 layers sharing KV),
# counted on the meta device: every parameter's shape as transformers builds it, without weights.
SCALE_CONFIGS = {
    "moe": dict(hidden_size=2816, intermediate_size=2112, num_hidden_layers=30, num_attention_heads=16,
                num_key_value_heads=8, num_global_key_value_heads=2, attention_k_eq_v=True, sliding_window=1024,
                hidden_size_per_layer_input=0, enable_moe_block=True, num_experts=128, top_k_experts=8,
                moe_intermediate_size=704, final_logit_softcapping=30.0),
    "ple": dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=35, num_attention_heads=8,
                num_key_value_heads=1, num_kv_shared_layers=20, use_double_wide_mlp=True,
                hidden_size_per_layer_input=256, final_logit_softcapping=30.0),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCALE_CONFIGS))
def test_parameter_shapes_equal_transformers_at_real_scale(name):
    config = Gemma4TextConfig.from_dict(SCALE_CONFIGS[name])
    with torch.device("meta"):
        ours = Gemma4ForCausalLM(config)
        hf = transformers.Gemma4ForCausalLM(transformers.Gemma4TextConfig.from_dict(config.to_dict()))
    theirs = {n: tuple(p.shape) for n, p in hf.state_dict().items()}
    assert {n: tuple(p.shape) for n, p in ours.state_dict().items()} == theirs


def test_bf16_matches_transformers_bf16(config):
    """bf16 against transformers' bf16 (eager attention there, SDPA here: other roundings). With experts, rounding
    can flip a near-tie of the router: in moe_keqv one real token of 27 takes another expert in layer 0, 0.034 off
    there, under 0.021 after it, under 0.006 elsewhere."""
    hf = hf_reference(config)
    ours = ours_from_hf(hf).to(torch.bfloat16)
    hf = hf.to(torch.bfloat16)
    ids, mask, labels = batch(config, "left")
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels, position_ids=token_positions(mask))
        out = ours(ids, mask, labels)
    assert out.logits.dtype == torch.bfloat16
    assert non_pad_diff(ref.logits.float(), out.logits.float(), mask) < 0.05
    assert abs(ref.loss.item() - out.loss.item()) < 0.02
    assert ours.generate(ids, mask, max_new_tokens=4).shape == (3, 4)


def test_unused_checkpoint_keys_are_those_transformers_ignores():
    """Hub checkpoints still hold the shared layers' key and value projections (never used: transformers #45312);
    transformers drops them on load, and the decoder names them for the loader to drop."""
    config = Gemma4TextConfig.from_dict(GEMMA4_CONFIGS["ple_shared"])
    ours = Gemma4ForCausalLM(config).model.unused_checkpoint_keys()
    theirs = hf_reference(config).model._keys_to_ignore_on_load_unexpected
    assert set(ours) == {f"{key}.weight" for key in theirs if not key.endswith("v_norm")}
    assert len(ours) == 6 and not set(ours) & set(Gemma4ForCausalLM(config).model.state_dict())
