"""The synthetic segmentation set: deterministic, each mask the pixels of its named shape in the picture."""

import numpy as np

from paligemma.data.synthetic import COLORS
from paligemma.data.synthetic_segmentation import TWO_NAMES, make_segmentation_dataset


def test_rows_are_deterministic_and_each_mask_covers_its_named_shape():
    data = make_segmentation_dataset(num_train=40, num_val=8, image_size=64, seed=3)
    again = make_segmentation_dataset(num_train=40, num_val=8, image_size=64, seed=3)
    assert data["train"][:]["names"] == again["train"][:]["names"]
    assert data["train"].data.equals(again["train"].data)
    kinds = set(data["train"]["kind"])
    assert kinds == {"circle", "square", "triangle", TWO_NAMES}
    for row in data["train"]:
        picture = np.asarray(row["image"].convert("RGB")).astype(int)
        assert len(row["names"]) == len(row["mask"]) >= 1
        assert (row["kind"] == TWO_NAMES) == (len(set(row["names"])) == 2)
        for name, mask in zip(row["names"], row["mask"], strict=True):
            inside = np.asarray(mask) == 255
            colour = np.array(COLORS[name.split()[0]])
            assert inside.sum() > 20 and (np.abs(picture[inside] - colour).max(axis=1) == 0).all(), name


def test_train_and_validation_are_independent_draws():
    data = make_segmentation_dataset(num_train=8, num_val=8, seed=0)
    assert data["train"]["names"] != data["validation"]["names"]
