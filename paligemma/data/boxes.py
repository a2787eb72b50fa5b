"""Boxes as PaliGemma's location tokens, and detection prompts and targets, both ways.

A box is four ``<locNNNN>`` tokens, y_min, x_min, y_max, x_max, each a coordinate relative to the image side
(0 to 1) in 1024 bins, as big_vision encodes them (``pp/proj/paligemma/segmentation.py``, refcoco_mask2str)::

    token = clip(round(v * 1023), 0, 1023)          v = token / 1023   (round half to even, as tf.round)

so a coordinate comes back within 0.5 / 1023 of itself. A detection target lists objects, each box followed by
its class name, joined by " ; "::

    prompt  "detect circle ; square"
    target  "<loc0102><loc0215><loc0410><loc0520> circle ; <loc0600><loc0080><loc0900><loc0390> square"

Parsing reads every "four loc tokens, then a name" in a text; anything else (three tokens, a missing name,
y_max <= y_min or x_max <= x_min, as big_vision's evaluator rejects) is not a box: a malformed prediction is a
miss, never an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

LOC_BINS = 1024
SEPARATOR = " ; "
_OBJECT = re.compile(r"((?:<loc\d{4}>){4})\s*([^;<]*)")
_LOC = re.compile(r"<loc(\d{4})>")


class Box(NamedTuple):
    """A named box in relative coordinates (0 to 1), PaliGemma's order."""

    y_min: float
    x_min: float
    y_max: float
    x_max: float
    name: str = ""


def loc_token(value: float) -> str:
    """The location token of one relative coordinate."""
    index = min(max(round(value * (LOC_BINS - 1)), 0), LOC_BINS - 1)
    return f"<loc{index:04d}>"


def box_tokens(box: Box) -> str:
    return "".join(loc_token(v) for v in box[:4])


def relative_box(bbox: Sequence[float], width: int, height: int, box_format: str, name: str) -> Box:
    """A pixel box of the dataset ("xywh": COCO's x, y, width, height; "xyxy": corners) in relative coordinates."""
    x0, y0, a, b = (float(v) for v in bbox)
    x1, y1 = (x0 + a, y0 + b) if box_format == "xywh" else (a, b)
    return Box(y0 / height, x0 / width, y1 / height, x1 / width, name)


def detection_prompt(names: Sequence[str]) -> str:
    """ "detect a ; b": the classes asked for."""
    return "detect " + SEPARATOR.join(names)


def detection_target(boxes: Sequence[Box]) -> str:
    """Each box's four loc tokens and its name, joined by " ; "."""
    return SEPARATOR.join(f"{box_tokens(box)} {box.name}".rstrip() for box in boxes)


def detection_example(boxes: Sequence[Box]) -> tuple[str, str]:
    """(prompt, target) of one picture: its class names sorted and deduplicated; its boxes in their order."""
    return detection_prompt(sorted({box.name for box in boxes})), detection_target(boxes)


def parse_boxes(text: str) -> list[Box]:
    """Every well-formed box of a generated text, in order; malformed parts are skipped."""
    boxes = []
    for locs, name in _OBJECT.findall(text):
        y0, x0, y1, x1 = (int(i) / (LOC_BINS - 1) for i in _LOC.findall(locs))
        if y1 > y0 and x1 > x0:
            boxes.append(Box(y0, x0, y1, x1, name.strip()))
    return boxes
