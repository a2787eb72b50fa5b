"""paligemma/data/overlay.py: masks blended in their object's colour, boxes outlined and named; the rest of the
picture untouched."""

import numpy as np
import pytest
from PIL import Image

from paligemma.data.boxes import Box
from paligemma.data.overlay import ALPHA, colour, draw_overlay

HEIGHT, WIDTH = 80, 100


def noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def blended(pixels: np.ndarray, index: int) -> np.ndarray:
    return (
        ((1 - ALPHA) * pixels.astype(np.float32) + ALPHA * np.array(colour(index))).round().astype(np.uint8)
    )


def test_a_mask_takes_its_colour_and_the_picture_outside_it_is_unchanged():
    image = noise()
    box = Box(0.25, 0.2, 0.75, 0.6, "cat")  # rows 20-59, columns 20-59
    rows, columns = np.mgrid[:HEIGHT, :WIDTH]
    mask = (rows - 40) ** 2 + (columns - 38) ** 2 < 12**2  # a disc: not its own bounding box
    out = np.asarray(draw_overlay(image, [box], [mask]))
    before = np.asarray(image)

    np.testing.assert_array_equal(out[mask], blended(before[mask], 0))
    interior = np.zeros_like(mask)
    interior[22:58, 22:58] = True  # inside the box, off its outline
    np.testing.assert_array_equal(out[interior & ~mask], before[interior & ~mask])
    np.testing.assert_array_equal(out[61:], before[61:])  # below the box
    np.testing.assert_array_equal(out[:, 61:], before[:, 61:])  # right of the box and of its name
    assert (out[20, 20:60] == colour(0)).all() and (out[20:60, 59] == colour(0)).all()  # the outline
    assert (out[5:20, 20:40] != before[5:20, 20:40]).any()  # the name, above the box


def test_each_object_has_its_own_colour():
    image = Image.new("RGB", (WIDTH, HEIGHT), (0, 0, 0))
    boxes = [Box(0.0, 0.0, 0.5, 0.5), Box(0.5, 0.5, 1.0, 1.0)]
    masks = [np.zeros((HEIGHT, WIDTH), dtype=bool) for _ in boxes]
    masks[0][10:20, 10:20] = masks[1][50:60, 60:70] = True
    out = np.asarray(draw_overlay(image, boxes, masks))
    assert (out[15, 15] == blended(np.zeros(3), 0)).all()
    assert (out[55, 65] == blended(np.zeros(3), 1)).all()
    assert colour(0) != colour(1)


def test_detection_boxes_are_outlined_and_named_without_masks():
    image = noise()
    out = np.asarray(draw_overlay(image, [Box(0.25, 0.2, 0.75, 0.6, "dog")]))
    before = np.asarray(image)
    assert (out[20:60, 20] == colour(0)).all() and (out[59, 20:60] == colour(0)).all()
    np.testing.assert_array_equal(out[22:58, 22:58], before[22:58, 22:58])
    np.testing.assert_array_equal(out[61:], before[61:])
    assert (out[5:20, 20:40] != before[5:20, 20:40]).any()


def test_a_grey_or_transparent_picture_is_drawn_in_rgb():
    out = draw_overlay(Image.new("LA", (WIDTH, HEIGHT)), [Box(0.1, 0.1, 0.9, 0.9, "cat")])
    assert out.mode == "RGB" and out.size == (WIDTH, HEIGHT)


def test_masks_must_be_one_per_box():
    with pytest.raises(ValueError, match="1 masks for 2 boxes"):
        draw_overlay(noise(), [Box(0, 0, 1, 1), Box(0, 0, 1, 1)], [np.ones((HEIGHT, WIDTH), dtype=bool)])
