"""Our Gemma3Processor against transformers' on the same files: tokens, token types, pixels, chat rows, errors."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from paligemma import Gemma3Processor
from paligemma.data.gemma3_files import GEMMA3_CHAT_TEMPLATE, save_gemma3_processor_files
from paligemma.data.gemma3_processor import pan_and_scan_boxes
from paligemma.data.tokenizer import build_tokenizer
from paligemma.errors import MissingFileError

transformers = pytest.importorskip("transformers")

IMAGE_SIZE, NUM_IMAGE_TOKENS = 24, 4
CORPUS = ["a cat on a mat", "what is in the image?", "answer en how many dogs", "caption en", "two"] * 30
# Pan & scan with crops of at least 8 px, so that the small test images crop.
PAN_AND_SCAN = dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=8, pan_and_scan_max_num_crops=3)
MARKER = "<start_of_image>"


def random_image(seed, size=(31, 17), mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((len(mode),) if len(mode) > 1 else ())
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3-processor")
    tokenizer = build_tokenizer(CORPUS, vocab_size=360, gemma3=True)
    save_gemma3_processor_files(path, tokenizer, IMAGE_SIZE, NUM_IMAGE_TOKENS)
    return path


def hf_processor(path):
    """transformers' Gemma3Processor with the PIL image processor (the torchvision one resizes differently)."""
    return transformers.Gemma3Processor(
        image_processor=transformers.Gemma3ImageProcessorPil.from_pretrained(path),
        tokenizer=transformers.AutoTokenizer.from_pretrained(path),
        chat_template=(path / "chat_template.jinja").read_text(),
        image_seq_length=NUM_IMAGE_TOKENS,
    )


@pytest.fixture(scope="session")
def ref(gemma3_dir):
    return hf_processor(gemma3_dir)


@pytest.fixture(scope="session")
def ours(gemma3_dir):
    return Gemma3Processor.from_pretrained(gemma3_dir)


@pytest.fixture(scope="session")
def chat(gemma3_dir):
    return Gemma3Processor.from_pretrained(gemma3_dir, chat_template=True)


def run_ref(ref, text, images, padding_side="right", **kwargs):
    out = ref(
        text=text, images=images, padding="longest", padding_side=padding_side, return_tensors="pt", **kwargs
    )
    return dict(out)


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# 1, 2 and 3 images; markers first, mid-text and last; sizes not square, RGBA, L and palette images among them.
TEXTS = [
    f"{MARKER} caption en",
    f"what is in the image? {MARKER} and in {MARKER}",
    f"a{MARKER}b {MARKER}{MARKER} 日本語 😀  two  spaces\nlines",
]


def mixed_images(seed=0):
    palette = random_image(seed + 5, (19, 23), "L").convert("P")
    return [
        [random_image(seed, (40, 16))],
        [random_image(seed + 1, (17, 45), "RGBA"), random_image(seed + 2, (30, 30), "L")],
        [random_image(seed + 3, (100, 24)), palette, random_image(seed + 4, (9, 13))],
    ]


