"""Masks in every form a dataset holds them read into the same array; the crop the VQ-VAE encodes is big_vision's."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as coco_mask

from paligemma.data.masks import checked_box, encoder_input, from_rle, mask_box, read_mask, to_rle

W, H = 40, 30


@pytest.fixture
def square() -> np.ndarray:
    """A 12 x 8 px object (the polygon below rasterised by pycocotools)."""
    mask = np.zeros((H, W), dtype=np.float32)
    mask[10:18, 5:17] = 1
    return mask


POLYGON = [5, 10, 17, 10, 17, 18, 5, 18]  # x, y corners, drawn exclusive of the far edges by pycocotools


def png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((mask * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_form_of_a_mask_reads_as_the_same_array(square):
    rle = coco_mask.encode(np.asfortranarray(square.astype(np.uint8)))
    forms = {
        "rle": rle,
        "rle, str counts": to_rle(square),
        "polygons": [POLYGON],
        "flat polygon": POLYGON,
        "png bytes": png(square),
        "datasets image": {"bytes": png(square), "path": None},
        "pil": Image.fromarray((square * 255).astype(np.uint8)),
        "array": square.astype(bool),
        "nested lists of 0/255": (square * 255).astype(int).tolist(),
    }
    for name, cell in forms.items():
        np.testing.assert_array_equal(read_mask(cell, W, H), square, err_msg=name)


def test_an_uncompressed_rle_reads_too(square):
    flat = square.astype(np.uint8).flatten(order="F")  # COCO counts run down the columns
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    np.testing.assert_array_equal(read_mask({"size": [H, W], "counts": counts}, W, H), square)


def test_a_mask_of_another_size_or_form_is_a_clear_error(square):
    with pytest.raises(ValueError, match="mask is 40x30 px, its picture 64x64"):
        read_mask(square, 64, 64)
    with pytest.raises(ValueError, match="at least 3"):
        read_mask([1.0, 2.0, 3.0, 4.0], W, H)
    with pytest.raises(ValueError, match="got int"):
        read_mask(7, W, H)


def test_the_box_of_a_mask_is_tight_and_an_empty_mask_has_none(square):
    assert mask_box(square) == (5, 10, 17, 18)
    with pytest.raises(ValueError, match="empty mask"):
        mask_box(np.zeros((H, W)))


def test_a_box_outside_the_picture_is_named_and_a_slight_overshoot_is_clipped():
    assert checked_box((-0.5, 0, 40.6, 30), W, H) == (0, 0, 40, 30)
    with pytest.raises(ValueError, match=r"box \[50.0, 0.0, 60.0, 10.0\] .* outside the 40x30 picture"):
        checked_box((50, 0, 60, 10), W, H)
    with pytest.raises(ValueError, match="no area"):
        checked_box((5, 5, 5, 9), W, H)


def test_the_encoder_input_crops_at_rounded_edges_and_resizes_antialiased(square):
    """big_vision's refcoco_mask2str: edges rounded half to even (tf.round), bilinear antialiased, no threshold."""
    got = encoder_input(square, (4.5, 9.5, 17.5, 18.4))  # rounds to x 4:18, y 10:18 (4.5 -> 4, 9.5 -> 10)
    crop = torch.from_numpy(square[10:18, 4:18])[None, None]
    expected = F.interpolate(crop, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    torch.testing.assert_close(got, expected.clamp(0, 1), rtol=0, atol=0)
    assert ((got > 0) & (got < 1)).any()  # a soft edge, not thresholded
    with pytest.raises(ValueError, match="empty inside its box"):
        encoder_input(square, (20, 0, 30, 5))


def test_rle_round_trips(square):
    np.testing.assert_array_equal(from_rle(to_rle(square)), square.astype(bool))
