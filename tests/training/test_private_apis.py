"""Every private Lightning and torch API the project uses, as it uses it: a release that renames, removes or
re-signs one fails here, naming it, before the DDP / FSDP / resume tests fail in less obvious ways. Each use in the
code carries a comment naming the public API that is missing (pyproject.toml bounds the versions run)."""

import importlib
import inspect

import pytest
import torch

# (module, attribute path, the parameters it is called with or the attribute it must hold)
PRIVATE_APIS = [
    ("lightning.pytorch.strategies.launchers", "_SubprocessScriptLauncher.__init__",
     ["self", "cluster_environment", "num_processes", "num_nodes"]),
    ("lightning.pytorch.strategies.launchers", "_SubprocessScriptLauncher._call_children_scripts", ["self"]),
    ("lightning.fabric.utilities.distributed", "_set_num_threads_if_needed", ["num_processes"]),
    ("lightning.fabric.strategies.fsdp", "_setup_activation_checkpointing", ["module", "activation_checkpointing_kwargs"]),
    ("lightning.pytorch.strategies", "DDPStrategy._configure_launcher", ["self"]),
    ("lightning.pytorch.strategies", "FSDPStrategy._configure_launcher", ["self"]),
    ("lightning.pytorch.strategies", "FSDPStrategy._setup_model", ["self", "model"]),
    ("lightning.pytorch.loops", "_FitLoop._load_combined_loader_states", ["self"]),
    ("torch.distributed.distributed_c10d", "_get_default_store", []),
    ("torch.cpu", "_is_avx512_bf16_supported", []),
    ("torch.cpu", "_is_amx_tile_supported", []),
]  # fmt: skip


@pytest.mark.parametrize("module, path, parameters", PRIVATE_APIS, ids=[p for _, p, _ in PRIVATE_APIS])
def test_each_private_api_is_there_with_the_parameters_we_call_it_with(module, path, parameters):
    target = importlib.import_module(module)
    for name in path.split("."):
        target = getattr(target, name)
    assert list(inspect.signature(target).parameters) == parameters


def test_the_strategies_hold_the_private_attributes_our_subclasses_read():
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = FSDPStrategy()
    for attribute in ("_launcher", "_activation_checkpointing_kwargs", "_state_dict_type"):
        assert hasattr(strategy, attribute), attribute
    assert isinstance(torch.cpu._is_avx512_bf16_supported(), bool)
