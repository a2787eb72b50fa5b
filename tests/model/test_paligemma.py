import pytest
import torch

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.tiny import random_batch
from tests.helpers import SMALL_CONFIGS, hf_reference, ours_from_hf


def non_pad_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return (a - b)[mask.bool()].abs().max().item()


def test_forward_matches_transformers(small_config):
    hf = hf_reference(small_config)
    ours = ours_from_hf(hf)
    batch = random_batch(small_config, prefix_lens=[3, 7, 5, 1], suffix_lens=[4, 0, 2, 6])
    with torch.no_grad():
        ref, out = hf(**batch), ours(**batch)
    assert non_pad_diff(ref.logits, out.logits, batch["attention_mask"]) < 1e-4
    assert abs(ref.loss.item() - out["loss"].item()) < 1e-5


def test_several_images_per_prompt_match_transformers(small_config):
    """3, 1 and 2 images in one batch: each prompt's image tokens take its images' features, in order."""
    hf = hf_reference(small_config)
    ours = ours_from_hf(hf)
    batch = random_batch(small_config, [3, 7, 5], [4, 0, 2], images_per_row=[3, 1, 2])
    assert batch["pixel_values"].shape[0] == 6
    with torch.no_grad():
        ref, out = hf(**batch), ours(**batch)
    assert non_pad_diff(ref.logits, out.logits, batch["attention_mask"]) < 1e-4
    assert abs(ref.loss.item() - out["loss"].item()) < 1e-5
    prompt = random_batch(small_config, [3, 7, 5], [0, 0, 0], padding_side="left", images_per_row=[3, 1, 2])
    prompt.pop("labels")
    with torch.no_grad():
        theirs = hf.generate(**prompt, max_new_tokens=5, do_sample=False)
    mine = ours.generate(**prompt, max_new_tokens=5, eos_token_id=[])
    assert torch.equal(mine, theirs[:, prompt["input_ids"].shape[1] :])


def test_loss_without_full_logits_is_the_same(small_config):
    """The lean path also skips the last layer's queries before the first answer: same loss and gradients."""
    model = ours_from_hf(hf_reference(small_config))
    batch = random_batch(small_config, prefix_lens=[2, 6], suffix_lens=[5, 3])
    full = model(**batch).loss
    full.backward()
    full_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    lean = model(**batch, return_logits=False)
    lean.loss.backward()
    assert lean.logits is None
    torch.testing.assert_close(lean.loss, full, rtol=0, atol=1e-6)
    for name, p in model.named_parameters():
        if name in full_grads:
            torch.testing.assert_close(p.grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_no_token_type_ids_means_prompt_is_prefix(small_config):
    """Without token_type_ids the whole prompt attends bidirectionally, as PaliGemma is used."""
    hf = hf_reference(small_config)
    ours = ours_from_hf(hf)
    batch = random_batch(small_config, prefix_lens=[4, 6], suffix_lens=[0, 0])
    del batch["labels"]
    with torch.no_grad():
        ref = hf(**batch).logits  # token_type_ids all 0: everything is prefix
        del batch["token_type_ids"]
        out = ours(**batch).logits
    assert non_pad_diff(ref, out, batch["attention_mask"]) < 1e-4


def test_prefix_is_bidirectional_and_suffix_causal():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"])
    model = ours_from_hf(hf_reference(config))
    batch = random_batch(config, prefix_lens=[5], suffix_lens=[4])
    n_prompt = int((batch["token_type_ids"][0] == 0).sum())
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][0, n_prompt - 2] += 1  # a prefix token: every position sees it
    suffixed = dict(batch, input_ids=batch["input_ids"].clone())
    suffixed["input_ids"][0, -2] += 1  # a suffix token: only itself and later positions see it
    with torch.no_grad():
        base, after_prefix, after_suffix = (model(**b).logits for b in (batch, changed, suffixed))
    assert (base[0, 0] - after_prefix[0, 0]).abs().max() > 1e-4
    torch.testing.assert_close(base[0, :-2], after_suffix[0, :-2], rtol=0, atol=0)
    assert (base[0, -2:] - after_suffix[0, -2:]).abs().max() > 1e-4


