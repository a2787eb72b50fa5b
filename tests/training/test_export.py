"""The merged-model export of a base named by hub id (the 3B configs' default): the processor files come from the
hub cache, and the directory loads in ours and in transformers."""

import shutil

import pytest
import torch
import transformers
from PIL import Image

from paligemma import PaliGemmaForConditionalGeneration, PaliGemmaProcessor
from paligemma.training.export import save_model
from paligemma.training.module import PaliGemmaLitModule
from tests.helpers import offline_hub_cache

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
    module = PaliGemmaLitModule(path=hub_id_in_cache, lora={"r": 2, "alpha": 4})
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
