"""Segmentation answers both ways, a parser as tolerant as big_vision's, and masks pasted as its evaluator pastes."""

import numpy as np
import torch

from paligemma.data.boxes import Box
from paligemma.data.segments import (
    Segment,
    parse_segments,
    paste_mask,
    segmentation_prompt,
    segmentation_target,
)

CAT = Segment(Box(0.25, 0.5, 0.75, 1.0, "cat"), tuple(range(16)))
DOG = Segment(Box(0.0, 0.0, 0.5, 0.5, "dog"), (127,) * 16)


def test_a_target_parses_back_into_its_objects():
    target = segmentation_target([CAT, DOG])
    assert (
        target.startswith("<loc0256><loc0512><loc0767><loc1023><seg000><seg001>")
        and " cat ; <loc0000>" in target
    )
    parsed = parse_segments(target)
    assert parsed.malformed == 0 and [s.codes for s in parsed.segments] == [CAT.codes, DOG.codes]
    assert [s.box.name for s in parsed.segments] == ["cat", "dog"]
    for got, want in zip(parsed.segments, [CAT, DOG], strict=True):
        np.testing.assert_allclose(got.box[:4], want.box[:4], atol=0.5 / 1023)
    assert segmentation_prompt(["cat", "dog"]) == "segment cat ; dog"
    nameless = parse_segments(segmentation_target([CAT._replace(box=CAT.box._replace(name=""))]))
    assert nameless.segments[0].box.name == "" and nameless.malformed == 0


def test_malformed_parts_are_misses_never_errors():
    good = segmentation_target([CAT])
    cases = {
        "": 1,
        "a cat": 1,
        good[: good.index("<seg015>")]: 1,  # 15 codes
        good.replace("<seg015>", "<seg128>"): 1,  # a code outside the codebook
        good.replace("<loc1023>", "<loc1024>"): 1,  # a loc outside its 1024 bins
        good.replace("<loc0767>", "<loc0200>"): 1,  # y_max <= y_min
        f"{good} ; <loc0001> dog": 1,
        f"{good} ; ": 0,
    }
    for text, malformed in cases.items():
        parsed = parse_segments(text)
        assert parsed.malformed == malformed, text
        assert len(parsed.segments) == (1 if text.startswith(good) else 0), text


def test_a_mask_is_pasted_into_the_int_corners_of_its_box():
    """Box (0.25, 0.5, 0.75, 1.0) in a 10 x 7 picture: rows int(1.75)=1 .. int(5.25)=5, columns 5 .. 10."""
    mask = paste_mask(torch.ones(64, 64), CAT.box, width=10, height=7)
    expected = np.zeros((7, 10), dtype=bool)
    expected[1:5, 5:10] = True
    np.testing.assert_array_equal(mask, expected)
    half = torch.full((64, 64), -1.0)
    half[:, :32] = 1.0
    pasted = paste_mask(half, Box(0, 0, 1, 1), width=64, height=64)
    assert pasted[:, :32].all() and not pasted[:, 32:].any()  # > 0 inside, resized bilinearly
