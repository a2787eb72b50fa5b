"""Rows with Gemma 3's pan & scan: the pictures keep their shape for the crops, max_length and packing count the
crops' image tokens, previews stay small."""

import re

import pytest

from tests.data.test_packing import rows_of, same_rows
from tests.helpers import VQAV2_FEATURES, batches, from_config, noise, png, vqav2_rows, write_parquet

# Even rows' pictures are 40 x 30 (ratio 1.33): two 20 x 30 crops once crops of 8 px are allowed; odd rows' are
# square: no crops.
PAN_AND_SCAN = {"pan_and_scan": True, "pan_and_scan_min_crop_size": 8}


@pytest.fixture
def vqa(tmp_path, tiny_gemma3_chat_checkpoint):
    """VQA datamodules of the tiny Gemma 3 (32 px, 4 tokens an image) on 8 rows, of 40 x 30 and 30 x 30 pictures."""
    rows = vqav2_rows(8)
    rows["image"][1::2] = [{"bytes": png(noise((30, 30), seed=i)), "path": None} for i in range(4)]
    path = write_parquet(
        tmp_path / "vqa", {"train": (rows, VQAV2_FEATURES), "validation": (rows, VQAV2_FEATURES)}
    )

    def make(**overrides):
        dm = from_config(
            "vqa", tiny_gemma3_chat_checkpoint, path=str(path), batch_size=8, num_workers=0, **overrides
        )
        dm.setup("fit")
        return dm

    return make


def test_pan_and_scan_rows_keep_their_pictures_and_crop_the_wide_ones(vqa):
    dm = vqa(**PAN_AND_SCAN)
    assert [dm.train_data[row]["images"][0].size for row in (0, 1)] == [(40, 30), (30, 30)]
    (batch,) = batches(dm, dm.train_dataloader())
    n_tokens = dm.processor.num_image_tokens
    assert batch.inputs.pixel_values.shape[0] == 4 * 3 + 4
    assert sorted(batch.inputs.token_type_ids.sum(1).tolist()) == [n_tokens] * 4 + [3 * n_tokens] * 4
    plain = batches(vqa(), vqa().train_dataloader())[0]
    assert (
        plain.inputs.pixel_values.shape[0] == 8
        and plain.inputs.token_type_ids.sum(1).tolist() == [n_tokens] * 8
    )
    (val,) = batches(dm, dm.val_dataloader())
    assert val.inputs.pixel_values.shape[0] == val.prompt.pixel_values.shape[0] == 4 * 3 + 4
    assert all(max(im.size) <= dm.processor.image_size for im in val.images)


def test_packed_rows_carry_their_crops(vqa):
    packed_dm, plain_dm = (
        vqa(packing=True, max_length=256, **PAN_AND_SCAN),
        vqa(max_length=256, **PAN_AND_SCAN),
    )
    (packed,), (plain,) = (
        batches(packed_dm, packed_dm.train_dataloader()),
        batches(plain_dm, plain_dm.train_dataloader()),
    )
    assert packed.inputs.input_ids.shape[0] < 8 and packed.inputs.pixel_values.shape[0] == 4 * 3 + 4
    processor = packed_dm.processor
    assert same_rows(rows_of(packed, processor), rows_of(plain, processor))


def test_max_length_counts_the_crops_tokens(vqa):
    """A max_length that holds a row without its crops is too short with them: the row is bad, and says why."""
    dm = vqa()
    prompt = dm.train_data[0]["prompt"]
    fits = {"max_length": dm.processor.prompt_length(prompt, 1) + 2}
    assert vqa(**fits).train_data[0]["prompt"] == prompt
    cropped = vqa(**fits, **PAN_AND_SCAN)
    reason = r"\(1 picture \+ 2 pan & scan crops\) x 4 image tokens .* over; .* lower data.pan_and_scan_max_num_crops"
    assert re.search(reason, cropped.train_data[0]["error"])
    assert "error" not in cropped.train_data[1]  # square: no crops
