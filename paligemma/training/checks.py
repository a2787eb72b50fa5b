"""Config checks of train.py and evaluate.py that run before any weights or data are read."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf

from paligemma.data.settings import GENERATED_PATHS, DataSettings
from paligemma.errors import ConfigError
from paligemma.model.build import ModelSettings
from paligemma.model.lora import LoraSettings
from paligemma.model.precision import resolve_dtype
from paligemma.paths import is_hub_id, local_path, read_json
from paligemma.training.build import RunSettings
from paligemma.training.optim import OptimSettings
from paligemma.training.scoring import GenerationSettings, Metric


def _check_source(key: str, value: str, what: str) -> None:
    """A local path that exists (``~`` expanded, as loading does), or a hub id (owner/name) that loading will fetch."""
    if is_hub_id(value):
        return
    local = local_path(value)
    if not local.exists():
        raise ConfigError(f"{key}: {value} does not exist and is not a hub id (expected {what})")
    if key == "model.path" and not (local / "config.json").is_file():
        raise ConfigError(f"{key}: {value} has no config.json (expected {what})")


def run_entry(main: Callable[[], object]) -> None:
    """Run a ``@hydra.main`` entry point so that a config Hydra cannot compose (a misspelt key, a malformed
    override, a missing config file) ends in one line, as every other config error does. Hydra then raises instead
    of printing its own report (``HYDRA_FULL_ERROR``), which also leaves bugs their whole traceback."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except (ConfigCompositionException, OverrideParseException, MissingConfigException) as error:
        cause = error.__cause__  # OmegaConf's: the key and the schema; its full_key lines repeat them
        message = str(error) + (f" ({str(cause).split('full_key:')[0].strip()})" if cause else "")
        message = message.split("Config search path:")[0]  # Hydra's internals
        sys.exit(f"error: {' '.join(message.split())}")


def typed(cls, node: Mapping[str, Any], key: str):
    """``cls(**node)``, a key that ``cls`` has no field for (added with ``+key.name=...``) a ConfigError naming it."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(node) - set(names))
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]} is not a setting of {key} ({cls.__name__}: {', '.join(names)})"
        )
    fields = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    return cls(**cast(dict[str, Any], fields))


def run_settings(cfg: DictConfig, trains: bool = True) -> RunSettings:
    """A train.py (``trains``) or evaluate.py config typed and checked, no weights or data read: required values,
    each group's settings (their own checks), model, data, checkpoint and adapter paths, dtype, FSDP, the
    accelerator. Raises :class:`ConfigError` naming the key."""
    keys = cast(list[str], [key for key in cfg if key != "hydra"])  # a composed config's keys are strings
    own = OmegaConf.masked_copy(cfg, keys)  # tests compose hydra's too
    missing = sorted(OmegaConf.missing_keys(own))
    if missing:
        raise ConfigError(f"{missing[0]} is required: add {missing[0]}=... to the command line")
    model = typed(ModelSettings, cfg.model, "model")
    lora = typed(LoraSettings, cfg.lora, "lora") if cfg.get("lora") else None
    model.check_adapters(lora is not None)
    data = typed(DataSettings, cfg.data, "data")
    settings = RunSettings(
        model=model,
        lora=lora,
        optim=typed(OptimSettings, cfg.optim, "optim") if "optim" in cfg else OptimSettings(),
        generation=typed(GenerationSettings, cfg.generation, "generation").for_task(data),
        data=data,
        metric=Metric.of(data),
        bf16_refused_by=bf16_refusal(model, lora, uses_fsdp(cfg), trains),
    )
    _check_source("model.path", model.path, "a model dir with config.json and safetensors, or a hub id")
    if data.path not in GENERATED_PATHS:
        _check_source("data.path", data.path, "a dataset dir or file, a save_to_disk dir, or a hub id")
    if (ckpt_path := cfg.get("ckpt_path")) is not None:
        _check_checkpoint(ckpt_path)
    if model.adapter is not None:
        _check_adapter(model.adapter)
    _check_eval_counts(cfg)
    if uses_fsdp(cfg):
        _check_fsdp(settings)
    _check_accelerator(cfg)
    return settings


# The accelerators that the check below counts, and what its message says this machine lacks when it has none.
MISSING_ACCELERATOR = {
    "gpu": "CUDA or Apple MPS GPU",
    "cuda": "CUDA GPU",
    "mps": "Apple MPS GPU",
    "tpu": "TPU (torch_xla is not installed)",
}


def local_devices(accelerator: str) -> int | None:
    """How many devices of ``accelerator`` (a key of ``MISSING_ACCELERATOR``) this machine has, as Lightning
    counts them; None where it cannot tell without loading the backend (TPUs, torch_xla installed)."""
    if accelerator == "tpu":
        return None if importlib.util.find_spec("torch_xla") else 0
    cuda, mps = torch.cuda.device_count(), int(torch.backends.mps.is_available())
    return {"gpu": cuda or mps, "cuda": cuda, "mps": mps}[accelerator]


def _requested_devices(devices: object) -> int | None:
    """How many devices ``trainer.devices`` needs: a count, or the highest index + 1 of a list of indices
    ("0,1" or [0, 1]); None for auto and -1 (every device)."""
    if isinstance(devices, str):
        if devices.strip() in ("auto", "-1"):
            return None
        devices = [int(i) for i in devices.split(",") if i.strip()] if "," in devices else int(devices)
    if isinstance(devices, int):
        return None if devices == -1 else devices
    return max(devices, default=-1) + 1 if isinstance(devices, list | ListConfig) else None


def _check_accelerator(cfg: DictConfig) -> None:
    """A trainer asking for an accelerator this machine lacks (``trainer.accelerator`` gpu, cuda, mps or tpu), or
    for more of its devices than it has, which Lightning's Trainer would end in a traceback."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator not in MISSING_ACCELERATOR or (available := local_devices(accelerator)) is None:
        return  # auto and cpu run anywhere
    if available == 0:
        fix = "use trainer=cpu (or trainer=default)"
        if isinstance(trainer.get("strategy"), Mapping):  # DDP / FSDP
            fix += ", or trainer.accelerator=cpu trainer.devices=2 trainer.precision=32-true for its ranks on the CPU"
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no {MISSING_ACCELERATOR[accelerator]}: {fix}"
        )
    devices = trainer.get("devices", "auto")
    wanted = _requested_devices(devices)
    if wanted is not None and wanted > available and not torch.distributed.is_torchelastic_launched():
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {available} {accelerator.upper()} "
            f"device{'s' * (available > 1)}: use trainer.devices={available} or fewer (auto: every one)"
        )


