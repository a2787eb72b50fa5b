"""LightningDataModule over Hugging Face datasets: loading, splits, loaders, and the count of bad rows.

Train loaders yield ``TrainBatch``es, validation loaders ``ValBatch``es (paligemma/data/batches.py: their fields,
and what a batch without a good row holds). Bad rows (missing or undecodable image, missing question, empty
target, a prompt longer than ``max_length``) are dropped by the collate function (paligemma/data/rows.py), which
names them (and truncated targets) in the batch's ``stats``; ``on_before_batch_transfer`` counts them in the main
process (right with worker processes too), once per (split, row). ``on_bad_sample="raise"`` fails on the first bad
row with a ``DataError`` naming it. The train loader resumes mid-epoch from a checkpoint; each rank validates its
own rows, each row once (paligemma/data/sampler.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader

from paligemma.data.batches import TrainBatch, ValBatch
from paligemma.data.processors import Processor, load_processor
from paligemma.data.rows import Collate, Rows
from paligemma.data.sampler import EpochSampler, ResumableDataLoader, ShardSampler
from paligemma.data.settings import GENERATED_PATHS, DataSettings
from paligemma.data.sources import load_split, local_splits, split_error
from paligemma.data.synthetic import make_shapes_dataset
from paligemma.data.synthetic_pairs import make_pairs_dataset
from paligemma.data.synthetic_segmentation import make_segmentation_dataset
from paligemma.data.synthetic_video import make_clips_dataset
from paligemma.data.tasks import TASKS
from paligemma.data.video import pyav
from paligemma.errors import ConfigError, DataError
from paligemma.paths import is_hub_id, local_path

log = logging.getLogger(__name__)

# GENERATED_PATHS' generators, in its order: each is called with data.synthetic
SYNTHETIC: dict[str, Callable[..., datasets.DatasetDict]] = dict(
    zip(
        GENERATED_PATHS,
        (make_shapes_dataset, make_clips_dataset, make_pairs_dataset, make_segmentation_dataset),
        strict=True,
    )
)


def select_split(splits: datasets.DatasetDict, spec: str) -> datasets.Dataset:
    """``spec`` in the syntax of load_dataset(split=...): "train", "validation[:500]", "train[90%:]"."""
    available = {name: len(ds) for name, ds in splits.items()}
    try:
        instructions = datasets.ReadInstruction.from_spec(spec).to_absolute(available)
    except (ValueError, AssertionError) as error:
        raise split_error(spec, error) from None
    parts = [splits[p.splitname].select(range(p.from_, p.to)) for p in instructions]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


FIRST_ROWS = 32  # a split whose first rows are all bad stops the run before it trains on placeholders


def check_first_rows(rows: Rows, path: str) -> None:
    """A DataError naming the split and the first row's reason when none of the first ``FIRST_ROWS`` rows is good:
    a wrong column or a layout this code does not read, not a few bad rows (those are skipped)."""
    if len(rows) == 0:
        raise DataError(f"the {rows.split} split of {path!r} has no rows")
    first = min(len(rows), FIRST_ROWS)
    for row in range(first):
        if "error" not in rows[row]:
            return
    raise DataError(
        f"the first {first} rows of the {rows.split} split of {path!r} are all bad; row 0: "
        f"{rows[0]['error']} (check the data.*_column options, data.max_length and the dataset's layout)"
    )


def undecoded_images(data: datasets.Dataset, column: str) -> datasets.Dataset:
    """The image column, one image or a list of them per row, left undecoded: Rows decodes it, so that a bad
    image is one bad row."""
    feature = data.features[column]
    if isinstance(feature, datasets.Image):
        return data.cast_column(column, datasets.Image(decode=False))
    inner = getattr(feature, "feature", None)  # datasets.List / Sequence of images
    if isinstance(inner, datasets.Image):
        return data.cast_column(column, datasets.List(datasets.Image(decode=False)))
    return data


def undecoded_video(data: datasets.Dataset, column: str) -> datasets.Dataset:
    """A ``datasets.Video`` column left undecoded (paths or bytes): Rows reads its frames."""
    if isinstance(data.features[column], datasets.Video):
        return data.cast_column(column, datasets.Video(decode=False))
    return data


class PaliGemmaDataModule(L.LightningDataModule):
    """Captioning, VQA, prefix -> suffix or detection over ``datasets``, configured by :class:`DataSettings`: pass one, or its fields
    (as Hydra's ``data`` config does)."""

    def __init__(self, settings: DataSettings | None = None, /, **fields: Any):
        super().__init__()
        self.settings = settings if settings is not None else DataSettings(**fields)
        self._processor: Processor | None = None
        self._generated: datasets.DatasetDict | None = None  # synthetic, JSONL or COCO splits, made once
        self.train_data: Rows | None = None
        self.val_data: Rows | None = None
        self._skipped: set[tuple[str, int]] = set()
        self._truncated: set[tuple[str, int]] = set()

    @property
    def processor(self) -> Processor:
        if self._processor is None:
            s = self.settings
            self._processor = load_processor(
                s.processor_path, s.frame_token_pool, s.chat_template, **s.pan_and_scan_options
            )
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

    def _saved_dataset(self) -> Path | None:
        local = local_path(self.settings.path)
        return local if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file() else None

    def _load(self, split: str) -> datasets.Dataset:
        s = self.settings
        if s.path in SYNTHETIC:
            if self._generated is None:
                self._generated = SYNTHETIC[s.path](**s.synthetic)
            return select_split(self._generated, split)
        if (saved_dir := self._saved_dataset()) is not None:
            saved = datasets.load_from_disk(str(saved_dir))
            if isinstance(saved, datasets.Dataset):
                saved = datasets.DatasetDict({"train": saved})
            return select_split(saved, split)
        if self._generated is None and not is_hub_id(s.path):
            self._generated = local_splits(local_path(s.path))
        if self._generated is not None:
            return select_split(self._generated, split)
        return load_split(s.path, s.name, split)

    def prepare_data(self) -> None:
        """Download once per node before ``setup`` runs on every process."""
        if self.settings.path not in SYNTHETIC and self._saved_dataset() is None:
            for split in (self.settings.train_split, self.settings.val_split):
                self._load(split)

    def _check_columns(self, data: datasets.Dataset, split: str) -> None:
        for option, column in self.settings.columns.items():
            if column not in data.column_names:
                raise ConfigError(
                    f"{split} split of {self.settings.path!r} has no column {column!r} (data.{option}); "
                    f"available: {', '.join(data.column_names)}"
                )

    def _rows(self, split: str, limit: int | None, train: bool) -> Rows:
        data = self._load(split)
        self._check_columns(data, split)
        data = data.select_columns(list(self.settings.columns.values()))
        if limit is not None:
            data = data.select(range(min(limit, len(data))))
        if self.settings.video_column is not None:
            pyav()  # a missing decoder is one line here, not a bad row each
            data = undecoded_video(data, self.settings.video_column)
        else:
            data = undecoded_images(data, self.settings.image_column)
        if (prepare := TASKS[self.settings.task].prepare) is not None:
            data = prepare(data, self.settings)
        rows = Rows(data, split, self.settings, self.processor, train)
        check_first_rows(rows, self.settings.path)
        return rows

    def setup(self, stage: str | None = None) -> None:
        s = self.settings
        if stage in (None, "fit") and self.train_data is None:
            self.train_data = self._rows(s.train_split, s.max_train_samples, train=True)
        if stage in (None, "fit", "validate") and self.val_data is None:
            self.val_data = self._rows(s.val_split, s.max_val_samples, train=False)

    def _loader(self, rows: Rows, train: bool) -> DataLoader:
        s = self.settings
        options: dict[str, Any] = dict(
            collate_fn=Collate(self.processor, rows.split, train, s.max_length, s.packing),
            num_workers=s.workers,
            persistent_workers=s.workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
        replicas, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        if not train:  # its own generator: validating leaves torch's global RNG (dropout) untouched
            generator = torch.Generator().manual_seed(s.seed)
            sampler = ShardSampler(rows, num_replicas=replicas, rank=rank)
            batch_size = s.val_batch_size or s.batch_size
            return DataLoader(rows, sampler=sampler, batch_size=batch_size, generator=generator, **options)
        sampler = EpochSampler(rows, num_replicas=replicas, rank=rank, shuffle=True, seed=s.seed)
        return ResumableDataLoader(rows, sampler, seed=s.seed, batch_size=s.batch_size, **options)

    def train_dataloader(self) -> DataLoader:
        if self.train_data is None:
            self.setup("fit")
        assert self.train_data is not None  # setup made it
        return self._loader(self.train_data, train=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_data is None:
            self.setup("validate")
        assert self.val_data is not None  # setup made it
        return self._loader(self.val_data, train=False)

    def on_before_batch_transfer(
        self, batch: TrainBatch | ValBatch, dataloader_idx: int
    ) -> TrainBatch | ValBatch:
        """Count the collate function's skipped / truncated rows (``batch.stats``) in the main process."""
        for split, row, reason in batch.stats.skipped:
            if (split, row) not in self._skipped:
                self._skipped.add((split, row))
                log.warning("skipping %s row %d: %s", split, row, reason)
        if batch.stats.truncated and not self._truncated:
            log.warning(
                "targets longer than max_length=%d are truncated (count: .truncated)",
                self.settings.max_length,
            )
        self._truncated.update(batch.stats.truncated)
        return batch
