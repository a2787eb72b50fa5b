"""Every option of the data pipeline, in one place: ``data.*`` in the Hydra config (whose defaults these are)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASKS = ("vqa", "caption")


@dataclass
class DataSettings:
    """Captioning or VQA over a Hugging Face dataset.

    ``path``: a hub id, a local data dir (parquet, arrow, imagefolder, ...), a ``save_to_disk`` dir, or
    "synthetic" (``make_shapes_dataset(**synthetic)``). Splits take load_dataset's slicing
    ("train[:95%]"); a saved single Dataset is the split "train". ``max_*_samples`` keep the first rows.
    ``processor_path``: the model dir (or hub id) holding the tokenizer and image settings.
    """

    path: str
    task: str = "vqa"
    processor_path: str = "assets/tiny-paligemma"
    name: str | None = None  # the hub dataset's config name, if it has several
    image_column: str = "image"
    question_column: str = "question"
    answer_column: str = "answers"  # a string, a list of strings or a list of {"answer": ...} dicts
    caption_column: str = "caption"  # a string or a list of strings
    kind_column: str | None = None  # e.g. a question-type column, for per-kind metrics
    train_split: str = "train"
    val_split: str = "validation"
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    batch_size: int = 8
    val_batch_size: int | None = None  # None: batch_size
    num_workers: int = 0
    max_length: int | None = None  # cap on prompt + target tokens; longer targets are cut, <eos> kept
    seed: int = 0
    on_bad_sample: str = "skip"  # or "raise"
    synthetic: dict[str, Any] = field(default_factory=dict)  # make_shapes_dataset's arguments

    @property
    def target_column(self) -> str:
        return self.answer_column if self.task == "vqa" else self.caption_column

    @property
    def columns(self) -> dict[str, str]:
        """The columns this task reads, by option name."""
        wanted = {"image_column": self.image_column}
        if self.task == "vqa":
            wanted |= {"question_column": self.question_column, "answer_column": self.answer_column}
        else:
            wanted["caption_column"] = self.caption_column
        if self.kind_column is not None:
            wanted["kind_column"] = self.kind_column
        return wanted
