"""data.packing: first-fit bins, packed batches holding exactly the unpacked batch's rows and images, resuming
and DDP shards as unpacked, bad and too-long rows as unpacked."""

import random
from types import SimpleNamespace

import pytest
import torch

from paligemma.data.batches import TrainBatch
from paligemma.data.packing import first_fit_decreasing, pack_rows
from paligemma.data.settings import DataSettings
from paligemma.errors import ConfigError, DataError
from tests.helpers import awkward_and_bad_rows, batches, from_config

MAX_LENGTH = 128  # 2 or 3 caption rows of 34 to 52 tokens
CAPTIONS = {"synthetic.num_train": 24, "synthetic.num_val": 8, "synthetic.image_size": 32, "batch_size": 8,
            "max_length": MAX_LENGTH}  # fmt: skip


def test_first_fit_decreasing_fills_bins_in_order_of_length():
    assert first_fit_decreasing([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    assert first_fit_decreasing([9, 2], 8) == [[0], [1]]  # too long for a bin: one of its own


@pytest.mark.parametrize("seed", range(5))
def test_packed_rows_fit_max_length_and_never_pad_more_than_unpacked(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(20, 120) for _ in range(rng.randint(1, 40))]
    bins = pack_rows(lengths, 256)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    fullest = max(sum(lengths[i] for i in b) for b in bins)
    assert fullest <= 256 and len(bins) * fullest <= len(lengths) * max(lengths)


def rows_of(batch: TrainBatch, processor) -> list[dict]:
    """The rows of a batch, unpadded (a packed batch: its segments, in order): tokens, labels, types, images."""
    spans, inputs = [], batch.inputs
    if inputs.segment_ids is not None:
        for b, ids in enumerate(inputs.segment_ids.tolist()):
            spans += [(b, ids.index(s), ids.count(s)) for s in range(1, max(ids) + 1)]
    else:
        spans = [(b, 0, n) for b, n in enumerate(inputs.attention_mask.sum(1).tolist())]
    out, image = [], 0
    for b, start, n in spans:
        row = {
            k: getattr(inputs, k)[b, start : start + n].tolist()
            for k in ("input_ids", "token_type_ids", "labels")
        }
        n_images = row["input_ids"].count(processor.image_token_id) // processor.num_image_tokens
        row["pixel_values"] = inputs.pixel_values[image : image + n_images]
        image += n_images
        out.append(row)
    assert image == len(inputs.pixel_values)
    return out


def same_rows(packed: list[dict], rows: list[dict]) -> bool:
    key = lambda row: row["input_ids"]  # noqa: E731
    packed, rows = sorted(packed, key=key), sorted(rows, key=key)
    return len(packed) == len(rows) and all(
        p["input_ids"] == r["input_ids"]
        and p["token_type_ids"] == r["token_type_ids"]
        and p["labels"] == r["labels"]
        and torch.equal(p["pixel_values"], r["pixel_values"])
        for p, r in zip(packed, rows, strict=True)
    )


@pytest.fixture(params=["processor_dir", "tiny_gemma3_chat_checkpoint"])
def captions(request):
    """Caption datamodules of a PaliGemma's or a Gemma 3's processor."""

    def make(**overrides):
        processor = request.getfixturevalue(request.param)
        dm = from_config("synthetic_captions", processor, **(CAPTIONS | overrides))
        dm.setup("fit")
        return dm

    return make


def test_packed_batches_hold_the_unpacked_rows_in_fewer_sequences(captions):
    packed_dm, plain_dm = captions(packing=True), captions()
    packed, plain = (
        batches(packed_dm, packed_dm.train_dataloader()),
        batches(plain_dm, plain_dm.train_dataloader()),
    )
    assert len(packed) == len(plain) == 3
    for p, u in zip(packed, plain, strict=True):
        assert u.inputs.segment_ids is None and p.rows == u.rows == 8
        assert p.inputs.input_ids.shape[0] < 8 and p.inputs.input_ids.shape[1] <= MAX_LENGTH
        assert p.inputs.input_ids.numel() <= u.inputs.input_ids.numel()
        assert torch.equal(p.inputs.attention_mask.bool(), p.inputs.segment_ids > 0)
        processor = packed_dm.processor
        assert same_rows(rows_of(p, processor), rows_of(u, processor))
    assert all(b.inputs.segment_ids is None for b in batches(packed_dm, packed_dm.val_dataloader()))


def test_too_long_targets_are_cut_as_unpacked(captions):
    short = 32  # prompts of 27 tokens: most targets are cut, <eos> kept
    packed_dm, plain_dm = captions(packing=True, max_length=short), captions(max_length=short)
    packed, plain = (
        batches(packed_dm, packed_dm.train_dataloader()),
        batches(plain_dm, plain_dm.train_dataloader()),
    )
    assert packed_dm.truncated == plain_dm.truncated > 0
    processor, eos = packed_dm.processor, packed_dm.processor.eos_token_id
    for p, u in zip(packed, plain, strict=True):
        rows = rows_of(p, processor)
        assert same_rows(rows, rows_of(u, processor))
        assert all(len(r["input_ids"]) <= short and r["input_ids"][-1] == eos for r in rows)


def test_packed_loader_resumes_mid_epoch_to_the_same_batches(captions):
    dm = captions(packing=True)
    whole = batches(dm, dm.train_dataloader())
    interrupted = dm.train_dataloader()
    first = next(iter(interrupted))
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batches": 1}
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    rest = batches(dm, resumed)
    for got, expected in zip([dm.on_before_batch_transfer(first, 0), *rest], whole, strict=True):
        got_inputs, expected_inputs = got.inputs.as_kwargs(), expected.inputs.as_kwargs()
        assert got_inputs.keys() == expected_inputs.keys() and got.rows == expected.rows
        assert all(torch.equal(got_inputs[k], expected_inputs[k]) for k in got_inputs)


def test_ddp_ranks_take_as_many_packed_batches(captions):
    counts = []
    for rank in range(3):  # 24 rows in shards of 8 per rank, batches of 3
        dm = captions(packing=True, batch_size=3)
        dm.trainer = SimpleNamespace(world_size=3, global_rank=rank)
        counts.append(len(batches(dm, dm.train_dataloader())))
    assert counts == [3, 3, 3]


def test_bad_rows_are_skipped_or_raise_as_unpacked(tmp_path, processor_dir):
    from paligemma.data.datamodule import PaliGemmaDataModule

    awkward_and_bad_rows().save_to_disk(tmp_path)
    settings = dict(path=str(tmp_path), processor_path=str(processor_dir), batch_size=4, max_length=80)
    dm = PaliGemmaDataModule(**settings, packing=True)
    dm.setup("fit")
    train = batches(dm, dm.train_dataloader())
    assert sum(b.rows for b in train) == 7 and dm.skipped == 4
    strict = PaliGemmaDataModule(**settings, packing=True, on_bad_sample="raise")
    strict.setup("fit")
    with pytest.raises(DataError, match=r"bad train row (7|8|9|10)"):
        batches(strict, strict.train_dataloader())


def test_packing_needs_max_length():
    with pytest.raises(ConfigError, match="data.packing=true needs data.max_length"):
        DataSettings(path="synthetic", packing=True)
