"""The typed batches: Lightning moves every tensor and leaves texts and pictures alone; pinning pins every tensor."""

import lightning as L
import pytest
import torch

from paligemma.data.batches import LossInputs, TrainBatch, ValBatch
from tests.helpers import batches, from_config


@pytest.fixture
def train_and_val(processor_dir) -> tuple[TrainBatch, ValBatch]:
    dm = from_config("synthetic", processor_dir, **{"synthetic.num_train": 4, "synthetic.num_val": 4})
    dm.setup("fit")
    (train,) = batches(dm, dm.train_dataloader())
    (val,) = batches(dm, dm.val_dataloader())
    return train, val


def tensors(batch: TrainBatch | ValBatch) -> list[torch.Tensor]:
    prompt = batch.prompt.as_kwargs() if isinstance(batch, ValBatch) else {}
    return [*batch.inputs.as_kwargs().values(), *prompt.values()]


def test_lightning_moves_every_tensor_and_keeps_texts_and_pictures(train_and_val):
    train, val = train_and_val
    move = L.LightningModule().transfer_batch_to_device  # what the trainer calls, here to the meta device
    moved_train, moved_val = move(train, torch.device("meta"), 0), move(val, torch.device("meta"), 0)
    assert isinstance(moved_train, TrainBatch) and isinstance(moved_val, ValBatch)
    assert isinstance(moved_train.inputs, LossInputs) and len(tensors(moved_val)) == 9
    assert all(t.is_meta for t in tensors(moved_train) + tensors(moved_val))
    assert moved_train.rows == train.rows == 4 and moved_train.stats == train.stats
    texts = lambda b: (b.rows, b.row_ids, b.kinds, b.prompts, b.references, b.stats)  # noqa: E731
    assert texts(moved_val) == texts(val) and val.rows == 4
    assert all(a is b for a, b in zip(moved_val.images, val.images, strict=True))


def test_pin_memory_pins_every_tensor(train_and_val, monkeypatch):
    """What a DataLoader with ``pin_memory=True`` calls on a batch of its own type (here without a GPU: every
    tensor's ``pin_memory`` is a stand-in that records what it returns)."""
    pinned = []

    def pin(tensor: torch.Tensor) -> torch.Tensor:
        pinned.append(tensor.clone())
        return pinned[-1]

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    for batch in train_and_val:
        out = batch.pin_memory()
        assert type(out) is type(batch) and out.stats == batch.stats and out.rows == batch.rows
        assert [id(t) for t in tensors(out)] == [id(t) for t in pinned[-len(tensors(batch)) :]]
        assert all(torch.equal(a, b) for a, b in zip(tensors(out), tensors(batch), strict=True))


def test_gemma4_processor_outputs_fill_the_optional_fields(tmp_path):
    """Gemma 4's processor gives mm_token_type_ids and image_position_ids, no token_type_ids: the inputs hold what
    it gives and hand on exactly that (Gemma4ForConditionalGeneration takes each by its name)."""
    import numpy as np
    from PIL import Image

    from paligemma.data.batches import ModelInputs
    from paligemma.data.gemma4_files import GEMMA4_TOKENS, save_gemma4_processor_files
    from paligemma.data.gemma4_processor import Gemma4Processor
    from paligemma.data.tokenizer import build_tokenizer

    corpus = ["a cat on a mat", "what is in the image?", "two"] * 30
    save_gemma4_processor_files(
        tmp_path, build_tokenizer(corpus, vocab_size=360, special_tokens=GEMMA4_TOKENS)
    )
    processor = Gemma4Processor.from_pretrained(tmp_path)
    image = Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8))
    out = processor(text=["a cat", "two"], images=[[image], [image]], suffix=["on a mat", "two"])
    inputs = LossInputs(**out)
    kwargs = inputs.as_kwargs()
    assert "token_type_ids" not in kwargs and inputs.token_type_ids is None
    assert torch.equal(kwargs["mm_token_type_ids"], out["mm_token_type_ids"])
    assert torch.equal(kwargs["image_position_ids"], out["image_position_ids"])
    prompt = ModelInputs(**processor(text=["a cat"], images=[[image]], padding_side="left"))
    assert set(prompt.as_kwargs()) == {
        "input_ids", "attention_mask", "pixel_values", "mm_token_type_ids", "image_position_ids"
    }  # fmt: skip
