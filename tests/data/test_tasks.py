"""Each Task record holds together: its prompt formats with its field, its columns are DataSettings options, its
metric is one validation can compute, and a row of its columns gives the prompt and references it promises."""

import dataclasses

import pytest

from paligemma.data.settings import DataSettings
from paligemma.data.tasks import TASKS, references
from paligemma.training.scoring import METRICS

ROWS = {  # a row of each task's default columns, and the prompt and references it gives
    "vqa": ({"question": "what colour?", "answers": [{"answer": "red"}, {"answer": "red"}]},
            "answer en what colour?", ["red", "red"]),
    "caption": ({"caption": ["a red circle", " "]}, "caption en", ["a red circle"]),
    "prefix_suffix": ({"prefix": "ocr", "suffix": "hello"}, "ocr", ["hello"]),
    "detection": ({"objects": {"bbox": [[0, 0, 10, 20]], "category": [0]}}, "detect cat",
                  ["<loc0000><loc0000><loc1023><loc0512> cat"]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_task_record_reads_its_columns_into_its_prompt_and_references(name):
    task = TASKS[name]
    options = {f.name for f in dataclasses.fields(DataSettings)}
    assert set(task.columns) <= options and task.metric in METRICS
    settings = DataSettings(path="x", task=name)
    assert list(settings.columns) == ["image_column", *task.columns]
    row, prompt, refs = ROWS[name]
    fields, got = task.row_fields(row, settings, (20, 20), ["cat"] if task.class_names else None)
    assert set(fields) == ({task.prompt_field} if task.prompt_field else set())
    assert task.prompt.format(lang="en", **fields) == prompt and got == refs


def test_references_take_strings_lists_and_dicts():
    assert references(" a ") == ["a"]
    assert references([{"answer": "x"}, {"caption": "y"}, " ", None]) == ["x", "y"]
    assert references({"text": ["p", "q"]}) == ["p", "q"]
