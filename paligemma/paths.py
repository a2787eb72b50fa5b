"""What a user-written path means: one resolver for model, adapter, checkpoint and data paths.

A value is local when it starts with ``.``, ``/`` or ``~`` or names something that exists (``~`` is
expanded); otherwise ``owner/name`` is a Hugging Face hub id. Hub failures (offline with nothing cached,
no network, gated, missing) become one :class:`HubError` line naming the repo and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from paligemma.errors import ConfigError, HubError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name

# kind -> (the setting to change, what a local copy is, the offline switch, the repo page's URL prefix)
HUB_KINDS = {
    "model": ("model.path", "a dir with config.json and safetensors", "HF_HUB_OFFLINE=1", "https://huggingface.co/"),
    "dataset": ("data.path", "a parquet dir or a save_to_disk dir", "HF_DATASETS_OFFLINE=1 or HF_HUB_OFFLINE=1",
                "https://huggingface.co/datasets/"),
}  # fmt: skip
LOG_IN = "log in (`hf auth login` or HF_TOKEN)"
HUB_MESSAGES = {
    "offline": "{what} is not in the local Hugging Face cache and offline mode is on ({flag}): "
    "point {setting} at a local copy ({copy}), or go online to download it",
    "network": "cannot download {what} from the Hugging Face hub (no network, or the hub failed) and it is not "
    "in the local cache: check the connection and try again, or point {setting} at a local copy ({copy})",
    "gated": "{what} is gated on the Hugging Face hub: " + LOG_IN + " and accept its license at {url}, "
    "or point {setting} at a local copy ({copy})",
    "missing": "{what} was not found on the Hugging Face hub: check the id in {setting}, "
    "or " + LOG_IN + " if it is private",
    "revision": "{what} has no such revision on the Hugging Face hub: check the revision asked for",
}
# Exception classes (by name, across requests, httpx and httpx2) that mean the network is unreachable.
NETWORK_ERRORS = {"ConnectionError", "TimeoutError", "Timeout", "TransportError", "TimeoutException"}


def read_json(file: Path):
    """A JSON file's content; a damaged one (not JSON, not text) is a ConfigError naming it."""
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{file} is not JSON ({error}): the file is damaged; copy it again") from None


def write_json(path: Path, obj: dict) -> None:
    """``obj`` as indented UTF-8 JSON, written to a temporary file and renamed over ``path``: a kill never leaves
    a torn file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def local_path(value: str | Path) -> Path:
    """What a user-written local path means: ``~`` expanded, relative paths kept relative to the cwd."""
    return Path(value).expanduser()


def looks_local(value: str | Path) -> bool:
    """Written as a path (``.``, ``/``, ``~``) or naming something that exists."""
    return str(value).startswith((".", "/", "~")) or local_path(value).exists()


def is_hub_id(value: str | Path) -> bool:
    """``owner/name`` that is not a local path."""
    return not looks_local(value) and HUB_ID.fullmatch(str(value)) is not None


def resolve_model_dir(value: str | Path, allow_patterns: Sequence[str]) -> Path:
    """A local dir (``~`` expanded) as is; a hub id downloaded (only ``allow_patterns``) or found in the cache.

    Raises :class:`ConfigError` for a value that is neither a directory nor a hub id, and :class:`HubError`
    when the hub cannot serve the repo.
    """
    if is_hub_id(value):
        return _download(str(value), allow_patterns)
    path = local_path(value)
    if not path.is_dir():
        shown = str(value) if str(path) == str(value) else f"{value} ({path})"
        raise ConfigError(f"{shown} is not a directory, nor a hub id (owner/name)")
    return path


def _download(repo: str, allow_patterns: Sequence[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=list(allow_patterns)))
    except Exception as error:
        reason = hub_failure(error)
        if reason is None:
            raise
        raise hub_error(repo, reason) from error


def hub_failure(error: BaseException) -> str | None:
    """Why huggingface_hub could not serve a repo: a key of :data:`HUB_MESSAGES`, or None for other errors."""
    from huggingface_hub import errors as hub

    if isinstance(error, hub.GatedRepoError):
        return "gated"
    if isinstance(error, hub.RevisionNotFoundError):
        return "revision"
    if isinstance(error, hub.RepositoryNotFoundError) or (
        isinstance(error, hub.HfHubHTTPError) and error.response.status_code == 401
    ):
        return "missing"
    if _caused_by(error, hub.OfflineModeIsEnabled):
        return "offline"
    if isinstance(error, hub.LocalEntryNotFoundError):
        return "offline" if error.__cause__ is None else "network"
    if isinstance(error, hub.HfHubHTTPError) or _is_network_error(error):
        return "network"
    return None


def hub_error(repo: str, reason: str, kind: str = "model") -> HubError:
    """The one-line error for ``reason`` (a key of :data:`HUB_MESSAGES`) about hub repo ``repo``."""
    setting, copy, flag, url = HUB_KINDS[kind]
    what = f"{kind} {repo}"
    return HubError(
        HUB_MESSAGES[reason].format(what=what, setting=setting, copy=copy, flag=flag, url=url + repo)
    )


def _caused_by(error: BaseException | None, kind: type[BaseException]) -> bool:
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__
    return False


def _is_network_error(error: BaseException) -> bool:
    return any(cls.__name__ in NETWORK_ERRORS for cls in type(error).__mro__)
