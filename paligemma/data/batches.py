"""The batches the loaders hand the LightningModule: a ``TrainBatch`` per training step, a ``ValBatch`` per
validation step (paligemma/data/rows.py's ``Collate`` makes them), their tensors in ``ModelInputs``.

No row: a batch counts its good rows in ``rows``. The collate function drops bad rows and the ``None`` fillers
that end a shorter validation shard (paligemma/data/sampler.py), so a batch may hold none: ``rows == 0``. Its
inputs are then one blank placeholder row (a black picture, an empty prompt and target) and its per-row lists are
empty: every rank still runs its forward and backward passes, the collectives of DDP and FSDP, and the module
gives the batch no weight and no record.

Lightning moves a batch to the device field by field (``apply_to_collection`` walks dataclasses that are not
frozen), leaving strings and pictures as they are; a DataLoader with ``pin_memory=True`` pins a batch through its
``pin_memory()``, as torch does for any type of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from PIL import Image

from paligemma.data.masks import RunLengthMask


@dataclass
class ModelInputs:
    """Token rows and their pictures, as the network's forward and ``generate`` take them.

    input_ids, attention_mask, token_type_ids: (B, T); pixel_values: (N, 3, H, W), every picture of the batch (and
    its pan & scan crops), row after row. Gemma 4's processor gives ``mm_token_type_ids`` (B, T) instead of
    ``token_type_ids``, its pictures as patch rows, pixel_values (N, P, 3 p^2), with their ``image_position_ids``
    (N, P, 2); the fields a processor does not give are None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None = field(default=None, kw_only=True)
    pixel_values: torch.Tensor | None = field(default=None, kw_only=True)
    mm_token_type_ids: torch.Tensor | None = field(default=None, kw_only=True)
    image_position_ids: torch.Tensor | None = field(default=None, kw_only=True)

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        """The tensors by field name, those that are None left out: ``net(**inputs.as_kwargs())``."""
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name)) is not None}

    def pin_memory(self):
        """These inputs (of this class) in pinned memory."""
        return replace(self, **{name: tensor.pin_memory() for name, tensor in self.as_kwargs().items()})


@dataclass
class LossInputs(ModelInputs):
    """Right-padded rows with their targets: ``labels`` (B, T), the target's tokens and -100 elsewhere;
    ``segment_ids`` (B, T), packed rows (paligemma/data/packing.py) numbered 1, 2, ... in each sequence, 0 on
    padding (None: not packed)."""

    labels: torch.Tensor = field(kw_only=True)
    segment_ids: torch.Tensor | None = field(default=None, kw_only=True)


@dataclass
class RowStats:
    """What one collate call saw: the rows it dropped as bad, (split, row, reason), and the rows whose target it
    cut to fit ``max_length``, (split, row). The data module counts them in the main process."""

    skipped: list[tuple[str, int, str]] = field(default_factory=list)
    truncated: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class TrainBatch:
    """A training step's rows: ``inputs`` (packed with ``data.packing``), ``rows`` good rows in them."""

    inputs: LossInputs
    rows: int
    stats: RowStats

    def pin_memory(self) -> TrainBatch:
        return replace(self, inputs=self.inputs.pin_memory())


@dataclass
class ValBatch:
    """A validation step's rows: ``inputs`` for the loss (the target: the most common reference), ``prompt`` the
    left-padded prompts for ``generate``, and per good row its references, kind (the kind column, else the task
    name), prompt text, row in the loaded split and preview (its pictures side by side, each at most the model's
    input size, for a predictions table); segmentation rows also give their objects' masks (COCO RLE at the
    picture's resolution: what ``val/miou`` scores against)."""

    inputs: LossInputs
    prompt: ModelInputs
    references: list[list[str]]
    kinds: list[str]
    prompts: list[str]
    row_ids: list[int]
    images: list[Image.Image]
    stats: RowStats
    masks: list[list[RunLengthMask]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.row_ids)

    def pin_memory(self) -> ValBatch:
        return replace(self, inputs=self.inputs.pin_memory(), prompt=self.prompt.pin_memory())
