import subprocess
import sys

import pytest
import torch
import transformers
from torch import nn

from paligemma import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
)
from paligemma.model.gemma import GemmaRMSNorm
from paligemma.tiny import TINY_TEXT, TINY_VISION, init_weights_, random_batch
from tests.helpers import ROOT


def test_init_weights_sets_each_module_type_by_its_rule():
    config = PaliGemmaConfig.from_dict(
        dict(vision_config=TINY_VISION, text_config=dict(TINY_TEXT, vocab_size=600), image_token_index=599)
    )
    model = PaliGemmaForConditionalGeneration(config)
    init_weights_(model, std=0.02)
    rms_norms = [m for m in model.modules() if isinstance(m, GemmaRMSNorm)]
    layer_norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(rms_norms) == 2 * TINY_TEXT["num_hidden_layers"] + 1  # the final norm too
    assert all(bool((m.weight == 0).all()) for m in rms_norms)  # (1 + w) = 1: identity scale
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in layer_norms)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d | nn.Embedding):
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.2), name
            bias = getattr(module, "bias", None)
            assert bias is None or bool((bias == 0).all()), name
    assert model.lm_head.weight is model.language_model.embed_tokens.weight


def test_init_weights_knows_gemma3s_projector_and_qk_norms():
    vision = dict(TINY_VISION, image_size=32)  # 4x4 patches, pooled to 4 tokens
    text = dict(TINY_TEXT, model_type="gemma3_text", vocab_size=600, sliding_window=8)
    model = Gemma3ForConditionalGeneration(
        Gemma3Config.from_dict(
            dict(vision_config=vision, text_config=text, mm_tokens_per_image=4, image_token_index=599)
        )
    )
    init_weights_(model, std=0.02)
    assert model.model.multi_modal_projector.mm_input_projection_weight.std().item() == pytest.approx(
        0.02, rel=0.2
    )
    rms_norms = [m for m in model.modules() if isinstance(m, GemmaRMSNorm)]
    assert len(rms_norms) == 6 * TINY_TEXT["num_hidden_layers"] + 2  # 4 per layer, q and k, final, projector
    assert all(bool((m.weight == 0).all()) for m in rms_norms)


def test_init_weights_refuses_a_module_it_has_no_rule_for():
    with pytest.raises(TypeError, match="BatchNorm1d"):
        init_weights_(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_cli_writes_a_tiny_paligemma2_that_transformers_loads_with_equal_logits(tmp_path):
    out = tmp_path / "tiny2"
    args = ["--out", str(out), "--decoder", "gemma2", "--vocab-size", "300"]
    subprocess.run([sys.executable, "-m", "paligemma.tiny", *args], check=True, cwd=ROOT, capture_output=True)
    ours = PaliGemmaForConditionalGeneration.from_pretrained(out).eval()
    text = ours.config.text_config
    assert text.model_type == "gemma2" and text.sliding_window < ours.config.num_image_tokens
    assert (text.attn_logit_softcapping, text.final_logit_softcapping) == (50.0, 30.0)
    assert len([m for m in ours.modules() if isinstance(m, GemmaRMSNorm)]) == 4 * text.num_hidden_layers + 1
    reference = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        out, attn_implementation="eager"
    )
    batch = random_batch(ours.config, prefix_lens=[3, 5], suffix_lens=[2, 1])
    with torch.no_grad():
        diff = (reference.eval()(**batch).logits - ours(**batch).logits)[batch["attention_mask"].bool()]
    assert diff.abs().max() < 1e-4


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--vocab-size", "10"], "vocab_size must exceed the 261 special and byte tokens, got 10"),
        (["--out", "{tmp}/file"], "--out: cannot make the directory {tmp}/file (File exists)"),
    ],
)
def test_cli_bad_options_end_in_one_line_naming_the_culprit(tmp_path, args, culprit):
    from tests.helpers import assert_one_line_error

    (tmp_path / "file").write_text("")
    args = ["--out", str(tmp_path / "out"), *(a.format(tmp=tmp_path) for a in args)]
    result = subprocess.run(
        [sys.executable, "-m", "paligemma.tiny", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert_one_line_error(result, culprit.format(tmp=tmp_path))


@pytest.mark.slow  # a subprocess, and a tokenizer trained on the synthetic texts
def test_cli_writes_a_tiny_gemma3_that_transformers_loads_with_equal_logits(tmp_path):
    from PIL import Image

    from paligemma import Gemma3Processor
    from tests.helpers import randomize_

    out = tmp_path / "tiny3"
    args = ["--out", str(out), "--family", "gemma3", "--vocab-size", "300"]
    subprocess.run([sys.executable, "-m", "paligemma.tiny", *args], check=True, cwd=ROOT, capture_output=True)
    reference = transformers.Gemma3ForConditionalGeneration.from_pretrained(out, attn_implementation="eager")
    auto = transformers.AutoProcessor.from_pretrained(out)
    assert type(auto).__name__ == "Gemma3Processor" and auto.image_seq_length == 16
    randomize_(reference, seed=1)  # every parameter, norms included
    ours = Gemma3ForConditionalGeneration.from_pretrained(out)
    ours.load_state_dict(reference.state_dict(), strict=True)
    config = ours.config
    assert (config.mm_tokens_per_image, config.vision_config.image_size, config.vision_config.patch_size) == (
        16,
        64,
        8,
    )
    text = config.text_config
    assert "full_attention" in text.layer_types and "sliding_attention" in text.layer_types
    processor = Gemma3Processor.from_pretrained(out, chat_template=True)
    assert (
        config.image_token_index == processor.image_token_id
        and config.boi_token_index == processor.boi_token_id
    )
    assert text.stop_token_ids == processor.stop_token_ids
    rgb = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 256, (48 + 8 * i, 64, 3), generator=rgb).byte().numpy())
        for i in range(3)
    ]
    batch = processor(
        text=["a red circle", "<start_of_image> left or <start_of_image> right?"],
        images=[images[:1], images[1:]], suffix=["yes", "the left one"],
    )  # fmt: skip
    assert text.sliding_window < batch["input_ids"].shape[1]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}
    with torch.no_grad():
        diff = (reference.eval()(**inputs).logits - ours.eval()(**inputs).logits)[
            batch["attention_mask"].bool()
        ]
    assert diff.abs().max() < 1e-4


