"""Which processor a checkpoint's files ask for: the one table from their ``processor_class`` to our class.

The datamodule, the LightningModule and ``python -m paligemma.generate`` load processors through ``load_processor``,
so that a new family is one row (as paligemma/model/families.py is for the models).
"""

from __future__ import annotations

from pathlib import Path

from paligemma.data.gemma3_processor import Gemma3Processor
from paligemma.data.gemma4_processor import Gemma4Processor
from paligemma.data.processor import PaliGemmaProcessor
from paligemma.data.processor_files import PROCESSOR_FILES
from paligemma.errors import ConfigError, UnsupportedConfigError
from paligemma.paths import read_json, resolve_model_dir

Processor = PaliGemmaProcessor | Gemma3Processor | Gemma4Processor
PROCESSOR_CLASSES: dict[str, type[Processor]] = {
    "PaliGemmaProcessor": PaliGemmaProcessor,
    "Gemma3Processor": Gemma3Processor,
    "Gemma4Processor": Gemma4Processor,
}
# Where the hub repos and transformers' saves name the processor class, first match wins.
CLASS_FILES = ["processor_config.json", "preprocessor_config.json", "tokenizer_config.json"]


def processor_class_name(path: Path) -> str:
    """The ``processor_class`` the files in ``path`` name (PaliGemmaProcessor when none does)."""
    for name in CLASS_FILES:
        if (path / name).is_file() and (named := read_json(path / name).get("processor_class")):
            return named
    return "PaliGemmaProcessor"


def load_processor(
    path: str | Path,
    frame_token_pool: int = 1,
    chat_template: bool = False,
    image_tokens: int | None = None,
    **pan_and_scan,
) -> Processor:
    """The processor of the checkpoint at ``path`` (a local dir or hub id), of the class its files name.
    ``image_tokens``: Gemma 4's soft tokens per image (None: the files'). ``pan_and_scan``: transformers'
    ``do_pan_and_scan`` and ``pan_and_scan_*`` arguments (Gemma 3's)."""
    directory = resolve_model_dir(path, PROCESSOR_FILES)
    name = processor_class_name(directory)
    if name not in PROCESSOR_CLASSES:
        raise UnsupportedConfigError(
            f"{directory}: processor_class {name!r} is not one this code implements; known: {', '.join(PROCESSOR_CLASSES)}"
        )
    if image_tokens is not None:
        if name != "Gemma4Processor":
            raise ConfigError(
                f"image_tokens={image_tokens}: {directory} is a {name}, whose images take a fixed number of "
                "tokens (Gemma 4's take a budget); leave image_tokens unset"
            )
        pan_and_scan["image_tokens"] = image_tokens
    return PROCESSOR_CLASSES[name].from_pretrained(
        directory, frame_token_pool, chat_template=chat_template, **pan_and_scan
    )
