"""Generated object outlines, as the mask VQ-VAE sees them: the training data of ``paligemma.train_mask_vae``.

Each mask is drawn (PIL, no anti-aliasing: 0 / 1 like a decoded RLE or polygon) at the resolution it has in
data, then cropped to its tight box and resized to 64x64 by ``encoder_input``, as the data pipeline does:

    circle, square, triangle   the synthetic shapes, drawn as ``render_scene`` draws them in a 64 px picture,
                               radius 5-20 px
    ellipse                    rotated, any aspect
    polygon                    3-8 points around a centre (star-shaped, so convex or not)
    blobs                      the union of 2-3 rotated ellipses
    ring                       an ellipse or a rectangle with an elliptic hole
    thin                       a bar, straight or bent once or twice

The other kinds are drawn in pictures of 32-256 px, at 10-45% of the picture. ``outlines(seed, stream)`` is
deterministic: the same arguments give the same masks; different streams (training, held out) are independent.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw

from paligemma.data.masks import encoder_input, mask_box

SHAPES = ("circle", "square", "triangle")
KINDS = (*SHAPES, "ellipse", "polygon", "blobs", "ring", "thin")
Points = list[tuple[float, float]]


def outlines(seed: int, stream: int = 0) -> Iterator[tuple[torch.Tensor, str]]:
    """Endless (64, 64) masks in [0, 1] and their kinds, the kinds cycling through ``KINDS``."""
    rng = np.random.default_rng([seed, stream])
    while True:
        for kind in KINDS:
            mask = draw(kind, rng)
            yield encoder_input(mask, mask_box(mask)), kind


def batch(stream: Iterator[tuple[torch.Tensor, str]], size: int) -> tuple[torch.Tensor, list[str]]:
    """The next ``size`` masks stacked (size, 64, 64) and their kinds."""
    masks, kinds = zip(*(next(stream) for _ in range(size)), strict=True)
    return torch.stack(masks), list(kinds)


def draw(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One (H, W) float32 mask of ``kind`` with at least one inside pixel."""
    while True:
        if kind in SHAPES:
            radius = rng.uniform(5, 20)
            cx, cy = rng.uniform(radius + 1, 63 - radius, size=2)
            image = synthetic_shape(kind, cx, cy, radius)
        else:
            size = int(rng.integers(32, 257))
            image = Image.new("L", (size, size))
            radius = size * rng.uniform(0.1, 0.45)
            centre = rng.uniform(radius, size - radius, size=2)
            DRAWERS[kind](ImageDraw.Draw(image), centre, radius, rng)
        mask = np.asarray(image, dtype=np.float32) / 255
        if mask.any():
            return mask


def synthetic_shape(kind: str, cx: float, cy: float, radius: float) -> Image.Image:
    """A synthetic shape as ``paligemma.data.synthetic.render_scene`` draws it, white in a black 64 px picture."""
    image = Image.new("L", (64, 64))
    draw = ImageDraw.Draw(image)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if kind == "circle":
        draw.ellipse(box, fill=255)
    elif kind == "square":
        draw.rectangle(box, fill=255)
    else:
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=255)
    return image


def _ellipse(centre, a: float, b: float, angle: float, points: int = 48) -> Points:
    """The outline of an ellipse with semi-axes ``a``, ``b`` turned by ``angle`` radians."""
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return _turned(centre, a * np.cos(t), b * np.sin(t), angle)


def _turned(centre, x: np.ndarray, y: np.ndarray, angle: float) -> Points:
    """Points (x, y) about the origin turned by ``angle`` and moved to ``centre``."""
    c, s = np.cos(angle), np.sin(angle)
    return list(zip(centre[0] + c * x - s * y, centre[1] + s * x + c * y, strict=True))


def _random_ellipse(centre, radius: float, rng: np.random.Generator) -> Points:
    return _ellipse(centre, radius, radius * rng.uniform(0.25, 1), rng.uniform(0, np.pi))


def _draw_ellipse(draw: ImageDraw.ImageDraw, centre, radius: float, rng: np.random.Generator) -> None:
    draw.polygon(_random_ellipse(centre, radius, rng), fill=255)


def _draw_polygon(draw: ImageDraw.ImageDraw, centre, radius: float, rng: np.random.Generator) -> None:
    n = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.4, 1, n)
    draw.polygon(_turned(centre, radii * np.cos(angles), radii * np.sin(angles), 0.0), fill=255)


def _draw_blobs(draw: ImageDraw.ImageDraw, centre, radius: float, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(2, 4))):
        offset = rng.uniform(-0.5, 0.5, size=2) * radius
        draw.polygon(_random_ellipse(centre + offset, radius * rng.uniform(0.35, 0.6), rng), fill=255)


def _draw_ring(draw: ImageDraw.ImageDraw, centre, radius: float, rng: np.random.Generator) -> None:
    b, angle = radius * rng.uniform(0.5, 1), rng.uniform(0, np.pi)
    if rng.random() < 0.5:
        outer = _ellipse(centre, radius, b, angle)
    else:
        outer = _turned(centre, np.array([-1, 1, 1, -1]) * radius, np.array([-1, -1, 1, 1]) * b, angle)
    draw.polygon(outer, fill=255)
    hole = rng.uniform(0.3, 0.65)
    draw.polygon(_ellipse(centre, radius * hole, b * hole, angle), fill=0)


def _draw_thin(draw: ImageDraw.ImageDraw, centre, radius: float, rng: np.random.Generator) -> None:
    """A polyline of 1-3 segments, 8-20% of its reach wide."""
    n = int(rng.integers(2, 5))
    points = [tuple(p) for p in centre + rng.uniform(-radius, radius, size=(n, 2))]
    draw.line(points, fill=255, width=max(2, round(2 * radius * rng.uniform(0.08, 0.2))), joint="curve")


DRAWERS = {
    "ellipse": _draw_ellipse,
    "polygon": _draw_polygon,
    "blobs": _draw_blobs,
    "ring": _draw_ring,
    "thin": _draw_thin,
}
