"""Gemma 4 on images and text against transformers' Gemma4ForConditionalGeneration (5.25): every parameter and
buffer randomised, two images of different aspect ratios in a left-padded batch."""

from typing import Any

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

from paligemma.model.families import MODEL_CLASSES
from paligemma.model.gemma4 import Gemma4ForConditionalGeneration
from paligemma.model.gemma4_config import Gemma4Config
from paligemma.model.vision_language import token_positions
from tests.helpers import randomize_

IMAGE, BOI, EOI, PAD, BOS = 290, 291, 292, 0, 2
TEXT = dict(
    vocab_size=300, hidden_size=48, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, global_head_dim=32, sliding_window=4,
    layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
                     "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                        "rope_theta": 900.0}},
    vocab_size_per_layer_input=300, hidden_size_per_layer_input=8, num_kv_shared_layers=2,
    use_double_wide_mlp=True, final_logit_softcapping=5.0, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=1,
)  # fmt: skip
VISION = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
    head_dim=24, patch_size=4, position_embedding_size=64, use_clipped_linears=True, standardize=True,
)  # fmt: skip
# transformers' default (None: causal everywhere) and the large checkpoints' ("vision": each image's tokens attend
# to each other on sliding layers, within the window of 4, shorter than the images' 6 tokens).
BIDIRECTIONAL = [None, "vision"]


def hf_config(bidirectional) -> Any:
    config = transformers.Gemma4Config(
        text_config={**TEXT, "use_bidirectional_attention": bidirectional},
        vision_config=VISION,
        audio_config=None,
        image_token_id=IMAGE,
        boi_token_id=BOI,
        eoi_token_id=EOI,
    )
    config._attn_implementation = "eager"
    return config


def hf_reference(bidirectional, seed: int = 0) -> Any:
    """Every parameter random, and every buffer: layer scalars, clip bounds (finite: some clip), std bias/scale."""
    model = transformers.Gemma4ForConditionalGeneration(hf_config(bidirectional)).eval()
    randomize_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("layer_scalar"):
                buffer.copy_(1.0 + 0.3 * torch.randn(buffer.shape, generator=gen))
            elif name.endswith(("input_max", "output_max")):
                buffer.copy_(0.3 + torch.rand((), generator=gen))
            elif name.endswith(("input_min", "output_min")):
                buffer.copy_(-0.3 - torch.rand((), generator=gen))
            elif name.endswith(("std_bias", "std_scale")):
                buffer.copy_(torch.randn(buffer.shape, generator=gen))
    return model


@pytest.fixture(params=BIDIRECTIONAL, ids=["causal", "vision"])
def models(request, tmp_path) -> tuple[Any, Gemma4ForConditionalGeneration]:
    """transformers' model and ours loaded from its save_pretrained directory (our from_pretrained)."""
    hf = hf_reference(request.param)
    hf.save_pretrained(tmp_path / "hf")
    ours = Gemma4ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    return hf, ours


