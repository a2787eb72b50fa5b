"""LightningDataModule over Hugging Face datasets: task templates, lazy image decoding, bad rows.

Prompts follow big_vision's PaliGemma transfers: captioning ``caption en``, VQA ``answer en {question}``;
the target (suffix) is one reference answer or caption. A reference column may hold a string, a list of
strings, or a list of dicts with an ``answer`` / ``caption`` / ``text`` key (VQAv2's ``answers``).
Training draws one reference per row per epoch, seeded by (seed, epoch, row) -- with VQAv2's 10 annotator
answers this samples by frequency; validation scores against all references and computes the loss on the
most common one (first on ties): for VQAv2, its ``multiple_choice_answer`` up to ties.

Train batches are the processor's dict (right padded, with labels). Validation batches are::

    {"batch":      training-style dict for the loss (suffix = most common reference),
     "prompt":     prompt-only dict, left padded, for generate(): input_ids, attention_mask,
                   token_type_ids, pixel_values,
     "references": list[list[str]], "kinds": list[str] (the kind column, else the task name),
     "prompts":    list[str] (prefix text), "row_ids": list[int] (row in the loaded split),
     "images":     list[PIL.Image] (RGB at the model's input size, for a predictions table)}

Bad rows (missing or undecodable image, missing question, empty target, a prompt longer than
``max_length``) are dropped by the collate function, which reports them (and truncated targets) under
a "stats" key; the data module's ``on_before_batch_transfer`` removes it and counts them in the main
process (right with worker processes too), once per (split, row).
A batch whose rows are all bad becomes ``None``: Lightning skips a ``None`` training batch itself;
``validation_step`` must return early on ``None``. ``on_bad_sample="raise"`` fails on the first bad row
with a ``DataError`` naming it. The train loader resumes mid-epoch from a checkpoint (paligemma/resumable.py).
"""

from __future__ import annotations

import io
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from paligemma.checks import ConfigError, DataError
from paligemma.processing import PaliGemmaProcessor, to_rgb
from paligemma.resumable import EpochSampler, ResumableDataLoader
from paligemma.synthetic import make_shapes_dataset

log = logging.getLogger(__name__)

PREFIXES = {"caption": "caption en", "vqa": "answer en {question}"}
REFERENCE_KEYS = ("answer", "caption", "text", "raw")  # where a dict-shaped reference keeps its string


def references(value: Any) -> list[str]:
    """A target cell as a list of non-empty strings: str, list[str], list[dict] or dict of lists."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, dict):
        return references(next((value[k] for k in REFERENCE_KEYS if k in value), None))
    return [ref for item in value for ref in references(item)]


def open_image(value: Any) -> Image.Image:
    """Decode a cell of an undecoded Image column ({"bytes", "path"}), raw bytes, a path or a PIL image."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        raise ValueError("missing image")
    if isinstance(value, bytes):
        value = io.BytesIO(value)
    image = value if isinstance(value, Image.Image) else Image.open(value)
    image.load()
    return image


def select_split(splits: datasets.DatasetDict, spec: str) -> datasets.Dataset:
    """``spec`` in the syntax of load_dataset(split=...): "train", "validation[:500]", "train[90%:]"."""
    available = {name: len(ds) for name, ds in splits.items()}
    parts = [
        splits[p.splitname].select(range(p.from_, p.to))
        for p in datasets.ReadInstruction.from_spec(spec).to_absolute(available)
    ]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


class _Rows(Dataset):
    """One split: decodes an image and builds the prompt and references of a row, or reports it bad."""

    def __init__(self, data: datasets.Dataset, split: str, dm: PaliGemmaDataModule, train: bool):
        self.data, self.split, self.train = data, split, train
        self.task, self.seed, self.strict = dm.task, dm.seed, dm.on_bad_sample == "raise"
        self.image_column = dm.image_column
        self.question_column = dm.question_column
        self.kind_column = dm.kind_column
        self.target_column = dm.answer_column if dm.task == "vqa" else dm.caption_column
        self.processor, self.max_length = dm.processor, dm.max_length

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        row, epoch = key if isinstance(key, tuple) else (key, 0)
        try:
            return self._sample(row, epoch)
        except Exception as error:  # any failure on a row makes it a bad row, never a dead loader
            reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            if self.strict:
                raise DataError(f"bad {self.split} row {row}: {reason}") from error
            return {"row": row, "error": reason}

    def _sample(self, row: int, epoch: int) -> dict[str, Any]:
        item = self.data[row]
        question = item[self.question_column] if self.task == "vqa" else None
        if self.task == "vqa" and not (isinstance(question, str) and question.strip()):
            raise ValueError(f"missing question in column {self.question_column!r}")
        prompt = PREFIXES[self.task].format(question=question.strip() if question else "")
        refs = references(item[self.target_column])
        if not refs:
            raise ValueError(f"missing or empty target in column {self.target_column!r}")
        if self.max_length is not None:  # image tokens + <bos> + prefix + "\n", then at least <eos>
            text = self.processor.tokenizer.encode(prompt + "\n", add_special_tokens=False)
            n_prompt = self.processor.num_image_tokens + 1 + len(text)
            if n_prompt + 1 > self.max_length:
                raise ValueError(
                    f"prompt of {n_prompt} tokens leaves no room in max_length={self.max_length}"
                )
        if self.train:
            target = refs[random.Random(f"{self.seed}:{epoch}:{row}").randrange(len(refs))]
        else:
            target = Counter(refs).most_common(1)[0][0]
        # Convert and resize here, exactly as the processor would (it then finds nothing left to do), so a
        # failure is this row's and validation can return small preview images.
        size = (self.processor.image_size, self.processor.image_size)
        image = to_rgb(open_image(item[self.image_column])).resize(size, resample=self.processor.resample)
        kind = str(item[self.kind_column]) if self.kind_column else self.task
        return {
            "row": row,
            "image": image,
            "prompt": prompt,
            "target": target,
            "references": refs,
            "kind": kind,
        }


