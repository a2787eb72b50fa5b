"""Answers drawn on their picture: each object's mask blended in a colour, its box outlined, its name written.

A segmentation answer (paligemma/data/segments.py) gives boxes and masks, a detection answer
(paligemma/data/boxes.py) boxes only. ``python -m paligemma.generate`` saves the picture; it takes any PIL image,
so that other callers (W&B logging) can draw the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from paligemma.data.boxes import Box, parse_boxes
from paligemma.data.segments import parse_segments, pixel_corners, segment_masks
from paligemma.model.mask_vae import MaskVAE

ALPHA = 0.5  # a mask's colour over the picture
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]  # fmt: skip
LABEL_TEXT = (255, 255, 255)
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def colour(index: int) -> tuple[int, int, int]:
    """The colour of the ``index``-th object: the palette, round again after 10 objects."""
    return PALETTE[index % len(PALETTE)]


def blend_masks(picture: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8 ``picture`` with each (H, W) bool mask's pixels mixed with its colour, ``ALPHA`` of it."""
    out = picture.astype(np.float32)
    for index, mask in enumerate(masks):
        out[mask] = (1 - ALPHA) * out[mask] + ALPHA * np.array(colour(index), dtype=np.float32)
    return out.round().astype(np.uint8)


def label_font(height: int) -> Font:
    """PIL's built-in font, about 1/30 of the picture's height (at least 10 px) where PIL can scale it."""
    try:
        return ImageFont.load_default(size=max(10, height // 30))
    except (TypeError, ImportError):  # Pillow 10.0, or no FreeType: a fixed bitmap font
        return ImageFont.load_default()


def draw_label(
    draw: ImageDraw.ImageDraw, x: int, y: int, name: str, fill: tuple[int, int, int], font: Font
) -> None:
    """``name`` in white on ``fill``, just above the point (x, y), or just below it where the picture ends."""
    left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
    at = y - bottom if y >= bottom else y
    draw.rectangle((x + left, at + top, x + right, at + bottom), fill=fill)
    draw.text((x, at), name, fill=LABEL_TEXT, font=font)


def draw_boxes(image: Image.Image, boxes: Sequence[Box]) -> None:
    """Each box outlined in its colour, with its name on its colour above its top left corner."""
    draw, font = ImageDraw.Draw(image), label_font(image.height)
    width = max(1, round(min(image.size) / 200))
    for index, box in enumerate(boxes):
        y0, x0, y1, x1 = pixel_corners(box, image.width, image.height)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour(index), width=width)
        if box.name:
            draw_label(draw, x0, y0, box.name, colour(index), font)


def draw_overlay(image: Image.Image, boxes: Sequence[Box], masks: Sequence[np.ndarray] = ()) -> Image.Image:
    """An RGB copy of ``image`` with the ``masks`` ((H, W) bool, one per box, or none) blended in and the boxes
    drawn; the i-th box and mask share a colour."""
    if masks and len(masks) != len(boxes):
        raise ValueError(f"{len(masks)} masks for {len(boxes)} boxes: give one mask per box, or none")
    picture = np.asarray(image.convert("RGB"))
    out = Image.fromarray(blend_masks(picture, masks) if masks else picture.copy())
    draw_boxes(out, boxes)
    return out


def answer_overlay(text: str, image: Image.Image, mask_vae: Callable[[], MaskVAE]) -> Image.Image | None:
    """``image`` with the objects of a generated answer drawn: masks and boxes when it segments, boxes when it
    detects; None when no object parses. ``mask_vae`` gives the VAE, called only when there are masks."""
    segments = parse_segments(text).segments
    if segments:
        masks = segment_masks(segments, mask_vae(), image.width, image.height)
        return draw_overlay(image, [s.box for s in segments], masks)
    boxes = parse_boxes(text)
    return draw_overlay(image, boxes) if boxes else None
