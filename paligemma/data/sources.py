"""Dataset splits from the hub or a local path, hub failures turned into one :class:`HubError` line.

Besides what ``datasets.load_dataset`` reads (parquet, arrow, imagefolder, ...), a local dir may hold

* JSONL-plus-images, as big_vision's fine-tuning configs and other tools write it: ``<split>.jsonl``, one
  ``{"image": "file.jpg", "prefix": "...", "suffix": "..."}`` per line, image paths relative to the dir
  (``"image": ["a.jpg", "b.jpg"]``: several pictures for the prompt);
* COCO-style detection annotations: ``<split>.json`` (images relative to the dir, or in ``<split>/``) or
  Roboflow's ``<split>/_annotations.coco.json`` (images beside it); each image becomes a row with ``image``
  (its path), ``image_id`` and ``objects`` ({"bbox": COCO's [x, y, width, height] in pixels, "category":
  names}).

A line that is not JSON becomes a row without an image: a bad row, skipped and counted like any other.

``datasets`` reports the hub's failures in its own words (a ConnectionError when offline and not cached,
DatasetNotFoundError for gated or missing repos, messages whose causes it drops); here they get the
message of a model path: which dataset, and what to do (a local copy in ``data.path``, go online, log in).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import datasets.config  # imported by datasets itself: named here for type checkers
from datasets.exceptions import DatasetNotFoundError

from paligemma.errors import ConfigError, one_line
from paligemma.paths import hub_error, hub_failure, is_hub_id, local_path


def split_error(spec: str, error: Exception) -> ConfigError:
    """A split spec ``datasets`` cannot serve (unknown name, bad syntax, no rows), as the options to change."""
    return ConfigError(
        f"split {spec!r}: {one_line(error)}; check data.train_split, data.val_split or eval.split"
    )


def is_split_error(error: Exception) -> bool:
    """What ``datasets`` raises for a split spec it cannot serve (its messages: "Unknown split", "Instruction
    ... corresponds to no data", "Unrecognized split format")."""
    return isinstance(error, ValueError | AssertionError) and any(
        word in str(error) for word in ("split", "Instruction")
    )


def load_split(path: str, name: str | None, split: str) -> datasets.Dataset:
    """``datasets.load_dataset(path, name, split=split)``: a local ``path`` with ``~`` expanded, a hub id
    downloaded or read from the cache."""
    try:
        return datasets.load_dataset(path if is_hub_id(path) else str(local_path(path)), name, split=split)
    except Exception as error:
        if is_split_error(error):
            raise split_error(split, error) from None
        reason = dataset_failure(error) if is_hub_id(path) else None
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


NOT_ANNOTATIONS = {"dataset_dict.json", "state.json", "dataset_info.json"}  # save_to_disk's own files


def local_splits(directory: Path) -> datasets.DatasetDict | None:
    """The JSONL or COCO splits of a local dir, or None when it holds neither."""
    if not directory.is_dir():
        return None
    if jsonl := sorted(
        p for p in directory.glob("*.jsonl") if p.name != "metadata.jsonl"
    ):  # not imagefolder's
        return datasets.DatasetDict({path.stem: _jsonl_split(path) for path in jsonl})
    coco = {path.stem: path for path in directory.glob("*.json") if path.name not in NOT_ANNOTATIONS}
    coco |= {path.parent.name: path for path in directory.glob("*/_annotations.coco.json")}
    found = {split: _coco_split(path, directory / split) for split, path in sorted(coco.items())}
    splits: dict[str | datasets.NamedSplit, datasets.Dataset] = {  # DatasetDict's key type
        split: data for split, data in found.items() if data is not None
    }
    return datasets.DatasetDict(splits) if splits else None


def _json_or_empty(line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return row if isinstance(row, dict) else {}


def _jsonl_split(path: Path) -> datasets.Dataset:
    rows = [_json_or_empty(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    listed = {key for row in rows for key, value in row.items() if isinstance(value, list)}
    for row in rows:
        if isinstance(row.get("image"), str):
            row["image"] = str(path.parent / row["image"])
        elif isinstance(row.get("image"), list):  # several pictures for one prompt
            row["image"] = [str(path.parent / p) if isinstance(p, str) else p for p in row["image"]]
        for key in listed & row.keys():  # "x" beside ["a", "b"] in one column: every value a list
            row[key] = row[key] if isinstance(row[key], list) or row[key] is None else [row[key]]
    return datasets.Dataset.from_list(rows)


def _coco_split(path: Path, split_dir: Path) -> datasets.Dataset | None:
    """One row per image of a COCO annotations file; None if the file is not one."""
    coco = json.loads(path.read_text(encoding="utf-8"))
    if not (isinstance(coco, dict) and "images" in coco and "annotations" in coco):
        return None
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    objects = {image["id"]: {"bbox": [], "category": []} for image in coco["images"]}
    for a in coco["annotations"]:
        if a["image_id"] in objects and not a.get("iscrowd", 0):
            objects[a["image_id"]]["bbox"].append([float(v) for v in a["bbox"]])
            objects[a["image_id"]]["category"].append(names.get(a["category_id"], str(a["category_id"])))

    def image_path(name: str) -> str:
        beside = path.parent / name
        return str(beside if beside.exists() or not (split_dir / name).exists() else split_dir / name)

    features = datasets.Features(
        {
            "image": datasets.Value("string"),
            "image_id": datasets.Value("string"),
            "objects": {
                "bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                "category": datasets.Sequence(datasets.Value("string")),
            },
        }
    )
    rows = {
        "image": [image_path(image["file_name"]) for image in coco["images"]],
        "image_id": [str(image["id"]) for image in coco["images"]],
        "objects": [objects[image["id"]] for image in coco["images"]],
    }
    return datasets.Dataset.from_dict(rows, features=features)
