"""Tests for paligemma.metrics: VQA accuracy and ANLS by hand, CIDEr-D and BLEU against pycocoevalcap, detection
mAP against pycocotools."""

import random

import pytest

from paligemma.data.boxes import Box
from paligemma.metrics import (
    anls,
    bleu,
    box_iou,
    cider_d,
    cider_d_scores,
    detection_map,
    exact_match,
    normalize_answer,
    ptb_tokenize,
    vqa_accuracy,
)

# ---------------------------------------------------------------------------------------------------
# VQA normalisation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("yes!", "yes"),  # "!" without a neighbouring space becomes a space, then split() drops it
        ("t-shirt", "t shirt"),  # inner punctuation becomes a space
        ("red, blue", "red blue"),  # ", " occurs, so "," is deleted
        ("1,000", "1000"),  # comma between digits: every punctuation mark is deleted
        ("1,000 cats, maybe", "1000 cats maybe"),
        ("red.", "red"),  # trailing period stripped
        ("3.5", "3.5"),  # period before a digit kept
        ("two", "2"),  # number words to digits
        ("Ten Dogs", "10 dogs"),
        ("none", "0"),
        ("the dog", "dog"),  # articles removed
        ("A Red Car", "red car"),
        ("dont", "don't"),  # contractions restored
        ("isnt", "isn't"),
        ("Im", "im"),  # the official table's capitalised keys never match after lowercasing
        ("  yes\n", "yes"),  # whitespace, newline, tab
        ("on the\ttable.", "on table"),
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_vqa_accuracy_applies_normalisation_to_prediction():
    refs = ["2"] * 10
    assert vqa_accuracy("Two.", refs) == 1.0
    assert vqa_accuracy("the 2!", refs) == 1.0
    assert vqa_accuracy("don't", ["don't"] * 10) == vqa_accuracy("dont", ["don't"] * 10) == 1.0
    assert vqa_accuracy("1,000", ["1000"] * 10) == 1.0


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # For each of the 10 leave-one-out subsets: min(matches among the other 9 / 3, 1), then the mean.
        (0, 0.0),
        # 1 match: leaving out the match -> 0/3; leaving out any of 9 others -> 1/3. (0 + 9/3) / 10 = 0.3
        (1, 0.3),
        # 2: 2 subsets see 1 match -> 1/3; 8 subsets see 2 -> 2/3. (2/3 + 16/3) / 10 = 18/30 = 0.6
        (2, 0.6),
        # 3: 3 subsets see 2 -> 2/3; 7 subsets see 3 -> 1. (2 + 7) / 10 = 0.9
        (3, 0.9),
        # 4: 4 subsets see 3 -> 1; 6 subsets see 4 -> min(4/3, 1) = 1. 10 / 10 = 1.0
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_accuracy_leave_one_out(matches, expected):
    refs = ["yes"] * matches + ["no", "maybe", "2"] * 4
    refs = refs[:10]
    assert len(refs) == 10 and refs.count("yes") == matches
    assert vqa_accuracy("yes", refs) == pytest.approx(expected)


def test_vqa_accuracy_generalises_to_n_references():
    # N = 4, 2 matches: 2 subsets see 1 -> 1/3, 2 subsets see 2 -> 2/3. (2/3 + 4/3) / 4 = 0.5
    assert vqa_accuracy("cat", ["cat", "cat", "dog", "bird"]) == pytest.approx(0.5)
    # N = 2, 1 match: leaving out the match -> 0, leaving out the other -> 1/3. Mean = 1/6
    assert vqa_accuracy("cat", ["cat", "dog"]) == pytest.approx(1 / 6)


def test_vqa_accuracy_single_reference_is_exact_match():
    assert vqa_accuracy("Two", ["2"]) == 1.0
    assert vqa_accuracy("the cat.", ["Cat"]) == 1.0
    assert vqa_accuracy("dog", ["cat"]) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("dog", [])


def test_vqa_accuracy_reference_handling_matches_vqa_eval():
    # Differing references go through processPunctuation only: "t-shirt" -> "t shirt" matches.
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 3 + ["shirt"] * 7) == pytest.approx(0.9)
    # Identical references are left untouched, so the normalised prediction "t shirt" never matches.
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0


def test_exact_match():
    assert exact_match("Two dogs.", "2 dogs") == 1.0
    assert exact_match("a red car", "the red car!") == 1.0
    assert exact_match("red car", "blue car") == 0.0


