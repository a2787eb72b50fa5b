import lightning as L
import pytest
import torch

from tests.helpers import VQAV2_FEATURES, lit_module, load_network, vqav2_rows, write_parquet


def test_trainable_projector_is_trained_and_saved_with_the_adapter(tiny_checkpoint, tmp_path):
    from safetensors import safe_open

    from paligemma.training.export import save_adapter

    module = lit_module(tiny_checkpoint, lora={"r": 4}, train_projector=True)
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert any("multi_modal_projector" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)
    with safe_open(save_adapter(module, tmp_path) / "adapter_model.safetensors", "pt") as f:
        assert any("multi_modal_projector" in key for key in f.keys())  # noqa: SIM118
    with pytest.raises(ValueError, match="train_vision=true needs lora=null"):
        lit_module(tiny_checkpoint, lora={"r": 4}, train_vision=True)


def test_final_logit_softcap_switches_off(tiny_gemma2_checkpoint):
    from paligemma.tiny import random_batch

    capped = load_network(tiny_gemma2_checkpoint)
    plain = load_network(tiny_gemma2_checkpoint, final_logit_softcap=False)
    cap = capped.config.text_config.final_logit_softcapping
    assert cap == 30.0 and plain.config.text_config.final_logit_softcapping is None
    batch = random_batch(capped.config, prefix_lens=[3], suffix_lens=[2])
    with torch.no_grad():
        capped_logits, plain_logits = capped(**batch).logits, plain(**batch).logits
    torch.testing.assert_close(capped_logits, torch.tanh(plain_logits / cap) * cap)
    assert not torch.equal(capped_logits, plain_logits)


class TrainableWeights(L.Callback):
    """After each training batch: its row count and the trainable weights."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        weights = [p.detach().clone() for p in pl_module.parameters() if p.requires_grad]
        self.steps.append((batch.rows, weights))


def test_a_batch_of_bad_rows_only_is_a_step_that_changes_no_weight(tiny_checkpoint, tmp_path):
    """One process behaves as every rank of a DDP run: 8 rows, 6 undecodable, in batches of 2 (so at least two
    batches hold bad rows only): each batch is a step, and those of bad rows only leave the weights alone."""
    from paligemma.data.datamodule import PaliGemmaDataModule

    rows = vqav2_rows(8)
    rows["image"][:6] = [{"bytes": b"not a png", "path": None}] * 6
    write_parquet(tmp_path / "vqa", {"train": (rows, VQAV2_FEATURES)})
    data = PaliGemmaDataModule(
        path=str(tmp_path / "vqa"), processor_path=str(tiny_checkpoint), batch_size=2, val_split="train"
    )
    module = lit_module(tiny_checkpoint, lora={"r": 4}, optim={"warmup_ratio": 0.0})
    weights = TrainableWeights()
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[weights],
    )  # fmt: skip
    before = [p.detach().clone() for p in module.parameters() if p.requires_grad]
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 4 and data.skipped == 6 and module.samples_seen == 2
    assert sum(rows for rows, _ in weights.steps) == 2 and [rows for rows, _ in weights.steps].count(0) >= 2
    for rows, after in weights.steps:
        unchanged = all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
        assert unchanged == (rows == 0)
        before = after


class ValidationWeights(L.Callback):
    """At each validation batch: the decode weights that validation passes down."""

    def __init__(self):
        self.during = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.during.append(pl_module.validation_weights)


@pytest.mark.slow  # a Lightning validate run
def test_validation_runs_on_decode_weights_built_once_and_drops_them(tiny_checkpoint, tmp_path, monkeypatch):
    """A bf16 base: every validation batch's loss and generation multiply by one view built for the run (oneDNN's
    kernels where the CPU has bf16 instructions, a stand-in elsewhere), dropped after validation."""
    from paligemma.data.datamodule import PaliGemmaDataModule
    from paligemma.model.precision import native_bf16_cpu
    from tests.model.test_decode_weights import counted_blocked_products, linears_held

    blocked_products = counted_blocked_products(monkeypatch, stand_in=not native_bf16_cpu())
    write_parquet(tmp_path / "vqa", {"train": (vqav2_rows(4), VQAV2_FEATURES)})
    data = PaliGemmaDataModule(
        path=str(tmp_path / "vqa"), processor_path=str(tiny_checkpoint), batch_size=2, val_split="train"
    )
    module = lit_module(tiny_checkpoint, dtype="bfloat16", lora={"r": 4}, generation={"max_new_tokens": 3})
    weights, forwards = ValidationWeights(), []
    module.net.language_model.layers[0].register_forward_pre_hook(lambda *_: forwards.append(1))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[weights],
    )  # fmt: skip
    trainer.validate(module, datamodule=data)
    per_forward = 7 * module.net.config.text_config.num_hidden_layers + 1  # q k v o gate up down, the LM head
    view = weights.during[0]
    assert len(weights.during) == 2 and view is not None and weights.during[1] is view
    assert linears_held(view) == per_forward
    # each batch: the loss's forward, the prompt's and one per decode step, all on the view
    assert len(forwards) >= 2 * 2 and len(blocked_products) == len(forwards) * per_forward
    assert module.validation_weights is None
