"""Generated outlines: deterministic, every kind, 64x64 crops in [0, 1] that fill their box as encoder_input crops."""

import io

import numpy as np
import torch
from PIL import Image

from paligemma.data.outlines import KINDS, SHAPES, batch, draw, outlines, synthetic_shape
from paligemma.data.synthetic import COLORS, render_scene


def test_outlines_are_deterministic_and_streams_differ():
    a, kinds = batch(outlines(seed=3, stream=0), 2 * len(KINDS))
    b, _ = batch(outlines(seed=3, stream=0), 2 * len(KINDS))
    held_out, _ = batch(outlines(seed=3, stream=1), 2 * len(KINDS))
    assert torch.equal(a, b)
    assert not any(torch.equal(m, h) for m, h in zip(a, held_out, strict=True) if m.min() < 1)  # squares fill
    assert kinds == [*KINDS, *KINDS]


def test_every_mask_is_a_64x64_crop_in_0_1_touching_each_edge_of_its_box():
    masks, _ = batch(outlines(seed=0), 4 * len(KINDS))
    assert masks.shape == (4 * len(KINDS), 64, 64) and masks.dtype == torch.float32
    assert masks.min() >= 0 and masks.max() <= 1
    assert (masks >= 0.5).flatten(1).any(1).all()
    # cropped to the tight box: something on every edge (a one-pixel tip may resize to below 0.5)
    for edge in (masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]):
        assert (edge.amax(1) > 0).all()


def test_masks_are_drawn_at_their_pictures_resolution_without_anti_aliasing():
    rng = np.random.default_rng(0)
    sizes = set()
    for kind in KINDS * 4:
        mask = draw(kind, rng)
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.any()
        sizes.add(mask.shape)
        assert mask.shape[0] == mask.shape[1] and 32 <= mask.shape[0] <= 256
        assert mask.shape == (64, 64) or kind not in ("circle", "square", "triangle")
    assert len(sizes) > 10  # the other kinds at 32-256 px


def test_the_synthetic_shapes_are_the_pixels_render_scene_paints():
    scene = [("red", shape, cell) for cell, shape in enumerate(SHAPES)]
    for seed in range(6):
        png, boxes, _ = render_scene(scene, 64, np.random.default_rng(seed))
        picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        painted = (picture == COLORS["red"]).all(-1)  # the background is light: no pixel is pure red
        for (x, y, w, _), (_, shape, cell) in zip(boxes, scene, strict=True):
            radius = w / 2
            ours = np.asarray(synthetic_shape(shape, x + radius, y + radius, radius)) > 0
            quadrant = np.zeros((64, 64), bool)
            quadrant[cell // 2 * 32 : cell // 2 * 32 + 32, cell % 2 * 32 : cell % 2 * 32 + 32] = True
            assert np.array_equal(ours, painted & quadrant), (seed, shape)
