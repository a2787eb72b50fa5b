"""Fine-tune PaliGemma: compose the Hydra config, instantiate, fit, write metrics.json, return the metric.

python train.py                                   # tiny model, synthetic VQA, offline
python train.py data=vqav2 model=paligemma-3b-pt-224 trainer=gpu
python train.py -m lora.r=4,8 optim.lr=1e-4,3e-4  # a sweep, one W&B group
python train.py ckpt_path=logs/train/runs/<date>/checkpoints/last.ckpt  # resume a killed run, mid-epoch too

A bad config, bad data under data.on_bad_sample=raise, a non-finite loss or a rank that died or hung exits with
status 1 and one line, ``error: <message>``; config checks run before the training stack is even imported.
SIGTERM, SIGUSR1 or SIGINT (``preemption.signals``) writes last.ckpt for the current step and exits with status 75,
printing the command that resumes the run.
"""

import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from paligemma.errors import (  # noqa: E402
    PREEMPTED_EXIT_STATUS,
    ConfigError,
    NonFiniteError,
    Preempted,
    find_run_error,
    one_line,
)
from paligemma.training.checks import expand_user_paths, run_entry, run_settings  # noqa: E402
from paligemma.training.configs import register_configs  # noqa: E402

register_configs()


def group_sweep_in_wandb(cfg: DictConfig) -> None:
    """Jobs of one multirun share a W&B group named after the sweep directory."""
    hydra_cfg = HydraConfig.get()
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is not None and wandb_cfg.group is None and hydra_cfg.mode == RunMode.MULTIRUN:
        wandb_cfg.group = Path(hydra_cfg.sweep.dir).name


def check_launch(trainer) -> None:
    """Lightning starts the other ranks of a one-node DDP / FSDP run by re-running this script's command line,
    which in a multirun would start a second sweep: multi-device jobs of a sweep need a launcher that starts
    every rank itself (SLURM through hydra/launcher=slurm, with one task per device)."""
    from lightning.pytorch.strategies.launchers import (
        _SubprocessScriptLauncher,
    )  # private: no public launcher

    launcher = trainer.strategy.launcher
    spawns = isinstance(launcher, _SubprocessScriptLauncher)
    spawns = spawns and not launcher.cluster_environment.creates_processes_externally
    if spawns and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            f"a multirun job cannot start {trainer.world_size} processes itself: sweep one device per job "
            "(trainer.devices=1), or run the sweep on SLURM (hydra/launcher=slurm), which starts each rank"
        )


def train(cfg: DictConfig) -> dict:
    """Fit and validate; returns (and writes to <run dir>/metrics.json) the run's metrics."""
    expand_user_paths(cfg)
    settings = run_settings(cfg)
    import lightning as L  # the training stack loads after the checks: a bad config fails in seconds
    from lightning.pytorch.callbacks import LearningRateMonitor

    from paligemma.training.build import build_datamodule, build_module
    from paligemma.training.faults import lost_ranks_fail_the_job
    from paligemma.training.preemption import sigterm_outside_training_is_preemption
    from paligemma.training.run import fit_and_save, instantiate_all, run_config

    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(settings)
    datamodule.prepare_data()
    datamodule.setup("fit")  # missing splits or columns fail here, before the model loads
    config = run_config(cfg)
    module = build_module(settings, datamodule, config)
    loggers = instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.callbacks)
    if not loggers:  # logger=none: nothing to log the learning rate to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    check_launch(trainer)
    for logger in loggers:
        logger.log_hyperparams(config)
    with lost_ranks_fail_the_job(trainer), sigterm_outside_training_is_preemption(trainer):
        return fit_and_save(cfg, trainer, module, datamodule, loggers)


def last_checkpoint(cfg: DictConfig) -> Path | None:
    path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def resume_command(checkpoint: Path | None) -> str:
    """This run's command line, resuming from ``checkpoint`` (None: as it was)."""
    overrides = HydraConfig.get().overrides.task
    if checkpoint is not None:
        overrides = [o for o in overrides if not o.startswith("ckpt_path=")] + [
            f"ckpt_path={checkpoint.resolve()}"
        ]
    return shlex.join(["python", "train.py", *overrides])


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    group_sweep_in_wandb(cfg)
    try:
        results = train(cfg)
    except Preempted as stop:
        if stop.rank == 0:
            print(
                f"{stop}; resume with: {resume_command(stop.path or last_checkpoint(cfg))}", file=sys.stderr
            )
        if "wandb" in sys.modules:
            sys.modules["wandb"].finish(exit_code=PREEMPTED_EXIT_STATUS)
        sys.exit(PREEMPTED_EXIT_STATUS)
    except Exception as error:
        if (known := find_run_error(error)) is None:
            raise
        if isinstance(known, NonFiniteError) and HydraConfig.get().mode == RunMode.MULTIRUN:
            print(f"error: {one_line(known)}", file=sys.stderr)  # a diverged job: the sweep goes on
            if "wandb" in sys.modules:
                sys.modules["wandb"].finish(exit_code=1)  # the next job starts its own W&B run
            direction = str(OmegaConf.select(HydraConfig.get(), "sweeper.direction", default="maximize"))
            return float("inf" if "minimize" in direction else "-inf")  # the worst score (NaN fails Optuna)
        sys.exit(f"error: {one_line(known)}")
    return results.get(results["monitor"])


if __name__ == "__main__":
    run_entry(main)
