"""Segmentation scores of generated answers against the true masks, as big_vision's evaluator computes them
(``evaluators/proj/paligemma/transfers/segmentation.py``), and the masks W&B draws.

Per row, the first n well-formed objects of the answer are scored, n the target's count (RefCOCO: the first one).
Each is decoded by the mask VQ-VAE and pasted into its box at the true masks' resolution (paligemma/data/segments.py).

* ``val/miou``: the mean over rows of IoU, where a row's intersection and union add up over its names (a pixel of
  "red circle" predicted as "blue square" is a miss); a referring row has one nameless object;
* ``val/ciou``: summed intersections over summed unions, the referring-segmentation literature's cIoU (not mIoU);
* ``val/boxacc@0.5`` and ``@0.75``: the share of true objects whose box a predicted one of the same name overlaps
  by at least that IoU (each predicted box matched once, best first);
* ``val/invalid``: the share of rows whose answer has a malformed part or no object; those parts score 0;
* ``val/miou_ceiling``: the mIoU of the targets themselves (the true box, the mask the VQ-VAE reconstructs from
  its codes): what a perfect answer scores, the VQ-VAE's limit on this data.

Scores are also given per kind (``data.kind_column``): ``val/miou/<kind>``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from PIL import Image

from paligemma.data.masks import from_rle
from paligemma.data.segments import Segment, parse_segments, paste_mask
from paligemma.metrics import box_iou

if TYPE_CHECKING:
    from paligemma.model.mask_vae import MaskVAE
    from paligemma.training.scoring import Record

BOX_THRESHOLDS = (0.5, 0.75)
DECODE_BATCH = 256  # code grids the VQ-VAE decodes in one call


class RowScore(NamedTuple):
    intersection: int
    union: int
    box_hits: dict[float, int]  # threshold -> true objects found
    objects: int  # true objects
    invalid: bool

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else 0.0


Decoded = Mapping[tuple[int, ...], torch.Tensor]  # codes -> their (64, 64) logits


def decode_all(texts: Iterable[str], vae: MaskVAE) -> Decoded:
    """The logits of every distinct code grid in ``texts``, decoded in batches."""
    codes = sorted({s.codes for text in texts for s in parse_segments(text).segments})
    if not codes:
        return {}
    with torch.no_grad():
        logits = torch.cat([vae.decode(chunk) for chunk in torch.tensor(codes).split(DECODE_BATCH)])
    return dict(zip(codes, logits, strict=True))


def named_masks(
    segments: Sequence[Segment], decoded: Decoded, width: int, height: int
) -> dict[str, np.ndarray]:
    """name -> the union of its objects' (H, W) bool masks."""
    masks: dict[str, np.ndarray] = {}
    for segment in segments:
        pasted = paste_mask(decoded[segment.codes], segment.box, width, height)
        masks[segment.box.name] = masks.get(segment.box.name, False) | pasted
    return masks


def score_row(record: Record, decoded: Decoded, prediction: str | None = None) -> RowScore:
    """The record's scores, of its prediction or of ``prediction``."""
    truth = parse_segments(record.references[0]).segments
    parsed = parse_segments(record.prediction if prediction is None else prediction)
    predicted = parsed.segments[: len(truth)]
    true_masks = [from_rle(m) for m in record.masks]
    height, width = true_masks[0].shape
    named_truth: dict[str, np.ndarray] = {}
    for segment, mask in zip(truth, true_masks, strict=True):
        named_truth[segment.box.name] = named_truth.get(segment.box.name, False) | mask
    named_predicted = named_masks(predicted, decoded, width, height)
    intersection = union = 0
    nothing = np.zeros((height, width), dtype=bool)
    for name in named_truth.keys() | named_predicted.keys():
        t, p = named_truth.get(name, nothing), named_predicted.get(name, nothing)
        intersection += int((t & p).sum())
        union += int((t | p).sum())
    return RowScore(
        intersection,
        union,
        {t: box_hits(truth, predicted, t) for t in BOX_THRESHOLDS},
        len(truth),
        invalid=parsed.malformed > 0 or not parsed.segments,
    )


def box_hits(truth: Sequence[Segment], predicted: Sequence[Segment], threshold: float) -> int:
    """True objects matched by a predicted box of their name with IoU >= threshold, each prediction used once."""
    unused, hits = list(predicted), 0
    for t in truth:
        same_name = [
            (box_iou(t.box[:4], p.box[:4]), i) for i, p in enumerate(unused) if p.box.name == t.box.name
        ]
        best = max(same_name, default=(0.0, -1))
        if best[0] >= threshold:
            hits += 1
            unused.pop(best[1])
    return hits


def score_segmentation(records: list[Record], vae: MaskVAE) -> dict[str, float]:
    decoded = decode_all([text for r in records for text in (r.prediction, r.references[0])], vae)
    per_kind: dict[str, list[RowScore]] = defaultdict(list)
    for record in records:
        per_kind[record.kind].append(score_row(record, decoded))
    scores = {}
    for kind, rows in sorted(per_kind.items()):
        scores |= {f"{name}/{kind}": value for name, value in _summary(rows).items() if name != "val/ciou"}
    ceiling = statistics.fmean(score_row(r, decoded, r.references[0]).iou for r in records)
    return (
        scores | _summary([row for rows in per_kind.values() for row in rows]) | {"val/miou_ceiling": ceiling}
    )


def _summary(rows: list[RowScore]) -> dict[str, float]:
    objects = sum(r.objects for r in rows)
    return {
        "val/miou": statistics.fmean(r.iou for r in rows),
        "val/ciou": sum(r.intersection for r in rows) / max(sum(r.union for r in rows), 1),
        **{f"val/boxacc@{t}": sum(r.box_hits[t] for r in rows) / max(objects, 1) for t in BOX_THRESHOLDS},
        "val/invalid": statistics.fmean(float(r.invalid) for r in rows),
    }


def drawn_masks(records: list[Record], vae: MaskVAE) -> list[dict]:
    """Each record's predicted and true masks at its preview's size, for ``wandb.Image(masks=...)``: class ids
    per pixel (0 the background), one id per name."""
    decoded = decode_all([r.prediction for r in records], vae)
    labels: dict[str, int] = {}
    drawn = []
    for record in records:
        assert record.image is not None  # only records with a preview are drawn
        width, height = record.image.size
        truth = parse_segments(record.references[0]).segments
        predicted = parse_segments(record.prediction).segments[: len(truth)]
        true_masks = {
            t.box.name: np.asarray(
                Image.fromarray(from_rle(m)).resize((width, height), Image.Resampling.NEAREST)
            )
            for t, m in zip(truth, record.masks, strict=True)
        }
        predicted_masks = named_masks(predicted, decoded, width, height)
        drawn.append(
            {"predictions": _classes(predicted_masks, labels, width, height),
             "ground_truth": _classes(true_masks, labels, width, height)}
        )  # fmt: skip
    names = {i: name or "object" for name, i in labels.items()} | {0: "background"}
    for groups in drawn:
        for group in groups.values():
            group["class_labels"] = names
    return drawn


def _classes(masks: dict[str, np.ndarray], labels: dict[str, int], width: int, height: int) -> dict:
    data = np.zeros((height, width), dtype=np.uint8)
    for name, mask in masks.items():
        data[mask] = labels.setdefault(name, len(labels) + 1)
    return {"mask_data": data}
