import random

import pytest

from paligemma.data.boxes import (
    Box,
    detection_example,
    detection_target,
    loc_token,
    parse_boxes,
    relative_box,
)


def test_coordinates_round_to_the_nearest_of_1024_bins_as_big_vision():
    # round(v * 1023), half to even (tf.round), clipped to 0..1023
    assert [loc_token(v) for v in (0.0, 1.0, 0.5, -0.2, 1.3)] == [
        "<loc0000>", "<loc1023>", "<loc0512>", "<loc0000>", "<loc1023>"
    ]  # fmt: skip
    assert loc_token(2.5 / 1023) == "<loc0002>" and loc_token(0.6 / 1023) == "<loc0001>"


def test_boxes_round_trip_through_loc_tokens_within_half_a_bin():
    rng = random.Random(0)
    boxes = []
    for i in range(200):
        y0, y1 = sorted(rng.uniform(0, 1) for _ in range(2))
        x0, x1 = sorted(rng.uniform(0, 1) for _ in range(2))
        boxes.append(Box(y0, x0, y1 + 0.01, x1 + 0.01, f"class {i % 3}"))
    boxes = [b._replace(y_max=min(b.y_max, 1.0), x_max=min(b.x_max, 1.0)) for b in boxes]
    parsed = parse_boxes(detection_target(boxes))
    assert [b.name for b in parsed] == [b.name for b in boxes]
    for got, want in zip(parsed, boxes, strict=True):
        assert max(abs(g - w) for g, w in zip(got[:4], want[:4], strict=True)) <= 0.5 / 1023 + 1e-12
    again = parse_boxes(detection_target(parsed))
    assert again == parsed  # decoded coordinates are bin centres: encoding them again is exact


def test_detection_prompt_and_target_of_a_picture():
    boxes = [relative_box([10, 20, 30, 40], 100, 200, "xywh", "square"),
             relative_box([0, 0, 50, 100], 100, 200, "xyxy", "circle")]  # fmt: skip
    assert boxes[0] == Box(0.1, 0.1, 0.3, 0.4, "square")
    prompt, target = detection_example(boxes)
    assert prompt == "detect circle ; square"
    assert (
        target == "<loc0102><loc0102><loc0307><loc0409> square ; <loc0000><loc0000><loc0512><loc0512> circle"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red circle",
        "<loc0001><loc0002><loc0003> cat",  # three tokens
        "<loc0500><loc0100><loc0400><loc0200> cat",  # y_max < y_min
        "<loc0100><loc0100><loc0100><loc0200> cat",  # empty height
        "<loc0100><loc0100><loc0200><loc0200",  # cut off
        "<loc01><loc0100><loc0200><loc0200> cat",
    ],
)
def test_malformed_box_strings_parse_to_no_box(text):
    assert parse_boxes(text) == []


def test_well_formed_boxes_survive_malformed_neighbours():
    text = "<loc0001><loc0002> cat ; <loc0100><loc0100><loc0200><loc0300> dog ; junk ; <loc0900>"
    assert parse_boxes(text) == [Box(100 / 1023, 100 / 1023, 200 / 1023, 300 / 1023, "dog")]
