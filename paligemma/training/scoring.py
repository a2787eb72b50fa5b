"""Validation metrics over generated records, how they are generated, and the predictions shown in W&B.

``data.metric`` (or the task's default) names one entry of ``METRICS``: its scorer, and the value it monitors.
Metrics that average a score per row (exact match, VQA accuracy, ANLS, box accuracy) are reported per kind
(``data.kind_column``) as well.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from paligemma import metrics
from paligemma.data.boxes import parse_boxes
from paligemma.data.masks import RunLengthMask
from paligemma.data.tasks import TASKS
from paligemma.errors import ConfigError
from paligemma.paths import local_path

if TYPE_CHECKING:
    from paligemma.data.settings import DataSettings
    from paligemma.model.mask_vae import MaskVAE


@dataclass
class GenerationSettings:
    """``generation.*``: how validation (train.py) and evaluate.py generate, and how many rows W&B shows."""

    max_new_tokens: int | None = None  # the most tokens generated per row; null: the task's answer length
    num_beams: int = 1  # beam search with this many beams if > 1 (upstream scores captions with 2)
    log_predictions: int = 16  # rows of the W&B predictions table

    def __post_init__(self):
        for key, least in (("max_new_tokens", 1), ("num_beams", 1), ("log_predictions", 0)):
            value = getattr(self, key)
            if value is not None and value < least:
                raise ConfigError(f"generation.{key} must be at least {least}, got {value}")

    def for_task(self, data: DataSettings) -> GenerationSettings:
        """These settings for the data's task: ``max_new_tokens`` the task's answer length where it is null."""
        if self.max_new_tokens is not None:
            return self
        return replace(self, max_new_tokens=TASKS[data.task].answer_length(data))


@dataclass
class Record:
    """What validation made of one row (paligemma/training/module.py): what the metrics score, what
    predictions.jsonl and the W&B predictions table show. ``row_id``: the row in the loaded split; ``image``: its
    preview, kept for the first ``generation.log_predictions`` rows of each batch (None for the others); ``masks``:
    a segmentation row's true masks, one per object of its target."""

    row_id: int
    kind: str
    prompt: str
    prediction: str
    references: list[str]
    image: Image.Image | None = None
    masks: list[RunLengthMask] = field(default_factory=list)


# (records, the metric: what it scores with) -> {"val/<name>": value}
Scorer = Callable[[list[Record], "Metric"], dict[str, float]]


def _per_row(name: str, row_score: Callable[[str, list[str]], float]) -> Scorer:
    def scorer(records: list[Record], metric: Metric) -> dict[str, float]:
        per_kind = defaultdict(list)
        for r in records:
            per_kind[r.kind].append(row_score(r.prediction, r.references))
        scores = {f"val/{name}/{kind}": statistics.fmean(v) for kind, v in sorted(per_kind.items())}
        scores[f"val/{name}"] = statistics.fmean(a for v in per_kind.values() for a in v)
        return scores

    return scorer


def _captions(records: list[Record], metric: Metric) -> dict[str, float]:
    predictions: dict[Hashable, str] = {r.row_id: r.prediction for r in records}
    references: dict[Hashable, list[str]] = {r.row_id: r.references for r in records}
    return {
        "val/cider": metrics.cider_d(predictions, references),
        "val/bleu4": metrics.bleu(predictions, references),
    }


def _detection(records: list[Record], metric: Metric) -> dict[str, float]:
    """COCO mAP of the boxes parsed from each prediction against those of its target (metrics.detection_map)."""
    scores = metrics.detection_map(
        [parse_boxes(r.prediction) for r in records], [parse_boxes(r.references[0]) for r in records]
    )
    return {f"val/{name}": value for name, value in scores.items()}


def _box_accuracy(prediction: str, references: list[str]) -> float:
    """Referring expressions: 1 if the first predicted box overlaps the target's by IoU >= 0.5."""
    predicted, target = parse_boxes(prediction), parse_boxes(references[0])
    return float(bool(predicted and target) and metrics.box_iou(predicted[0][:4], target[0][:4]) >= 0.5)


def _segmentation(records: list[Record], metric: Metric) -> dict[str, float]:
    """mIoU, cIoU, box accuracy and the invalid share of masks decoded by the metric's VQ-VAE (segment_scoring)."""
    from paligemma.training.segment_scoring import score_segmentation

    return score_segmentation(records, metric.mask_decoder)


