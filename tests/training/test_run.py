from paligemma.training.run import print_summary


def test_summary_prints_the_metric_before_and_after_and_by_kind(capsys):
    results = {
        "zero_shot/vqa_accuracy": 0.01,
        "val/vqa_accuracy": 0.8,
        "zero_shot/vqa_accuracy/count": 0.0,
        "val/vqa_accuracy/count": 1.0,
        "val/vqa_accuracy/color": 0.75,  # no zero-shot score: printed as nan
        "train/wall_seconds": 279.4,
        "train/samples_per_sec": 46.61,
        "precision": "float32",
    }
    print_summary(results, "val/vqa_accuracy")
    assert capsys.readouterr().out.splitlines() == [
        "",
        "vqa_accuracy: before 0.0100  after 0.8000",
        "       color: before nan  after 0.7500",
        "       count: before 0.0000  after 1.0000",
        "trained in 279 s, 46.6 samples/s, base weights float32",
    ]


def test_a_run_without_a_validation_metric_says_so_in_one_line(capsys):
    results = {
        "data/skipped": 7,
        "train/wall_seconds": 2.0,
        "train/samples_per_sec": 4.0,
        "precision": "float32",
    }
    print_summary(results, "val/vqa_accuracy")
    assert capsys.readouterr().out.splitlines()[:2] == [
        "",
        "vqa_accuracy: not measured: no validation row could be scored (7 rows skipped as bad, see the warnings above)",
    ]
