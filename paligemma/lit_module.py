"""LightningModule: frozen SigLIP, LoRA (peft) on the Gemma decoder, suffix-only loss, generation metrics."""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path

import lightning as L
import peft
import torch

from paligemma import metrics
from paligemma.checks import ConfigError, NonFiniteError
from paligemma.generate import DTYPES
from paligemma.model import PaliGemmaForConditionalGeneration
from paligemma.processing import copy_processor_files

log = logging.getLogger(__name__)
MONITORED_METRIC = {"vqa": "val/vqa_accuracy", "caption": "val/cider"}
DECODER_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules=None) -> peft.LoraConfig:
    """LoRA on the decoder's linear layers only: SigLIP has q/k/v_proj too, and suffix matching would adapt it."""
    names = "|".join(target_modules or DECODER_LINEAR_LAYERS)
    return peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=rf".*\.language_model\..*\.({names})"
    )


def load_adapter(model, adapter: str | Path, base: str) -> peft.PeftModel:
    """A saved PEFT adapter on ``model``; one made for another base is a one-line error."""
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter {adapter} has no adapter_config.json")
    try:
        return peft.PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:
        reason = str(e).strip().splitlines()[-1][:300]
        raise ConfigError(f"adapter {adapter} does not fit the base model {base}: {reason}") from None


def warmup_cosine(total_steps: int, warmup_ratio: float, min_lr_ratio: float = 0.0):
    """LR multiplier: linear warm-up over warmup_ratio of the run, then cosine decay to min_lr_ratio."""
    warmup = max(1, int(warmup_ratio * total_steps))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


