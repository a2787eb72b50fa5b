from pathlib import Path

import pytest

from paligemma.training.checks import run_settings
from tests.helpers import compose_config

MODEL_CONFIGS = sorted(p.stem for p in (Path(__file__).parents[2] / "conf/model").glob("*.yaml"))


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_config_composes_and_names_its_hub_checkpoint(tmp_path, name):
    """Each conf/model file composes with the defaults and passes the config checks; a hub config loads the
    checkpoint its file is named after (gemma3-4b-pt: google/gemma-3-4b-pt), the -it ones in their chat template."""
    cfg = compose_config(tmp_path, [f"model={name}"])
    run_settings(cfg)
    if name != "tiny":
        assert cfg.model.path == "google/" + name.replace("gemma3-", "gemma-3-")  # the hub spells it gemma-3
    assert cfg.data.chat_template == name.endswith("-it")
