"""QLoRA end to end: a run on a 4-bit base resumes exactly, leaves the 4-bit weights as they were, and leaves an
adapter that the full-precision base takes (ours and transformers' alike) and a merged model of the dequantized base."""

import lightning as L
import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file

import train
from paligemma import PaliGemmaForConditionalGeneration
from paligemma.errors import ConfigError
from paligemma.model.families import model_class
from paligemma.model.quantize import QuantSettings, is_quantized, load_quantized
from paligemma.tiny import random_batch
from paligemma.training.checks import run_settings
from tests.helpers import FAST, SYNTHETIC, compose_config, lit_module


class QuantizedWeightsUnchanged(L.Callback):
    """Fails the run unless, when training ends, every 4-bit weight (and its scales) holds the very bits that
    quantizing the base afresh gives."""

    def on_train_end(self, trainer, pl_module):
        settings, path = pl_module.network.quantization, pl_module.network.settings.path
        fresh = load_quantized(model_class(path), path, settings)
        trained = {
            n.replace(".base_layer", ""): m for n, m in pl_module.net.named_modules() if is_quantized(m)
        }
        expected = {n: m for n, m in fresh.named_modules() if is_quantized(m)}
        assert trained.keys() == expected.keys() and trained
        for name, layer in expected.items():
            assert torch.equal(trained[name].weight.data, layer.weight.data), name
            assert torch.equal(trained[name].weight.quant_state.absmax, layer.weight.quant_state.absmax), name


def test_qlora_run_resumes_keeps_the_4bit_base_and_exports_a_full_precision_adapter(
    tmp_path, tiny_checkpoint
):
    # float32 pinned: the callback quantizes a float32 load afresh, and bits are compared
    overrides = [f"model.path={tiny_checkpoint}", *FAST, *SYNTHETIC, "logger=none", "zero_shot=false",
                 "model.dtype=float32", "model.quantization=nf4", "model.compute_dtype=float32", "optim.name=adamw8bit", "optim.lr=5e-2",
                 "optim.warmup_ratio=0", "export.merged=true", "callbacks.model_checkpoint.save_top_k=-1",
                 "+callbacks.unchanged._target_=tests.training.test_qlora.QuantizedWeightsUnchanged"]  # fmt: skip
    run, resumed = tmp_path / "run", tmp_path / "resumed"
    train.train(compose_config(run, overrides))
    train.train(compose_config(resumed, [*overrides, f"ckpt_path={run / 'checkpoints/step2.ckpt'}"]))
    adapter = load_file(run / "adapter/adapter_model.safetensors")
    for name, tensor in load_file(resumed / "adapter/adapter_model.safetensors").items():
        assert torch.equal(adapter[name], tensor), name

    batch = random_batch(
        PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint).config, [5, 3], [3, 4]
    )
    mask = batch["attention_mask"].bool()
    full = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint)
    ours = peft.PeftModel.from_pretrained(full, run / "adapter").eval()
    hf = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        tiny_checkpoint, attn_implementation="eager"
    )
    hf = peft.PeftModel.from_pretrained(hf, run / "adapter").eval()
    quantized = load_quantized(
        PaliGemmaForConditionalGeneration, tiny_checkpoint, QuantSettings("nf4", torch.float32)
    )
    quantized = peft.PeftModel.from_pretrained(quantized, run / "adapter").eval()
    merged = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        run / "model", attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        full_precision, trained = ours(**batch).logits, quantized(**batch).logits
        assert (hf(**batch).logits - full_precision)[mask].abs().max() < 1e-4
        assert (merged(**batch).logits - trained)[mask].abs().max() < 1e-4  # merged into the dequantized base
        plain = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint)(**batch).logits
    assert (full_precision - plain)[mask].abs().max() > 1e-3  # the adapter does something there too


@pytest.mark.slow
def test_zero_shot_validation_leaves_the_qlora_adapter_as_without_it(
    tmp_path, packable_checkpoint, avx512_bf16_bitsandbytes
):
    """On a base bitsandbytes can repack, under its AVX512-BF16 behaviour (on any CPU): a run with zero-shot
    validation trains the very adapter of a run without it (the validation pass once repacked every 4-bit layer,
    which then trained on a bf16 kernel and passed no gradient down)."""
    overrides = [f"model.path={packable_checkpoint}", *FAST, *SYNTHETIC, "logger=none", "model.dtype=float32",
                 "model.quantization=nf4",
                 "model.compute_dtype=float32", "optim.lr=5e-2", "lora.dropout=0"]  # fmt: skip
    adapters = {}
    for zero_shot in (True, False):
        run = tmp_path / f"zero_shot_{zero_shot}"
        train.train(compose_config(run, [*overrides, f"zero_shot={zero_shot}"]))
        adapters[zero_shot] = load_file(run / "adapter/adapter_model.safetensors")
    assert adapters[True].keys() == adapters[False].keys()
    for name, tensor in adapters[True].items():
        assert torch.equal(tensor, adapters[False][name]), name


def test_impossible_quantization_settings_are_one_line(tmp_path, tiny_checkpoint):
    with pytest.raises(ConfigError, match="model.quantization=nf4 needs LoRA"):
        lit_module(tiny_checkpoint, lora=None, quantization="nf4")
    fsdp = compose_config(
        tmp_path, [f"model.path={tiny_checkpoint}", "trainer=fsdp", "model.quantization=int8"]
    )
    with pytest.raises(ConfigError, match="model.quantization=int8 with trainer=fsdp"):
        run_settings(fsdp)
    bad_dtype = compose_config(tmp_path, [f"model.path={tiny_checkpoint}", "model.compute_dtype=int4"])
    with pytest.raises(ConfigError, match="model.compute_dtype: 'int4'"):
        run_settings(bad_dtype)
