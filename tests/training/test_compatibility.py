"""Adapters and checkpoints written before the package was split into layers still load and resume
(tests/fixtures/made_before_layers/README.md says how they were made)."""

from pathlib import Path

import peft
import torch
from safetensors.torch import load_file

import train
from paligemma import PaliGemmaForConditionalGeneration
from paligemma.training.build import build_datamodule, build_module, saved_network, use_saved_network
from paligemma.training.checks import run_settings
from tests.helpers import compose_config, lit_module

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "made_before_layers"
RUN = ["logger=none", "data.batch_size=4", "data.val_batch_size=8", "trainer.max_steps=4", "trainer.accelerator=cpu",
       "generation.max_new_tokens=4", "data.num_workers=0", "data.max_val_samples=8", "checkpoint.every_n_steps=2",
       "data.synthetic.num_train=24", "data.synthetic.num_val=8", "data.synthetic.image_size=32",
       "zero_shot=false"]  # fmt: skip


def test_resuming_an_old_checkpoint_ends_with_the_old_runs_adapter(tmp_path):
    overrides = [f"model.path={FIXTURE / 'base'}", *RUN, f"ckpt_path={FIXTURE / 'last.ckpt'}"]
    train.train(compose_config(tmp_path, overrides))
    ours = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    expected = load_file(FIXTURE / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == expected.keys()
    # Not bitwise: since the old run, the training loss computes the last decoder layer from the first answer
    # position on (same sums, other rounding), and Adam's first steps amplify rounding. A resume that restored
    # the weights, optimizer and loop ends close to the old run's adapter: measured 0.028 from it, while the
    # checkpoint's own adapter (step 2) is 0.176 away.
    resumed_gap = _distance(ours, expected)
    checkpoint = torch.load(FIXTURE / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    at_step_2 = {k: checkpoint[_checkpoint_key(k)] for k in expected}
    assert resumed_gap < 0.3 * _distance(at_step_2, expected)


def _distance(a: dict, b: dict) -> float:
    return sum(((a[k] - b[k]) ** 2).sum() for k in b).item() ** 0.5


def _checkpoint_key(adapter_key: str) -> str:
    """base_model.model.model.language_model.X.lora_A.weight -> net.model.language_model.X.lora_A.default.weight"""
    return "net." + adapter_key.removeprefix("base_model.model.").removesuffix(".weight") + ".default.weight"


def test_an_old_adapter_loads_on_the_base_as_peft_loads_it():
    module = lit_module(FIXTURE / "base", adapter=str(FIXTURE / "adapter"))
    reference = peft.PeftModel.from_pretrained(
        PaliGemmaForConditionalGeneration.from_pretrained(FIXTURE / "base"), str(FIXTURE / "adapter")
    )
    batch = module.processor(text=["answer en how many?"], images=[_picture()], suffix=["2"])
    with torch.no_grad():
        assert torch.equal(module.net(**batch).logits, reference(**batch).logits)
    lora_b = [p for n, p in module.net.named_parameters() if "lora_B" in n]
    assert lora_b and all(not p.requires_grad for p in lora_b) and any(p.abs().sum() > 0 for p in lora_b)


def _picture():
    from PIL import Image

    return Image.new("RGB", (32, 32), (200, 40, 40))


def test_an_old_checkpoint_rebuilds_its_network_for_evaluation(tmp_path):
    """evaluate.py ckpt_path=...: a checkpoint saved before the network was injected holds its model and LoRA
    settings flat in its hyper-parameters; the same network is built from them and takes the trained weights."""
    checkpoint = torch.load(FIXTURE / "last.ckpt", weights_only=True, map_location="cpu")
    network = saved_network(checkpoint)
    assert network["model"]["path"] == "/tmp/fix/base" and network["lora"]["r"] == 8
    checkpoint["hyper_parameters"]["path"] = str(FIXTURE / "base")  # the run's base, where this test keeps it
    cfg = compose_config(tmp_path, [], config_name="eval")  # model=tiny: the checkpoint's model replaces it
    use_saved_network(cfg, checkpoint)
    settings = run_settings(cfg, trains=False)
    assert settings.model.path == settings.data.processor_path == str(FIXTURE / "base")  # data follows it
    module = build_module(settings, build_datamodule(settings))
    module.load_trained_weights(checkpoint)
    trained = {name: p for name, p in module.named_parameters() if p.requires_grad}
    assert trained.keys() == checkpoint["state_dict"].keys()
    for name, p in trained.items():
        assert torch.equal(p, checkpoint["state_dict"][name]), name
