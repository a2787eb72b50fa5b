"""Lightning callbacks of the training stack."""

from __future__ import annotations

import random
from typing import Any, cast

import lightning as L
import numpy as np
import torch

from paligemma.training.distributed import union_over_ranks


class ExactResume(L.Callback):
    """What a run resumed from a checkpoint needs, beyond Lightning's own restore (weights, optimizer, scheduler,
    loop progress), to go on exactly as the run that was never interrupted:

    - torch's (CPU and CUDA), numpy's and Python's global RNG states, saved in every checkpoint, so that dropout
      draws the same masks. They are plain tensors, ints and lists: checkpoints still load with weights_only=True.
    - the train loader's position (paligemma/data/sampler.py): Lightning saves it but never loads it when
      ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``, as ours does (Lightning-AI/
      pytorch-lightning#20550); it is loaded here at train start, before the first batch is drawn.
    - the data module's skipped and truncated rows of every rank, not only of rank 0, which writes the checkpoint.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # private: Lightning has no public way to restore the loader's state (#20550); test_private_apis.py checks it
        trainer.fit_loop._load_combined_loader_states()  # a no-op when there is none, or Lightning loaded it

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # every rank saves: a collective is safe. Lightning's data connector sets trainer.datamodule, undeclared
        rows = checkpoint.get(type(trainer.datamodule).__qualname__)  # pyright: ignore[reportAttributeAccessIssue] -- see above
        if rows:
            rows.update({kind: sorted(union_over_ranks(keys)) for kind, keys in rows.items()})

    def state_dict(self) -> dict[str, Any]:
        # numpy's stubs pick get_state's dict overload; its default (legacy=True) returns this tuple
        kind, keys, pos, has_gauss, cached = cast(
            "tuple[str, np.ndarray, int, int, float]", np.random.get_state()
        )
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