def test_one_image_matches_reference(ours, ref):
    images = [random_image(0)]
    out = ours(text=[TEXTS[0]], images=images)
    assert_same(out, run_ref(ref, [TEXTS[0]], images))
    assert out["token_type_ids"].sum() == NUM_IMAGE_TOKENS
    assert out["input_ids"][0, 0] == ours.bos_token_id


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_of_one_to_three_images_matches_reference(ours, ref, padding_side):
    images = mixed_images()
    out = ours(text=TEXTS, images=images, padding_side=padding_side)
    assert_same(out, run_ref(ref, TEXTS, images, padding_side))
    assert out["pixel_values"].shape == (6, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (out["input_ids"] == ours.boi_token_id).sum(1).tolist() == [1, 2, 3]
    assert out["token_type_ids"].sum(1).tolist() == [NUM_IMAGE_TOKENS * n for n in (1, 2, 3)]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pan_and_scan_matches_reference(gemma3_dir, ref, padding_side):
    ours = Gemma3Processor.from_pretrained(gemma3_dir, **PAN_AND_SCAN)
    wide, tall, square = (
        random_image(0, (50, 20)),
        random_image(1, (16, 70), "RGBA"),
        random_image(2, (30, 27)),
    )
    # Tall: 4 crops by its ratio, capped at 3, the last one cut at the border. Ratio 1.4: 2 crops of 10 px; of 7 px:
    # none. Square-ish (ratio 1.11): none.
    narrow_crops, too_small = random_image(3, (20, 14)), random_image(4, (14, 10))
    texts = [f"{MARKER} wide and {MARKER} tall", f"square {MARKER}", f"{MARKER}{MARKER} small"]
    images = [[wide, tall], [square], [narrow_crops, too_small]]
    out = ours(text=texts, images=images, padding_side=padding_side)
    assert_same(out, run_ref(ref, texts, images, padding_side, **PAN_AND_SCAN))
    crops = [len(pan_and_scan_boxes(*im.size, 8, 3, 1.2)) for row in images for im in row]
    assert crops == [3, 3, 0, 2, 0]
    assert out["pixel_values"].shape[0] == 5 + sum(crops)
    decoded = ours.decode(out["input_ids"][0], skip_special_tokens=True)
    assert "Here is the original image" in decoded and "crops to help you see better" in decoded


def test_prompt_length_counts_each_images_crops(gemma3_dir, ours):
    panning = Gemma3Processor.from_pretrained(gemma3_dir, **PAN_AND_SCAN)
    texts = [f"{MARKER} wide and {MARKER} tall", f"square {MARKER}"]
    images = [[random_image(0, (50, 20)), random_image(1, (16, 70))], [random_image(2, (30, 27))]]
    lengths = panning(text=texts, images=images, return_lengths=True)["prompt_lengths"].tolist()
    crops = [panning.crop_counts(ims) for ims in images]
    assert crops == [[3, 3], [0]]
    assert [
        panning.prompt_length(t, len(ims), c) for t, ims, c in zip(texts, images, crops, strict=True)
    ] == lengths
    assert ours.crop_counts(images[0]) == [0, 0]
    assert ours.prompt_length(texts[0], 2) < lengths[0]


def test_without_markers_the_images_come_first(ours, ref):
    images = mixed_images()
    texts = ["caption en", "what is in the image?", ""]
    expected = run_ref(ref, [MARKER * len(ims) + t for t, ims in zip(texts, images, strict=True)], images)
    assert_same(ours(text=texts, images=images), expected)


def test_plain_training_rows(ours):
    images = mixed_images()
    out = ours(text=TEXTS, images=images, suffix=["a cat", "", "two dogs 🐕"], return_lengths=True)
    prompt_only = ours(text=TEXTS, images=images)
    for row, answer in enumerate(["a cat", "", "two dogs 🐕"]):
        n_prompt = int(out["prompt_lengths"][row])
        assert n_prompt == int(prompt_only["attention_mask"][row].sum())
        n_row = int(out["attention_mask"][row].sum())
        ids, labels = out["input_ids"][row, :n_row], out["labels"][row, :n_row]
        assert torch.equal(ids[:n_prompt], prompt_only["input_ids"][row, :n_prompt])
        assert (labels[:n_prompt] == -100).all() and torch.equal(labels[n_prompt:], ids[n_prompt:])
        assert ours.decode(ids[n_prompt:]) == answer + "<eos>"
        assert (out["labels"][row, n_row:] == -100).all()
        assert n_prompt == ours.prompt_length(TEXTS[row], len(images[row]))
    assert not out["truncated"].any()
    assert ours.stop_token_ids == [ours.eos_token_id]


# User turns as transformers' chat messages hold them, and as our processor's (text, number of images).
CHAT_TURNS = [
    ([{"type": "image"}, {"type": "text", "text": "caption en"}], "caption en", 1),
    (
        [{"type": "text", "text": "compare "}, {"type": "image"}, {"type": "text", "text": " and "}, {"type": "image"}],
        f"compare {MARKER} and {MARKER}",
        2,
    ),
    ([{"type": "image"}, {"type": "image"}, {"type": "image"}, {"type": "text", "text": " how many dogs?\n"}],
     " how many dogs?\n", 3),
]  # fmt: skip


@pytest.mark.parametrize("turn", range(len(CHAT_TURNS)))
def test_chat_prompt_is_transformers_chat_template(chat, ref, turn):
    content, text, n_images = CHAT_TURNS[turn]
    messages = [{"role": "user", "content": content}]
    expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat.prompt_text(text, n_images) == expected
    assert expected.startswith("<bos><start_of_turn>user\n") and expected.endswith("<start_of_turn>model\n")


def with_images(content, images):
    images = iter(images)
    return [dict(item, image=next(images)) if item["type"] == "image" else item for item in content]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_chat_rows_are_transformers_conversations(chat, ref, padding_side):
    images = mixed_images()
    answers = ["a cat", "  two dogs ", "yes\nno"]
    out = chat(
        text=[text for _, text, _ in CHAT_TURNS], images=images, suffix=answers, padding_side=padding_side,
        return_lengths=True,
    )  # fmt: skip
    pixels = []
    for row, ((content, _, _), ims, answer) in enumerate(zip(CHAT_TURNS, images, answers, strict=True)):
        user = {"role": "user", "content": with_images(content, ims)}
        conversation = [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        expected = ref.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
        prompt = ref.apply_chat_template([user], tokenize=True, return_dict=True, add_generation_prompt=True)
        mask = out["attention_mask"][row].bool()
        ids, labels = out["input_ids"][row][mask], out["labels"][row][mask]
        assert torch.equal(ids, expected["input_ids"][0])
        assert torch.equal(out["token_type_ids"][row][mask], expected["token_type_ids"][0])
        n_prompt = len(prompt["input_ids"][0])
        assert int(out["prompt_lengths"][row]) == n_prompt == chat.prompt_length(CHAT_TURNS[row][1], len(ims))
        assert (labels[:n_prompt] == -100).all() and torch.equal(labels[n_prompt:], ids[n_prompt:])
        assert chat.decode(ids[n_prompt:]) == answer.strip() + "<end_of_turn>\n"
        assert (out["labels"][row][~mask] == -100).all()
        pixels.append(expected["pixel_values"])
    assert torch.equal(out["pixel_values"], torch.cat(pixels))
    end_of_turn = chat.tokenizer.token_to_id("<end_of_turn>")
    assert chat.stop_token_ids == [chat.eos_token_id, end_of_turn]


def test_truncation_keeps_the_final_stop_tokens(ours, chat):
    images = [random_image(0)] * 2
    for processor, end in [(ours, "<eos>"), (chat, "<end_of_turn>\n")]:
        full = processor(text=["a", "b"], images=images, suffix=["a cat on a mat", "x"], return_lengths=True)
        n_prompt = int(full["prompt_lengths"][0])
        n_end = len(processor.tokenizer.encode(end, add_special_tokens=False).ids)
        cut = processor(
            text=["a", "b"], images=images, suffix=["a cat on a mat", "x"], max_length=n_prompt + n_end + 1,
            return_lengths=True,
        )  # fmt: skip
        assert cut["input_ids"].shape[1] == n_prompt + n_end + 1
        assert cut["truncated"].tolist() == [True, False]
        assert processor.decode(cut["input_ids"][0, n_prompt + 1 :]) == end
        assert torch.equal(cut["input_ids"][0, : n_prompt + 1], full["input_ids"][0, : n_prompt + 1])
        assert torch.equal(cut["labels"][0, n_prompt:], cut["input_ids"][0, n_prompt:])
        assert_same(processor(text=["a", "b"], images=images, suffix=["a cat on a mat", "x"], max_length=999),
                    {k: v for k, v in full.items() if k not in ("prompt_lengths", "truncated")})  # fmt: skip
        long_prompt = processor.prompt_length("what is in the image?", 1)
        assert long_prompt > n_prompt + 2
        with pytest.raises(ValueError, match=r"text 1: max_length=\d+ cannot hold its prompt"):
            texts = ["a", "what is in the image?"]
            processor(text=texts, images=images, suffix=["x", "y"], max_length=long_prompt + n_end - 1)
        with pytest.raises(ValueError, match="text 0: max_length"):  # a prompt is never cut, images included
            processor(text=["a"], images=images[:1], max_length=n_prompt - 1)


def test_marker_and_image_counts_must_agree(ours):
    with pytest.raises(ValueError, match=f"text 1 has 2 {MARKER} markers for 1 images"):
        ours(text=["caption en", f"{MARKER} and {MARKER}"], images=[[random_image(0)], [random_image(1)]])
    with pytest.raises(ValueError, match=f"text 0 has 1 {MARKER} markers for 2 images"):
        ours(text=[f"{MARKER} a"], images=[[random_image(0), random_image(1)]])
    with pytest.raises(ValueError, match="text 1 holds image tokens"):
        ours(text=["a", "<image_soft_token>"], images=[random_image(0)] * 2)
    with pytest.raises(ValueError, match=r"3 images \(or lists of images\) for 2 texts"):
        ours(text=["a", "b"], images=[random_image(0)] * 3)
    with pytest.raises(ValueError, match=r"1 suffixes for 2 texts"):
        ours(text=["a", "b"], images=[random_image(0)] * 2, suffix=["x"])
    with pytest.raises(ValueError, match="padding_side"):
        ours(text="a", images=random_image(0), padding_side="middle")
    with pytest.raises(TypeError, match="PIL"):
        ours(text="a", images=[np.zeros((4, 4, 3), dtype=np.uint8)])


def test_attributes(ours, ref):
    tok = ref.tokenizer
    assert (ours.image_size, ours.num_image_tokens, ours.resample) == (IMAGE_SIZE, NUM_IMAGE_TOKENS, 2)
    assert (ours.image_token_id, ours.boi_token_id) == (tok.image_token_id, ref.image_token_id)
    assert ours.eoi_token_id == tok.convert_tokens_to_ids(tok.eoi_token)
    assert (ours.pad_token_id, ours.eos_token_id, ours.bos_token_id) == (
        tok.pad_token_id, tok.eos_token_id, tok.bos_token_id,
    )  # fmt: skip
    out = ours(text=TEXTS, images=mixed_images())
    assert ours.batch_decode(out["input_ids"], skip_special_tokens=True) == ref.batch_decode(
        out["input_ids"], skip_special_tokens=True
    )


def test_auto_processor_loads_the_files_as_a_gemma3_processor(ours, gemma3_dir):
    auto = transformers.AutoProcessor.from_pretrained(gemma3_dir)
    assert type(auto).__name__ == "Gemma3Processor" and auto.image_seq_length == NUM_IMAGE_TOKENS
    images = mixed_images()
    expected = run_ref(auto, TEXTS, images)
    out = ours(text=TEXTS, images=images)
    # The torchvision backend, when installed, resizes with its own kernel: close, not equal.
    assert torch.allclose(out.pop("pixel_values"), expected.pop("pixel_values"), atol=0.1)
    assert_same(out, expected)  # the saved padding_side is "right": ours' default
    assert auto.chat_template == GEMMA3_CHAT_TEMPLATE


def test_transformers5_saved_layout_loads_the_same(ours, gemma3_dir, tmp_path):
    transformers.AutoProcessor.from_pretrained(gemma3_dir).save_pretrained(tmp_path)
    images = mixed_images()
    assert_same(
        Gemma3Processor.from_pretrained(tmp_path)(text=TEXTS, images=images), ours(text=TEXTS, images=images)
    )
    assert Gemma3Processor.from_pretrained(tmp_path, chat_template=True).chat_template == GEMMA3_CHAT_TEMPLATE


def test_frame_token_pool_shrinks_each_image(gemma3_dir):
    pooled = Gemma3Processor.from_pretrained(gemma3_dir, frame_token_pool=2)
    out = pooled(text=[TEXTS[1]], images=[mixed_images()[1]])
    assert pooled.num_image_tokens == 1 and out["token_type_ids"].sum() == 2


def test_chat_template_must_be_there(gemma3_dir, tmp_path):
    shutil.copytree(gemma3_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / "chat_template.jinja").unlink()
    Gemma3Processor.from_pretrained(tmp_path)  # plain rows need none
    with pytest.raises(MissingFileError, match="no chat template"):
        Gemma3Processor.from_pretrained(tmp_path, chat_template=True)