class PaliGemmaLitModule(L.LightningModule):
    def __init__(
        self,
        path: str,
        dtype: str = "float32",
        train_vision: bool = False,
        train_projector: bool = False,
        gradient_checkpointing: bool = False,
        lora: dict | None = None,
        optim: dict | None = None,
        max_new_tokens: int = 10,
        num_beams: int = 1,
        log_predictions: int = 16,
        adapter: str | None = None,
    ):
        """``lora=None`` trains the whole decoder; ``adapter`` loads a saved PEFT adapter (frozen) instead."""
        super().__init__()
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints hold the trainable parameters only
        self.optim = {
            "lr": 2e-4,
            "weight_decay": 0.0,
            "warmup_ratio": 0.05,
            "min_lr_ratio": 0.0,
            "skip_nonfinite": False,
            **(optim or {}),
        }
        self.net = PaliGemmaForConditionalGeneration.from_pretrained(path, dtype=DTYPES[dtype])
        self.net.requires_grad_(False)
        self.net.model.multi_modal_projector.requires_grad_(train_projector)
        if adapter is not None:
            self.peft_model = load_adapter(self.net, adapter, base=path)
        elif lora is None:  # full fine-tuning of the decoder (pre-training the tiny base, for example)
            self.net.model.language_model.requires_grad_(True)
            self.peft_model = None
        else:
            self.peft_model = peft.get_peft_model(self.net, lora_config(**lora))
        self.net.model.vision_tower.requires_grad_(train_vision)
        if gradient_checkpointing:
            self.net.gradient_checkpointing_enable()
        self.samples_seen = 0
        self.skipped_steps = 0  # non-finite ones, with optim.skip_nonfinite
        self.records: list[dict] = []

    @property
    def task(self) -> str:
        return self.trainer.datamodule.task

    @property
    def processor(self):
        return self.trainer.datamodule.processor

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.hparams.train_vision:
            self.net.model.vision_tower.eval()
        return self

    def training_step(self, batch, batch_idx):
        if batch is None:  # every row of the batch was unreadable; the data module counted them
            return None
        loss = self.net(**batch, return_logits=False).loss
        if not torch.isfinite(loss):
            return self._non_finite(f"loss ({loss.item()})")
        batch_size = batch["input_ids"].shape[0]
        self.samples_seen += batch_size
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer):
        """Non-finite gradients with a finite loss (an overflow in the backward pass) would turn every weight NaN."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # float16's GradScaler skips those steps itself
        norms = [torch.linalg.vector_norm(p.grad) for p in self.parameters() if p.grad is not None]
        if norms and not torch.isfinite(torch.stack(norms).sum()):
            self._non_finite("gradient")
            for p in self.parameters():
                p.grad = None  # the optimizer leaves parameters without a gradient as they are

    def _non_finite(self, what: str) -> None:
        """Stop with a clear message before the weights change, or skip the step (``optim.skip_nonfinite``)."""
        where = f"non-finite {what} at step {self.global_step} (epoch {self.current_epoch})"
        if not self.optim["skip_nonfinite"]:
            raise NonFiniteError(
                f"{where}; the weights are those before this step. "
                "Lower optim.lr, or set optim.skip_nonfinite=true to skip such steps"
            )
        self.skipped_steps += 1
        log.warning("skipping the optimizer step: %s", where)

    def on_validation_epoch_start(self):
        self.records = []

    def validation_step(self, batch, batch_idx):
        if batch is None:
            return
        loss = self.net(**batch["batch"], return_logits=False).loss
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["references"]), sync_dist=True)
        new_tokens = self.net.generate(
            **batch["prompt"], max_new_tokens=self.hparams.max_new_tokens, num_beams=self.hparams.num_beams
        )
        predictions = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        for i, prediction in enumerate(predictions):
            self.records.append(
                {
                    "row_id": batch["row_ids"][i],
                    "kind": batch["kinds"][i],
                    "prompt": batch["prompts"][i],
                    "prediction": prediction.strip(),
                    "references": batch["references"][i],
                    "image": batch["images"][i] if i < self.hparams.log_predictions else None,
                }
            )

    def on_validation_epoch_end(self):
        if not self.records:
            return
        for name, value in score(self.records, self.task).items():
            self.log(name, value, prog_bar=name == MONITORED_METRIC[self.task], sync_dist=True)
        self._log_prediction_table()

    def _log_prediction_table(self):
        from lightning.pytorch.loggers import WandbLogger

        rows = [r for r in self.records if r["image"] is not None][: self.hparams.log_predictions]
        for logger in self.loggers:
            if isinstance(logger, WandbLogger) and rows:
                import wandb

                data = [[wandb.Image(r["image"]), r["prompt"], r["prediction"], " | ".join(r["references"])]
                        for r in rows]  # fmt: skip
                logger.log_table("val/predictions", ["image", "prompt", "prediction", "references"], data)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.optim["lr"],
            weight_decay=self.optim["weight_decay"],
            betas=tuple(self.optim.get("betas", (0.9, 0.999))),
        )
        total = int(self.trainer.estimated_stepping_batches)
        schedule = warmup_cosine(total, self.optim["warmup_ratio"], self.optim["min_lr_ratio"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint):
        """A checkpoint of another base or LoRA shape is one line naming a tensor (loading is not strict)."""
        params, saved = dict(self.named_parameters()), checkpoint["state_dict"]
        wrong = [
            f"{k} is {tuple(v.shape)} there, {tuple(params[k].shape) if k in params else 'absent'} here"
            for k, v in saved.items()
            if k not in params or params[k].shape != v.shape
        ]
        wrong += [f"{k} is absent there" for k, p in params.items() if p.requires_grad and k not in saved]
        if wrong:
            raise ConfigError(
                f"ckpt_path does not fit this model ({self.hparams.path}, lora={self.hparams.lora}): "
                f"{wrong[0]} ({len(wrong)} tensors differ)"
            )

    def save_adapter(self, directory: str | Path) -> Path:
        """The PEFT adapter (adapter_config.json + adapter_model.safetensors) of a LoRA run."""
        self.peft_model.peft_config["default"].base_model_name_or_path = str(self.hparams.path)
        self.peft_model.save_pretrained(directory)
        return Path(directory).resolve()

    def save_model(self, directory: str | Path) -> Path:
        """The whole model in HF format with the base's processor files; LoRA runs merge (and unload) first."""
        model = self.net if self.peft_model is None else self.peft_model.merge_and_unload()
        model.save_pretrained(directory)
        copy_processor_files(self.hparams.path, directory)
        return Path(directory).resolve()


def score(records: list[dict], task: str) -> dict[str, float]:
    """The task's metrics over validation records, VQA accuracy per question kind as well."""
    if task == "vqa":
        per_kind = defaultdict(list)
        for r in records:
            per_kind[r["kind"]].append(metrics.vqa_accuracy(r["prediction"], r["references"]))
        scores = {f"val/vqa_accuracy/{kind}": statistics.fmean(v) for kind, v in sorted(per_kind.items())}
        scores["val/vqa_accuracy"] = statistics.fmean(a for v in per_kind.values() for a in v)
        return scores
    predictions = {r["row_id"]: r["prediction"] for r in records}
    references = {r["row_id"]: r["references"] for r in records}
    return {
        "val/cider": metrics.cider_d(predictions, references),
        "val/bleu4": metrics.bleu(predictions, references),
    }