# ---------------------------------------------------------------------------------------------------
# PTB tokenisation (expected lists checked against Stanford CoreNLP 3.4.1 as pycocoevalcap runs it)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "tokens"),
    [
        ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
        ("The dog's ball isn't red; it's blue!", "the dog 's ball is n't red it 's blue"),
        (
            'Two people (a man and a woman) stand near a "big" truck.',
            "two people -lrb- a man and a woman -rrb- stand near a big truck",
        ),
        (
            "A black-and-white cat sits on a T.V. in Washington, D.C.",
            "a black-and-white cat sits on a t.v. in washington d.c.",
        ),
        (
            "I can't believe they're gonna win, we'll see...",
            "i ca n't believe they 're gon na win we 'll see",
        ),
        (
            "He paid $5 for 1,000 pins & 3.5 m of thread -- 50% off",
            "he paid $ 5 for 1,000 pins & 3.5 m of thread 50 % off",
        ),
        ("Mr. Smith's dogs' bowls at 10:30 a.m.", "mr. smith 's dogs bowls at 10:30 a.m."),
        (
            "\u201cCurly\u201d quotes: don\u2019t \u2018panic\u2019, it\u2019s fine?!",
            "curly quotes do n't panic it 's fine ?!",
        ),
        ("", ""),
    ],
)
def test_ptb_tokenize(caption, tokens):
    assert ptb_tokenize(caption) == tokens.split()


def test_ptb_tokenize_is_identity_on_tokenised_text():
    text = "a man 's dog is n't on the 2 red -lrb- big -rrb- mats"
    assert ptb_tokenize(text) == text.split()


# ---------------------------------------------------------------------------------------------------
# CIDEr-D and BLEU against pycocoevalcap, both fed the same pre-tokenised text
# ---------------------------------------------------------------------------------------------------

_WORDS = ["a", "man", "woman", "dog", "cat", "on", "the", "in", "with", "of", "riding", "sitting"]
_WORDS += ["table", "red", "blue", "big", "small", "two", "people", "next", "to"]


def _random_set(seed: int, num_images: int) -> tuple[dict, dict]:
    rng = random.Random(seed)

    def caption() -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12)))

    refs = {i: [caption() for _ in range(rng.randint(1, 5))] for i in range(num_images)}
    preds = {i: caption() for i in refs}
    return preds, refs


_SETS = [
    (
        {
            "a": "a man riding a wave on top of a surfboard",
            "b": "a cat sitting on a laptop",
            "c": "two dogs playing in the grass",
        },
        {
            "a": [
                "a man riding a wave on a surfboard",
                "a surfer riding a large wave in the ocean",
                "a person on a surfboard riding a wave",
                "a man surfing on top of a wave",
                "surfer riding a wave on top of a surfboard",
            ],
            "b": ["a cat laying on a laptop keyboard", "a cat sitting on top of a laptop computer"],
            "c": ["two dogs run across a grassy field", "a pair of dogs playing on the grass"],
        },
    ),
    # empty and one-word hypotheses, a hypothesis equal to a reference, unequal reference counts
    (
        {1: "", 2: "dog", 3: "a red bus on the street", 4: "a plate of food"},
        {
            1: ["a clock tower"],
            2: ["a dog", "a brown dog lying down", "dog"],
            3: ["a red bus on the street", "a double decker bus"],
            4: ["a plate with rice and beans", "food on a white plate", "a plate of food on a table"],
        },
    ),
    _random_set(0, 8),
    _random_set(1, 25),
]


@pytest.mark.parametrize(("preds", "refs"), _SETS)
def test_cider_d_matches_pycocoevalcap(preds, refs):
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    expected, expected_per_image = cider_mod.Cider().compute_score(refs, {k: [v] for k, v in preds.items()})
    mean, per_image = cider_d_scores(preds, refs)
    assert mean == pytest.approx(expected, abs=1e-6)
    assert per_image == pytest.approx(list(expected_per_image), abs=1e-6)
    assert cider_d(preds, refs) == mean


@pytest.mark.parametrize(("preds", "refs"), _SETS)
def test_bleu_matches_pycocoevalcap(preds, refs):
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    expected, _ = bleu_mod.Bleu(4).compute_score(refs, {k: [v] for k, v in preds.items()}, verbose=0)
    assert bleu(preds, refs) == pytest.approx(expected[3], abs=1e-6)
    for n in (1, 2, 3):
        assert bleu(preds, refs, n=n) == pytest.approx(expected[n - 1], abs=1e-6)


def test_caption_metrics_tokenise_raw_text():
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    raw_preds = {1: "A Dog's toy.", 2: "Two cats (sleeping)."}
    raw_refs = {1: ["The dog's toy!", "A red ball."], 2: ["Two cats, sleeping.", "Cats on a bed."]}
    gts = {1: ["the dog 's toy", "a red ball"], 2: ["two cats sleeping", "cats on a bed"]}
    res = {1: ["a dog 's toy"], 2: ["two cats -lrb- sleeping -rrb-"]}
    expected, _ = cider_mod.Cider().compute_score(gts, res)
    assert cider_d(raw_preds, raw_refs) == pytest.approx(expected, abs=1e-6)


def test_perfect_bleu_and_mismatched_ids():
    refs = {1: ["a man riding a horse on the beach"]}
    assert bleu({1: "A man riding a horse on the beach."}, refs) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cider_d({2: "a man"}, refs)
    with pytest.raises(ValueError):
        bleu({1: "a man"}, {1: []})


