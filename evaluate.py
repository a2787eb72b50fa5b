"""Score a base model, a PEFT adapter or a training checkpoint with the metrics papers report.

    python evaluate.py model.adapter=logs/train/runs/<date>/adapter
    python evaluate.py model=paligemma-3b-pt-224 data=coco_captions model.adapter=DIR generation.num_beams=2

Writes predictions.jsonl and metrics.json to the run dir (and to W&B as a summary and a table).
"""

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from paligemma.errors import find_run_error, one_line  # noqa: E402
from paligemma.training.build import use_saved_network  # noqa: E402
from paligemma.training.checks import expand_user_paths, read_checkpoint, run_entry, run_settings  # noqa: E402
from paligemma.training.configs import register_configs  # noqa: E402

register_configs()


def evaluate(cfg: DictConfig) -> dict:
    expand_user_paths(cfg)
    checkpoint = read_checkpoint(cfg.ckpt_path) if cfg.ckpt_path is not None else None
    if checkpoint is not None:
        use_saved_network(cfg, checkpoint)
    settings = run_settings(cfg, trains=False)
    data = replace(
        settings.data,
        val_split=cfg.eval.split,
        max_val_samples=cfg.eval.max_samples,
        val_batch_size=cfg.eval.batch_size,
    )
    settings = replace(settings, data=data)
    import lightning as L  # the stack loads after the checks: a bad config fails in seconds

    from paligemma.paths import write_json
    from paligemma.training.build import build_datamodule, build_module
    from paligemma.training.run import instantiate_all, no_metric_reason, run_config

    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(settings)
    datamodule.prepare_data()
    datamodule.setup("validate")  # a missing split or column fails here, before the model loads
    module = build_module(settings, datamodule, run_config(cfg))
    if checkpoint is not None:
        module.load_trained_weights(checkpoint)
    if cfg.eval.packed_4bit and module.network.quantization is not None:
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
        "monitor": settings.metric.monitor,
        "eval/samples": len(records),
        "eval/seconds": seconds,
        "eval/samples_per_sec": len(records) / seconds if seconds > 0 else 0.0,
        "data/skipped": datamodule.skipped,
        "model_path": settings.model.path,
        "adapter_path": str(Path(settings.model.adapter).resolve()) if settings.model.adapter else None,
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
