import json
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import save_file

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.errors import CheckpointError, ConfigError
from paligemma.tiny import random_batch
from tests.helpers import SMALL_CONFIGS, hf_reference


@pytest.fixture(scope="module", params=["mqa", "gemma2"])
def reference(request):
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS[request.param])
    hf = hf_reference(config)
    batch = random_batch(config, prefix_lens=[3, 6], suffix_lens=[4, 2])
    with torch.no_grad():
        logits = hf(**batch).logits
    return config, hf, batch, logits


def layout_state_dict(hf, layout: str) -> dict[str, torch.Tensor]:
    """The reference's weights under the key names each transformers generation wrote."""
    renames = {
        "hub": [("model.vision_tower.", "vision_tower.vision_model."), ("model.language_model.", "language_model.model."),
                ("model.multi_modal_projector.", "multi_modal_projector.")],
        "transformers5": [("model.vision_tower.", "vision_tower."), ("model.language_model.", "language_model.model."),
                          ("model.multi_modal_projector.", "multi_modal_projector.")],
        "transformers4.5x": [("model.vision_tower.", "model.vision_tower.vision_model.")],
    }[layout]  # fmt: skip
    out = {}
    for key, tensor in hf.state_dict().items():
        if key == "lm_head.weight" and layout != "transformers4.5x":
            continue  # tied: the hub files leave it out
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = tensor.clone().contiguous()
    return out


def write_checkpoint(path, config, tensors, shards=1):
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    if shards == 1:
        save_file(tensors, path / "model.safetensors")
        return
    keys = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i::shards]}
        save_file(part, path / name)
        weight_map.update(dict.fromkeys(part, name))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def logits_of(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits.float()


@pytest.mark.parametrize("layout", ["hub", "transformers5", "transformers4.5x"])
@pytest.mark.parametrize("shards", [1, 3])
def test_every_layout_loads_with_reference_logits(tmp_path, reference, layout, shards):
    config, hf, batch, expected = reference
    write_checkpoint(tmp_path, config, layout_state_dict(hf, layout), shards)
    model = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path)
    assert (logits_of(model, batch) - expected)[batch["attention_mask"].bool()].abs().max() < 1e-4
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert not any(p.is_meta for p in model.parameters())


def test_transformers_save_pretrained_loads(tmp_path, reference):
    config, hf, batch, expected = reference
    hf.save_pretrained(tmp_path)
    model = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path)
    assert (logits_of(model, batch) - expected)[batch["attention_mask"].bool()].abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_load_in_half_precision(tmp_path, reference, dtype):
    config, hf, batch, expected = reference
    write_checkpoint(tmp_path, config, layout_state_dict(hf, "hub"))
    model = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path, dtype=dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    assert (logits_of(model, batch) - expected)[batch["attention_mask"].bool()].abs().max() < 0.05


@pytest.mark.parametrize("max_shard_bytes", [5 * 2**30, 40_000])
def test_save_pretrained_loads_in_transformers_with_identical_logits(tmp_path, reference, max_shard_bytes):
    config, hf, batch, expected = reference
    ours = PaliGemmaForConditionalGeneration(config)
    ours.load_state_dict(hf.state_dict())
    ours.save_pretrained(tmp_path, max_shard_bytes=max_shard_bytes)
    assert (tmp_path / "model.safetensors.index.json").exists() == (max_shard_bytes < 2**20)
    reloaded = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        tmp_path, attn_implementation="eager"
    )
    assert torch.equal(logits_of(reloaded, batch), expected)
    assert torch.equal(logits_of(PaliGemmaForConditionalGeneration.from_pretrained(tmp_path), batch),
                       logits_of(ours, batch))  # fmt: skip


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path, reference):
    config, hf, _, _ = reference
    tensors = layout_state_dict(hf, "hub")
    del tensors["language_model.model.layers.1.mlp.up_proj.weight"]
    tensors["language_model.model.layers.0.self_attn.rotary.weight"] = torch.zeros(2)
    tensors["multi_modal_projector.linear.bias"] = torch.zeros(7)
    write_checkpoint(tmp_path, config, tensors)
    with pytest.raises(CheckpointError) as err:
        PaliGemmaForConditionalGeneration.from_pretrained(tmp_path)
    message = str(err.value)
    assert "missing (2): model.language_model.layers.1.mlp.up_proj.weight" in message  # + the mis-shaped one
    assert "unexpected (1): language_model.model.layers.0.self_attn.rotary.weight" in message
    width = config.projection_dim
    assert f"mis-shaped (1): multi_modal_projector.linear.bias: checkpoint (7,), model ({width},)" in message


def test_directories_that_are_not_checkpoints(tmp_path, reference):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        PaliGemmaForConditionalGeneration.from_pretrained(tmp_path)
    reference[0].save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no safetensors weights"):
        PaliGemmaForConditionalGeneration.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        PaliGemmaForConditionalGeneration.from_pretrained(tmp_path / "nope")


PEAK_RSS_SCRIPT = """
import resource, sys, torch
from paligemma import PaliGemmaForConditionalGeneration
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
PaliGemmaForConditionalGeneration.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_peak_memory_while_loading_stays_under_1_3x_checkpoint(tmp_path_factory, dtype):
    path = tmp_path_factory.getbasetemp() / "rss-checkpoint"
    if not path.exists():
        config = PaliGemmaConfig.from_dict(dict(
            vision_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                               image_size=32, patch_size=8),
            text_config=dict(vocab_size=16000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=1, head_dim=128),
            image_token_index=15000, projection_dim=1024))  # fmt: skip
        PaliGemmaForConditionalGeneration(config).save_pretrained(path)
    size = (path / "model.safetensors").stat().st_size
    result = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(path), dtype],
                            capture_output=True, text=True, check=True)  # fmt: skip
    peak = int(result.stdout.strip().splitlines()[-1])
    assert peak < 1.3 * size, f"peak {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB checkpoint"