class _Collate:
    """Drops bad rows; runs the processor; reports skipped and truncated rows under "stats"."""

    def __init__(self, processor: PaliGemmaProcessor, split: str, train: bool, max_length: int | None):
        self.processor, self.split, self.train, self.max_length = processor, split, train, max_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        good = [it for it in items if "error" not in it]
        stats = {
            "skipped": [(self.split, it["row"], it["error"]) for it in items if "error" in it],
            "truncated": [],
        }
        if not good:
            return {"stats": stats}
        images = [it["image"] for it in good]
        prompts = [it["prompt"] for it in good]
        targets = [it["target"] for it in good]
        batch = self.processor(text=prompts, images=images, suffix=targets, max_length=self.max_length)
        if self.max_length is not None:  # the processor cut a suffix when fewer of its tokens remain
            suffixes = [t + self.processor.eos_token for t in targets]
            full = self.processor.tokenizer.encode_batch(suffixes, add_special_tokens=False)
            kept = batch["token_type_ids"].sum(1).tolist()
            stats["truncated"] = [
                (self.split, it["row"]) for it, f, k in zip(good, full, kept, strict=True) if k < len(f)
            ]
        if self.train:
            return {**batch, "stats": stats}
        return {
            "batch": batch,
            "prompt": self.processor(text=prompts, images=images, padding_side="left"),
            "references": [it["references"] for it in good],
            "kinds": [it["kind"] for it in good],
            "prompts": prompts,
            "row_ids": [it["row"] for it in good],
            "images": images,
            "stats": stats,
        }


