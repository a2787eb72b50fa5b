"""Score a base model, a PEFT adapter or a training checkpoint with the metrics papers report.

    python evaluate.py model.adapter=logs/train/runs/<date>/adapter
    python evaluate.py model=paligemma-3b-pt-224 data=coco_captions model.adapter=DIR generation.num_beams=2

Writes predictions.jsonl and metrics.json to the run dir (and to W&B as a summary and a table).
"""

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from paligemma.errors import find_run_error, one_line  # noqa: E402
from paligemma.training.checks import bf16_refusal, expand_user_paths, run_entry, validate_config  # noqa: E402
from paligemma.training.configs import register_configs  # noqa: E402

register_configs()


def load_module(cfg: DictConfig, datamodule):
    from paligemma.training.module import PaliGemmaLitModule

    overrides = {
        **cfg.generation,
        "task": datamodule.task,
        "processor": datamodule.processor,
        "metric": datamodule.metric,
        "bf16_refused_by": bf16_refusal(cfg, trains=False),
    }
    if cfg.ckpt_path is not None:
        return PaliGemmaLitModule.load_from_checkpoint(
            cfg.ckpt_path, map_location="cpu", weights_only=True, **overrides
        )
    model = {**OmegaConf.to_container(cfg.model, resolve=True), **overrides}
    return PaliGemmaLitModule(**model)


def evaluate(cfg: DictConfig) -> dict:
    validate_config(cfg)
    expand_user_paths(cfg)
    import lightning as L  # the stack loads after the checks: a bad config fails in seconds

    from paligemma.training.run import instantiate_all, no_metric_reason, write_json
    from paligemma.training.scoring import MONITORED_METRIC

    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    datamodule = hydra.utils.instantiate(
        cfg.data,
        val_split=cfg.eval.split,
        max_val_samples=cfg.eval.max_samples,
        val_batch_size=cfg.eval.batch_size,
    )
    datamodule.prepare_data()
    datamodule.setup("validate")  # a missing split or column fails here, before the model loads
    module = load_module(cfg, datamodule)
    if cfg.eval.packed_4bit and module.quantization is not None:
        from paligemma.model.quantize import allow_packed_cpu_path_

        allow_packed_cpu_path_(module.net)
    loggers = instantiate_all(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=[], max_epochs=None)
    start = time.perf_counter()
    scores = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    seconds = time.perf_counter() - start

    records = module.records
    with open(out_dir / "predictions.jsonl", "w") as f:
        for r in records:
            row = {"id": r.row_id, "kind": r.kind, "prompt": r.prompt, "prediction": r.prediction}
            f.write(json.dumps({**row, "references": r.references}) + "\n")
    results = {
        **scores,
        "monitor": MONITORED_METRIC[datamodule.metric],
        "eval/samples": len(records),
        "eval/seconds": seconds,
        "eval/samples_per_sec": len(records) / seconds if seconds > 0 else 0.0,
        "data/skipped": datamodule.skipped,
        "model_path": str(module.hparams.path),
        "adapter_path": str(Path(cfg.model.adapter).resolve()) if cfg.model.adapter else None,
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()) if cfg.ckpt_path else None,
    }
    write_json(out_dir / "metrics.json", results)
    for logger in loggers:
        if hasattr(logger.experiment, "summary"):
            logger.experiment.summary.update({k: v for k, v in results.items() if isinstance(v, int | float)})
            logger.experiment.finish()
    metric = results["monitor"]
    if metric not in results:
        print(f"{metric}: not measured: {no_metric_reason(results)}")
        return results
    print(
        f"{metric}: {results[metric]:.4f} on {len(records)} samples ({results['eval/samples_per_sec']:.1f}/s)"
    )
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    try:
        results = evaluate(cfg)
    except Exception as error:
        if (known := find_run_error(error)) is None:
            raise
        sys.exit(f"error: {one_line(known)}")
    return results.get(results["monitor"])


if __name__ == "__main__":
    run_entry(main)
