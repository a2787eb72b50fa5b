"""LightningModule: frozen SigLIP, LoRA (peft) on the Gemma decoder, suffix-only loss, generation metrics.

It holds the steps; the optimizer is built in ``optim``, metrics computed in ``scoring``, and the adapter and
merged model written by ``export``.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import TYPE_CHECKING, cast

import lightning as L
import torch

from paligemma.data.processor import IGNORE_INDEX
from paligemma.data.processors import Processor, load_processor
from paligemma.data.tasks import TASKS
from paligemma.errors import ConfigError, NonFiniteError
from paligemma.model.build import BuiltModel, ModelSettings, build_model
from paligemma.model.decode_weights import DecodeWeights
from paligemma.model.lora import LoraSettings
from paligemma.model.quantize import check_supported
from paligemma.training.distributed import clean_name, gather_records
from paligemma.training.optim import OptimSettings, build_optimizer, optimizer_class
from paligemma.training.scoring import MONITORED_METRIC, log_predictions, score

if TYPE_CHECKING:
    from torch.distributed.fsdp import FullyShardedDataParallel

log = logging.getLogger(__name__)


def model_inputs(batch: dict) -> dict:
    """A training batch without its row count: what the model's forward takes."""
    return {k: v for k, v in batch.items() if k != "rows"}


