"""Dataset splits from the hub or a local path, hub failures turned into one :class:`HubError` line.

``datasets`` reports the hub's failures in its own words (a ConnectionError when offline and not cached,
DatasetNotFoundError for gated or missing repos, messages whose causes it drops); here they get the
message of a model path: which dataset, and what to do (a local copy in ``data.path``, go online, log in).
"""

from __future__ import annotations

import datasets
from datasets.exceptions import DatasetNotFoundError

from paligemma.paths import hub_error, hub_failure, is_hub_id, local_path


def load_split(path: str, name: str | None, split: str) -> datasets.Dataset:
    """``datasets.load_dataset(path, name, split=split)``: a local ``path`` with ``~`` expanded, a hub id
    downloaded or read from the cache."""
    if not is_hub_id(path):
        return datasets.load_dataset(str(local_path(path)), name, split=split)
    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as error:
        reason = dataset_failure(error)
        if reason is None:
            raise
        raise hub_error(path, reason, kind="dataset") from error


def dataset_failure(error: BaseException) -> str | None:
    """Why ``datasets`` could not load a hub dataset (a key of paligemma.paths.HUB_MESSAGES), or None."""
    if isinstance(error, DatasetNotFoundError):
        text = str(error)
        if "gated" in text:
            return "gated"
        return "revision" if text.startswith("Revision") else "missing"
    offline = "OfflineModeIsEnabled" in str(error) or datasets.config.HF_HUB_OFFLINE
    if type(error) is ConnectionError:
        return "offline" if offline else "network"
    if type(error) is FileNotFoundError and "LocalEntryNotFoundError" in str(error):
        return "offline" if offline else "network"  # the hub's "not cached" error, its cause dropped
    return hub_failure(error)
