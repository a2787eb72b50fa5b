"""Lightning strategies as ``trainer=fsdp`` uses them (conf/trainer/fsdp.yaml)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy


class FSDPStrategy(LightningFSDPStrategy):
    """Lightning's ``FSDPStrategy`` (``trainer=fsdp``) with two additions:

    - the model is wrapped once per trainer: train.py validates before fitting and after, and on the second call
      Lightning would find the decoder layers already wrapped and leave the rest of the model without its root
      FSDP unit, those weights still sharded; here later calls reuse the first wrapper.
    - it runs on CPU processes too (gloo backend), for tests and debugging: Lightning refuses FSDP without a GPU
      and passes ``device_id=None`` there, which torch's FSDP rejects; with ``device_id=cpu`` FSDP runs.
    """

    _wrapped: torch.nn.Module | None = None

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self._wrapped is not None and self._wrapped.module is model:
            return self._wrapped
        if self.root_device.type != "cpu":
            self._wrapped = super()._setup_model(model)
            return self._wrapped
        from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        self._wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        _setup_activation_checkpointing(self._wrapped, self._activation_checkpointing_kwargs)
        return self._wrapped

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        # on CPU, FSDP's offload_to_cpu (which Lightning asks for) frees the very tensors it hands back
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, config):
            return self.model.state_dict()