# metric name -> (scorer over all records, the value it monitors)
METRICS: dict[str, tuple[Scorer, str]] = {
    "vqa_accuracy": (_per_row("vqa_accuracy", metrics.vqa_accuracy), "val/vqa_accuracy"),
    "exact_match": (
        _per_row("exact_match", lambda p, refs: max(metrics.exact_match(p, r) for r in refs)),
        "val/exact_match",
    ),
    "anls": (_per_row("anls", metrics.anls), "val/anls"),
    "cider": (_captions, "val/cider"),
    "bleu": (_captions, "val/bleu4"),
    "map": (_detection, "val/map"),
    "box_accuracy": (_per_row("box_accuracy", _box_accuracy), "val/box_accuracy"),
    "segmentation": (_segmentation, "val/miou"),
}


@dataclass(frozen=True)
class Metric:
    """What validation scores: ``data.metric``, or its task's (``DataSettings.metric_name``), a key of ``METRICS``.
    ``mask_vae``: the VQ-VAE weights that decode segmentation answers (``data.mask_vae``)."""

    name: str
    mask_vae: str | None = None

    def __post_init__(self):
        if self.name not in METRICS:
            raise ConfigError(f"data.metric must be one of {sorted(METRICS)}, got {self.name!r}")
        if self.name == "segmentation" and self.mask_vae is None:
            raise ConfigError("data.metric=segmentation decodes masks: it needs data.mask_vae")

    @classmethod
    def of(cls, data: DataSettings) -> Metric:
        """The metric of a run's data: its ``metric_name``, with its mask VQ-VAE where its task segments."""
        return cls(data.metric_name, data.mask_vae if TASKS[data.task].prepare is not None else None)

    @cached_property
    def mask_decoder(self) -> MaskVAE:
        """The VQ-VAE at ``mask_vae``, loaded on first use."""
        from paligemma.model.mask_vae import MaskVAE

        assert self.mask_vae is not None  # __post_init__: the segmentation metric has one
        return MaskVAE.from_pretrained(local_path(Path(self.mask_vae))).eval()

    @property
    def monitor(self) -> str:
        """The value runs report and sweeps optimise, e.g. ``val/vqa_accuracy``."""
        return METRICS[self.name][1]

    @property
    def draws_boxes(self) -> bool:
        return self.name in ("map", "box_accuracy")

    def score(self, records: list[Record]) -> dict[str, float]:
        """The metric's values over validation records."""
        return METRICS[self.name][0](records, self)


def _boxes(text: str, labels: dict[str, int]) -> dict:
    """A wandb.Image ``boxes`` group: the boxes of a text, relative coordinates, captioned by class."""
    data = [
        {
            "position": {"minX": b.x_min, "maxX": b.x_max, "minY": b.y_min, "maxY": b.y_max},
            "class_id": labels.setdefault(b.name, len(labels)),
            "box_caption": b.name,
        }
        for b in parse_boxes(text)
    ]
    return {"box_data": data, "class_labels": {}}


def _drawn_boxes(rows: list[Record]) -> list[dict]:
    """Predicted and target boxes of each row, for wandb.Image(boxes=...)."""
    labels: dict[str, int] = {}
    drawn = [
        {"predictions": _boxes(r.prediction, labels), "ground_truth": _boxes(r.references[0], labels)}
        for r in rows
    ]
    names = {i: name for name, i in labels.items()}
    for groups in drawn:
        for group in groups.values():
            group["class_labels"] = names
    return drawn


def log_predictions(loggers: list, records: list[Record], limit: int, step: int, metric: Metric) -> None:
    """The first ``limit`` records with pictures, to every W&B logger: a table of the texts, and each picture
    captioned with its prompt, prediction and references; detection draws the predicted and target boxes on it,
    segmentation the predicted and true masks.

    The captioned images are what an offline run (our default) keeps: wandb writes a single ``wandb.Image`` to
    the run's files, but leaves table cells as the word "Image" offline (wandb#4611)."""
    from lightning.pytorch.loggers import WandbLogger

    rows = [r for r in records if r.image is not None][:limit]
    for logger in loggers:
        if not (isinstance(logger, WandbLogger) and rows):
            continue
        texts = [[r.prompt, r.prediction, " | ".join(r.references)] for r in rows]
        logger.log_table("val/predictions", ["prompt", "prediction", "references"], texts, step=step)
        captions = [f"{r.prompt} -> {r.prediction} (references: {' | '.join(r.references)})" for r in rows]
        extra = {"boxes": _drawn_boxes(rows)} if metric.draws_boxes else {}
        if metric.name == "segmentation":
            from paligemma.training.segment_scoring import drawn_masks

            extra = {"masks": drawn_masks(rows, metric.mask_decoder)}
        images = [r.image for r in rows]
        logger.log_image("val/prediction_images", images, step=step, caption=captions, **extra)
