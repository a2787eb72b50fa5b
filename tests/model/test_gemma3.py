import peft
import pytest
import torch
import transformers

from paligemma import Gemma3Config, Gemma3ForConditionalGeneration
from paligemma.errors import UnsupportedConfigError
from paligemma.model.gemma3 import image_blocks, windowed_spans_mask_4d
from paligemma.model.lora import LoraSettings, lora_config
from paligemma.model.presets import gemma3_hub_config
from paligemma.tiny import random_gemma3_batch
from tests.helpers import randomize_
from tests.model.test_weights import layout_state_dict, write_checkpoint

# Small Gemma 3 configs that differ where bugs hide. "window3": a window (3) shorter than an image (4 tokens, pooled
# 2x2 from 4x4 patches), RoPE bases of their own per layer type with linear scaling, GQA. "mqa": one KV head,
# head_dim != hidden / heads, 9 tokens per image pooled from 6x6 patches, explicit layer_types, an eos list and a final
# soft-cap that transformers' Gemma3ForConditionalGeneration ignores.
GEMMA3_CONFIGS = {
    "window3": dict(
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=4),
        text_config=dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                         sliding_window=3, sliding_window_pattern=2, rope_theta=900.0, rope_local_base_freq=50.0,
                         rope_scaling={"rope_type": "linear", "factor": 3.0}),
        mm_tokens_per_image=4, boi_token_index=288, eoi_token_index=289, image_token_index=290,
    ),
    "mqa": dict(
        vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                           image_size=24, patch_size=4),
        text_config=dict(vocab_size=260, hidden_size=32, intermediate_size=72, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=24, query_pre_attn_scalar=16,
                         sliding_window=6, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                         rope_theta=3000.0, final_logit_softcapping=2.0),
        mm_tokens_per_image=9, boi_token_index=255, eoi_token_index=256, image_token_index=257, eos_token_id=[1, 7],
    ),
}  # fmt: skip
# Images first, mid-text and last; rows of different lengths, every one longer than the windows.
PROMPTS = [[3, "image", 4, "image", 2], ["image", 6], [5, "image", 1, "image", 1, "image"]]


@pytest.fixture(params=sorted(GEMMA3_CONFIGS))
def config(request) -> Gemma3Config:
    return Gemma3Config.from_dict(GEMMA3_CONFIGS[request.param])


def hf_reference(config: Gemma3Config, seed: int = 0):
    """transformers' Gemma 3 built from our config dict, every parameter randomised, eager attention."""
    hf_config = transformers.Gemma3Config.from_dict(config.to_dict())
    hf_config._attn_implementation = "eager"
    model = transformers.Gemma3ForConditionalGeneration(hf_config).eval()
    randomize_(model, seed)
    return model


def ours_from_hf(hf) -> Gemma3ForConditionalGeneration:
    model = Gemma3ForConditionalGeneration(Gemma3Config.from_dict(hf.config.to_dict())).eval()
    model.load_state_dict(hf.state_dict(), strict=True)
    return model


def non_pad_diff(a, b, mask) -> float:
    return (a - b)[mask.bool()].abs().max().item()


def prompt_batch(config, prompts=PROMPTS):
    batch = random_gemma3_batch(config, prompts, [0] * len(prompts), padding_side="left")
    batch.pop("labels")
    return batch


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_forward_matches_transformers(config, padding_side):
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    batch = random_gemma3_batch(config, PROMPTS, [4, 0, 3], padding_side=padding_side)
    assert batch["pixel_values"].shape[0] == 6
    with torch.no_grad():
        ref, out = hf(**batch), ours(**batch)
    assert non_pad_diff(ref.logits, out.logits, batch["attention_mask"]) < 1e-4
    assert abs(ref.loss.item() - out.loss.item()) < 1e-5


def test_image_tokens_found_from_their_id_without_token_type_ids(config):
    """transformers needs token_type_ids for the images' bidirectional attention; ours finds the image tokens."""
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    batch = random_gemma3_batch(config, PROMPTS, [2, 2, 2])
    with torch.no_grad():
        ref = hf(**batch).logits
        batch.pop("token_type_ids")
        out = ours(**batch).logits
    assert non_pad_diff(ref, out, batch["attention_mask"]) < 1e-4


def test_greedy_generation_matches_transformers(config):
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    batch = prompt_batch(config)
    eos = config.text_config.eos_token_id
    with torch.no_grad():
        expected = hf.generate(**batch, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=0)
    got = ours.generate(**batch, max_new_tokens=10)
    assert torch.equal(got, expected[:, batch["input_ids"].shape[1] :])


