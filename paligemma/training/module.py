"""LightningModule: frozen SigLIP, LoRA (peft) on the Gemma decoder, suffix-only loss, generation metrics.

It holds the steps; the optimizer is built in ``optim``, metrics computed in ``scoring``, and the adapter and
merged model written by ``export``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch

from paligemma.data.batches import TrainBatch, ValBatch
from paligemma.data.processor import IGNORE_INDEX
from paligemma.data.processors import Processor
from paligemma.errors import ConfigError, NonFiniteError
from paligemma.model.build import BuiltModel
from paligemma.model.decode_weights import DecodeWeights
from paligemma.model.quantize import check_supported
from paligemma.training.distributed import clean_name, gather_records
from paligemma.training.optim import OptimSettings, build_optimizer
from paligemma.training.scoring import GenerationSettings, Metric, Record, log_predictions

if TYPE_CHECKING:
    from torch.distributed.fsdp import FullyShardedDataParallel

log = logging.getLogger(__name__)


def answer_tokens(labels: torch.Tensor) -> int:
    """The tokens the loss covers: labels other than -100, each predicted from the position before."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


class PaliGemmaLitModule(L.LightningModule):
    """Trains and validates the network it is handed (``training.build.build_module`` builds both from a run's
    settings): the loss of the answer tokens over every rank, the optimizer step, and validation's generations
    scored by ``metric``."""

    def __init__(
        self,
        network: BuiltModel,
        processor: Processor,
        optim: OptimSettings,
        generation: GenerationSettings,
        metric: Metric,
        run_config: dict[str, Any] | None = None,
    ):
        """``network``: what ``build_model`` made (the net, its peft wrapper, precision, quantization). ``processor``
        decodes generations. ``run_config``: the composed config of the run, saved in checkpoints so that a
        checkpoint rebuilds its network (``training.build.use_saved_network``)."""
        super().__init__()
        self.save_hyperparameters({"config": run_config}, logger=False)
        self.strict_loading = False  # checkpoints hold the trainable parameters only
        self.network, self.processor = network, processor
        self.net = network.net
        self.optim, self.generation, self.metric = optim, generation, metric
        # Names and shapes before any wrapping: FSDP renames parameters and shards them in place.
        self.param_shapes = {name: tuple(p.shape) for name, p in self.named_parameters()}
        self.trainable_names = {name for name, p in self.named_parameters() if p.requires_grad}
        self.samples_seen = 0
        self.fit_validated_at_step = None  # global step of the last validation inside trainer.fit
        self.skipped_steps = 0  # non-finite ones, with optim.skip_nonfinite
        self.step_tokens = 0  # answer tokens of all ranks since the last optimizer step
        self.records: list[Record] = []
        self.val_loss_sum, self.val_tokens = 0.0, 0  # this rank's, over the validation epoch
        self.validation_weights: DecodeWeights | None = None  # validation's decode weights while it runs

    def setup(self, stage: str) -> None:
        """A quantization that bitsandbytes cannot run on the trainer's device (CUDA, ...) is one line, here."""
        if self.network.quantization is not None:
            check_supported(self.network.quantization, self.trainer.strategy.root_device)

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
        if not self.network.settings.train_vision:
            self.net.model.vision_tower.eval()
        return self

    def training_step(self, batch: TrainBatch, batch_idx):
        """The loss of the whole global batch: the mean over every rank's answer tokens. Each rank weighs its own
        mean by its share of them (x world size, as DDP and FSDP average the ranks' gradients); a batch without a
        good row (its placeholder row, see paligemma/data/batches.py) runs with weight 0."""
        rows = batch.rows
        loss = self.net(**batch.inputs.as_kwargs(), return_logits=False).loss
        if self._any_rank(not torch.isfinite(loss)):
            rank = f" on rank {self.global_rank}" if self.trainer.world_size > 1 else ""
            return self._non_finite(f"loss ({loss.item()}{rank})")
        tokens = answer_tokens(batch.inputs.labels) if rows else 0
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

    def validation_step(self, batch: ValBatch, batch_idx):
        """A batch without a good row (its rows all bad or shard fillers) still runs its placeholder row: under
        FSDP each forward pass is a collective. It adds no record and no loss."""
        inputs = batch.inputs.as_kwargs()
        loss = self.net(**inputs, return_logits=False, decode_weights=self.validation_weights).loss
        if batch.rows:
            tokens = answer_tokens(batch.inputs.labels)
            self.val_loss_sum += loss.item() * tokens
            self.val_tokens += tokens
        new_tokens = self.net.generate(
            **batch.prompt.as_kwargs(),
            max_new_tokens=self.generation.max_new_tokens,
            num_beams=self.generation.num_beams,
            fixed_length=self.sharded,  # FSDP: every rank runs as many forward passes (collectives)
            eos_token_id=self.stop_token_ids,
            decode_weights=self.validation_weights,
        )
        predictions = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        for i, row_id in enumerate(batch.row_ids):
            self.records.append(
                Record(
                    row_id=row_id,
                    kind=batch.kinds[i],
                    prompt=batch.prompts[i],
                    prediction=predictions[i].strip(),
                    references=batch.references[i],
                    image=batch.images[i] if i < self.generation.log_predictions else None,
                    masks=batch.masks[i] if batch.masks else [],
                )
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
        for name, value in self.metric.score(self.records).items():
            self.log(name, value, prog_bar=name == self.metric.monitor, sync_dist=True)
        log_predictions(
            self.loggers, self.records, self.generation.log_predictions, self.global_step, self.metric
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

    def load_trained_weights(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint's trainable weights, as ``trainer.fit(ckpt_path=...)`` loads them (evaluate.py)."""
        self.on_load_checkpoint(checkpoint)
        self.load_state_dict(checkpoint["state_dict"], strict=False)

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
                f"ckpt_path does not fit this model ({self.network.settings.path}, lora={self.network.lora}): "
                f"{wrong[0]} ({len(wrong)} tensors differ)"
            )
