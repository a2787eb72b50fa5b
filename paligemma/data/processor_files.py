"""What a processor directory holds (tokenizer, special tokens, image settings), read as both processors need it:
each missing or broken file is an error naming it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer

from paligemma.errors import ConfigError, MissingFileError, one_line
from paligemma.paths import read_json, resolve_model_dir

# Everything a processor (ours or transformers') loads: the hub repos ship preprocessor_config.json,
# transformers 5 saves the image settings in processor_config.json instead.
PROCESSOR_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
    "chat_template.json",
]


def copy_processor_files(source: str | Path, target: str | Path) -> None:
    """Copy the tokenizer and image settings of ``source`` (a local dir, or a hub id fetched through the cache)
    to ``target``: a merged-model export then loads with its processor."""
    source = resolve_model_dir(source, PROCESSOR_FILES)
    for name in PROCESSOR_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, Path(target) / name)


def read_image_settings(path: Path) -> dict:
    """The image processor's settings: preprocessor_config.json (the hub repos), else the "image_processor"
    entry of processor_config.json (transformers 5 saves)."""
    if (path / "preprocessor_config.json").is_file():
        return read_json(path / "preprocessor_config.json")
    if (path / "processor_config.json").is_file():
        settings = read_json(path / "processor_config.json")
        if "image_processor" in settings:
            return settings["image_processor"]
    raise MissingFileError(
        f"{path} has no preprocessor_config.json (nor processor_config.json with image_processor settings); "
        "a PaliGemma processor needs the image settings"
    )


def load_tokenizer(path: Path) -> Tokenizer:
    """``path``/tokenizer.json; a missing or unparsable file is an error naming it."""
    if not (path / "tokenizer.json").is_file():
        raise MissingFileError(f"{path} has no tokenizer.json; a processor needs it")
    try:
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as error:  # tokenizers raises a bare Exception on a file it cannot parse
        raise ConfigError(
            f"{path / 'tokenizer.json'} is no tokenizer ({one_line(error)}); copy it again"
        ) from None


def token_names(path: Path) -> Callable[[str, str], str]:
    """A lookup of the special tokens' names (``bos_token`` ...) in special_tokens_map.json and
    tokenizer_config.json (which wins, as in transformers; its "extra_special_tokens" too), with a default."""
    config = {}
    for name in ["special_tokens_map.json", "tokenizer_config.json"]:
        if (path / name).is_file():
            config.update(read_json(path / name))
    extra = config.get("extra_special_tokens")
    if isinstance(extra, dict):
        config = {**extra, **config}

    def token(key: str, default: str) -> str:
        value = config.get(key) or default
        return value["content"] if isinstance(value, dict) else value

    return token


def square_size(path: Path, image_cfg: dict) -> int:
    size = image_cfg.get("size", {})
    if size.get("height") is None or size.get("height") != size.get("width"):
        raise ConfigError(f"{path}: image settings: expected a square size {{height, width}}, got {size}")
    return size["height"]
