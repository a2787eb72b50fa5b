"""Rows of one split: a row's pictures, prompt and references, or the reason it is bad; and their collation.

A row's image cell holds one image or a list of them (a ``Sequence(Image())`` column, a parquet list, a JSONL
list of paths); an empty list, or any image in it that does not decode, makes the row bad.

What a row's prompt and references are is its task's (paligemma/data/tasks.py). The target (suffix) is one
reference answer or caption. Training draws one reference per row per epoch, seeded by (seed, epoch, row) -- with VQAv2's 10 annotator
answers this samples by frequency; validation scores against all references and computes the loss on the
most common one (first on ties): for VQAv2, its ``multiple_choice_answer`` up to ties.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from typing import Any, overload

import datasets
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from paligemma.data.batches import LossInputs, ModelInputs, RowStats, TrainBatch, ValBatch
from paligemma.data.packing import pack_batch
from paligemma.data.processor import to_rgb
from paligemma.data.processors import Processor
from paligemma.data.settings import DataSettings
from paligemma.data.tasks import TASKS
from paligemma.data.video import read_frames
from paligemma.errors import DataError


def describe(error: Exception) -> str:
    """Why a row is bad: our own reasons (ValueError) as they are, anything else with its type."""
    return str(error) if type(error) is ValueError else f"{type(error).__name__}: {error}"


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


def open_images(value: Any) -> list[Image.Image]:
    """The RGB pictures of an image cell: one image, or a list of them in order."""
    cells = list(value) if isinstance(value, list | tuple) else [value]
    if not cells:
        raise ValueError("empty list of images")
    images = []
    for i, cell in enumerate(cells):
        try:
            images.append(to_rgb(open_image(cell)))
        except Exception as error:
            if len(cells) == 1:
                raise
            raise ValueError(f"image {i} of {len(cells)}: {describe(error)}") from error
    return images


def too_long(n_prompt: int, n_pictures: int, n_crops: int, image_tokens: int, s: DataSettings) -> str:
    """Why a prompt does not fit data.max_length, by how much, and what to change."""
    over = n_prompt + 1 - (s.max_length or 0)
    text = n_prompt - (n_pictures + n_crops) * image_tokens
    blocks = f"{n_pictures} picture{'s' if n_pictures > 1 else ''}"
    if n_crops:
        blocks = f"({blocks} + {n_crops} pan & scan crop{'s' if n_crops > 1 else ''})"
    pictures = f"{blocks} x {image_tokens} image tokens + {text} more"
    fewer = "data.num_frames" if s.video_column else "fewer pictures per row"
    return (
        f"prompt of {n_prompt} tokens ({pictures}) leaves no room in max_length={s.max_length} for the target: "
        f"{over} over; raise data.max_length"
        + (f" or use {fewer}" if n_pictures > 1 else "")
        + (" or lower data.pan_and_scan_max_num_crops" if n_crops else "")
    )


def preview(images: list[Image.Image], size: int) -> Image.Image:
    """A row's pictures side by side, each at most ``size`` px a side, for a predictions table."""
    return strip([im if max(im.size) <= size else ImageOps.contain(im, (size, size)) for im in images])


def strip(images: list[Image.Image]) -> Image.Image:
    """A row's pictures side by side, for a predictions table (one picture: itself)."""
    if len(images) == 1:
        return images[0]
    out = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)))
    for i, im in enumerate(images):
        out.paste(im, (sum(other.width for other in images[:i]), 0))
    return out


def category_names(data: datasets.Dataset, column: str) -> list[str] | None:
    """The class names of a ClassLabel ``category`` inside the objects column (hub detection sets), else None."""
    feature = data.features[column]
    category = feature.get("category") if isinstance(feature, dict) else None
    # datasets >= 4: a Sequence is a List, which declares the ``feature`` that the Sequence class does not
    if isinstance(feature, datasets.Sequence) and isinstance(feature.feature, dict):  # pyright: ignore[reportAttributeAccessIssue] -- see above
        category = feature.feature.get("category")  # pyright: ignore[reportAttributeAccessIssue] -- see above. A sequence of dicts: stored as a dict of lists
    label = getattr(category, "feature", category)
    return label.names if isinstance(label, datasets.ClassLabel) else None


