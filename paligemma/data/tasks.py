"""One record per task: its prompt, the columns it reads, how a row becomes prompt fields and references, and the
metric that scores it. Adding a task is adding a ``Task`` to ``TASKS`` (and its test).

Prompts follow big_vision's PaliGemma transfers: captioning ``caption {lang}``, VQA ``answer {lang} {question}``,
detection ``detect a ; b`` (targets: paligemma/data/boxes.py), prefix_suffix the row's prefix; ``data.prompt`` is
a template instead. A reference column may hold a string, a list of strings, or a list of dicts with an
``answer`` / ``caption`` / ``text`` key (VQAv2's ``answers``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from paligemma.data import segmentation
from paligemma.data.boxes import detection_example, relative_box
from paligemma.data.segments import TOKENS_PER_OBJECT

if TYPE_CHECKING:
    import datasets

    from paligemma.data.settings import DataSettings

REFERENCE_KEYS = ("answer", "caption", "text", "raw")  # where a dict-shaped reference keeps its string
# (row, settings, picture size (w, h), class names of integer categories or None, the row's draw in training or
# None in validation) -> (prompt fields, references)
RowFields = Callable[
    [dict, "DataSettings", tuple[int, int], "list[str] | None", "random.Random | None"],
    tuple[dict, list[str]],
]
# a split -> the split with what the task computes once per row (its prepared columns)
Prepare = Callable[["datasets.Dataset", "DataSettings"], "datasets.Dataset"]
# The tokens of one segmented object: its loc and seg tokens, a name of up to four tokens and " ; "
TOKENS_PER_SEGMENT = TOKENS_PER_OBJECT + 4 + 2
# The tokens of one box of a detection answer: four <locNNNN>, a class name of up to two tokens, and " ; " (two
# tokens in the tiny base's vocabulary: "▁;" and the "▁" before the next <locNNNN>)
TOKENS_PER_BOX = 8


@dataclass(frozen=True)
class Task:
    """``prompt``: the template, of ``{lang}`` and ``prompt_field`` (None: no field of the row). ``columns``: the
    ``DataSettings`` options naming the columns it reads, the target's last. ``metric``: what validation scores
    unless ``data.metric`` names another (a key of paligemma.training.scoring.METRICS). ``row_fields``: a row's
    prompt fields and references. ``answer_tokens``: the most tokens validation generates for an answer
    (``generation.max_new_tokens: null``), or for each part of it that the ``answer_parts`` option counts.
    ``class_names``: it reads the ClassLabel names of its objects column. ``prepare``: what it computes once per
    row of a split before training (the segmentation tasks' mask codes), or None."""

    name: str
    prompt: str
    prompt_field: str | None
    columns: tuple[str, ...]
    metric: str
    row_fields: RowFields
    answer_tokens: int
    answer_parts: str | None = None
    class_names: bool = False
    prepare: Prepare | None = None

    def answer_length(self, settings: DataSettings) -> int:
        """The most tokens an answer takes: ``answer_tokens``, times the ``answer_parts`` option's value."""
        return self.answer_tokens * (getattr(settings, self.answer_parts) if self.answer_parts else 1)


def references(value: Any) -> list[str]:
    """A target cell as a list of non-empty strings: str, list[str], list[dict] or dict of lists."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, dict):
        return references(next((value[k] for k in REFERENCE_KEYS if k in value), None))
    return [ref for item in value for ref in references(item)]


def _text(item: dict, column: str, what: str) -> str:
    value = item[column]
    if not (isinstance(value, str) and value.strip()):
        raise ValueError(f"missing {what} in column {column!r}")
    return value.strip()


def _vqa(item: dict, s: DataSettings, size, labels, draw) -> tuple[dict, list[str]]:
    return {"question": _text(item, s.question_column, "question")}, references(item[s.answer_column])


def _caption(item: dict, s: DataSettings, size, labels, draw) -> tuple[dict, list[str]]:
    return {}, references(item[s.caption_column])


def _prefix_suffix(item: dict, s: DataSettings, size, labels, draw) -> tuple[dict, list[str]]:
    return {"prefix": _text(item, s.prefix_column, "prefix")}, references(item[s.suffix_column])


def _detection(item: dict, s: DataSettings, size: tuple[int, int], labels: list[str] | None, draw):
    """The picture's classes, and its boxes as loc tokens + class name (paligemma/data/boxes.py). ``labels``:
    the names of integer categories (a ClassLabel feature)."""
    objects = item[s.objects_column] or {}
    bboxes, names = objects.get("bbox") or [], objects.get("category") or []
    if len(bboxes) != len(names):
        raise ValueError(f"{len(bboxes)} boxes for {len(names)} categories in column {s.objects_column!r}")
    if not bboxes:
        return {"classes": ""}, []
    width, height = size
    names = [labels[n] if labels is not None else str(n) for n in names]
    boxes = [relative_box(b, width, height, s.box_format, n) for b, n in zip(bboxes, names, strict=True)]
    prompt, target = detection_example(boxes)
    return {"classes": prompt.removeprefix("detect ")}, [target]


TASKS = {
    task.name: task
    for task in (
        Task("vqa", "answer {lang} {question}", "question", ("question_column", "answer_column"), "vqa_accuracy",
             _vqa, 16),
        Task("caption", "caption {lang}", None, ("caption_column",), "cider", _caption, 32),
        Task("prefix_suffix", "{prefix}", "prefix", ("prefix_column", "suffix_column"), "exact_match",
             _prefix_suffix, 16),
        # {classes}: the class names of the picture, sorted, joined by " ; "
        Task("detection", "detect {classes}", "classes", ("objects_column",), "map", _detection, TOKENS_PER_BOX,
             answer_parts="max_objects", class_names=True),
        # {names}: the names of the objects to segment, sorted, joined by " ; " (paligemma/data/segmentation.py)
        Task("segmentation", "segment {names}", "names", ("names_column", "mask_column"), "segmentation",
             segmentation.mix_fields, TOKENS_PER_SEGMENT, answer_parts="max_objects", prepare=segmentation.prepare),
        Task("referring_segmentation", "{expression}", "expression", ("expression_column", "mask_column"),
             "segmentation", segmentation.referring_fields, TOKENS_PER_OBJECT, prepare=segmentation.prepare),
    )
}  # fmt: skip
