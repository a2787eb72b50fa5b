"""Which model class a checkpoint is: the one table from config.json's ``model_type`` to our class.

Everything that loads a checkpoint (paligemma/model/build.py, ``python -m paligemma.generate``) asks here, so that a
new family is one row.
"""

from __future__ import annotations

from pathlib import Path

from paligemma.errors import MissingFileError, UnsupportedConfigError
from paligemma.model.gemma3 import Gemma3ForConditionalGeneration
from paligemma.model.gemma4 import Gemma4ForConditionalGeneration
from paligemma.model.paligemma import PaliGemmaForConditionalGeneration
from paligemma.model.vision_language import VisionLanguageModel
from paligemma.model.weights import MODEL_FILES
from paligemma.paths import read_json, resolve_model_dir

MODEL_CLASSES: dict[str, type[VisionLanguageModel]] = {
    "paligemma": PaliGemmaForConditionalGeneration,
    "gemma3": Gemma3ForConditionalGeneration,
    "gemma4": Gemma4ForConditionalGeneration,
}


def model_family(path: str | Path) -> str:
    """The ``model_type`` of the checkpoint at ``path`` (a local dir or hub id): a key of ``MODEL_CLASSES``."""
    config_file = resolve_model_dir(path, MODEL_FILES) / "config.json"
    if not config_file.is_file():
        raise MissingFileError(f"{path} is not a model checkpoint directory: no config.json in it")
    model_type = read_json(config_file).get(
        "model_type", "paligemma"
    )  # as PaliGemmaConfig reads a file without one
    if model_type not in MODEL_CLASSES:
        raise UnsupportedConfigError(
            f"{config_file}: model_type {model_type!r} is not a family this code implements; "
            f"known: {', '.join(MODEL_CLASSES)}"
        )
    return model_type


def model_class(path: str | Path) -> type[VisionLanguageModel]:
    """The class that loads the checkpoint at ``path``."""
    return MODEL_CLASSES[model_family(path)]
