"""Dataset splits: a local path with ``~`` expanded, hub failures as one line naming the dataset and data.path."""

import datasets
import pytest
from datasets.exceptions import DatasetNotFoundError

from paligemma.data.sources import dataset_failure, load_split
from paligemma.errors import HubError
from paligemma.paths import hub_error
from tests.helpers import VQAV2_FEATURES, offline_hub_cache, vqav2_rows, write_parquet

DATASET = "lmms-lab/VQAv2"


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Offline, with datasets and hub caches that hold nothing (both libraries read them at import)."""
    cache = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(cache))
    offline_hub_cache(monkeypatch, cache / "hub")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path


def test_offline_with_an_empty_cache_is_one_hub_error(empty_caches):
    with pytest.raises(HubError) as error:
        load_split(DATASET, None, "validation")
    message = str(error.value)
    assert "\n" not in message
    assert f"dataset {DATASET} is not in the local Hugging Face cache" in message
    assert "point data.path at a local copy (a parquet dir or a save_to_disk dir)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Dataset '{DATASET}' is a gated dataset on the Hub. You must be authenticated to access it.",
         f"dataset {DATASET} is gated on the Hugging Face hub: log in"),
        (f"Dataset '{DATASET}' doesn't exist on the Hub or cannot be accessed.",
         f"dataset {DATASET} was not found on the Hugging Face hub: check the id in data.path"),
        (f"Revision 'v9' doesn't exist for dataset '{DATASET}' on the Hub.", f"dataset {DATASET} has no such revision"),
    ],
    ids=["gated", "missing", "revision"],
)  # fmt: skip
def test_datasets_hub_errors_are_translated(text, expected):
    """The messages datasets 5 gives its DatasetNotFoundError (their hub cause is dropped)."""
    assert expected in str(hub_error(DATASET, dataset_failure(DatasetNotFoundError(text)), kind="dataset"))


def test_unreachable_hub_when_online(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    reason = dataset_failure(ConnectionError(f"Couldn't reach '{DATASET}' on the Hub (ConnectError)"))
    assert reason == "network"
    assert dataset_failure(ValueError("a bad column")) is None


def test_home_relative_local_dir(empty_caches, monkeypatch):
    home = empty_caches / "home"
    write_parquet(home / "vqa", {"validation": (vqav2_rows(3), VQAV2_FEATURES)})
    monkeypatch.setenv("HOME", str(home))
    assert len(load_split("~/vqa", None, "validation")) == 3
