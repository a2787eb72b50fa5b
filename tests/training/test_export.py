"""The exports of each family: the adapter on transformers' base with peft, and the merged model (in place, from a
gathered state dict, from a 4-bit base) in ours and in transformers, logits equal to the trained model's. A base
named by hub id (the 3B configs' default) takes its processor files from the hub cache."""

import shutil

import peft
import pytest
import torch
import transformers
from PIL import Image

from paligemma import PaliGemmaForConditionalGeneration, PaliGemmaProcessor
from paligemma.model.families import model_class
from paligemma.training.export import save_adapter, save_model
from tests.helpers import family_batch, lit_module, offline_hub_cache

REPO = "google/paligemma-tiny-test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_id_in_cache(tmp_path, monkeypatch, tiny_checkpoint):
    """The tiny checkpoint where huggingface_hub keeps a downloaded repo, read offline."""
    cache = tmp_path / "hub"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    offline_hub_cache(monkeypatch, cache)
    return REPO


def test_merged_export_of_a_hub_base_loads_in_ours_and_transformers(hub_id_in_cache, tmp_path):
    module = lit_module(hub_id_in_cache, lora={"r": 2, "alpha": 4})
    module.eval()  # no LoRA dropout
    with torch.no_grad():
        for name, param in module.net.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)  # a merge that changes the weights
    picture = Image.new("RGB", (50, 40), (30, 160, 200))
    inputs = dict(text=["answer en what color?"], images=[picture], suffix=["cyan"])
    with torch.no_grad():
        expected = module.net(**module.processor(**inputs)).logits

    save_model(module, tmp_path / "model")

    ours = PaliGemmaProcessor.from_pretrained(tmp_path / "model")
    theirs = transformers.PaliGemmaProcessor.from_pretrained(tmp_path / "model")
    ours_batch, theirs_batch = ours(**inputs), theirs(**inputs, return_tensors="pt")
    assert torch.equal(ours_batch["input_ids"], theirs_batch["input_ids"])
    merged = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path / "model").eval()
    reference = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        tmp_path / "model", attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        assert (merged(**ours_batch).logits - expected).abs().max() < 1e-4
        assert (reference(**ours_batch).logits - expected).abs().max() < 1e-4


FAMILIES = {"paligemma": "tiny_checkpoint", "gemma3": "tiny_gemma3_checkpoint"}


def lora_module(base, quantization=None):
    """A LoRA module on ``base`` whose adapter changes the logits (lora_B random), in eval mode."""
    module = lit_module(base, lora={"r": 2, "alpha": 4}, quantization=quantization, compute_dtype="float32")
    module.eval()
    with torch.no_grad():
        for name, param in module.net.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return module


def max_diff(model, batch, expected) -> float:
    with torch.no_grad():
        return (model(**batch).logits - expected)[batch["attention_mask"].bool()].abs().max().item()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_adapter_export_loads_onto_the_transformers_base_with_equal_logits(request, family, tmp_path):
    base = request.getfixturevalue(FAMILIES[family])
    module = lora_module(base)
    batch = family_batch(module.net.config)
    with torch.no_grad():
        expected = module.net(**batch).logits
    save_adapter(module, tmp_path / "adapter")
    theirs = getattr(transformers, type(module.net).__name__).from_pretrained(
        base, attn_implementation="eager"
    )
    theirs = peft.PeftModel.from_pretrained(theirs, tmp_path / "adapter").eval()
    assert max_diff(theirs, batch, expected) < 1e-4
    assert (
        max_diff(model_class(base).from_pretrained(base).eval(), batch, expected) > 1e-3
    )  # the adapter matters


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("how", ["in place", "gathered", "nf4"])
def test_merged_export_loads_in_ours_and_transformers_with_the_adapters_logits(
    request, family, how, tmp_path
):
    """Merged on the module itself, from a gathered state dict (FSDP) into a fresh model of the base's class, and
    from a QLoRA run's base dequantized (merged into what the 4-bit weights stand for)."""
    base = request.getfixturevalue(FAMILIES[family])
    module = lora_module(base, quantization="nf4" if how == "nf4" else None)
    batch = family_batch(module.net.config)
    with torch.no_grad():
        expected = module.net(**batch).logits
    save_model(module, tmp_path / "model", state_dict=module.state_dict() if how == "gathered" else None)
    theirs = getattr(transformers, type(module.net).__name__).from_pretrained(
        tmp_path / "model", attn_implementation="eager"
    )
    ours = model_class(tmp_path / "model").from_pretrained(tmp_path / "model")
    assert type(ours) is type(module.net)
    for model in (theirs.eval(), ours.eval()):
        assert max_diff(model, batch, expected) < 1e-4
    assert (tmp_path / "model" / "tokenizer.json").is_file()  # the base's processor files, copied
