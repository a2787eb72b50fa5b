"""Config checks of train.py and evaluate.py that run before any weights or data are read."""

from __future__ import annotations

import dataclasses
import os
import sys
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from paligemma.data.settings import GENERATED_PATHS
from paligemma.errors import ConfigError
from paligemma.model.build import ModelSettings
from paligemma.model.precision import resolve_dtype
from paligemma.paths import is_hub_id, local_path, read_json
from paligemma.training.scoring import GenerationSettings


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
    return cls(**node)


def validate_config(cfg: DictConfig) -> None:
    """Cheap checks of a train.py / evaluate.py config (no weights or data are read): required values, model,
    data, checkpoint and adapter paths, dtype. Raises :class:`ConfigError` naming the key."""
    keys = cast(list[str], [key for key in cfg if key != "hydra"])  # a composed config's keys are strings
    own = OmegaConf.masked_copy(cfg, keys)  # tests compose hydra's too
    missing = sorted(OmegaConf.missing_keys(own))
    if missing:
        raise ConfigError(f"{missing[0]} is required: add {missing[0]}=... to the command line")
    settings = typed(
        ModelSettings, cfg.model, "model"
    )  # its own checks, then those against LoRA or an adapter
    settings.check_adapters(bool(cfg.get("lora")))
    typed(GenerationSettings, cfg.generation, "generation")
    _check_source("model.path", cfg.model.path, "a model dir with config.json and safetensors, or a hub id")
    if cfg.data.path not in GENERATED_PATHS:
        _check_source("data.path", cfg.data.path, "a dataset dir or file, a save_to_disk dir, or a hub id")
    if (ckpt_path := cfg.get("ckpt_path")) is not None:
        _check_checkpoint(ckpt_path)
    if settings.adapter is not None:
        _check_adapter(settings.adapter)
    _check_eval_counts(cfg)
    _check_fsdp(cfg)


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


def bf16_refusal(cfg: DictConfig, trains: bool = True) -> str | None:
    """What in this run cannot take a bf16 base (``model.dtype=auto`` then picks float32), or None. ``trains``:
    whether the run trains (train.py) or only evaluates (evaluate.py)."""
    adapts = bool(cfg.get("lora") or cfg.model.get("adapter"))
    if uses_fsdp(cfg) and adapts:
        return "trainer=fsdp needs one dtype per decoder layer, and LoRA weights are float32"
    if not trains or cfg.model.get("adapter") is not None:
        return None
    trained = [f"model.{key}=true" for key in ("train_vision", "train_projector") if cfg.model.get(key)]
    trained = trained if adapts else ["lora=null", *trained]
    return f"{' and '.join(trained)} would train base weights in bf16" if trained else None


def _check_fsdp(cfg: DictConfig) -> None:
    """FSDP flattens each unit's weights into one tensor (one dtype), and runs forward passes in lockstep."""
    if not uses_fsdp(cfg):
        return
    if cfg.model.get("quantization"):
        raise ConfigError(
            f"model.quantization={cfg.model.quantization} with trainer=fsdp: FSDP flattens each decoder layer's "
            "weights into one float32 tensor, which bitsandbytes' packed weights cannot join; use trainer=ddp (each rank holds the quantized model) or model.quantization=null"
        )
    if resolve_dtype(cfg.model.dtype, bf16_refusal(cfg))[0] != torch.float32 and (
        cfg.get("lora") or cfg.model.get("adapter")
    ):
        raise ConfigError(
            f"model.dtype={cfg.model.dtype} with trainer=fsdp: LoRA weights are float32 and FSDP needs one dtype "
            "per decoder layer; set model.dtype=float32 (FSDP shards it; trainer.precision=bf16-mixed computes in bf16)"
        )
    if cfg.generation.num_beams > 1:
        raise ConfigError(
            "generation.num_beams > 1 with trainer=fsdp: beam search stops early, unlike the other ranks"
        )
