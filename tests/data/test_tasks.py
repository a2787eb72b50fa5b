"""Each Task record holds together: its prompt formats with its field, its columns are DataSettings options, its
metric is one validation can compute, and a row of its columns gives the prompt and references it promises."""

import dataclasses

import pytest
from tokenizers import Tokenizer

from paligemma.data.boxes import detection_example, relative_box
from paligemma.data.settings import DataSettings
from paligemma.data.synthetic import SHAPES
from paligemma.data.tasks import TASKS, TOKENS_PER_BOX, references
from paligemma.training.scoring import METRICS
from tests.helpers import ROOT

LOCS, SEGS = "<loc0000><loc0000><loc1023><loc0512>", "<seg007>" * 16
ROWS = {  # a row of each task's default columns, and the prompt and references it gives
    "vqa": ({"question": "what colour?", "answers": [{"answer": "red"}, {"answer": "red"}]},
            "answer en what colour?", ["red", "red"]),
    "caption": ({"caption": ["a red circle", " "]}, "caption en", ["a red circle"]),
    "prefix_suffix": ({"prefix": "ocr", "suffix": "hello"}, "ocr", ["hello"]),
    "detection": ({"objects": {"bbox": [[0, 0, 10, 20]], "category": [0]}}, "detect cat",
                  ["<loc0000><loc0000><loc1023><loc0512> cat"]),
    # the prepared columns of paligemma/data/segmentation.py
    "segmentation": ({"names": ["dog", "cat"], "seg_objects": [LOCS + SEGS, LOCS + SEGS], "seg_error": ""},
                     "segment cat ; dog", [f"{LOCS}{SEGS} dog ; {LOCS}{SEGS} cat"]),
    "referring_segmentation": ({"expression": ["the left dog", "dog"], "seg_objects": [LOCS + SEGS],
                                "seg_error": ""}, "the left dog", [LOCS + SEGS]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_task_record_reads_its_columns_into_its_prompt_and_references(name):
    task = TASKS[name]
    options = {f.name for f in dataclasses.fields(DataSettings)}
    assert set(task.columns) <= options and task.metric in METRICS
    assert task.answer_tokens > 0 and task.answer_parts in options | {None}
    settings = DataSettings(path="x", task=name)
    assert list(settings.columns) == ["image_column", *task.columns]
    row, prompt, refs = ROWS[name]
    fields, got = task.row_fields(row, settings, (20, 20), ["cat"] if task.class_names else None, None)
    assert set(fields) == ({task.prompt_field} if task.prompt_field else set())
    assert task.prompt.format(lang="en", **fields) == prompt and got == refs


def test_boxes_fit_their_tokens_in_the_tiny_base_vocabulary():
    """A synthetic picture's three boxes and its <eos>, in the embedded tiny base's tokens, fit the detection
    answer's length for three objects."""
    tokenizer = Tokenizer.from_file(str(ROOT / "assets/tiny-paligemma/tokenizer.json"))
    _, target = detection_example([relative_box([0, 0, 10, 20], 64, 64, "xywh", name) for name in SHAPES])
    tokens = len(tokenizer.encode(target, add_special_tokens=False).ids) + 1
    length = TASKS["detection"].answer_length(DataSettings(path="x", max_objects=3))
    assert tokens <= length == 3 * TOKENS_PER_BOX


def test_references_take_strings_lists_and_dicts():
    assert references(" a ") == ["a"]
    assert references([{"answer": "x"}, {"caption": "y"}, " ", None]) == ["x", "y"]
    assert references({"text": ["p", "q"]}) == ["p", "q"]


def test_segments_fit_their_tokens_in_the_tiny_base_vocabulary():
    """Three named objects of the synthetic segmentation set and the <eos> fit the answer's length for three."""
    tokenizer = Tokenizer.from_file(str(ROOT / "assets/tiny-paligemma/tokenizer.json"))
    target = " ; ".join(
        f"{LOCS}{SEGS} {name}" for name in ("purple triangle", "yellow square", "cyan circle")
    )
    tokens = len(tokenizer.encode(target, add_special_tokens=False).ids) + 1
    assert tokens <= TASKS["segmentation"].answer_length(DataSettings(path="x", max_objects=3))
    assert TASKS["referring_segmentation"].answer_length(DataSettings(path="x")) == 20