def _check_eval_counts(cfg: DictConfig) -> None:
    """evaluate.py's ``eval.batch_size`` and ``eval.max_samples``: at least 1, or null (data's / every row)."""
    for key in ("eval.batch_size", "eval.max_samples"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{key} must be a whole number of at least 1, got {value!r}")


def _check_checkpoint(ckpt_path: str) -> None:
    """A file torch.save wrote whole: a zip archive (a kill or a full disk leaves one without its directory)."""
    if not local_path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path: {ckpt_path} is not a file (a Lightning checkpoint, e.g. last.ckpt)")
    if not zipfile.is_zipfile(local_path(ckpt_path)):
        raise ConfigError(
            f"ckpt_path: {ckpt_path} is not a whole checkpoint (truncated, or not written by torch.save); "
            "resume from another one of the run's checkpoints/ (step<N>.ckpt)"
        )


def read_checkpoint(ckpt_path: str) -> dict[str, Any]:
    """A whole checkpoint file read without unpickling code (``AtomicCheckpointIO``), onto the CPU."""
    _check_checkpoint(ckpt_path)
    from paligemma.training.checkpoint_io import AtomicCheckpointIO

    return AtomicCheckpointIO().load_checkpoint(local_path(ckpt_path), map_location="cpu")


def _check_adapter(adapter: str) -> None:
    """A PEFT adapter dir: adapter_config.json, a JSON object naming its peft_type."""
    config_file = local_path(adapter) / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"model.adapter: {adapter} has no adapter_config.json (a PEFT adapter dir, e.g. <run>/adapter)"
        )
    config = read_json(config_file)
    if not isinstance(config, dict) or "peft_type" not in config:
        raise ConfigError(
            f"model.adapter: {config_file} names no peft_type, so it is no PEFT adapter config; point it at a "
            "dir that peft's save_pretrained wrote (train.py writes <run>/adapter)"
        )


USER_PATHS = ("model.path", "data.path", "ckpt_path", "model.adapter")


def expand_user_paths(cfg: DictConfig) -> None:
    """Write each local path of ``USER_PATHS`` with ``~`` expanded, so that everything after the checks (loading,
    Lightning's resume, metrics.json) reads one meaning of it; hub ids and "synthetic" stay as they are."""
    for key in USER_PATHS:
        value = OmegaConf.select(cfg, key)
        if value is not None and str(value).startswith("~"):
            OmegaConf.update(cfg, key, str(local_path(value)))


def uses_fsdp(cfg: DictConfig) -> bool:
    strategy = (cfg.get("trainer") or {}).get("strategy")
    name = strategy if isinstance(strategy, str) or strategy is None else strategy.get("_target_")
    return "fsdp" in str(name).lower()


def bf16_refusal(model: ModelSettings, lora: LoraSettings | None, fsdp: bool, trains: bool) -> str | None:
    """What in this run cannot take a bf16 base (``model.dtype=auto`` then picks float32), or None. ``trains``:
    whether the run trains (train.py) or only evaluates (evaluate.py)."""
    adapts = lora is not None or model.adapter is not None
    if fsdp and adapts:
        return "trainer=fsdp needs one dtype per decoder layer, and LoRA weights are float32"
    if not trains or model.adapter is not None:
        return None
    trained = [f"model.{key}=true" for key in ("train_vision", "train_projector") if getattr(model, key)]
    trained = trained if adapts else ["lora=null", *trained]
    return f"{' and '.join(trained)} would train base weights in bf16" if trained else None


def _check_fsdp(settings: RunSettings) -> None:
    """FSDP flattens each unit's weights into one tensor (one dtype), and runs forward passes in lockstep."""
    model = settings.model
    if model.quantization:
        raise ConfigError(
            f"model.quantization={model.quantization} with trainer=fsdp: FSDP flattens each decoder layer's "
            "weights into one float32 tensor, which bitsandbytes' packed weights cannot join; use trainer=ddp (each rank holds the quantized model) or model.quantization=null"
        )
    adapts = settings.lora is not None or model.adapter is not None
    if resolve_dtype(model.dtype, settings.bf16_refused_by)[0] != torch.float32 and adapts:
        raise ConfigError(
            f"model.dtype={model.dtype} with trainer=fsdp: LoRA weights are float32 and FSDP needs one dtype "
            "per decoder layer; set model.dtype=float32 (FSDP shards it; trainer.precision=bf16-mixed computes in bf16)"
        )
    if settings.generation.num_beams > 1:
        raise ConfigError(
            "generation.num_beams > 1 with trainer=fsdp: beam search stops early, unlike the other ranks"
        )
