"""Packed rows (segment_ids): no token attends across segments, positions restart, and a packed batch gives the
unpacked batch's logits, loss and LoRA gradients, on PaliGemma 1 and 2 (a window shorter than a segment) and on
Gemma 3 (images mid-text, a window shorter than an image)."""

import pytest
import torch

from paligemma import Gemma3Config, Gemma3ForConditionalGeneration, PaliGemmaConfig
from paligemma.data.packing import pack_batch
from paligemma.model.lora import LoraSettings, add_lora
from paligemma.model.vision_language import token_positions
from paligemma.tiny import random_batch, random_gemma3_batch
from tests.helpers import SMALL_CONFIGS, hf_reference, ours_from_hf, randomize_
from tests.model import test_gemma3

# 5 rows of 1 to 3 images into sequences of at most MAX_LENGTH tokens: several segments per sequence
PREFIX_LENS, SUFFIX_LENS, IMAGES = [3, 7, 1, 5, 2], [4, 2, 6, 3, 5], [1, 2, 1, 3, 1]
# The same rows as Gemma 3 prompts: text and images interleaved
GEMMA3_PROMPTS = [
    [3, "image"],
    ["image", 2, "image", 1],
    [1, "image"],
    ["image", "image", 1, "image"],
    ["image", 2],
]
FAMILIES = {"mqa": "paligemma", "gemma2": "paligemma", "window3": "gemma3", "gemma3-mqa": "gemma3"}


@pytest.fixture(params=sorted(FAMILIES))
def config(request) -> PaliGemmaConfig | Gemma3Config:
    if FAMILIES[request.param] == "gemma3":
        return Gemma3Config.from_dict(test_gemma3.GEMMA3_CONFIGS[request.param.removeprefix("gemma3-")])
    return PaliGemmaConfig.from_dict(SMALL_CONFIGS[request.param])


def random_model(config):
    """Ours, with every parameter of transformers' randomised model."""
    if isinstance(config, Gemma3Config):
        return test_gemma3.ours_from_hf(test_gemma3.hf_reference(config))
    return ours_from_hf(hf_reference(config))


def rows_and_packed(config, seed: int = 0) -> tuple[dict, dict]:
    if isinstance(config, Gemma3Config):
        rows = random_gemma3_batch(config, GEMMA3_PROMPTS, SUFFIX_LENS, seed=seed)
    else:
        rows = random_batch(config, PREFIX_LENS, SUFFIX_LENS, seed=seed, images_per_row=IMAGES)
    lengths = rows["attention_mask"].sum(1)
    packed = pack_batch(rows, IMAGES, int(lengths.sum()) // 2, config.text_config.pad_token_id)
    assert packed["input_ids"].shape[0] < len(IMAGES) and (packed["segment_ids"] > 1).any()  # really packed
    return rows, packed


def segments(packed: dict) -> list[tuple[int, slice]]:
    """(packed sequence, slice) of every segment, in packing order."""
    out = []
    for b, ids in enumerate(packed["segment_ids"].tolist()):
        for segment in range(1, max(ids) + 1):
            start = ids.index(segment)
            out.append((b, slice(start, start + ids.count(segment))))
    return out


def row_of(rows: dict, packed: dict, b: int, span: slice) -> int:
    """The unpacked row that a segment holds."""
    ids = packed["input_ids"][b, span]
    return next(r for r in range(len(IMAGES)) if torch.equal(rows["input_ids"][r, : len(ids)], ids))


SEGMENT_IDS = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])


def test_positions_restart_at_every_segment():
    valid = (SEGMENT_IDS > 0).long()
    positions = token_positions(valid, SEGMENT_IDS, first=1)
    assert positions.tolist() == [[1, 2, 3, 1, 2, 1, 1, 1], list(range(1, 9))]


def test_gemma3_positions_restart_at_every_segment_from_zero():
    model = Gemma3ForConditionalGeneration(Gemma3Config.from_dict(test_gemma3.GEMMA3_CONFIGS["mqa"]))
    valid = (SEGMENT_IDS > 0).long()
    _, _, positions = model.attention_inputs(valid.clone() + 3, valid, segment_ids=SEGMENT_IDS)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0, 0, 0], list(range(8))]


def test_packed_logits_are_each_rows_unpacked_logits(config):
    model = random_model(config)
    rows, packed = rows_and_packed(config)
    with torch.no_grad():
        unpacked, together = model(**rows).logits, model(**packed).logits
    for b, span in segments(packed):
        r = row_of(rows, packed, b, span)
        n = span.stop - span.start
        torch.testing.assert_close(together[b, span], unpacked[r, :n], rtol=0, atol=1e-5)


def test_editing_one_row_changes_no_other_rows_logits(config):
    """The leak test: a segment's image and text changed, every other segment's logits stay exactly put."""
    model = random_model(config)
    rows, packed = rows_and_packed(config)
    spans = segments(packed)
    width = packed["input_ids"].shape[1]
    b, edited = next(  # a segment that another one follows: causal attention would carry a leak into it
        (b, span) for b, span in spans if span.stop < width and packed["segment_ids"][b, span.stop] > 0
    )
    changed = {k: v.clone() for k, v in packed.items()}
    ids = changed["input_ids"][b, edited]  # a view: edits land in changed
    text = (changed["labels"][b, edited] == -100) & (ids != config.image_token_index)
    ids[text] = 5 + (ids[text] + 1) % 100  # the prompt's text tokens
    images_before = packed["input_ids"].flatten()[: b * width + edited.start] == config.image_token_index
    changed["pixel_values"][int(images_before.sum()) // config.num_image_tokens] += 1.0  # its first image
    with torch.no_grad():
        base, after = model(**packed).logits, model(**changed).logits
    assert (base[b, edited] - after[b, edited]).abs().max() > 1e-3
    for i, span in spans:
        if (i, span) != (b, edited):
            torch.testing.assert_close(after[i, span], base[i, span], rtol=0, atol=1e-6)


@pytest.mark.parametrize("return_logits", [True, False])
def test_packed_loss_and_lora_gradients_equal_the_unpacked_batchs(config, return_logits):
    model = random_model(config).train()
    peft_model = add_lora(model, LoraSettings(r=4))
    randomize_(peft_model, seed=1)  # lora_B too: the gradients of lora_A are zero at peft's init
    rows, packed = rows_and_packed(config)
    grads = []
    for batch in (rows, packed):
        peft_model.zero_grad()
        loss = model(**batch, return_logits=return_logits).loss
        loss.backward()
        grads.append(
            (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        )
    (unpacked_loss, unpacked_grads), (packed_loss, packed_grads) = grads
    # a few float32 ulps: the packed batch's other shapes sum in another order (AVX512's kernels block so)
    torch.testing.assert_close(packed_loss, unpacked_loss, rtol=1e-6, atol=1e-6)
    assert unpacked_grads.keys() == packed_grads.keys() and all("lora_" in n for n in packed_grads)
    for name, grad in unpacked_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
