"""LightningModule: frozen SigLIP, LoRA (peft) on the Gemma decoder, suffix-only loss, generation metrics."""

from __future__ import annotations

import copy
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
from paligemma.distributed import gather_records, pad_after_stop
from paligemma.generate import DTYPES
from paligemma.lora import add_lora, load_adapter
from paligemma.model import PaliGemmaForConditionalGeneration
from paligemma.processing import copy_processor_files

log = logging.getLogger(__name__)
MONITORED_METRIC = {"vqa": "val/vqa_accuracy", "caption": "val/cider"}
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")  # in parameter names under FSDP


def clean_name(name: str) -> str:
    """A parameter's name as in the unwrapped module (and in state dicts, which FSDP keeps clean)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


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
        if train_vision and lora is not None and adapter is None:
            raise ValueError(
                "model.train_vision=true needs lora=null: a LoRA adapter would not hold the vision weights"
            )
        self.net = PaliGemmaForConditionalGeneration.from_pretrained(path, dtype=DTYPES[dtype])
        self.net.requires_grad_(False)
        self.net.model.multi_modal_projector.requires_grad_(train_projector)
        if adapter is not None:
            peft_model = load_adapter(self.net, adapter, base=path)
        elif lora is None:  # full fine-tuning of the decoder (pre-training the tiny base, for example)
            self.net.model.language_model.requires_grad_(True)
            peft_model = None
        else:
            peft_model = add_lora(self.net, **lora, train_projector=train_projector)
        # Kept out of the submodules: it wraps self.net, and layers reachable by two paths break FSDP's state dict.
        self.__dict__["peft_model"] = peft_model
        self.net.model.vision_tower.requires_grad_(train_vision)
        if gradient_checkpointing:
            self.net.gradient_checkpointing_enable()
        # Names and shapes before any wrapping: FSDP renames parameters and shards them in place.
        self.param_shapes = {name: tuple(p.shape) for name, p in self.named_parameters()}
        self.trainable_names = {name for name, p in self.named_parameters() if p.requires_grad}
        self.samples_seen = 0
        self.fit_validated_at_step = None  # global step of the last validation inside trainer.fit
        self.skipped_steps = 0  # non-finite ones, with optim.skip_nonfinite
        self.records: list[dict] = []

    @property
    def task(self) -> str:
        return self.trainer.datamodule.task

    @property
    def processor(self):
        return self.trainer.datamodule.processor

    @property
    def sharded(self) -> bool:
        """FSDP shards the parameters (trainer=fsdp): every forward pass is then a collective of all ranks."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        return self._trainer is not None and isinstance(self._trainer.model, FullyShardedDataParallel)

    def _any_rank(self, decision: bool) -> bool:
        """True on every rank when it is on one: ranks must take the same branch around collectives."""
        return (
            self.trainer.strategy.reduce_boolean_decision(decision, all=False) if self._trainer else decision
        )

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.hparams.train_vision:
            self.net.model.vision_tower.eval()
        return self

    def training_step(self, batch, batch_idx):
        if batch is None:  # every row of the batch was unreadable; the data module counted them
            return None
        loss = self.net(**batch, return_logits=False).loss
        if self._any_rank(not torch.isfinite(loss)):
            rank = f" on rank {self.global_rank}" if self.trainer.world_size > 1 else ""
            return self._non_finite(f"loss ({loss.item()}{rank})")
        batch_size = batch["input_ids"].shape[0]
        self.samples_seen += batch_size
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer):
        """Non-finite gradients with a finite loss (an overflow in the backward pass) would turn every weight NaN."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # float16's GradScaler skips those steps itself
        norms = [torch.linalg.vector_norm(p.grad) for p in self.parameters() if p.grad is not None]
        if self._any_rank(bool(norms) and not torch.isfinite(torch.stack(norms).sum())):  # FSDP: a shard each
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
        options = dict(max_new_tokens=self.hparams.max_new_tokens, num_beams=self.hparams.num_beams)
        text = self.net.config.text_config
        if self.sharded:  # no rank may stop early: generate all tokens, then cut each row at its <eos>
            options["eos_token_id"] = -1
        new_tokens = self.net.generate(**batch["prompt"], **options)
        if self.sharded:
            new_tokens = pad_after_stop(
                new_tokens, torch.tensor(text.eos_token_id).flatten(), text.pad_token_id
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
        self.records = gather_records(self.records)  # DDP / FSDP: every rank's shard, each row once
        if not self.records:
            return
        for name, value in score(self.records, self.task).items():
            self.log(name, value, prog_bar=name == MONITORED_METRIC[self.task], sync_dist=True)
        self._log_prediction_table()
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.fit_validated_at_step = self.global_step

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

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """FSDP: the norm spans every rank's gradient shard, which only the root FSDP module's clip_grad_norm_
        computes (Lightning refuses norm clipping under FSDP)."""
        if self.sharded and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint):
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if clean_name(k) in self.trainable_names}

    def on_load_checkpoint(self, checkpoint):
        """A checkpoint of another base or LoRA shape is one line naming a tensor (loading is not strict)."""
        shapes, saved = self.param_shapes, {clean_name(k): v for k, v in checkpoint["state_dict"].items()}
        wrong = [
            f"{k} is {tuple(v.shape)} there, {shapes.get(k, 'absent')} here"
            for k, v in saved.items()
            if shapes.get(k) != tuple(v.shape)
        ]
        wrong += [f"{k} is absent there" for k in sorted(self.trainable_names) if k not in saved]
        if wrong:
            raise ConfigError(
                f"ckpt_path does not fit this model ({self.hparams.path}, lora={self.hparams.lora}): "
                f"{wrong[0]} ({len(wrong)} tensors differ)"
            )

    def save_adapter(self, directory: str | Path, state_dict: dict | None = None) -> Path:
        """The PEFT adapter (adapter_config.json + adapter_model.safetensors) of a LoRA run.

        ``state_dict``: all of this module's weights where its parameters hold shards only (FSDP, which gathers
        them to rank 0: ``trainer.strategy.lightning_module_state_dict()``). PEFT finds adapter weights by module
        names, which FSDP changes, so that adapter is written here in PEFT's format."""
        config = self.peft_model.peft_config["default"]
        config.base_model_name_or_path = str(self.hparams.path)
        if state_dict is None:
            self.peft_model.save_pretrained(directory)
            return Path(directory).resolve()
        from safetensors.torch import save_file

        adapter = {  # net.model.<...>.q_proj.lora_A.default.weight -> base_model.model.model.<...>.q_proj.lora_A.weight
            "base_model.model." + k.removeprefix("net.").replace(".default.", "."): v.contiguous()
            for k, v in ((clean_name(k), v) for k, v in state_dict.items())
            if k in self.trainable_names and "lora_" in k
        }
        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file(adapter, Path(directory) / "adapter_model.safetensors", metadata={"format": "pt"})
        saved = copy.deepcopy(config)
        saved.inference_mode = True  # as PeftModel.save_pretrained writes it (tests compare the two)
        base = {"base_model_class": type(self.net).__name__, "parent_library": type(self.net).__module__}
        saved.save_pretrained(directory, auto_mapping_dict=base if saved.task_type is None else None)
        return Path(directory).resolve()

    def save_model(self, directory: str | Path, state_dict: dict | None = None) -> Path:
        """The whole model in HF format with the base's processor files; LoRA runs merge (and unload) first.

        ``state_dict`` (all of this module's weights, as FSDP gathers them to rank 0) is loaded into a fresh
        copy of the model, which is merged and saved; without it, this module's own model is."""
        model, peft_model = self.net, self.peft_model
        if state_dict is not None:
            model = PaliGemmaForConditionalGeneration(self.net.config).to(DTYPES[self.hparams.dtype])
            if peft_model is not None:
                config = copy.deepcopy(self.peft_model.peft_config["default"])
                config.base_model_name_or_path = None  # get_peft_model sets it (and warns when it changes)
                peft_model = peft.get_peft_model(model, config)
            model.load_state_dict(
                {k.removeprefix("net."): v for k, v in state_dict.items() if k.startswith("net.")}
            )
        model = model if peft_model is None else peft_model.merge_and_unload()
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
