"""Synthetic pairs: deterministic, balanced questions that the two pictures together answer."""

import datasets
import pytest

from paligemma.data.synthetic_pairs import CHANGES, KINDS, make_pairs_dataset
from paligemma.errors import ConfigError
from tests.helpers import IMAGE_SIZE, NUM_IMAGE_TOKENS, batches, drawn, from_config


@pytest.fixture(scope="module")
def pairs():
    return make_pairs_dataset(num_train=60, num_val=6, image_size=64, seed=0)


def answer_from_pixels(kind: str, first: set, second: set) -> str:
    if kind == "more":
        assert len(first) != len(second)
        return "first" if len(first) > len(second) else "second"
    ((color, shape, cell),), ((new_color, new_shape, new_cell),) = first - second, second - first
    changed = [name for name, a, b in zip(CHANGES, (color, shape, cell), (new_color, new_shape, new_cell), strict=True)
               if a != b]  # fmt: skip
    assert len(changed) == 1, (first, second)
    return changed[0]


def test_the_two_pictures_decide_each_answer(pairs):
    answers = {kind: [] for kind in KINDS}
    for row in pairs["train"]:
        first, second = (drawn(picture) for picture in row["frames"])
        assert answer_from_pixels(row["kind"], first, second) == row["answer"] == row["answers"][0]
        answers[row["kind"]].append(row["answer"])
    assert {k: len(v) for k, v in answers.items()} == {"more": 30, "differ": 30}
    assert set(answers["more"]) == {"first", "second"} and set(answers["differ"]) == set(CHANGES)


def test_pairs_are_deterministic_and_splits_differ(pairs):
    raw = datasets.List(datasets.Image(decode=False))
    again = make_pairs_dataset(num_train=60, num_val=6, image_size=64, seed=0)
    pngs = {}
    for split in ("train", "validation"):
        a, b = pairs[split].cast_column("frames", raw), again[split].cast_column("frames", raw)
        assert a[:] == b[:]
        pngs[split] = {frame["bytes"] for row in a["frames"] for frame in row}
    assert not pngs["train"] & pngs["validation"]
    with pytest.raises(ConfigError, match="data.synthetic.image_size must be at least 16"):
        make_pairs_dataset(2, 2, image_size=8)


def test_data_module_batches_both_pictures(processor_dir):
    dm = from_config("synthetic_pairs", processor_dir, **{"synthetic.num_train": 4, "synthetic.num_val": 4,
                                                          "synthetic.image_size": 32, "batch_size": 4})  # fmt: skip
    dm.setup("fit")
    (train,) = batches(dm, dm.train_dataloader())
    assert train.inputs.pixel_values.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert ((train.inputs.input_ids == dm.processor.image_token_id).sum(1) == 2 * NUM_IMAGE_TOKENS).all()
    (val,) = batches(dm, dm.val_dataloader())
    assert sorted(set(val.kinds)) == sorted(KINDS)