def test_padding_does_not_leak():
    """A row's logits do not depend on how much padding follows it."""
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["gqa"])
    model = ours_from_hf(hf_reference(config))
    padded = random_batch(config, prefix_lens=[3, 9], suffix_lens=[2, 6])
    n = int(padded["attention_mask"][0].sum())
    short = {k: v[:1, :n] if v.ndim == 2 else v[:1] for k, v in padded.items()}
    with torch.no_grad():
        alone = model(**short).logits[0]
        in_batch = model(**padded).logits[0, :n]
    torch.testing.assert_close(alone, in_batch, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["mqa", "gemma2"])
def test_bf16_close_to_fp32(name):
    """bf16 weights and activations stay within 0.05 of fp32 logits (max |logit| ~1) on the tiny config."""
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS[name])
    model = ours_from_hf(hf_reference(config))
    batch = random_batch(config, prefix_lens=[3, 7], suffix_lens=[4, 2])
    with torch.no_grad():
        fp32 = model(**batch)
        bf16 = model.to(torch.bfloat16)(**batch)
    assert bf16.logits.dtype == torch.bfloat16
    assert non_pad_diff(fp32.logits, bf16.logits.float(), batch["attention_mask"]) < 0.05
    assert abs(fp32.loss.item() - bf16.loss.item()) < 0.02


@pytest.mark.parametrize("name", ["mqa", "gemma2"])
def test_bf16_matches_transformers_bf16(name):
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS[name])
    hf = hf_reference(config)
    ours = ours_from_hf(hf).to(torch.bfloat16)
    hf = hf.to(torch.bfloat16)
    batch = random_batch(config, prefix_lens=[3, 7], suffix_lens=[4, 2])
    with torch.no_grad():
        ref, out = hf(**batch), ours(**batch)
    assert non_pad_diff(ref.logits.float(), out.logits.float(), batch["attention_mask"]) < 0.03


def test_image_token_count_mismatch_is_a_clear_error():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"])
    model = PaliGemmaForConditionalGeneration(config)
    batch = random_batch(config, prefix_lens=[3, 4], suffix_lens=[1, 1])
    batch["pixel_values"] = batch["pixel_values"][:1]
    with pytest.raises(ValueError, match=r"32 image tokens .* 1 image\(s\) give 16 features"):
        model(**batch)
    batch.pop("pixel_values")
    with pytest.raises(ValueError, match="image tokens"):
        model(**batch)


def test_paligemma_3b_parameter_count_on_meta():
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(PaliGemmaConfig())
    assert sum(p.numel() for p in model.parameters()) == 2_923_466_480
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert model.config.num_image_tokens == 256


def test_a_prompt_with_fewer_image_tokens_takes_each_image_s_patches_averaged_over_blocks():
    """data.frame_token_pool=2: 4 tokens per image of 4x4 patches, each the mean of a 2x2 block of patches."""
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"])
    model = PaliGemmaForConditionalGeneration(config)
    batch = random_batch(config, [3, 5], [2, 1], images_per_row=[2, 1], tokens_per_image=4)
    features = model.model.image_features(batch["pixel_values"])  # (3, 16, D): a 4x4 grid, row-major
    blocks = features.view(
        3, 2, 2, 2, 2, -1
    )  # (image, block row, row in block, block column, column in block, D)
    expected = blocks.mean((2, 4)).reshape(3, 4, -1)
    embeds = model.model.embed(batch["input_ids"], features)
    image_positions = batch["input_ids"] == config.image_token_index
    torch.testing.assert_close(embeds[image_positions], expected.reshape(12, -1))
    model(**batch)["loss"].backward()
    with pytest.raises(ValueError, match="3 image tokens per image cannot pool a 4x4 patch grid"):
        model(**random_batch(config, [3], [1], tokens_per_image=3))
