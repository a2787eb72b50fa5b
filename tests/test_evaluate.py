"""evaluate.py: reproduces a training run's validation metric from its adapter or checkpoint."""

import json
from pathlib import Path

import pytest

import evaluate
import train
from tests.helpers import FAST, SYNTHETIC, compose_config

ROOT = Path(__file__).resolve().parents[1]
EVAL_FAST = [
    "data.num_workers=0",
    "data.val_batch_size=8",
    "data.max_val_samples=8",
    "generation.max_new_tokens=4",
]


def compose_eval(output_dir: Path, overrides: list[str]):
    return compose_config(output_dir, overrides, config_name="eval")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_checkpoint):
    run = tmp_path_factory.mktemp("train-run")
    cfg = compose_config(run, [f"model.path={tiny_checkpoint}", "logger=csv", *FAST, *SYNTHETIC,
                               "optim.lr=5e-2", "trainer.max_steps=4"])  # fmt: skip
    return run, train.train(cfg)


@pytest.mark.parametrize("source", ["model.adapter", "ckpt_path"])
def test_evaluating_a_run_reproduces_its_val_metric(tmp_path, tiny_checkpoint, trained_run, source):
    run, trained = trained_run
    target = run / "adapter" if source == "model.adapter" else run / "checkpoints" / "last.ckpt"
    cfg = compose_eval(tmp_path, [f"model.path={tiny_checkpoint}", f"{source}={target}", "logger=csv",
                                  *SYNTHETIC, *EVAL_FAST])  # fmt: skip
    results = evaluate.evaluate(cfg)
    assert results["val/vqa_accuracy"] == trained["val/vqa_accuracy"]
    for kind in ("color", "shape", "count", "position"):
        assert results[f"val/vqa_accuracy/{kind}"] == trained[f"val/vqa_accuracy/{kind}"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["eval/samples"] == 8 and saved["eval/samples_per_sec"] > 0
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and set(rows[0]) == {"id", "kind", "prompt", "prediction", "references"}
    assert rows[0]["prompt"].startswith("answer en ")


def test_zero_shot_evaluation_of_the_base(tmp_path, tiny_checkpoint, trained_run):
    cfg = compose_eval(tmp_path, [f"model.path={tiny_checkpoint}", *SYNTHETIC, *EVAL_FAST])
    results = evaluate.evaluate(cfg)
    assert results["val/vqa_accuracy"] == pytest.approx(trained_run[1]["zero_shot/vqa_accuracy"])
    assert results["adapter_path"] is None


def test_adapter_for_another_base_is_a_clear_error(tmp_path, trained_run, other_tiny_checkpoint):
    overrides = [
        f"model.path={other_tiny_checkpoint}",
        f"model.adapter={trained_run[0] / 'adapter'}",
        "logger=none",
    ]
    cfg = compose_eval(tmp_path / "eval", [*overrides, *SYNTHETIC, *EVAL_FAST])
    with pytest.raises(ValueError, match=r"adapter .* does not fit the base model"):
        evaluate.evaluate(cfg)
