"""Segmentation rows: each object's codes computed once, when a split is prepared, by the VQ-VAE from the crop of
its mask; bad objects make named bad rows; a file-backed split keeps its codes in the datasets cache."""

import datasets
import numpy as np
import pytest
import torch

from paligemma.data.masks import encoder_input, from_rle
from paligemma.data.segmentation import prepare
from paligemma.data.segments import parse_segments
from paligemma.data.settings import DataSettings
from paligemma.data.tasks import TASKS
from paligemma.model.mask_vae import MaskVAE
from tests.helpers import png, random_mask_vae

W, H = 48, 32


def picture() -> dict:
    from PIL import Image

    return {"bytes": png(Image.new("RGB", (W, H), "white")), "path": None}


def box_mask(x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


ROWS = [  # (names, masks, boxes (x, y, width, height) or None, the error the row gives)
    (["cat", "dog"], [box_mask(2, 3, 20, 30), box_mask(25, 0, 48, 10)], None, ""),
    ("cat", box_mask(5, 5, 9, 9), [4.0, 4.0, 6.0, 6.0], ""),
    (["cat"], [np.zeros((H, W), dtype=np.uint8)], None, "object 0: empty mask"),
    (["cat", "dog"], [box_mask(2, 3, 20, 30), box_mask(25, 0, 48, 10)], [[0, 0, 10, 10], [60, 0, 10, 10]],
     "object 1: box [60.0, 0.0, 70.0, 10.0] (x0, y0, x1, y1) lies outside the 48x32 picture"),
    (["cat"], [np.ones((8, 8), dtype=np.uint8)], None, "object 0: mask is 8x8 px, its picture 48x32"),
    (["cat", "dog"], [box_mask(2, 3, 20, 30)], None, "2 names for 1 masks"),
]  # fmt: skip


@pytest.fixture(scope="module")
def vae_path(tmp_path_factory):
    return random_mask_vae(tmp_path_factory.mktemp("vae") / "vae.safetensors")


def rows_dataset() -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "image": [picture() for _ in ROWS],
            "names": [names if isinstance(names, list) else [names] for names, *_ in ROWS],
            # one object per row as a list too: datasets stores a column of one type
            "mask": [
                [m.tolist() for m in (masks if isinstance(masks, list) else [masks])] for _, masks, *_ in ROWS
            ],
            "box": [None if b is None else (b if isinstance(b[0], list) else [b]) for *_, b, _ in ROWS],
        }
    )


def settings(vae_path, **fields) -> DataSettings:
    return DataSettings(path="x", task="segmentation", mask_vae=str(vae_path), **fields)


def test_each_object_is_encoded_from_its_crop_and_bad_objects_name_the_row(vae_path):
    data = rows_dataset()
    prepared = prepare(data, settings(vae_path))
    # without the box column, row 3's boxes are its masks'
    assert prepared["seg_error"] == ["", "", ROWS[2][3], "", ROWS[4][3], ROWS[5][3]]
    vae = MaskVAE.from_pretrained(vae_path)
    row = prepared[0]
    objects = [parse_segments(text).segments[0] for text in row["seg_objects"]]
    crops = torch.stack([encoder_input(m.astype(np.float32), b) for m, b in
                         zip(ROWS[0][1], [(2, 3, 20, 30), (25, 0, 48, 10)], strict=True)])  # fmt: skip
    assert [o.codes for o in objects] == [tuple(c) for c in vae.encode(crops).tolist()]
    np.testing.assert_allclose(objects[0].box[:4], (3 / H, 2 / W, 30 / H, 20 / W), atol=0.5 / 1023)
    np.testing.assert_array_equal(from_rle(row["seg_masks"][1]), ROWS[0][1][1].astype(bool))


def test_a_box_column_gives_the_boxes_and_one_outside_the_picture_is_a_bad_row(vae_path):
    prepared = prepare(rows_dataset(), settings(vae_path, box_column="box"))
    assert prepared["seg_error"][3] == ROWS[3][3]
    box = parse_segments(prepared[1]["seg_objects"][0]).segments[0].box
    np.testing.assert_allclose(box[:4], (4 / H, 4 / W, 10 / H, 10 / W), atol=0.5 / 1023)


def test_a_bad_row_is_reported_by_its_task_as_a_value_error(vae_path):
    prepared = prepare(rows_dataset(), settings(vae_path))
    with pytest.raises(ValueError, match="object 0: empty mask"):
        TASKS["segmentation"].row_fields(prepared[2], settings(vae_path), (W, H), None, None)


def test_a_file_backed_split_keeps_its_codes_in_the_cache_and_a_new_vae_recomputes_them(vae_path, tmp_path):
    rows_dataset().save_to_disk(str(tmp_path / "data"))
    data = datasets.load_from_disk(str(tmp_path / "data"))
    first = prepare(data, settings(vae_path))
    again = prepare(data, settings(vae_path))
    assert (
        first.cache_files[0]["filename"]
        == again.cache_files[0]["filename"]
        != data.cache_files[0]["filename"]
    )
    other = random_mask_vae(tmp_path / "other.safetensors", seed=1)
    assert prepare(data, settings(other)).cache_files[0]["filename"] != first.cache_files[0]["filename"]


def test_referring_rows_draw_an_expression_in_training_and_take_the_first_in_validation(vae_path):
    import random

    data = datasets.Dataset.from_dict(
        {
            "image": [picture()],
            "expression": [["the big one", "left cat", "cat"]],
            "mask": [box_mask(2, 3, 20, 30).tolist()],
        }
    )
    s = DataSettings(path="x", task="referring_segmentation", mask_vae=str(vae_path))
    row = prepare(data, s)[0]
    fields = TASKS["referring_segmentation"].row_fields
    assert fields(row, s, (W, H), None, None)[0] == {"expression": "the big one"}
    drawn = {fields(row, s, (W, H), None, random.Random(seed))[0]["expression"] for seed in range(20)}
    assert drawn == {"the big one", "left cat", "cat"}
    assert fields(row, s, (W, H), None, None)[1] == row["seg_objects"]  # the tokens alone, no name
