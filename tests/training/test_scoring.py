from paligemma.training.scoring import score


def test_score_reports_vqa_accuracy_per_kind():
    records = [
        {"row_id": 0, "kind": "color", "prediction": "red", "references": ["red"]},
        {"row_id": 1, "kind": "color", "prediction": "blue", "references": ["red"]},
        {"row_id": 2, "kind": "count", "prediction": "two", "references": ["2"]},
    ]
    scores = score(records, "vqa")
    assert scores == {"val/vqa_accuracy/color": 0.5, "val/vqa_accuracy/count": 1.0, "val/vqa_accuracy": 2 / 3}


def test_score_reports_cider_and_bleu_for_captions():
    records = [
        {
            "row_id": 0,
            "kind": "caption",
            "prediction": "a red circle",
            "references": ["a red circle", "red circle"],
        },
        {"row_id": 1, "kind": "caption", "prediction": "a blue square", "references": ["a green triangle"]},
    ]
    scores = score(records, "caption")
    assert set(scores) == {"val/cider", "val/bleu4"} and scores["val/cider"] > 0