class Rows(Dataset):
    """One split: decodes an image and builds the prompt and references of a row, or reports it bad."""

    def __init__(
        self,
        data: datasets.Dataset,
        split: str,
        settings: DataSettings,
        processor: Processor,
        train: bool,
    ):
        self.data, self.split, self.settings, self.processor, self.train = (
            data,
            split,
            settings,
            processor,
            train,
        )
        self.task = TASKS[settings.task]
        self.class_names = category_names(data, settings.objects_column) if self.task.class_names else None

    def __len__(self) -> int:
        return len(self.data)

    @overload
    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, key: None) -> None: ...
    def __getitem__(self, key: int | tuple[int, int] | None) -> dict[str, Any] | None:
        if key is None:  # a filler that evens out the ranks' shards (ShardSampler): no row, Collate drops it
            return None
        row, epoch = key if isinstance(key, tuple) else (key, 0)
        try:
            return self._sample(row, epoch)
        except Exception as error:  # any failure on a row makes it a bad row, never a dead loader
            reason = describe(error)
            if self.settings.on_bad_sample == "raise":
                raise DataError(f"bad {self.split} row {row}: {reason}") from error
            return {"row": row, "error": reason}

    def _sample(self, row: int, epoch: int) -> dict[str, Any]:
        item, s = self.data[row], self.settings
        column = s.video_column or s.image_column
        try:
            images = (
                read_frames(item[column], s.num_frames, s.fps)
                if s.video_column
                else open_images(item[column])
            )
        except Exception as error:
            raise ValueError(f"{describe(error)} in column {column!r}") from error
        draw = random.Random(f"{s.seed}:{epoch}:{row}") if self.train else None
        fields, refs = self.task.row_fields(item, s, images[0].size, self.class_names, draw)
        prompt = (s.prompt or self.task.prompt).format(lang=s.lang, **fields)
        if not refs:
            raise ValueError(f"missing or empty target in column {getattr(s, self.task.columns[-1])!r}")
        if s.max_length is not None:
            crops = self.processor.crop_counts(images)
            n_prompt = self.processor.prompt_length(prompt, len(images), crops)
            if n_prompt + 1 > s.max_length:  # no room left for the target's <eos>
                raise ValueError(
                    too_long(n_prompt, len(images), sum(crops), self.processor.num_image_tokens, s)
                )
        target = refs[draw.randrange(len(refs))] if draw else Counter(refs).most_common(1)[0][0]
        # Resize here, exactly as the processor would (it then finds nothing left to do), so a failure is this
        # row's; pan & scan crops the original pictures.
        if self.processor.pan_and_scan is None:
            size = (self.processor.image_size, self.processor.image_size)
            images = [image.resize(size, resample=self.processor.resample) for image in images]
        kind = str(item[s.kind_column]) if s.kind_column else s.task
        return {
            "row": row,
            "images": images,
            "prompt": prompt,
            "target": target,
            "references": refs,
            "kind": kind,
            "masks": list(
                item.get("seg_masks") or []
            ),  # segmentation: the objects' masks (paligemma/data/segmentation.py)
        }


class Collate:
    """Drops bad rows and shard fillers, runs the processor on the rest: a ``TrainBatch`` or a ``ValBatch`` whose
    ``stats`` name the skipped and truncated rows (paligemma/data/batches.py, which says what a batch without a
    good row holds). ``packing`` (training, with ``max_length``) packs a batch's rows into fewer sequences
    (paligemma/data/packing.py).
    """

    def __init__(
        self,
        processor: Processor,
        split: str,
        train: bool,
        max_length: int | None,
        packing: bool = False,
    ):
        self.processor, self.split, self.train, self.max_length = processor, split, train, max_length
        self.packing = packing

    def processor_rows(
        self, good: list[dict[str, Any]]
    ) -> tuple[list[str], list[list[Image.Image]], list[str]]:
        """The prompts, pictures and targets the processor runs on: the good rows', else the placeholder row's."""
        if good:
            return [it["prompt"] for it in good], [it["images"] for it in good], [it["target"] for it in good]
        size = (self.processor.image_size, self.processor.image_size)
        return [""], [[Image.new("RGB", size)]], [""]

    def __call__(self, items: list[dict[str, Any] | None]) -> TrainBatch | ValBatch:
        present = [it for it in items if it is not None]
        good = [it for it in present if "error" not in it]
        prompts, images, targets = self.processor_rows(good)
        batch = self.processor(
            text=prompts, images=images, suffix=targets, max_length=self.max_length, return_lengths=True
        )
        del batch["prompt_lengths"]
        truncated = batch.pop("truncated").tolist()[: len(good)]  # none for the placeholder
        stats = RowStats(
            skipped=[(self.split, it["row"], it["error"]) for it in present if "error" in it],
            truncated=[(self.split, it["row"]) for it, cut in zip(good, truncated, strict=True) if cut],
        )
        if self.train:
            if self.packing:
                assert self.max_length is not None  # DataSettings checks that packing has one
                # each pan & scan crop is an image block of its row too
                n_images = [len(ims) + sum(self.processor.crop_counts(ims)) for ims in images]
                batch = pack_batch(batch, n_images, self.max_length, self.processor.pad_token_id)
            return TrainBatch(LossInputs(**batch), rows=len(good), stats=stats)
        return ValBatch(
            inputs=LossInputs(**batch),
            prompt=ModelInputs(**self.processor(text=prompts, images=images, padding_side="left")),
            references=[it["references"] for it in good],
            kinds=[it["kind"] for it in good],
            prompts=[it["prompt"] for it in good],
            row_ids=[it["row"] for it in good],
            images=[preview(it["images"], self.processor.image_size) for it in good],
            masks=[it["masks"] for it in good],
            stats=stats,
        )
