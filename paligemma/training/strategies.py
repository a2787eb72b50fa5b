"""Lightning strategies as ``trainer=ddp`` and ``trainer=fsdp`` use them (conf/trainer/ddp.yaml, fsdp.yaml).

Both start this machine's other ranks with :class:`WatchedLauncher`, which watches them with
paligemma/training/faults.py's ``RankWatch`` rather than Lightning's observer.

Private Lightning APIs, for want of public ones (tests/training/test_private_apis.py checks each): Lightning has
no public launcher to subclass nor a hook to replace a strategy's launcher (``_SubprocessScriptLauncher``,
``_call_children_scripts``, ``_configure_launcher``, ``_launcher``, ``_set_num_threads_if_needed``), and no hook
to wrap a model in FSDP on CPU (``_setup_model``, ``_setup_activation_checkpointing``,
``_activation_checkpointing_kwargs``, ``_state_dict_type``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import DDPStrategy as LightningDDPStrategy
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

from paligemma.training.faults import RankWatch


class WatchedLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher of the ranks of one machine (it re-runs the command line for local ranks 1, 2, ...),
    their health watched by a ``RankWatch``: a rank that dies fails the job at once, naming it."""

    @classmethod
    def replacing(cls, launcher: Any) -> Any:
        """The launcher a strategy configured: Lightning's of this machine's ranks as a WatchedLauncher, any other
        as it is."""
        if not isinstance(launcher, _SubprocessScriptLauncher):
            return launcher
        return cls(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)

    def launch(self, function: Callable, *args: Any, trainer=None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            first = self.cluster_environment.node_rank() * self.num_processes
            RankWatch(self.procs, [first + local for local in range(1, self.num_processes)]).start()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


class DDPStrategy(LightningDDPStrategy):
    """Lightning's ``DDPStrategy`` (``trainer=ddp``), its local ranks started by :class:`WatchedLauncher`."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        self._launcher = WatchedLauncher.replacing(self._launcher)


class FSDPStrategy(LightningFSDPStrategy):
    """Lightning's ``FSDPStrategy`` (``trainer=fsdp``) with three additions:

    - the model is wrapped once per trainer: train.py validates before fitting and after, and on the second call
      Lightning would find the decoder layers already wrapped and leave the rest of the model without its root
      FSDP unit, those weights still sharded; here later calls reuse the first wrapper.
    - it runs on CPU processes too (gloo backend), for tests and debugging: Lightning refuses FSDP without a GPU
      and passes ``device_id=None`` there, which torch's FSDP rejects; with ``device_id=cpu`` FSDP runs.
    - its local ranks are started by :class:`WatchedLauncher`.
    """

    _wrapped: torch.nn.Module | None = None

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        self._launcher = WatchedLauncher.replacing(self._launcher)

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
        assert self.model is not None  # as Lightning's own lightning_module_state_dict asserts
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, config):
            return self.model.state_dict()