def answer_tokens(labels: torch.Tensor) -> int:
    """The tokens the loss covers: labels other than -100, each predicted from the position before."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


class PaliGemmaLitModule(L.LightningModule):
    def __init__(
        self,
        path: str,
        dtype: str = "float32",
        quantization: str | None = None,
        compute_dtype: str | None = None,
        quantize_vision: bool = False,
        train_vision: bool = False,
        train_projector: bool = False,
        gradient_checkpointing: bool = False,
        cache_image_features: bool = False,
        final_logit_softcap: bool = True,
        adapter: str | None = None,
        lora: dict | None = None,
        optim: dict | None = None,
        max_new_tokens: int = 8,
        num_beams: int = 1,
        log_predictions: int = 16,
        task: str = "vqa",
        processor: Processor | None = None,
        metric: str | None = None,
        bf16_refused_by: str | None = None,
        built: BuiltModel | None = None,
    ):
        """The fields of ``ModelSettings`` (``path`` .. ``adapter``: what checkpoints save, so that
        ``load_from_checkpoint`` builds the network again), ``lora`` and ``optim`` (the fields of ``LoraSettings``
        and ``OptimSettings``, plain dicts so that checkpoints hold no classes; ``lora=None`` trains the whole
        decoder), and the validation generation (``max_new_tokens``,
        ``num_beams``, ``log_predictions``: ``GenerationSettings``). ``built``: the network ``build_model`` made of
        these settings (None: built here). ``metric`` (a key of scoring.METRICS; None: the metric of ``task``) picks
        the validation metrics; ``processor`` decodes generations (default: the base's)."""
        super().__init__()
        self.save_hyperparameters(ignore=["processor", "built"])
        self.strict_loading = False  # checkpoints hold the trainable parameters only
        self.metric = metric or (TASKS[task].metric if task in TASKS else task)  # saved before data.metric
        if self.metric not in MONITORED_METRIC:
            raise ConfigError(f"data.metric must be one of {sorted(MONITORED_METRIC)}, got {self.metric!r}")
        self.task = task
        self.optim = OptimSettings(**(optim or {}))
        optimizer_class(self.optim.name)  # an unknown name, or bitsandbytes missing, fails before loading
        self.processor = processor or load_processor(path)
        if built is None:
            settings = ModelSettings(**{f.name: self.hparams[f.name] for f in fields(ModelSettings)})
            built = build_model(settings, LoraSettings(**lora) if lora else None, bf16_refused_by)
        self.net, self.precision, self.quantization = built.net, built.precision, built.quantization
        # Kept out of the submodules: it wraps self.net, and layers reachable by two paths break FSDP's state dict.
        self.__dict__["peft_model"] = built.peft_model
        # Names and shapes before any wrapping: FSDP renames parameters and shards them in place.
        self.param_shapes = {name: tuple(p.shape) for name, p in self.named_parameters()}
        self.trainable_names = {name for name, p in self.named_parameters() if p.requires_grad}
        self.samples_seen = 0
        self.fit_validated_at_step = None  # global step of the last validation inside trainer.fit
        self.skipped_steps = 0  # non-finite ones, with optim.skip_nonfinite
        self.step_tokens = 0  # answer tokens of all ranks since the last optimizer step
        self.records: list[dict] = []
        self.val_loss_sum, self.val_tokens = 0.0, 0  # this rank's, over the validation epoch
        self.validation_weights: DecodeWeights | None = None  # validation's decode weights while it runs

    def setup(self, stage: str) -> None:
        """A quantization that bitsandbytes cannot run on the trainer's device (CUDA, ...) is one line, here."""
        if self.quantization is not None:
            check_supported(self.quantization, self.trainer.strategy.root_device)

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
        if not self.hparams["train_vision"]:
            self.net.model.vision_tower.eval()
        return self

    def training_step(self, batch, batch_idx):
        """The loss of the whole global batch: the mean over every rank's answer tokens. Each rank weighs its own
        mean by its share of them (x world size, as DDP and FSDP average the ranks' gradients); a placeholder
        batch (every row bad, see paligemma/data/rows.py) runs with weight 0."""
        rows = batch["rows"]
        loss = self.net(**model_inputs(batch), return_logits=False).loss
        if self._any_rank(not torch.isfinite(loss)):
            rank = f" on rank {self.global_rank}" if self.trainer.world_size > 1 else ""
            return self._non_finite(f"loss ({loss.item()}{rank})")
        tokens = answer_tokens(batch["labels"]) if rows else 0
        loss_sum, global_tokens = self._sum_over_ranks(loss.detach() * tokens, tokens)
        self.step_tokens += global_tokens
        self.samples_seen += rows
        if global_tokens:
            self.log("train/loss", loss_sum / global_tokens, prog_bar=True, batch_size=max(rows, 1))
        return loss * (tokens * self.trainer.world_size / max(global_tokens, 1))

    def _sum_over_ranks(self, loss_sum: torch.Tensor, tokens: int) -> tuple[torch.Tensor, int]:
        """(summed token loss, token count) of every rank together: one all-reduce of two numbers."""
        local = torch.stack([loss_sum.float(), torch.tensor(float(tokens), device=loss_sum.device)])
        total = self.trainer.strategy.reduce(local, reduce_op="sum")
        return total[0], int(total[1].item())

    def on_before_optimizer_step(self, optimizer):
        """A step whose global batch had no rows (all bad) leaves the weights as they are, on every rank alike.
        Non-finite gradients with a finite loss (an overflow in the backward pass) would turn every weight NaN."""
        no_rows, self.step_tokens = self.step_tokens == 0, 0
        if no_rows:
            self._drop_gradients()
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # float16's GradScaler skips those steps itself
        norms = [torch.linalg.vector_norm(p.grad) for p in self.parameters() if p.grad is not None]
        if self._any_rank(bool(norms) and not torch.isfinite(torch.stack(norms).sum())):  # FSDP: a shard each
            self._non_finite("gradient")
            self._drop_gradients()

    def _drop_gradients(self) -> None:
        for p in self.parameters():
            p.grad = None  # the optimizer leaves parameters without a gradient as they are

    def _non_finite(self, what: str) -> None:
        """Stop with a clear message before the weights change, or skip the step (``optim.skip_nonfinite``)."""
        where = f"non-finite {what} at step {self.global_step} (epoch {self.current_epoch})"
        if not self.optim.skip_nonfinite:
            raise NonFiniteError(
                f"{where}; the weights are those before this step. "
                "Lower optim.lr, or set optim.skip_nonfinite=true to skip such steps"
            )
        self.skipped_steps += 1
        log.warning("skipping the optimizer step: %s", where)

    def on_validation_start(self):
        """Validation's forward passes and generations multiply by decode weights built once for all its batches
        (bf16 on a CPU with bf16 instructions: paligemma/model/decode_weights.py), dropped when it ends. Not under
        FSDP, whose weights are shards outside its forward passes."""
        self.validation_weights = None if self.sharded else DecodeWeights.build(self.net)

    def on_validation_end(self):
        self.validation_weights = None

    def on_validation_epoch_start(self):
        self.records = []
        self.val_loss_sum, self.val_tokens = 0.0, 0

    @property
    def stop_token_ids(self) -> list[int]:
        """What ends a generated answer: the model's stop ids and the processor's (chat rows end at <end_of_turn>)."""
        return sorted(set(self.net.config.text_config.stop_token_ids) | set(self.processor.stop_token_ids))

    def validation_step(self, batch, batch_idx):
        """A placeholder batch (its rows all bad or shard fillers) still runs: under FSDP each forward pass is a
        collective. It adds no record and no loss."""
        inputs = batch["batch"]
        loss = self.net(**inputs, return_logits=False, decode_weights=self.validation_weights).loss
        if batch["rows"]:
            tokens = answer_tokens(inputs["labels"])
            self.val_loss_sum += loss.item() * tokens
            self.val_tokens += tokens
        new_tokens = self.net.generate(
            **batch["prompt"],
            max_new_tokens=self.hparams["max_new_tokens"],
            num_beams=self.hparams["num_beams"],
            fixed_length=self.sharded,  # FSDP: every rank runs as many forward passes (collectives)
            eos_token_id=self.stop_token_ids,
            decode_weights=self.validation_weights,
        )
        predictions = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        for i, row_id in enumerate(batch["row_ids"]):
            self.records.append(
                {
                    "row_id": row_id,
                    "kind": batch["kinds"][i],
                    "prompt": batch["prompts"][i],
                    "prediction": predictions[i].strip(),
                    "references": batch["references"][i],
                    "image": batch["images"][i] if i < self.hparams["log_predictions"] else None,
                }
            )

    def on_validation_epoch_end(self):
        """val/loss: the mean over every validation answer token of all ranks (each row once), as one process."""
        loss_sum, tokens = self._sum_over_ranks(
            torch.tensor(self.val_loss_sum, device=self.device), self.val_tokens
        )
        if tokens:
            self.log("val/loss", loss_sum / tokens, prog_bar=True, sync_dist=True)  # equal on every rank
        self.records = gather_records(self.records)  # DDP / FSDP: every rank's shard, each row once
        if not self.records:
            return
        for name, value in score(self.records, self.metric).items():
            self.log(name, value, prog_bar=name == MONITORED_METRIC[self.metric], sync_dist=True)
        log_predictions(
            self.loggers, self.records, self.hparams["log_predictions"], self.global_step, self.metric
        )
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.fit_validated_at_step = self.global_step

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return build_optimizer(params, self.optim, int(self.trainer.estimated_stepping_batches))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """FSDP: the norm spans every rank's gradient shard, which only the root FSDP module's clip_grad_norm_
        computes (Lightning refuses norm clipping under FSDP)."""
        if self.sharded and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            # sharded: the trainer's model is the root FSDP module
            cast("FullyShardedDataParallel", self.trainer.model).clip_grad_norm_(gradient_clip_val)
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
                f"ckpt_path does not fit this model ({self.hparams['path']}, lora={self.hparams['lora']}): "
                f"{wrong[0]} ({len(wrong)} tensors differ)"
            )
