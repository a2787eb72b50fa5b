"""Validation metrics over generated records, and the predictions shown in W&B."""

from __future__ import annotations

import statistics
from collections import defaultdict

from paligemma import metrics

MONITORED_METRIC = {"vqa": "val/vqa_accuracy", "caption": "val/cider"}


def score(records: list[dict], task: str) -> dict[str, float]:
    """The task's metrics over validation records, VQA accuracy per question kind as well."""
    if task == "vqa":
        per_kind = defaultdict(list)
        for r in records:
            per_kind[r["kind"]].append(metrics.vqa_accuracy(r["prediction"], r["references"]))
        scores = {f"val/vqa_accuracy/{kind}": statistics.fmean(v) for kind, v in sorted(per_kind.items())}
        scores["val/vqa_accuracy"] = statistics.fmean(a for v in per_kind.values() for a in v)
        return scores
    predictions = {r["row_id"]: r["prediction"] for r in records}
    references = {r["row_id"]: r["references"] for r in records}
    return {
        "val/cider": metrics.cider_d(predictions, references),
        "val/bleu4": metrics.bleu(predictions, references),
    }


def log_predictions(loggers: list, records: list[dict], limit: int, step: int) -> None:
    """The first ``limit`` records with pictures, to every W&B logger: a table of the texts, and each picture
    captioned with its prompt, prediction and references.

    The captioned images are what an offline run (our default) keeps: wandb writes a single ``wandb.Image`` to
    the run's files, but leaves table cells as the word "Image" offline (wandb#4611)."""
    from lightning.pytorch.loggers import WandbLogger

    rows = [r for r in records if r["image"] is not None][:limit]
    for logger in loggers:
        if not (isinstance(logger, WandbLogger) and rows):
            continue
        texts = [[r["prompt"], r["prediction"], " | ".join(r["references"])] for r in rows]
        logger.log_table("val/predictions", ["prompt", "prediction", "references"], texts, step=step)
        captions = [
            f"{r['prompt']} -> {r['prediction']} (references: {' | '.join(r['references'])})" for r in rows
        ]
        logger.log_image("val/prediction_images", [r["image"] for r in rows], step=step, caption=captions)
