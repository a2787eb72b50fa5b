"""Segmentation scores: an answer equal to its target scores 1 against the masks it decodes to; malformed answers
score 0 and count as invalid; names must match; cIoU weighs rows by their area, mIoU does not."""

import pytest
import torch

from paligemma.data.boxes import Box
from paligemma.data.masks import to_rle
from paligemma.data.segments import Segment, paste_mask, segment_text
from paligemma.model.mask_vae import MaskVAE
from paligemma.training.scoring import Metric, Record
from tests.helpers import random_mask_vae


@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    return Metric("segmentation", str(random_mask_vae(tmp_path_factory.mktemp("vae") / "vae.safetensors")))


def full_codes(vae: MaskVAE) -> tuple[int, ...]:
    """The code whose decoded mask covers the most of its box (a random VAE's masks are partial)."""
    with torch.no_grad():
        logits = vae.decode(torch.arange(128)[:, None].expand(128, 16))
    return (int((logits > 0).flatten(1).sum(1).argmax()),) * 16


def record(metric, boxes, predicted, size=(64, 64), kind="k") -> Record:
    """A row whose true masks are what its target's objects decode to, and the prediction ``predicted``."""
    codes = full_codes(metric.mask_decoder)
    truth = [Segment(box, codes) for box in boxes]
    with torch.no_grad():
        logits = metric.mask_decoder.decode(torch.tensor([codes] * len(boxes)))
    masks = [to_rle(paste_mask(lg, s.box, *size)) for lg, s in zip(logits, truth, strict=True)]
    text = " ; ".join(segment_text(s) for s in truth)
    prediction = predicted(text) if callable(predicted) else predicted
    return Record(0, kind, "segment", prediction, [text], masks=masks)


B1 = Box(100 / 1023, 100 / 1023, 600 / 1023, 700 / 1023, "cat")
B2 = Box(650 / 1023, 50 / 1023, 1000 / 1023, 400 / 1023, "dog")


def test_an_answer_equal_to_its_target_scores_one(metric):
    scores = metric.score([record(metric, [B1, B2], lambda target: target)])
    assert scores["val/miou"] == scores["val/ciou"] == 1.0
    assert scores["val/boxacc@0.5"] == scores["val/boxacc@0.75"] == 1.0 and scores["val/invalid"] == 0.0


def test_a_malformed_answer_scores_zero_and_counts_as_invalid(metric):
    for bad in ("", "a cat", lambda t: t.replace("<seg", "<sag"), lambda t: t[: t.index("<seg")]):
        scores = metric.score([record(metric, [B1], bad)])
        assert scores["val/miou"] == 0.0 and scores["val/boxacc@0.5"] == 0.0 and scores["val/invalid"] == 1.0
        assert scores["val/miou_ceiling"] == 1.0  # what the target scores


def test_a_mask_under_another_name_is_a_miss(metric):
    scores = metric.score([record(metric, [B1], lambda t: t.replace(" cat", " dog"))])
    assert scores["val/miou"] == 0.0 and scores["val/boxacc@0.5"] == 0.0 and scores["val/invalid"] == 0.0


def test_only_the_first_objects_count_and_a_second_object_counts_half(metric):
    first_only = metric.score([record(metric, [B1], lambda t: f"{t} ; {t.replace('cat', 'dog')}")])
    assert first_only["val/miou"] == 1.0
    one_of_two = metric.score([record(metric, [B1, B2], lambda t: t.split(" ; ")[0])])
    assert one_of_two["val/boxacc@0.5"] == 0.5 and 0 < one_of_two["val/miou"] < 1


def test_box_accuracy_thresholds_and_ciou_weighs_rows_by_area(metric):
    shifted = Box(B1.y_min, B1.x_min + 150 / 1023, B1.y_max, B1.x_max + 150 / 1023, "cat")  # IoU 0.54 with B1
    small = Box(0, 0, 60 / 1023, 60 / 1023, "cat")
    rows = [
        record(
            metric, [B1], lambda t: segment_text(Segment(shifted, full_codes(metric.mask_decoder))), kind="a"
        ),
        record(metric, [small], lambda t: t, kind="b"),
    ]
    scores = metric.score(rows)
    assert scores["val/boxacc@0.5"] == 1.0 and scores["val/boxacc@0.75"] == 0.5
    assert scores["val/miou/b"] == 1.0 and 0.3 < scores["val/miou/a"] < 0.8
    # the small row weighs little in the summed intersections and unions
    assert scores["val/ciou"] < scores["val/miou"] == pytest.approx((scores["val/miou/a"] + 1) / 2)


def test_the_segmentation_metric_needs_a_mask_vae():
    from paligemma.errors import ConfigError

    with pytest.raises(ConfigError, match="data.mask_vae"):
        Metric("segmentation")


def test_the_ceiling_is_what_the_target_itself_scores(metric):
    """True masks the VQ-VAE does not reproduce: the target scores below 1, and that is the ceiling."""
    import numpy as np

    row = record(metric, [B1], "")
    rectangle = np.zeros((64, 64), dtype=bool)
    rectangle[7:38, 6:44] = True  # B1 in pixels, filled
    row.masks = [to_rle(rectangle)]
    target_as_prediction = Record(0, "k", "segment", row.references[0], row.references, masks=row.masks)
    ceiling = metric.score([row])["val/miou_ceiling"]
    assert 0 < ceiling < 1 and ceiling == metric.score([target_as_prediction])["val/miou"]
