"""Segmentation masks as datasets hold them, read into one array, and the 64x64 crop the mask VQ-VAE encodes.

A mask cell is any of:

* COCO RLE, ``{"size": [h, w], "counts": str | bytes | list}`` (compressed or not);
* COCO polygons, ``[[x0, y0, x1, y1, ...], ...]``, or one polygon as a flat list (lmms-lab/RefCOCO's column);
* a mask image: a PIL image, an undecoded ``datasets.Image`` cell (``{"bytes", "path"}``), PNG bytes or a path;
* a 2-D array (NumPy, or nested lists as a JSON row holds it), of bools, 0 / 1 or 0 .. 255.

``read_mask`` makes each an (H, W) float32 array in [0, 1] at the picture's resolution; a pixel is inside the
object where it is >= 0.5. ``encoder_input`` crops it to the object's box as big_vision's ``refcoco_mask2str``
does (``pp/proj/paligemma/segmentation.py``): box edges rounded to pixels (half to even, as ``tf.round``), the crop
resized to 64x64 (bilinear, antialiased), no threshold.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, TypedDict, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as coco_mask

from paligemma.model.mask_vae import MASK_SIZE

PixelBox = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels, the max exclusive


class RunLengthMask(TypedDict):
    """A mask in compressed COCO RLE, its counts a str (storable in a datasets column)."""

    size: list[int]  # height, width
    counts: str


BOX_SLACK = 1.0  # px a box may overshoot the picture (rounding in annotation tools) before it is a bad row


def read_mask(cell: Any, width: int, height: int) -> np.ndarray:
    """An (H, W) float32 mask in [0, 1] of a picture ``width`` x ``height`` px from any form above."""
    if isinstance(cell, dict) and "counts" in cell:
        mask = _rle(cell)
    elif isinstance(cell, Image.Image | bytes | str) or (
        isinstance(cell, dict) and {"bytes", "path"} & cell.keys()
    ):
        mask = _image(cell)
    elif isinstance(cell, np.ndarray) or _is_grid(cell, width, height):
        mask = np.asarray(cell, dtype=np.float32)
        mask = mask / 255 if mask.max(initial=0) > 1 else mask
    elif isinstance(cell, Sequence):
        mask = _polygons(cell, width, height)
    else:
        raise ValueError(f"a mask is RLE, polygons, an image or a 2-D array, got {type(cell).__name__}")
    if mask.shape != (height, width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} px, its picture {width}x{height}")
    return mask


def _is_grid(cell: Any, width: int, height: int) -> bool:
    """Nested lists that are an array, not polygons: the picture's shape, or equal rows of 0 / 1 only."""
    if not (isinstance(cell, Sequence) and cell and all(isinstance(row, Sequence) for row in cell)):
        return False
    if len(cell) == height and all(len(row) == width for row in cell):
        return True
    return len({len(row) for row in cell}) == 1 and all(v in (0, 1) for row in cell for v in row)


def _rle(cell: dict) -> np.ndarray:
    h, w = cell["size"]
    counts = cell["counts"]
    # uncompressed counts (a list) are compressed first; the stubs know compressed RLE only
    rle = coco_mask.frPyObjects(cast(Any, cell), h, w) if isinstance(counts, list) else cell
    return coco_mask.decode(cast(Any, rle)).astype(np.float32)


def _polygons(cell: Sequence, width: int, height: int) -> np.ndarray:
    polygons = [list(cell)] if cell and not isinstance(cell[0], Sequence) else [list(p) for p in cell]
    polygons = [[float(v) for v in p] for p in polygons]
    if not polygons or any(len(p) < 6 or len(p) % 2 for p in polygons):
        raise ValueError("a polygon needs at least 3 (x, y) points")
    rle = coco_mask.merge(coco_mask.frPyObjects(cast(Any, polygons), height, width))  # the stubs: one polygon
    return coco_mask.decode(rle).astype(np.float32)


def _image(cell: Any) -> np.ndarray:
    if isinstance(cell, dict):
        cell = cell.get("bytes") or cell.get("path")
    image = (
        cell
        if isinstance(cell, Image.Image)
        else Image.open(io.BytesIO(cell) if isinstance(cell, bytes) else cell)
    )
    values = np.asarray(image.convert("L"), dtype=np.float32)
    return values / 255 if values.max(initial=0) > 1 else values


def mask_box(mask: np.ndarray) -> PixelBox:
    """The tight pixel box of the mask's inside pixels (>= 0.5); an empty mask is a ValueError."""
    rows, cols = np.nonzero(mask >= 0.5)
    if rows.size == 0:
        raise ValueError("empty mask")
    return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)


def checked_box(box: PixelBox, width: int, height: int) -> PixelBox:
    """``box`` clipped to the picture; one outside it (beyond ``BOX_SLACK``) or without area is a ValueError."""
    x0, y0, x1, y1 = box
    if x0 < -BOX_SLACK or y0 < -BOX_SLACK or x1 > width + BOX_SLACK or y1 > height + BOX_SLACK:
        raise ValueError(
            f"box {[round(float(v), 2) for v in box]} (x0, y0, x1, y1) lies outside the {width}x{height} picture"
        )
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {[round(float(v), 2) for v in box]} (x0, y0, x1, y1) has no area")
    return x0, y0, x1, y1


def encoder_input(mask: np.ndarray, box: PixelBox) -> torch.Tensor:
    """The (64, 64) float crop of ``mask`` inside ``box`` that the VQ-VAE encodes; a crop without an inside
    pixel is a ValueError."""
    x0, y0, x1, y1 = (int(np.round(v)) for v in box)
    crop = mask[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]
    if not (crop >= 0.5).any():
        raise ValueError("the mask is empty inside its box")
    resized = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(crop))[None, None],
        size=(MASK_SIZE, MASK_SIZE),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return resized[0, 0].clamp(0, 1)


def to_rle(mask: np.ndarray) -> RunLengthMask:
    """The inside pixels (>= 0.5) as compressed COCO RLE."""
    rle = coco_mask.encode(np.asfortranarray(mask >= 0.5, dtype=np.uint8))
    counts = cast(bytes, rle["counts"])  # bytes, whatever the stubs say
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii")}


def from_rle(rle: RunLengthMask) -> np.ndarray:
    """The (H, W) bool mask of ``to_rle``'s output."""
    counts = rle["counts"]
    counts = counts.encode("ascii") if isinstance(counts, str) else counts
    return coco_mask.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)
