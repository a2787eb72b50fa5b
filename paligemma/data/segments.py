"""Segmentation answers as PaliGemma writes them, both ways: a box and 16 mask codes per object.

An object is its box as four ``<locNNNN>`` tokens (paligemma/data/boxes.py), its mask as 16 ``<segNNN>`` tokens
(the 4x4 grid of the mask VQ-VAE's codes, row-major: paligemma/model/mask_vae.py) and its name; objects are
joined by " ; ", as big_vision's PaliGemma mix writes them::

    prompt  "segment red circle ; blue square"
    target  "<loc0102><loc0215><loc0410><loc0520><seg012>...<seg087> red circle ; <loc0600>...<seg003> blue square"

RefCOCO's transfer prompts with the referring expression alone and answers without the name.

Parsing is as tolerant as big_vision's evaluator (``evaluators/proj/paligemma/transfers/segmentation.py``): a
text is split at " ; " into parts; a part is an object when it opens with 4 loc tokens and 16 seg tokens whose
ids are in range and whose box has y_max > y_min and x_max > x_min; any other part is malformed, a miss, never an
error. Decoding pastes the VQ-VAE's 64x64 logits into the box: pixel corners ``int(y * h)``, bilinear resize,
inside where > 0, 0 outside the box.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from paligemma.data.boxes import LOC_BINS, SEPARATOR, Box, box_tokens
from paligemma.model.mask_vae import GRID

if TYPE_CHECKING:
    from paligemma.model.mask_vae import MaskVAE

SEG_TOKENS = GRID * GRID  # codes per mask
CODEBOOK_SIZE = 128  # <seg000> .. <seg127>
TOKENS_PER_OBJECT = 4 + SEG_TOKENS  # loc and seg tokens, before the name
_PART = re.compile(r"\s*((?:<loc\d+>){4})((?:<seg\d+>){16})\s*(.*)", re.DOTALL)
_ID = re.compile(r"<(?:loc|seg)(\d+)>")


class Segment(NamedTuple):
    """One object: its box (relative coordinates, PaliGemma's order, with its name) and its 16 mask codes."""

    box: Box
    codes: tuple[int, ...]


class Parsed(NamedTuple):
    """The objects of a generated text, in order, and how many of its parts were malformed."""

    segments: list[Segment]
    malformed: int


def seg_tokens(codes: Sequence[int]) -> str:
    return "".join(f"<seg{int(c):03d}>" for c in codes)


def segment_text(segment: Segment) -> str:
    """One object: loc tokens, seg tokens, and its name after a space when it has one."""
    return f"{box_tokens(segment.box)}{seg_tokens(segment.codes)} {segment.box.name}".rstrip()


def segmentation_target(segments: Sequence[Segment]) -> str:
    return SEPARATOR.join(segment_text(s) for s in segments)


def segmentation_prompt(names: Sequence[str]) -> str:
    """ "segment a ; b": the mix checkpoints' prompt, names in the order given."""
    return "segment " + SEPARATOR.join(names)


def parse_segments(text: str, codebook_size: int = CODEBOOK_SIZE) -> Parsed:
    """The well-formed objects of a text, and the count of malformed parts (an empty text is one)."""
    segments, malformed = [], 0
    for part in text.split(SEPARATOR.strip()):
        match = _PART.fullmatch(part)
        if match is None:
            malformed += 1 if part.strip() or not segments else 0
            continue
        locs = [int(i) for i in _ID.findall(match[1])]
        codes = tuple(int(i) for i in _ID.findall(match[2]))
        y0, x0, y1, x1 = (v / (LOC_BINS - 1) for v in locs)
        if max(locs) >= LOC_BINS or max(codes) >= codebook_size or not (y1 > y0 and x1 > x0):
            malformed += 1
            continue
        segments.append(Segment(Box(y0, x0, y1, x1, match[3].strip()), codes))
    return Parsed(segments, malformed)


def pixel_corners(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) pixel corners of a relative box, as big_vision's evaluator takes them: int(y * h)."""
    return int(box.y_min * height), int(box.x_min * width), int(box.y_max * height), int(box.x_max * width)


def paste_mask(logits: torch.Tensor, box: Box, width: int, height: int) -> np.ndarray:
    """The (H, W) bool mask of one object: its (64, 64) decoded logits resized into the box, > 0 inside."""
    y0, x0, y1, x1 = pixel_corners(box, width, height)
    mask = np.zeros((height, width), dtype=bool)
    if y1 <= y0 or x1 <= x0:  # a box thinner than a pixel at this resolution
        return mask
    resized = F.interpolate(
        logits[None, None].float(),
        size=(y1 - y0, x1 - x0),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    mask[y0:y1, x0:x1] = (resized[0, 0] > 0).numpy()
    return mask


def segment_masks(segments: Sequence[Segment], vae: MaskVAE, width: int, height: int) -> list[np.ndarray]:
    """The (height, width) bool mask of each object: its codes decoded by ``vae`` and pasted into its box."""
    if not segments:
        return []
    with torch.no_grad():
        logits = vae.decode(torch.tensor([s.codes for s in segments]))
    return [paste_mask(lg, s.box, width, height) for lg, s in zip(logits, segments, strict=True)]
