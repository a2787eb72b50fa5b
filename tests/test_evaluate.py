"""evaluate.py: reproduces a training run's validation metric from its adapter or checkpoint."""

import json
from pathlib import Path

import pytest

import evaluate
import train
from tests.helpers import FAST, SYNTHETIC, compose_config

EVAL_FAST = [
    "data.num_workers=0",
    "data.val_batch_size=8",
    "data.max_val_samples=8",
    "generation.max_new_tokens=4",
]
# The embedded pre-trained base (model=tiny) captions the synthetic pictures: its CIDEr and val loss are nonzero,
# and the fixture's training moves both.
CAPTIONS = ["data=synthetic_captions", *SYNTHETIC]


def compose_eval(output_dir: Path, overrides: list[str]):
    return compose_config(output_dir, overrides, config_name="eval")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("train-run")
    cfg = compose_config(run, ["logger=csv", *FAST, *CAPTIONS, "optim.lr=1e-2", "trainer.max_steps=4"])
    return run, train.train(cfg)


def scores(results: dict, prefix: str) -> dict:
    """The validation scores of ``results`` under ``prefix`` (val/ or zero_shot/), named val/<name>."""
    return {f"val/{k.removeprefix(prefix)}": v for k, v in results.items() if k.startswith(prefix)}


@pytest.mark.parametrize("source", ["model.adapter", "ckpt_path"])
def test_evaluating_a_run_reproduces_its_val_metric(tmp_path, trained_run, source):
    run, trained = trained_run
    val, zero_shot = scores(trained, "val/"), scores(trained, "zero_shot/")
    assert val["val/cider"] > 0 and all(val[k] != zero_shot[k] for k in ("val/cider", "val/loss"))
    target = run / "adapter" if source == "model.adapter" else run / "checkpoints" / "last.ckpt"
    cfg = compose_eval(tmp_path, [f"{source}={target}", "logger=csv", *CAPTIONS, *EVAL_FAST])
    results = evaluate.evaluate(cfg)
    assert {k: results[k] for k in val} == val
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["eval/samples"] == 8 and saved["eval/samples_per_sec"] > 0
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and set(rows[0]) == {"id", "kind", "prompt", "prediction", "references"}
    assert rows[0]["prompt"].startswith("caption en")


def test_zero_shot_evaluation_of_the_base(tmp_path, trained_run):
    zero_shot = scores(trained_run[1], "zero_shot/")
    assert zero_shot["val/cider"] > 0
    results = evaluate.evaluate(compose_eval(tmp_path, [*CAPTIONS, *EVAL_FAST]))
    assert {k: results[k] for k in zero_shot} == pytest.approx(zero_shot)
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
