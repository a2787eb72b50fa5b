import json

import pytest

from paligemma import Gemma3ForConditionalGeneration, PaliGemmaForConditionalGeneration
from paligemma.errors import ConfigError, MissingFileError, UnsupportedConfigError
from paligemma.model.families import model_class, model_family


def test_each_family_is_read_from_config_json(tiny_checkpoint, tiny_gemma3_checkpoint):
    assert model_family(tiny_checkpoint) == "paligemma" and model_family(tiny_gemma3_checkpoint) == "gemma3"
    assert model_class(tiny_checkpoint) is PaliGemmaForConditionalGeneration
    assert model_class(tiny_gemma3_checkpoint) is Gemma3ForConditionalGeneration


def test_an_unknown_model_type_names_the_file_and_the_known_types(tmp_path, tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    with pytest.raises(UnsupportedConfigError) as error:
        model_family(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'config.json'}: model_type 'llava' is not a family this code implements; known: paligemma, gemma3, gemma4"
    )


def test_a_config_without_model_type_is_paligemma_and_a_dir_without_config_is_one_line(
    tmp_path, tiny_checkpoint
):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config.pop("model_type")
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_family(tmp_path) == "paligemma"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingFileError, match="no config.json"):
        model_family(empty)
    with pytest.raises(ConfigError, match="is not a directory"):
        model_family(tmp_path / "nope")