@pytest.mark.parametrize("num_beams", [2, 3])
def test_beam_search_matches_transformers(config, num_beams):
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    batch = prompt_batch(config)
    kwargs = dict(
        max_new_tokens=8, num_beams=num_beams, eos_token_id=config.text_config.eos_token_id, pad_token_id=9
    )
    with torch.no_grad():
        expected = hf.generate(**batch, do_sample=False, **kwargs)[:, batch["input_ids"].shape[1] :]
    assert torch.equal(ours.generate(**batch, **kwargs), expected)


def test_image_block_mask_is_bidirectional_per_image_and_windowed():
    valid = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1]])
    ids = torch.tensor(
        [[0, 5, 9, 9, 9, 6, 9, 9, 7]]
    )  # pad, text, image 1 (3 tokens), text, image 2 (2), text
    blocks = image_blocks(ids, None, image_token_index=9)
    assert blocks.tolist() == [[0, 0, 1, 1, 1, 0, 2, 2, 0]]
    full = windowed_spans_mask_4d(valid, torch.arange(9), blocks)[0, 0].int()
    sliding = windowed_spans_mask_4d(valid, torch.arange(9), blocks, window=2)[0, 0].int()
    assert full.tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # a pad query sees itself
        [0, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0, 0],  # image 1 sees all of itself, not image 2
        [0, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 1, 0],  # image 2 sees image 1 and text causally, itself both ways
        [0, 1, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 1, 1, 1],
    ]
    assert sliding.tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0, 0],  # ahead inside its image: seen beyond the window
        [0, 0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0, 0, 0],  # back inside its image: only the window
        [0, 0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1, 1],
    ]


def test_an_image_does_not_see_later_images(config):
    """Changing the last image changes nothing before it; changing the first changes what follows."""
    model = ours_from_hf(hf_reference(config))
    batch = random_gemma3_batch(config, [[2, "image", 3, "image", 2]], [0])
    first_of_last = int(batch["token_type_ids"][0].nonzero()[-1]) - config.mm_tokens_per_image + 1
    with torch.no_grad():
        base = model(**batch).logits[0]
        later, earlier = batch["pixel_values"].clone(), batch["pixel_values"].clone()
        later[1] += 1.0
        earlier[0] += 1.0
        after_later = model(**dict(batch, pixel_values=later)).logits[0]
        after_earlier = model(**dict(batch, pixel_values=earlier)).logits[0]
    torch.testing.assert_close(base[:first_of_last], after_later[:first_of_last], rtol=0, atol=0)
    assert (base[first_of_last:] - after_later[first_of_last:]).abs().max() > 1e-4
    assert (base[-1] - after_earlier[-1]).abs().max() > 1e-4


def test_save_pretrained_loads_in_transformers_and_back(tmp_path, config):
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    batch = random_gemma3_batch(config, PROMPTS, [3, 1, 2])
    ours.save_pretrained(tmp_path / "ours")
    hf.save_pretrained(tmp_path / "theirs")
    reloaded_hf = transformers.Gemma3ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    reloaded_ours = Gemma3ForConditionalGeneration.from_pretrained(tmp_path / "theirs")
    assert reloaded_ours.config == ours.config
    with torch.no_grad():
        expected = hf(**batch).logits
        for model in (reloaded_hf, reloaded_ours.eval()):
            assert non_pad_diff(model(**batch).logits, expected, batch["attention_mask"]) < 1e-5


@pytest.mark.parametrize("layout", ["hub", "transformers5", "transformers4.5x"])
def test_every_layout_loads_with_reference_logits(tmp_path, layout):
    config = Gemma3Config.from_dict(GEMMA3_CONFIGS["window3"])
    hf = hf_reference(config)
    write_checkpoint(tmp_path, config, layout_state_dict(hf, layout), shards=2)
    batch = random_gemma3_batch(config, PROMPTS, [3, 1, 2])
    with torch.no_grad():
        expected, got = (
            hf(**batch).logits,
            Gemma3ForConditionalGeneration.from_pretrained(tmp_path)(**batch).logits,
        )
    assert non_pad_diff(got, expected, batch["attention_mask"]) < 1e-5