# ---------------------------------------------------------------------------------------------------
# ANLS and detection
# ---------------------------------------------------------------------------------------------------


def test_anls_scores_near_misses_and_zeroes_far_ones():
    assert anls("Total  Amount", ["total amount"]) == 1.0  # case and spacing ignored
    assert anls("1,250.0", ["1,250.00"]) == pytest.approx(1 - 1 / 8)
    assert anls("abc", ["xyz"]) == 0.0 and anls("abcd", ["abxy"]) == 0.0  # distance 0.5: over the threshold
    assert anls("abcd", ["zzzz", "abce"]) == pytest.approx(0.75)  # the best reference


# Three images, three classes: a perfect hit, a duplicate, a loose box, a wrong class, a false positive on an
# image without that class, a missed object, and a class the ground truth never has (COCO ignores it).
MAP_TARGETS = [
    [Box(0.1, 0.1, 0.4, 0.4, "cat"), Box(0.5, 0.5, 0.9, 0.9, "dog"), Box(0.6, 0.1, 0.9, 0.3, "cat")],
    [Box(0.2, 0.2, 0.6, 0.5, "bird"), Box(0.0, 0.6, 0.3, 0.95, "dog")],
    [Box(0.3, 0.3, 0.7, 0.7, "cat")],
]
MAP_PREDICTIONS = [
    [Box(0.1, 0.1, 0.4, 0.4, "cat"), Box(0.11, 0.1, 0.4, 0.41, "cat"), Box(0.45, 0.5, 0.95, 0.85, "dog")],
    [Box(0.2, 0.2, 0.6, 0.5, "dog"), Box(0.25, 0.2, 0.6, 0.45, "bird"), Box(0.1, 0.1, 0.2, 0.2, "zebra")],
    [Box(0.32, 0.3, 0.7, 0.74, "cat"), Box(0.0, 0.0, 0.2, 0.2, "bird")],
]


def pycocotools_map(predictions, targets) -> list[float]:
    """COCOeval's stats straight from pycocotools: boxes as COCO's (x, y, width, height), every score 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({b.name for boxes in targets for b in boxes})

    def coco_box(b):
        return [b.x_min, b.y_min, b.x_max - b.x_min, b.y_max - b.y_min]

    gt = COCO()
    annotations = [
        {"image_id": i, "category_id": names.index(b.name), "bbox": coco_box(b),
         "area": coco_box(b)[2] * coco_box(b)[3], "iscrowd": 0}
        for i, boxes in enumerate(targets) for b in boxes
    ]  # fmt: skip
    annotations = [a | {"id": n + 1} for n, a in enumerate(annotations)]
    gt.dataset = {"images": [{"id": i} for i in range(len(targets))], "annotations": annotations,
                  "categories": [{"id": i, "name": n} for i, n in enumerate(names)]}  # fmt: skip
    gt.createIndex()
    dt = gt.loadRes(
        [
            {"image_id": i, "category_id": names.index(b.name), "bbox": coco_box(b), "score": 1.0}
            for i, boxes in enumerate(predictions)
            for b in boxes
            if b.name in names
        ]  # fmt: skip
    )
    evaluation = COCOeval(gt, dt, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return list(evaluation.stats[:3])


def test_detection_map_equals_pycocotools():
    ours = detection_map(MAP_PREDICTIONS, MAP_TARGETS)
    reference = pycocotools_map(MAP_PREDICTIONS, MAP_TARGETS)
    assert [ours["map"], ours["map_50"], ours["map_75"]] == pytest.approx(reference, abs=1e-6)
    assert 0.2 < ours["map"] < ours["map_50"] < 1  # the fixture's misses, duplicates and loose boxes count
    perfect = detection_map(MAP_TARGETS, MAP_TARGETS)
    assert perfect["map"] == pytest.approx(1.0)


def test_detection_map_by_hand_and_without_any_box():
    # One class, two objects; a hit, then a false positive: precision 1 up to recall 0.5, then nothing. COCO's
    # 101-point interpolation gives AP = 51 / 101 at every IoU threshold.
    targets = [[Box(0.1, 0.1, 0.3, 0.3, "a")], [Box(0.5, 0.5, 0.9, 0.9, "a")]]
    predictions = [[Box(0.1, 0.1, 0.3, 0.3, "a"), Box(0.6, 0.0, 0.9, 0.2, "a")], []]
    assert detection_map(predictions, targets)["map"] == pytest.approx(51 / 101)
    assert detection_map([[], []], targets) == {"map": 0.0, "map_50": 0.0, "map_75": 0.0}


def test_box_iou():
    assert box_iou(Box(0, 0, 1, 1), Box(0, 0, 1, 1)) == 1.0
    assert box_iou(Box(0, 0, 1, 1), Box(0, 0.5, 1, 1.5)) == pytest.approx(1 / 3)
    assert box_iou(Box(0, 0, 1, 1), Box(2, 2, 3, 3)) == 0.0