class PaliGemmaDataModule(L.LightningDataModule):
    """Captioning or VQA over ``datasets``: a hub id, a local data dir (parquet, arrow, imagefolder, ...),
    a ``save_to_disk`` dir, or "synthetic" (``make_shapes_dataset(**synthetic)``). Split names accept
    load_dataset's slicing ("train[:95%]"); a saved single Dataset is the split "train". ``max_*_samples``
    keep the first rows. ``processor_path`` is the model dir holding the tokenizer and image settings."""

    def __init__(
        self,
        path: str,
        task: str = "vqa",
        processor_path: str = "assets/tiny-paligemma",
        name: str | None = None,
        image_column: str = "image",
        question_column: str = "question",
        answer_column: str = "answers",
        caption_column: str = "caption",
        kind_column: str | None = None,
        train_split: str = "train",
        val_split: str = "validation",
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        max_length: int | None = None,
        seed: int = 0,
        on_bad_sample: str = "skip",
        synthetic: dict | None = None,
    ):
        super().__init__()
        if task not in PREFIXES:
            raise ConfigError(f"data.task must be one of {sorted(PREFIXES)}, got {task!r}")
        if on_bad_sample not in ("skip", "raise"):
            raise ConfigError(f"data.on_bad_sample must be 'skip' or 'raise', got {on_bad_sample!r}")
        self.path, self.task, self.processor_path, self.name = str(path), task, str(processor_path), name
        self.image_column, self.kind_column, self.caption_column = image_column, kind_column, caption_column
        self.question_column, self.answer_column = question_column, answer_column
        self.train_split, self.val_split = train_split, val_split
        self.max_train_samples, self.max_val_samples = max_train_samples, max_val_samples
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.max_length, self.seed = num_workers, max_length, seed
        self.on_bad_sample, self.synthetic = on_bad_sample, synthetic or {}
        self._processor: PaliGemmaProcessor | None = None
        self._generated: datasets.DatasetDict | None = None  # the synthetic splits, made once
        self.train_data: _Rows | None = None
        self.val_data: _Rows | None = None
        self._skipped: set[tuple[str, int]] = set()
        self._truncated: set[tuple[str, int]] = set()

    @property
    def processor(self) -> PaliGemmaProcessor:
        if self._processor is None:
            self._processor = PaliGemmaProcessor.from_pretrained(self.processor_path)
        return self._processor

    @property
    def skipped(self) -> int:
        """Distinct (split, row) pairs skipped as bad so far."""
        return len(self._skipped)

    @property
    def truncated(self) -> int:
        """Distinct (split, row) pairs whose target was cut to fit ``max_length`` so far."""
        return len(self._truncated)

    def state_dict(self) -> dict[str, Any]:
        """The rows skipped and truncated so far: checkpoints carry them, so a resumed run counts the whole run."""
        return {"skipped": sorted(self._skipped), "truncated": sorted(self._truncated)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._skipped = {tuple(key) for key in state_dict.get("skipped", [])}
        self._truncated = {tuple(key) for key in state_dict.get("truncated", [])}

    def _is_saved_dataset(self) -> bool:
        local = Path(self.path).expanduser()
        return (local / "dataset_dict.json").is_file() or (local / "state.json").is_file()

    def _load(self, split: str) -> datasets.Dataset:
        if self.path == "synthetic":
            if self._generated is None:
                self._generated = make_shapes_dataset(**self.synthetic)
            return select_split(self._generated, split)
        if self._is_saved_dataset():
            saved = datasets.load_from_disk(str(Path(self.path).expanduser()))
            if isinstance(saved, datasets.Dataset):
                saved = datasets.DatasetDict(train=saved)
            return select_split(saved, split)
        return datasets.load_dataset(self.path, self.name, split=split)

    def prepare_data(self) -> None:
        """Download once per node before ``setup`` runs on every process."""
        if self.path != "synthetic" and not self._is_saved_dataset():
            for split in (self.train_split, self.val_split):
                datasets.load_dataset(self.path, self.name, split=split)

    def _check_columns(self, data: datasets.Dataset, split: str) -> list[str]:
        wanted = {"image_column": self.image_column, "kind_column": self.kind_column}
        if self.task == "vqa":
            wanted |= {"question_column": self.question_column, "answer_column": self.answer_column}
        else:
            wanted["caption_column"] = self.caption_column
        for option, column in wanted.items():
            if column is not None and column not in data.column_names:
                raise ConfigError(
                    f"{split} split of {self.path!r} has no column {column!r} (data.{option}); "
                    f"available: {', '.join(data.column_names)}"
                )
        return [c for c in wanted.values() if c is not None]

    def _rows(self, split: str, limit: int | None, train: bool) -> _Rows:
        data = self._load(split)
        data = data.select_columns(self._check_columns(data, split))
        if limit is not None:
            data = data.select(range(min(limit, len(data))))
        if isinstance(data.features[self.image_column], datasets.Image):
            data = data.cast_column(self.image_column, datasets.Image(decode=False))  # decode in _Rows
        return _Rows(data, split, self, train)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_data is None:
            self.train_data = self._rows(self.train_split, self.max_train_samples, train=True)
        if stage in (None, "fit", "validate") and self.val_data is None:
            self.val_data = self._rows(self.val_split, self.max_val_samples, train=False)

    def _loader(self, rows: _Rows, train: bool) -> DataLoader:
        options = dict(
            collate_fn=_Collate(self.processor, rows.split, train, self.max_length),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
        if not train:  # its own generator: validating leaves torch's global RNG (dropout) untouched
            generator = torch.Generator().manual_seed(self.seed)
            return DataLoader(rows, batch_size=self.val_batch_size, generator=generator, **options)
        replicas, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = EpochSampler(rows, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed)
        return ResumableDataLoader(rows, sampler, seed=self.seed, batch_size=self.batch_size, **options)

    def train_dataloader(self) -> DataLoader:
        if self.train_data is None:
            self.setup("fit")
        return self._loader(self.train_data, train=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_data is None:
            self.setup("validate")
        return self._loader(self.val_data, train=False)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the collate function's skipped / truncated rows in the main process; empty batch -> None."""
        if not (isinstance(batch, dict) and "stats" in batch):
            return batch
        stats = batch.pop("stats")
        for split, row, reason in stats["skipped"]:
            if (split, row) not in self._skipped:
                self._skipped.add((split, row))
                log.warning("skipping %s row %d: %s", split, row, reason)
        if stats["truncated"] and not self._truncated:
            log.warning(
                "targets longer than max_length=%d are truncated (count: .truncated)", self.max_length
            )
        self._truncated.update(stats["truncated"])
        return batch or None