def test_loss_without_full_logits_is_the_same():
    """PaliGemma's lean loss path (head only where labels are) holds for Gemma 3, gradients included."""
    model = ours_from_hf(hf_reference(Gemma3Config.from_dict(GEMMA3_CONFIGS["mqa"])))
    batch = random_gemma3_batch(model.config, PROMPTS, [4, 2, 3])
    full = model(**batch).loss
    full.backward()
    full_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    lean = model(**batch, return_logits=False)
    lean.loss.backward()
    torch.testing.assert_close(lean.loss, full, rtol=0, atol=1e-6)
    for name, p in model.named_parameters():
        if name in full_grads:
            torch.testing.assert_close(p.grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_close_to_fp32():
    model = ours_from_hf(hf_reference(Gemma3Config.from_dict(GEMMA3_CONFIGS["window3"])))
    batch = random_gemma3_batch(model.config, PROMPTS, [4, 2, 3])
    with torch.no_grad():
        fp32 = model(**batch)
        bf16 = model.to(torch.bfloat16)(**batch)
    assert bf16.logits.dtype == torch.bfloat16
    assert non_pad_diff(fp32.logits, bf16.logits.float(), batch["attention_mask"]) < 0.05
    assert abs(fp32.loss.item() - bf16.loss.item()) < 0.02


def test_bf16_matches_transformers_bf16():
    config = Gemma3Config.from_dict(GEMMA3_CONFIGS["mqa"])
    hf = hf_reference(config)
    ours = ours_from_hf(hf).to(torch.bfloat16)
    hf = hf.to(torch.bfloat16)
    batch = random_gemma3_batch(config, PROMPTS, [4, 2, 3])
    with torch.no_grad():
        ref, out = hf(**batch), ours(**batch)
    assert non_pad_diff(ref.logits.float(), out.logits.float(), batch["attention_mask"]) < 0.03


def test_config_reads_both_transformers_spellings():
    """transformers 4.5x writes rope_theta / rope_local_base_freq / rope_scaling and sliding_window_pattern;
    5 writes rope_parameters per layer type and layer_types. Both read the same, and ours writes what both read."""
    old = Gemma3Config.from_dict(gemma3_hub_config("gemma-3-4b-it"))
    text = old.text_config
    assert (text.rope_theta, text.rope_local_base_freq, text.rope_scaling_factor) == (1e6, 1e4, 8.0)
    assert (
        text.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"] and len(text.layer_types) == 34
    )
    assert (
        text.stop_token_ids == [1, 106] and text.attention_scale == 256**-0.5 and text.sliding_window == 1024
    )
    hf = transformers.Gemma3Config.from_dict(gemma3_hub_config("gemma-3-4b-it"))
    assert Gemma3Config.from_dict(hf.to_dict()) == old
    assert Gemma3Config.from_dict(old.to_dict()) == old
    written = transformers.Gemma3Config.from_dict(old.to_dict()).text_config
    assert written.rope_parameters == hf.text_config.rope_parameters
    assert written.layer_types == hf.text_config.layer_types


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(mm_tokens_per_image=8), "square of a divisor"),
        (dict(mm_tokens_per_image=9), "square of a divisor"),  # 3 does not divide 4 patches per side
        (dict(image_token_index=300), "outside the text vocabulary"),
        (dict(model_type="paligemma"), "not a Gemma 3 config"),
    ],
)
def test_bad_configs_are_clear_errors(change, match):
    with pytest.raises(UnsupportedConfigError, match=match):
        Gemma3Config.from_dict({**GEMMA3_CONFIGS["window3"], **change})


def test_embedding_gemma_and_unknown_rope_types_are_refused():
    base = GEMMA3_CONFIGS["window3"]
    for text, match in [
        (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "yarn"),
    ]:
        with pytest.raises(UnsupportedConfigError, match=match):
            Gemma3Config.from_dict(dict(base, text_config={**base["text_config"], **text}))


# (parameters, LoRA r=8 on the decoder's seven projections), counted by transformers 5.24 + peft on meta.
REFERENCE_COUNTS = {
    "gemma-3-4b-pt": (4_300_079_472, 14_901_248),
    "gemma-3-12b-it": (12_187_325_040, 32_735_232),
    "gemma-3-27b-pt": (27_432_406_640, 56_758_272),
}


def counts(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    model.requires_grad_(False)
    lora = peft.get_peft_model(model, lora_config(LoraSettings(r=8, alpha=16)))
    return total, sum(p.numel() for p in lora.parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_and_lora_counts_equal_transformers_on_meta(name):
    with torch.device("meta"):
        ours = Gemma3ForConditionalGeneration(Gemma3Config.from_dict(gemma3_hub_config(name)))
        hf = transformers.Gemma3ForConditionalGeneration(
            transformers.Gemma3Config.from_dict(gemma3_hub_config(name))
        )
    assert counts(ours) == counts(hf) == REFERENCE_COUNTS[name]
