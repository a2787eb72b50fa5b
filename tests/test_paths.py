"""One resolver for user-written paths: ``~`` expanded everywhere, hub failures as one line naming the repo."""

import json
import shutil

import httpx2  # huggingface_hub's HTTP client: its errors carry an httpx2.Response
import pytest
import requests
import torch
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from paligemma import PaliGemmaForConditionalGeneration, PaliGemmaProcessor
from paligemma.data.processor_files import copy_processor_files
from paligemma.errors import ConfigError, HubError
from paligemma.paths import hub_error, hub_failure, is_hub_id, local_path, write_json
from paligemma.training.checks import run_settings
from tests.helpers import FAST, SYNTHETIC, assert_one_line_error, compose_config, offline_hub_cache, run_cli

REPO = "google/paligemma-3b-pt-224"


def test_write_json_replaces_the_file_in_utf_8_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("{torn")
    write_json(path, {"val/loss": 0.5, "token": "▁é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"val/loss": 0.5, "token": "▁é"}
    assert "▁é" in path.read_text(encoding="utf-8")  # as the hub's tokenizer files hold it, not \u-escaped
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.fixture
def home_model(tmp_path, monkeypatch, tiny_checkpoint):
    """``~/models/x``: a copy of the tiny checkpoint under a fake HOME."""
    home = tmp_path / "home"
    shutil.copytree(tiny_checkpoint, home / "models" / "x")
    monkeypatch.setenv("HOME", str(home))
    return "~/models/x"


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """Offline, with a Hugging Face cache that holds nothing (huggingface_hub reads both at import)."""
    cache = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(cache))
    offline_hub_cache(monkeypatch, cache / "hub")


def http_error(kind, status: int, url: str = f"https://huggingface.co/api/models/{REPO}/revision/main"):
    response = httpx2.Response(status, request=httpx2.Request("GET", url))
    return kind(f"{status} Client Error.\n\nfor url {url}", response=response)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(REPO, True), ("./google/x", False), ("~/x/y", False), ("/abs/path", False), ("paligemma", False),
     ("a/b/c", False)],
)  # fmt: skip
def test_is_hub_id(value, expected):
    assert is_hub_id(value) is expected


def test_an_existing_relative_path_is_local(tmp_path, monkeypatch):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("owner/name")
    assert local_path("owner/name").is_dir()


def test_home_relative_model_dir_loads_and_passes_the_checks(home_model, tmp_path):
    model = PaliGemmaForConditionalGeneration.from_pretrained(home_model)
    processor = PaliGemmaProcessor.from_pretrained(home_model)
    assert processor.image_token_id == model.config.image_token_index
    torch.save({"state_dict": {}}, local_path("~/last.ckpt"))
    overrides = [f"model.path='{home_model}'", "ckpt_path='~/last.ckpt'"]  # as a yaml file would set them
    run_settings(compose_config(tmp_path / "run", overrides))


def test_home_relative_processor_files_copy(home_model, tmp_path):
    copy_processor_files(home_model, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "preprocessor_config.json").is_file()
    PaliGemmaProcessor.from_pretrained(tmp_path)


@pytest.mark.parametrize("value", ["~/nope", "./nope", "paligemma-3b-pt-224"])
def test_a_path_that_is_no_directory_is_a_config_error(value, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=f"{value}.* is not a directory, nor a hub id"):
        PaliGemmaForConditionalGeneration.from_pretrained(value)
    with pytest.raises(ConfigError, match=value):
        PaliGemmaProcessor.from_pretrained(value)


@pytest.mark.parametrize(
    "load",
    [PaliGemmaForConditionalGeneration.from_pretrained, PaliGemmaProcessor.from_pretrained,
     lambda repo: copy_processor_files(repo, ".")],
    ids=["model", "processor", "copy_processor_files"],
)  # fmt: skip
def test_offline_with_an_empty_cache_is_one_hub_error(empty_hub_cache, load):
    with pytest.raises(HubError) as error:
        load(REPO)
    message = str(error.value)
    assert "\n" not in message
    assert f"model {REPO} is not in the local Hugging Face cache" in message
    assert "point model.path at a local copy" in message and "go online" in message


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (http_error(GatedRepoError, 403), f"model {REPO} is gated on the Hugging Face hub: log in (`hf auth login` "
         f"or HF_TOKEN) and accept its license at https://huggingface.co/{REPO}"),
        (http_error(RepositoryNotFoundError, 404), f"model {REPO} was not found on the Hugging Face hub: check the id "
         "in model.path, or log in (`hf auth login` or HF_TOKEN) if it is private"),
        (http_error(RevisionNotFoundError, 404), f"model {REPO} has no such revision"),
        (OfflineModeIsEnabled("offline"), "offline mode is on (HF_HUB_OFFLINE=1)"),
        (httpx2.ConnectError("no route to host"), "(no network, or the hub failed)"),
        (requests.ConnectionError("no route to host"), "(no network, or the hub failed)"),
    ],
    ids=["gated", "missing", "revision", "offline", "httpx2", "requests"],
)  # fmt: skip
def test_hub_failures_become_one_line_naming_the_repo(error, expected):
    message = str(hub_error(REPO, hub_failure(error)))
    assert message.startswith(f"model {REPO}") or f"download model {REPO}" in message
    assert expected in message and "\n" not in message


def test_a_not_cached_error_is_offline_or_network_by_its_cause():
    offline = LocalEntryNotFoundError("not cached")
    offline.__cause__ = OfflineModeIsEnabled("offline")
    network = LocalEntryNotFoundError("not cached")
    network.__cause__ = httpx2.ConnectError("no route to host")
    assert (hub_failure(offline), hub_failure(network)) == ("offline", "network")
    assert hub_failure(ValueError("not a hub failure")) is None


def test_dataset_messages_name_data_path():
    message = str(hub_error("lmms-lab/VQAv2", "gated", kind="dataset"))
    assert (
        "dataset lmms-lab/VQAv2 is gated" in message
        and "https://huggingface.co/datasets/lmms-lab/VQAv2" in message
    )
    assert "point data.path at a local copy (a parquet dir or a save_to_disk dir)" in message


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_train_offline_with_an_empty_cache_ends_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result, _ = run_cli("train.py", ["model=paligemma-3b-pt-224", *FAST, *SYNTHETIC], tmp_path)
    last = assert_one_line_error(result, REPO)
    assert "model.path" in last and "not in the local Hugging Face cache" in last
