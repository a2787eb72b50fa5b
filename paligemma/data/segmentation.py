"""Segmentation rows: each object's box and mask codes, computed once when the data is prepared, and the prompt
and target a row then makes (the text: paligemma/data/segments.py).

``prepare`` maps a split once (``datasets.map``, cached with a file-backed dataset under a fingerprint of the split,
the columns and the VQ-VAE's bytes) and adds three columns: ``seg_objects``, each object's loc and seg tokens;
``seg_masks``, its mask at the picture's resolution as COCO RLE (what validation scores against); ``seg_error``, why
the row is bad ("" when it is good): an unreadable mask, an empty one, a box outside the picture. A bad row is
skipped and counted when it is sampled, as every task's.

Two tasks read these columns:

* ``segmentation``, big_vision's mix style: ``data.names_column`` holds a name per object (a list, with a mask per
  name in ``data.mask_column``; or one name and one mask); the prompt is ``segment a ; b`` (the names sorted and
  deduplicated), the target each object's tokens and name joined by " ; ";
* ``referring_segmentation``, big_vision's RefCOCO transfer: ``data.expression_column`` holds one referring
  expression or several for the same object (training draws one per epoch, validation takes the first); the prompt
  is the expression, the target the object's tokens alone.

``data.box_column`` (optional, in ``data.box_format``) gives the boxes; without it each box is its mask's tight box.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from functools import partial
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from paligemma.data.boxes import Box, relative_box
from paligemma.data.masks import PixelBox, checked_box, encoder_input, mask_box, read_mask, to_rle
from paligemma.data.segments import SEPARATOR, Segment, segment_text
from paligemma.model.mask_vae import MaskVAE
from paligemma.paths import local_path

if TYPE_CHECKING:
    import datasets

    from paligemma.data.settings import DataSettings

PREPARED = ("seg_objects", "seg_masks", "seg_error")  # the columns ``prepare`` adds
ENCODE_BATCH = 64  # rows whose masks the VQ-VAE encodes in one call


def prepare(data: datasets.Dataset, settings: DataSettings) -> datasets.Dataset:
    """``data`` with the ``PREPARED`` columns (the module docstring), computed by the VQ-VAE at ``data.mask_vae``."""
    import datasets  # here, not at import: the config checks read the task table without loading datasets
    from datasets.fingerprint import Hasher

    vae = MaskVAE.from_pretrained(local_path(settings.mask_vae)).eval()
    columns = {
        "seg_objects": datasets.List(datasets.Value("string")),
        "seg_masks": datasets.List(
            {"size": datasets.List(datasets.Value("int32")), "counts": datasets.Value("string")}
        ),
        "seg_error": datasets.Value("string"),
    }
    key = [
        data._fingerprint,
        file_digest(settings.mask_vae),
        settings.task,
        settings.columns,
        settings.box_format,
    ]
    read = [settings.mask_column] + ([settings.box_column] if settings.box_column else [])
    features = datasets.Features({k: v for k, v in data.features.items() if k not in read} | columns)
    return data.map(
        partial(_encode_rows, settings=settings, vae=vae),
        batched=True,
        batch_size=ENCODE_BATCH,
        remove_columns=read,  # read once here: rows need the prepared columns only
        features=features,
        new_fingerprint=Hasher.hash(key),
        desc="segmentation codes",
    )


def file_digest(path: str) -> str:
    return sha256(Path(local_path(path)).read_bytes()).hexdigest()


def _encode_rows(batch: dict[str, list], settings: DataSettings, vae: MaskVAE) -> dict[str, list]:
    """The rows' objects: every mask read and cropped, then encoded in one VQ-VAE call."""
    n = len(batch[settings.mask_column])
    rows: list[list[tuple[np.ndarray, torch.Tensor, Box]] | str] = []
    for i in range(n):
        try:
            rows.append(_objects({k: v[i] for k, v in batch.items()}, settings))
        except Exception as error:
            rows.append(str(error) if type(error) is ValueError else f"{type(error).__name__}: {error}")
    crops = [crop for row in rows if not isinstance(row, str) for _, crop, _ in row]
    with torch.no_grad():
        codes = vae.encode(torch.stack(crops)).tolist() if crops else []
    next_codes = iter(codes)
    out: dict[str, list] = {name: [] for name in PREPARED}
    for row in rows:
        objects, masks = [], []
        if not isinstance(row, str):
            for mask, _, box in row:
                objects.append(segment_text(Segment(box, tuple(next(next_codes)))))
                masks.append(to_rle(mask))
        out["seg_objects"].append(objects)
        out["seg_masks"].append(masks)
        out["seg_error"].append(row if isinstance(row, str) else "")
    return out