def batch(with_labels: bool = True) -> dict[str, torch.Tensor]:
    """Two rows, left-padded, one image each: 6 x 9 patches (6 soft tokens) and 9 x 3 (3), padded to 630 patches
    as Gemma4ImageProcessorPil makes them at 4 px patches."""
    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(24, 36), (36, 12)]]
    processor = Gemma4ImageProcessorPil(patch_size=4, max_soft_tokens=70, pooling_kernel_size=3)
    images = processor(pil, do_resize=False, return_tensors="pt")
    rows = [
        [BOS, 17, 23, BOI, *[IMAGE] * 6, EOI, 40, 41, 42, 43, 44, 45],
        [BOS, 31, BOI, *[IMAGE] * 3, EOI, 50, 51, 52],
    ]
    T = max(map(len, rows))
    ids = torch.tensor([[PAD] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    out = dict(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=images["pixel_values"].float(),
        image_position_ids=images["image_position_ids"],
        mm_token_type_ids=(ids == IMAGE).long(),
    )
    if with_labels:
        labels = ids.clone()
        labels[:, : T - 4] = -100  # the last 4 tokens of each row are the target
        out["labels"] = labels
    return out


def test_forward_and_loss_match_transformers(models):
    hf, ours = models
    inputs = batch()
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**inputs, position_ids=token_positions(inputs["attention_mask"]))
        out = ours(**inputs)
        lean = ours(**inputs, return_logits=False)
    assert out.logits is not None and out.loss is not None and lean.loss is not None
    assert (ref.logits - out.logits)[mask].abs().max().item() < 1e-4
    assert abs(ref.loss.item() - out.loss.item()) < 1e-5
    assert abs(lean.loss.item() - out.loss.item()) < 1e-5


def test_vision_setting_changes_the_logits():
    """The "vision" rule is in force: with it the logits differ from the causal model's (same weights)."""
    causal, vision = hf_reference(None), hf_reference("vision")
    inputs = batch(with_labels=False)
    with torch.no_grad():
        a, b = causal(**inputs).logits, vision(**inputs).logits
    assert (a - b).abs().max().item() > 1e-3


def test_greedy_generation_matches_transformers(models):
    hf, ours = models
    inputs = batch(with_labels=False)
    P = inputs["input_ids"].shape[1]
    with torch.no_grad():
        expected = hf.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=[], pad_token_id=PAD)
    got = ours.generate(**inputs, max_new_tokens=8, eos_token_id=-1, decode_weights=None)
    assert torch.equal(got, expected[:, P:])


def test_save_pretrained_loads_in_transformers(models, tmp_path):
    hf, ours = models
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.Gemma4ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    back.config._attn_implementation = "eager"
    ref_state, back_state = hf.state_dict(), back.state_dict()
    shared = set(ours.model.language_model.unused_checkpoint_keys())
    for key, value in ref_state.items():
        if key.removeprefix("model.language_model.") in shared:
            continue  # the KV-sharing layers' unused projections: not saved
        assert torch.equal(value, back_state[key]), key
    inputs = batch()
    with torch.no_grad():
        a = hf(**inputs).logits
        b = back(**inputs).logits
    assert torch.equal(a, b)


def test_config_round_trip_and_family_row():
    config = Gemma4Config.from_dict(hf_config("vision").to_dict())
    assert config.text_config.use_bidirectional_attention == "vision"
    assert config.image_token_index == IMAGE and config.boi_token_index == BOI
    assert Gemma4Config.from_dict(config.to_dict()) == config
    assert MODEL_CLASSES["gemma4"] is Gemma4ForConditionalGeneration


def test_audio_inputs_are_refused(models):
    _, ours = models
    inputs = batch(with_labels=False)
    with pytest.raises(NotImplementedError, match="audio"):
        ours(**inputs, input_features=torch.zeros(1, 4, 8))


def test_image_token_outside_the_vocabulary(tmp_path):
    """transformers' default ids lie outside a tiny vocabulary: image tokens are embedded as the pad id."""
    hf = hf_reference("vision")
    hf.config.image_token_id = 300  # = vocab_size
    hf.model.config.image_token_id = 300
    hf.save_pretrained(tmp_path)
    ours = Gemma4ForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs = batch()
    for key in ("input_ids", "labels"):
        inputs[key] = inputs[key].masked_fill(inputs[key] == IMAGE, 300)
    with torch.no_grad():
        ref = hf(**inputs, position_ids=token_positions(inputs["attention_mask"]))
        out = ours(**inputs)
    assert out.logits is not None
    assert (ref.logits - out.logits)[inputs["attention_mask"].bool()].abs().max().item() < 1e-4


def test_beam_search_matches_transformers(models):
    hf, ours = models
    inputs = batch(with_labels=False)
    P = inputs["input_ids"].shape[1]
    kwargs = dict(max_new_tokens=6, num_beams=3, eos_token_id=1)
    with torch.no_grad():
        expected = hf.generate(**inputs, do_sample=False, pad_token_id=PAD, **kwargs)[:, P:]
    assert torch.equal(ours.generate(**inputs, decode_weights=None, **kwargs), expected)
