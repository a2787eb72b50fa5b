"""conf/ composes the same values whichever model and data files are picked: each group's files set that group's
keys alone, and the keys one group takes from another (conf/config.yaml's links) follow the model."""

import functools
import tempfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from paligemma.data.tasks import TASKS
from paligemma.training.checks import run_settings
from paligemma.training.scoring import GenerationSettings
from tests.helpers import ROOT, compose_config

MODEL_CONFIGS = sorted(p.stem for p in (ROOT / "conf/model").glob("*.yaml"))
DATA_CONFIGS = sorted(p.stem for p in (ROOT / "conf/data").glob("*.yaml"))
DOCUMENTED_LENGTHS = {
    "detection": 128,
    "synthetic_detection": 32,
    "segmentation": 104,
    "synthetic_segmentation": 78,
}  # docs/data.md; the others: the task's
# what conf/config.yaml takes from model.*
MODEL_LINKS = ("data.processor_path", "data.chat_template", "optim.lr")


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_config_composes_and_names_its_hub_checkpoint(tmp_path, name):
    """Each conf/model file composes with the defaults and passes the config checks; a hub config loads the
    checkpoint its file is named after (gemma3-4b-pt: google/gemma-3-4b-pt), the -it ones in their chat template."""
    cfg = compose_config(tmp_path, [f"model={name}"])
    run_settings(cfg)
    if name != "tiny":
        assert cfg.model.path == "google/" + name.replace("gemma3-", "gemma-3-")  # the hub spells it gemma-3
    assert cfg.data.chat_template == cfg.model.chat_template == name.endswith("-it")


def test_model_and_data_files_write_their_own_group_only():
    """No file of conf/model or conf/data names a package: each writes model.* or data.* alone (experiments set
    keys across groups), so the order of the groups decides nothing."""
    for path in sorted((ROOT / "conf/model").glob("*.yaml")) + sorted((ROOT / "conf/data").glob("*.yaml")):
        assert "@package" not in path.read_text(), path


def answer_length(cfg) -> int:
    """The generation length train.py and evaluate.py give the module."""
    return GenerationSettings(**cfg.generation).for_task(cfg.data).max_new_tokens


@pytest.mark.parametrize(
    "data, model", [("detection", "paligemma-3b-pt-224"), ("synthetic_detection", "paligemma2-3b-pt-224")]
)
def test_a_hub_model_keeps_the_detection_length(tmp_path, data, model):
    """A hub model config once set generation.max_new_tokens after the data group had: 16 tokens, two boxes."""
    cfg = compose_config(tmp_path, [f"data={data}", f"model={model}"])
    assert answer_length(cfg) == DOCUMENTED_LENGTHS[data]


@functools.cache
def composed(config_name: str, model: str, data: str) -> dict:
    """conf/<config_name>.yaml with these model and data files, as dotted keys and resolved values."""
    output_dir = Path(tempfile.gettempdir()) / "test_configs"  # one for all: the run dir is no group's
    cfg = compose_config(output_dir, [f"model={model}", f"data={data}"], config_name)
    own = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    container = OmegaConf.to_container(own, resolve=True)

    def leaves(node, prefix=""):
        if not isinstance(node, dict) or not node:
            return {prefix.rstrip("."): node}
        return {k: v for name, value in node.items() for k, v in leaves(value, f"{prefix}{name}.").items()}

    return {"answer_length": answer_length(cfg), **leaves(container)}


def learning_rate(model: str) -> float:
    """docs/models.md: 2e-3 the tiny model, 1e-4 the 10-12B ones, 5e-5 the 27-28B ones, 2e-4 the others."""
    sizes = {"tiny": 2e-3, "10b": 1e-4, "12b": 1e-4, "27b": 5e-5, "28b": 5e-5}
    return next((lr for size, lr in sizes.items() if size in model.split("-")), 2e-4)


@pytest.mark.slow  # 25 compositions of a fraction of a second each, and those it compares them with
@pytest.mark.parametrize("data", DATA_CONFIGS)
def test_every_model_with_every_data_config_takes_each_value_from_its_group(data):
    """Composed with any data file, a model file's keys (and those linked to them) are what it gives alone, the data
    file's keys (task, prompt, columns, ...) what it gives with the tiny model, everything else the defaults; the
    generation length is the task's (docs/data.md's for detection), the processor the model's, the chat template
    that of the -it models, the learning rate the model's (docs/models.md)."""
    for model in MODEL_CONFIGS:
        values = composed("config", model, data)
        assert values.keys() == composed("config", "tiny", data).keys(), model
        for key, value in values.items():
            if key.startswith("model.") or key in MODEL_LINKS:
                assert value == composed("config", model, "synthetic")[key], (model, key)
            elif key.startswith("data.") or key == "answer_length":
                assert value == composed("config", "tiny", data)[key], (model, key)
            else:
                assert value == composed("config", "tiny", "synthetic")[key], (model, key)
        length = DOCUMENTED_LENGTHS.get(data, TASKS[values["data.task"]].answer_tokens)
        assert values["answer_length"] == length, model
        assert values["data.processor_path"] == values["model.path"]
        assert values["data.chat_template"] == (model.startswith("gemma3-") and model.endswith("-it"))
        assert values["optim.lr"] == values["model.lr"] == learning_rate(model)


@pytest.mark.slow  # 36 cases of two compositions
@pytest.mark.parametrize(
    "model, data", [(m, "detection") for m in MODEL_CONFIGS] + [("gemma3-4b-it", d) for d in DATA_CONFIGS]
)
def test_evaluate_takes_the_model_and_data_values_of_training(model, data):
    """conf/eval.yaml composes the same model, data and generation values as conf/config.yaml, and no optim.*."""
    values, trained = composed("eval", model, data), composed("config", model, data)
    own = [key for key in trained if key.startswith(("model.", "data.", "generation.", "answer_length"))]
    assert {key: values[key] for key in own} == {key: trained[key] for key in own}
    assert not [key for key in values if key.startswith("optim.")]