def _objects(item: dict[str, Any], s: DataSettings) -> list[tuple[np.ndarray, torch.Tensor, Box]]:
    """Each object of a row: its mask, the (64, 64) crop the VQ-VAE encodes and its relative box; a bad one is a
    ValueError naming it."""
    width, height = picture_size(item[s.image_column])
    several = s.task == "segmentation" and isinstance(item[s.names_column], list | tuple)
    masks = list(item[s.mask_column]) if several else [item[s.mask_column]]
    boxes = item[s.box_column] if s.box_column else None
    boxes = (list(boxes) if several else [boxes]) if boxes is not None else [None] * len(masks)
    if several and not (len(masks) == len(item[s.names_column]) == len(boxes)):
        raise ValueError(
            f"{len(item[s.names_column])} names for {len(masks)} masks"
            + (f" and {len(boxes)} boxes" if s.box_column else "")
        )
    if not masks:
        raise ValueError(f"no mask in column {s.mask_column!r}")
    objects = []
    for i, (cell, bbox) in enumerate(zip(masks, boxes, strict=True)):
        try:
            mask = read_mask(cell, width, height)
            pixels = mask_box(mask) if bbox is None else _pixel_box(bbox, s.box_format)
            pixels = checked_box(pixels, width, height)
            crop = encoder_input(mask, pixels)  # raises when the box holds no inside pixel
        except ValueError as error:
            raise ValueError(f"object {i}: {error}" if several else str(error)) from error
        x0, y0, x1, y1 = pixels
        objects.append((mask, crop, Box(y0 / height, x0 / width, y1 / height, x1 / width)))
    return objects


def _pixel_box(bbox: Sequence[float], box_format: str) -> PixelBox:
    box = relative_box(bbox, 1, 1, box_format, "")
    return box.x_min, box.y_min, box.x_max, box.y_max


def picture_size(cell: Any) -> tuple[int, int]:
    """(width, height) of a row's first picture, read from its header."""
    cell = cell[0] if isinstance(cell, list) else cell
    if isinstance(cell, Image.Image):
        return cell.size
    if isinstance(cell, dict):
        cell = cell.get("bytes") or cell.get("path")
    if cell is None:
        raise ValueError("missing image")
    with Image.open(io.BytesIO(cell) if isinstance(cell, bytes) else cell) as image:
        return image.size


def _checked(item: dict) -> list[str]:
    if item["seg_error"]:
        raise ValueError(item["seg_error"])
    return list(item["seg_objects"])


def mix_fields(
    item: dict, s: DataSettings, size, labels, draw: random.Random | None
) -> tuple[dict, list[str]]:
    """``segment a ; b`` -> each object's tokens and name, joined by " ; "."""
    objects = _checked(item)
    names = item[s.names_column]
    names = [str(n) for n in names] if isinstance(names, list | tuple) else [str(names)]
    target = SEPARATOR.join(f"{obj} {name}" for obj, name in zip(objects, names, strict=True))
    return {"names": SEPARATOR.join(sorted(set(names)))}, [target]


def referring_fields(
    item: dict, s: DataSettings, size, labels, draw: random.Random | None
) -> tuple[dict, list[str]]:
    """A referring expression (drawn by ``draw`` in training, the first in validation) -> the object's tokens."""
    from paligemma.data.tasks import references

    objects = _checked(item)
    expressions = references(item[s.expression_column])
    if not expressions:
        raise ValueError(f"missing referring expression in column {s.expression_column!r}")
    expression = expressions[draw.randrange(len(expressions))] if draw else expressions[0]
    return {"expression": expression}, [objects[0]]
