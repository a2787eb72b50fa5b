"""What a run does around Lightning's calls: config groups instantiated, the fit with its metrics and exports, the
summary it prints, metrics.json written atomically. train.py and evaluate.py compose, instantiate and call these."""

import time
from pathlib import Path
from typing import cast

import hydra
import torch
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from paligemma.paths import write_json
from paligemma.training.distributed import union_over_ranks
from paligemma.training.export import save_adapter, save_model


def instantiate_all(group: DictConfig | None) -> list:
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c is not None]


def run_config(cfg: DictConfig) -> dict:
    """The composed config as plain values, Hydra's own node left out: what loggers and checkpoints keep."""
    own = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])
    return cast(dict, OmegaConf.to_container(own, resolve=True))


def samples_seen(trainer, module) -> int:
    """Training samples of all ranks."""
    local = torch.tensor(float(module.samples_seen), device=trainer.strategy.root_device)
    return int(trainer.strategy.reduce(local, reduce_op="sum").item())


def fit_and_save(cfg: DictConfig, trainer, module, datamodule, loggers: list) -> dict:
    """Zero-shot validation (unless resuming), the fit, validation of the final weights; then, on rank 0, the
    adapter (and merged model), metrics.json, the W&B summary and the printed summary. Returns the metrics."""
    out_dir = Path(cfg.paths.output_dir)
    results = {}
    if cfg.zero_shot and cfg.ckpt_path is None:
        zero_shot = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        results.update({f"zero_shot/{k.removeprefix('val/')}": v for k, v in zero_shot.items()})
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    wall = time.perf_counter() - start
    if module.fit_validated_at_step == trainer.global_step:  # fit just validated these weights
        results.update({k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    else:
        results.update(trainer.validate(module, datamodule=datamodule, verbose=False)[0])

    monitor = module.metric.monitor
    rows = datamodule.state_dict()  # (split, row) keys skipped / truncated: under DDP each rank saw its shard
    results.update(
        {
            "monitor": monitor,
            "data/skipped": len(union_over_ranks(rows["skipped"])),
            "data/truncated": len(union_over_ranks(rows["truncated"])),
            "train/skipped_steps": module.skipped_steps,
            "train/wall_seconds": wall,
            "precision": module.network.precision,
            "train/samples_per_sec": samples_seen(trainer, module) / wall if wall > 0 else 0.0,
            "model_path": str(Path(cfg.model.path).resolve())
            if Path(cfg.model.path).exists()
            else cfg.model.path,
        }
    )
    # FSDP: the parameters hold one shard per rank; every rank takes part in gathering them whole to rank 0
    state = trainer.strategy.lightning_module_state_dict() if module.sharded else None
    if trainer.is_global_zero:  # under DDP / FSDP every rank runs this function; rank 0 alone writes
        if module.network.peft_model is not None:
            results["adapter_path"] = str(save_adapter(module, out_dir / "adapter", state))
        if cfg.export.merged or module.network.peft_model is None:  # full fine-tuning has no adapter to save
            results["finetuned_path"] = str(save_model(module, out_dir / "model", state))
        write_json(out_dir / "metrics.json", results)
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(
                    {k: v for k, v in results.items() if isinstance(v, int | float)}
                )
        print_summary(results, monitor)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # a later run in this process starts a new W&B run
    return results


def no_metric_reason(results: dict) -> str:
    """Why validation gave no metric: no row of the validation split could be scored."""
    return (
        f"no validation row could be scored ({results.get('data/skipped', 0)} rows skipped as bad, see the "
        "warnings above)"
    )


def print_summary(results: dict, monitor: str) -> None:
    name = monitor.removeprefix("val/")
    if monitor in results:
        before = results.get(f"zero_shot/{name}", float("nan"))
        print(f"\n{name}: before {before:.4f}  after {results[monitor]:.4f}")
    else:
        print(f"\n{name}: not measured: {no_metric_reason(results)}")
    for key in sorted(k for k in results if k.startswith(monitor + "/")):
        before = results.get(f"zero_shot/{key.removeprefix('val/')}", float("nan"))
        print(f"  {key.removeprefix(monitor + '/'):>10s}: before {before:.4f}  after {results[key]:.4f}")
    print(
        f"trained in {results['train/wall_seconds']:.0f} s, {results['train/samples_per_sec']:.1f} samples/s, "
        f"base weights {results['precision']}"
    )
