"""Errors a user fixes from their message alone, and the config checks that raise them before heavy work.

``train.py`` and ``evaluate.py`` print a :class:`RunError` as one line, ``error: <message>``, and exit with
status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name
DTYPE_NAMES = ("float32", "bfloat16", "float16")


class RunError(Exception):
    """A failure whose message names the culprit and the fix (bad config, bad data, diverged training)."""


class ConfigError(RunError, ValueError):
    """A config value, path or file that cannot work."""


class DataError(RunError, ValueError):
    """A bad dataset row under ``data.on_bad_sample=raise``."""


class NonFiniteError(RunError, FloatingPointError):
    """A NaN or infinite loss or gradient (with ``optim.skip_nonfinite=false``)."""


def find_run_error(error: BaseException) -> RunError | None:
    """``error`` or the RunError it wraps (hydra.utils.instantiate re-raises a constructor's error as its cause)."""
    while error is not None and not isinstance(error, RunError):
        error = error.__cause__
    return error


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line: a DataLoader worker wraps it in the worker's traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        return text.splitlines()[-1].removeprefix(f"{type(error).__module__}.{type(error).__qualname__}: ")
    return " ".join(text.splitlines()) or type(error).__name__


def _check_source(key: str, value: str, what: str) -> None:
    """A local path that exists, or a hub id (owner/name) that loading will resolve."""
    local = Path(value).expanduser()
    if local.exists():
        if key == "model.path" and not (local / "config.json").is_file():
            raise ConfigError(f"{key}: {value} has no config.json (expected {what})")
        return
    if str(value).startswith((".", "/", "~")) or not HUB_ID.fullmatch(str(value)):
        raise ConfigError(f"{key}: {value} does not exist and is not a hub id (expected {what})")


def validate_config(cfg: DictConfig) -> None:
    """Cheap checks of a train.py / evaluate.py config (no weights or data are read): required values, model,
    data, checkpoint and adapter paths, dtype. Raises :class:`ConfigError` naming the key."""
    own = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])  # tests compose hydra's too
    missing = sorted(OmegaConf.missing_keys(own))
    if missing:
        raise ConfigError(f"{missing[0]} is required: add {missing[0]}=... to the command line")
    _check_source("model.path", cfg.model.path, "a model dir with config.json and safetensors, or a hub id")
    if cfg.data.path != "synthetic":
        _check_source("data.path", cfg.data.path, "a dataset dir or file, a save_to_disk dir, or a hub id")
    if cfg.model.dtype not in DTYPE_NAMES:
        raise ConfigError(f"model.dtype: {cfg.model.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and not Path(ckpt_path).expanduser().is_file():
        raise ConfigError(f"ckpt_path: {ckpt_path} is not a file (a Lightning checkpoint, e.g. last.ckpt)")
    adapter = cfg.get("adapter")
    if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise ConfigError(
            f"adapter: {adapter} has no adapter_config.json (a PEFT adapter dir, e.g. <run>/adapter)"
        )
    _check_fsdp(cfg)


def _check_fsdp(cfg: DictConfig) -> None:
    """FSDP flattens each unit's weights into one tensor (one dtype), and runs forward passes in lockstep."""
    strategy = (cfg.get("trainer") or {}).get("strategy")
    name = strategy if isinstance(strategy, str) or strategy is None else strategy.get("_target_")
    if "fsdp" not in str(name).lower():
        return
    if cfg.model.dtype != "float32" and (cfg.get("lora") or cfg.get("adapter")):
        raise ConfigError(
            f"model.dtype={cfg.model.dtype} with trainer=fsdp: LoRA weights are float32 and FSDP needs one dtype "
            "per decoder layer; set model.dtype=float32 (FSDP shards it; trainer.precision=bf16-mixed computes in bf16)"
        )
    if (cfg.get("eval") or {}).get("num_beams", 1) > 1:
        raise ConfigError(
            "eval.num_beams > 1 with trainer=fsdp: beam search stops early, unlike the other ranks"
        )