def test_cli_refuses_a_paligemma_decoder_for_gemma3(tmp_path, capsys):
    from paligemma.tiny import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--family", "gemma3", "--decoder", "gemma2"])
    assert "--family gemma3 has Gemma 3's own" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess and transformers
def test_cli_writes_a_tiny_gemma4_that_transformers_loads_with_equal_logits(tmp_path):
    """The tiny Gemma 4 and its processor files: transformers loads the model; our processor's batch of two images
    of different aspect ratios gives equal logits and greedy tokens in both models. (transformers'
    AutoProcessor wants an audio feature extractor these files do not hold.)"""
    from PIL import Image

    from paligemma import Gemma4ForConditionalGeneration
    from paligemma.data.gemma4_processor import Gemma4Processor
    from paligemma.model.vision_language import token_positions

    out = tmp_path / "tiny4"
    args = ["--out", str(out), "--family", "gemma4", "--vocab-size", "300"]
    subprocess.run([sys.executable, "-m", "paligemma.tiny", *args], check=True, cwd=ROOT, capture_output=True)
    reference = transformers.Gemma4ForConditionalGeneration.from_pretrained(out, attn_implementation="eager")
    ours = Gemma4ForConditionalGeneration.from_pretrained(out).eval()
    norms = [v for k, v in ours.state_dict().items() if "norm" in k]
    assert norms and all(
        bool((v == 1).all()) for v in norms
    )  # Gemma 4's norms store the scale: identity is 1
    processor = Gemma4Processor.from_pretrained(out, chat_template=True)
    config = ours.config
    assert config.image_token_index == processor.image_token_id
    assert config.text_config.stop_token_ids == processor.stop_token_ids
    rgb = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=rgb).byte().numpy())
        for h, w in [(48, 96), (80, 40)]
    ]
    batch = processor(
        text=["a red circle", "what is it?"], images=[images[:1], images[1:]], padding_side="left"
    )
    with torch.no_grad():
        expected = reference.eval()(**batch, position_ids=token_positions(batch["attention_mask"])).logits
        got = ours(**batch).logits
        tokens = reference.generate(  # pyright: ignore[reportAttributeAccessIssue]
            **batch, max_new_tokens=5, do_sample=False, eos_token_id=[]
        )
    assert got is not None
    # 1e-3, not 1e-4: the untrained tower's outputs reach ~50 (x sqrt(width)), where float32's rounding is ~3e-4
    # and differs between the two implementations' op orders; given transformers' soft tokens, ours is within 2e-5
    assert (expected - got)[batch["attention_mask"].bool()].abs().max() < 1e-3
    P = batch["input_ids"].shape[1]
    assert torch.equal(ours.generate(**batch, max_new_tokens=5, eos_token_id=-1), tokens[:, P:])
