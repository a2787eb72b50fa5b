import pytest
from PIL import Image

from paligemma.training.scoring import Metric, Record, _drawn_boxes


def test_score_reports_vqa_accuracy_per_kind():
    records = [
        Record(0, "color", "what color?", "red", ["red"]),
        Record(1, "color", "what color?", "blue", ["red"]),
        Record(2, "count", "how many?", "two", ["2"]),
    ]
    scores = Metric("vqa_accuracy").score(records)
    assert scores == {"val/vqa_accuracy/color": 0.5, "val/vqa_accuracy/count": 1.0, "val/vqa_accuracy": 2 / 3}


def test_score_reports_cider_and_bleu_for_captions():
    records = [
        Record(0, "caption", "caption en", "a red circle", ["a red circle", "red circle"]),
        Record(1, "caption", "caption en", "a blue square", ["a green triangle"]),
    ]
    scores = Metric("cider").score(records)
    assert set(scores) == {"val/cider", "val/bleu4"} and scores["val/cider"] > 0


DETECTIONS = [  # (prediction, target): a hit, a malformed prediction, a hallucinated class
    ("<loc0100><loc0100><loc0500><loc0500> circle", "<loc0100><loc0100><loc0500><loc0500> circle"),
    ("<loc0100><loc0100> circle ; <loc09", "<loc0200><loc0200><loc0600><loc0600> square"),
    ("<loc0000><loc0000><loc0300><loc0300> dragon", "<loc0000><loc0000><loc0300><loc0300> circle"),
]


def detection_records(pairs) -> list[Record]:
    return [
        Record(
            i, "detection", "detect circle", prediction=p, references=[t], image=Image.new("RGB", (32, 32))
        )
        for i, (p, t) in enumerate(pairs)
    ]


def test_detection_scores_map_and_a_malformed_prediction_is_a_miss():
    scores = Metric("map").score(detection_records(DETECTIONS))
    assert set(scores) == {"val/map", "val/map_50", "val/map_75"}
    missed = [DETECTIONS[0], ("", DETECTIONS[1][1]), DETECTIONS[2]]
    assert scores == Metric("map").score(detection_records(missed))  # as if nothing had been predicted
    assert 0 < scores["val/map_50"] < 1


def test_referring_expressions_score_box_accuracy_at_iou_half():
    pairs = [
        ("<loc0100><loc0100><loc0500><loc0500> the cat", "<loc0100><loc0100><loc0500><loc0520> the cat"),
        ("<loc0100><loc0100><loc0200><loc0200> the cat", "<loc0100><loc0100><loc0500><loc0500> the cat"),
        ("the cat", "<loc0100><loc0100><loc0500><loc0500> the cat"),
    ]
    assert Metric("box_accuracy").score(detection_records(pairs))["val/box_accuracy"] == pytest.approx(1 / 3)


def test_exact_match_and_anls_take_the_best_reference():
    records = [
        Record(0, "ocr", "ocr", "Stop", ["go", "stop"]),
        Record(1, "ocr", "ocr", "invoice 12", ["invoice 13"]),
    ]
    assert Metric("exact_match").score(records)["val/exact_match"] == 0.5
    assert Metric("anls").score(records)["val/anls"] == pytest.approx((1 + 0.9) / 2)


def test_predicted_and_target_boxes_are_drawn_as_wandb_boxes():
    import wandb

    records = detection_records(DETECTIONS)
    drawn = _drawn_boxes(records)
    assert [len(d["predictions"]["box_data"]) for d in drawn] == [1, 0, 1]
    assert [len(d["ground_truth"]["box_data"]) for d in drawn] == [1, 1, 1]
    first = drawn[0]["predictions"]["box_data"][0]
    assert first["position"] == pytest.approx({"minX": 100 / 1023, "maxX": 500 / 1023, "minY": 100 / 1023,
                                               "maxY": 500 / 1023})  # fmt: skip
    labels = drawn[0]["predictions"]["class_labels"]
    assert {labels[b["class_id"]] for d in drawn for g in d.values() for b in g["box_data"]} == {
        "circle", "square", "dragon"
    }  # fmt: skip
    for record, boxes in zip(records, drawn, strict=True):
        wandb.Image(record.image, boxes=boxes)  # wandb validates the box data
