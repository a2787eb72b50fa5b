"""Our PaliGemmaProcessor against transformers' on the same files: tokens, labels, pixels, errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from paligemma.data.processor import PaliGemmaProcessor, to_rgb
from paligemma.data.processor_files import copy_processor_files
from paligemma.data.tokenizer import build_tokenizer, save_processor_files
from paligemma.errors import ConfigError

transformers = pytest.importorskip("transformers")

IMAGE_SIZE, NUM_IMAGE_TOKENS = 24, 5
CORPUS = ["a cat on a mat", "what is in the image?", "answer en how many dogs", "caption en"] * 30
TEXTS = ["caption en", "what is in the image? 日本語", "", "answer en naïve 😀 question  with  spaces"]
SUFFIXES = ["a cat 🐈", "", "<loc0001><loc1000><loc0020><loc0999> dog ; <seg012>", "two\nlines"]


def random_image(seed, size=(31, 17), mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8), mode)


@pytest.fixture(scope="session")
def tiny_processor_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("processor")
    save_processor_files(path, build_tokenizer(CORPUS, vocab_size=360), IMAGE_SIZE, NUM_IMAGE_TOKENS)
    return path


@pytest.fixture(scope="session")
def ours(tiny_processor_dir):
    return PaliGemmaProcessor.from_pretrained(tiny_processor_dir)


def hf_processor(path):
    """transformers' processor with the PIL SigLIP image processor (the torchvision one resizes differently)."""
    image_processor = getattr(transformers, "SiglipImageProcessorPil", transformers.SiglipImageProcessor)
    return transformers.PaliGemmaProcessor(
        image_processor=image_processor.from_pretrained(path),
        tokenizer=transformers.AutoTokenizer.from_pretrained(path),
    )


@pytest.fixture(scope="session")
def ref(tiny_processor_dir):
    return hf_processor(tiny_processor_dir)


def run_ref(ref, text, images, suffix=None, padding_side="right"):
    out = ref(
        text=text,
        images=images,
        suffix=suffix,
        padding="longest",
        return_tensors="pt",
        padding_side=padding_side,
    )
    out = dict(out)
    if suffix is None:  # the reference always returns labels; prompt-only ones are all -100, ours has none
        assert (out.pop("labels") == -100).all()
    return out


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("with_suffix", [True, False])
def test_batch_matches_reference(ours, ref, padding_side, with_suffix):
    images = [random_image(i) for i in range(len(TEXTS))]
    suffix = SUFFIXES if with_suffix else None
    out = ours(text=TEXTS, images=images, suffix=suffix, padding_side=padding_side)
    assert_same(out, run_ref(ref, TEXTS, images, suffix, padding_side))
    assert out["input_ids"].shape[0] == len(TEXTS) and out["pixel_values"].dtype == torch.float32


def nested_images(seed: int = 0) -> list[list[Image.Image]]:
    """3, 1, 2 and 1 pictures for the four TEXTS, each of its own size."""
    counts = [3, 1, 2, 1]
    images = [random_image(seed + i, size=(20 + 3 * i, 30 - 2 * i)) for i in range(sum(counts))]
    return [images[sum(counts[:i]) : sum(counts[: i + 1])] for i in range(len(counts))]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("with_suffix", [True, False])
def test_several_images_per_prompt_match_the_reference(ours, ref, padding_side, with_suffix):
    images, suffix = nested_images(), SUFFIXES if with_suffix else None
    out = ours(text=TEXTS, images=images, suffix=suffix, padding_side=padding_side)
    assert_same(out, run_ref(ref, TEXTS, images, suffix, padding_side))
    assert out["pixel_values"].shape[0] == 7
    image_tokens = (out["input_ids"] == ours.image_token_id).sum(1)
    assert image_tokens.tolist() == [NUM_IMAGE_TOKENS * n for n in (3, 1, 2, 1)]


def test_one_image_per_prompt_is_the_same_as_lists_of_one(ours):
    images = [random_image(i) for i in range(len(TEXTS))]
    assert_same(ours(text=TEXTS, images=images), ours(text=TEXTS, images=[[im] for im in images]))


def test_layout_and_labels(ours):
    out = ours(text=["a", "a"], images=[random_image(0)] * 2, suffix=["cat on a mat", "x"])
    ids, types, labels, mask = out["input_ids"], out["token_type_ids"], out["labels"], out["attention_mask"]
    n = NUM_IMAGE_TOKENS
    assert (ids[:, :n] == ours.image_token_id).all() and (ids[:, n] == ours.bos_token_id).all()
    for row in range(2):
        real = ids[row][mask[row] == 1]
        assert real[-1] == ours.eos_token_id
        assert (ids[row][mask[row] == 0] == ours.pad_token_id).all()
    assert mask[1, -1] == 0  # the shorter row is padded on the right
    assert (labels[types == 0] == -100).all() and torch.equal(labels[types == 1], ids[types == 1])
    assert (labels[mask == 0] == -100).all()  # no loss on padding (the reference agrees: pads get type 0)
    assert ours.decode(ids[0][types[0] == 1]) == "cat on a mat<eos>"


def test_single_string_and_image(ours, ref):
    image = random_image(3, (40, 40))
    assert_same(ours(text="caption en", images=image), run_ref(ref, "caption en", image))
    assert_same(
        ours(text="caption en", images=image, suffix="a cat"),
        run_ref(ref, "caption en", image, suffix="a cat"),
    )


def _images():
    rng = np.random.default_rng(0)
    rgb, rgba = random_image(1, (45, 29)), random_image(2, (29, 45), "RGBA")
    p_transparent = rgb.convert("P")
    p_transparent.info["transparency"] = 3
    return {
        "RGB": rgb,
        "1x1": Image.new("RGB", (1, 1), (200, 10, 30)),
        "exact-size": random_image(4, (IMAGE_SIZE, IMAGE_SIZE)),
        "large": random_image(5, (300, 220)),
        "RGBA": rgba,
        "P": rgb.convert("P"),
        "P-transparency": p_transparent,
        "PA": rgba.convert("PA"),
        "L": rgb.convert("L"),
        "LA": rgba.convert("LA"),
        "1": rgb.convert("1"),
        "CMYK": rgb.convert("CMYK"),
        "YCbCr": rgb.convert("YCbCr"),
        "I": Image.fromarray(rng.integers(0, 300, (20, 30)).astype(np.int32)),
        "F": Image.fromarray(rng.uniform(0, 255, (20, 30)).astype(np.float32)),
    }


@pytest.mark.parametrize("name", list(_images()))
def test_image_modes_match_reference(ours, ref, name):
    image = _images()[name]
    expected = ref.image_processor(image, return_tensors="pt")["pixel_values"]
    out = ours(text="x", images=image)["pixel_values"]
    assert out.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(out, expected)


def test_sixteen_bit_images_are_scaled_not_clipped(ours, ref):
    values = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    assert np.array_equal(np.asarray(to_rgb(image))[..., 0], values >> 8)
    eight_bit = Image.fromarray((values >> 8).astype(np.uint8))
    expected = ref.image_processor(eight_bit, return_tensors="pt")["pixel_values"]
    assert torch.equal(ours(text="x", images=image)["pixel_values"], expected)
    # Deliberate deviation: PIL's conversion, and so transformers', clips 16-bit values to white.
    assert ref.image_processor(image, return_tensors="pt")["pixel_values"].mean() > 0.9


def test_transparency_is_white(ours):
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert (ours(text="", images=clear)["pixel_values"] == 1.0).all()


def test_round_trip_decode(ours, ref):
    out = ours(text=TEXTS, images=[random_image(0)] * len(TEXTS), suffix=SUFFIXES)
    assert ours.batch_decode(out["input_ids"]) == ref.batch_decode(out["input_ids"])
    decoded = ours.batch_decode(out["input_ids"], skip_special_tokens=True)
    assert decoded == ref.batch_decode(out["input_ids"], skip_special_tokens=True)
    assert decoded == [f"{t}\n{s}" for t, s in zip(TEXTS, SUFFIXES, strict=True)]
    suffix_ids = out["input_ids"][2][out["token_type_ids"][2] == 1]
    assert ours.decode(suffix_ids.tolist(), skip_special_tokens=True) == SUFFIXES[2]
    single = [ours.tokenizer.token_to_id(t) for t in ["<loc0001>", "<loc1000>", "<loc0020>", "<loc0999>"]]
    assert suffix_ids[:4].tolist() == single  # loc/seg are single tokens
    assert suffix_ids[-2:].tolist() == [ours.tokenizer.token_to_id("<seg012>"), ours.eos_token_id]


def test_attributes(ours, ref):
    assert (ours.image_size, ours.num_image_tokens) == (IMAGE_SIZE, NUM_IMAGE_TOKENS)
    tok = ref.tokenizer
    assert ours.image_token_id == ref.image_token_id
    assert (ours.pad_token_id, ours.eos_token_id, ours.bos_token_id) == (
        tok.pad_token_id,
        tok.eos_token_id,
        tok.bos_token_id,
    )


def test_auto_processor_loads_same_files(ours, tiny_processor_dir):
    auto = transformers.AutoProcessor.from_pretrained(tiny_processor_dir)
    images = [random_image(i) for i in range(len(TEXTS))]
    expected = dict(auto(text=TEXTS, images=images, suffix=SUFFIXES, padding="longest", return_tensors="pt"))
    out = ours(text=TEXTS, images=images, suffix=SUFFIXES)
    pixels, expected_pixels = out.pop("pixel_values"), expected.pop("pixel_values")
    assert_same(out, expected)  # saved padding_side is "right": the same default as ours
    # The torchvision backend, when installed, resizes with its own bicubic kernel: close, not equal.
    assert torch.allclose(pixels, expected_pixels, atol=0.1)


def test_tokenizer_without_extra_tokens_gets_them_as_reference(tiny_processor_dir, tmp_path):
    """A tokenizer.json lacking <image> and loc/seg: both processors append them in the same order."""
    shutil.copytree(tiny_processor_dir, tmp_path, dirs_exist_ok=True)
    tok_json = json.loads((tmp_path / "tokenizer.json").read_text())
    first = tok_json["model"]["vocab"]["<loc0000>"]
    tok_json["model"]["vocab"] = {k: v for k, v in tok_json["model"]["vocab"].items() if v < first}
    tok_json["added_tokens"] = [t for t in tok_json["added_tokens"] if t["id"] < first]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok_json))
    for name in ["tokenizer_config.json", "special_tokens_map.json"]:
        config = json.loads((tmp_path / name).read_text())
        config.pop("additional_special_tokens")
        decoder = config.get("added_tokens_decoder", {})
        config["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < first}
        (tmp_path / name).write_text(json.dumps(config))

    ours, ref = PaliGemmaProcessor.from_pretrained(tmp_path), hf_processor(tmp_path)
    assert ours.image_token_id == ref.image_token_id == first
    images = [random_image(i) for i in range(len(TEXTS))]
    assert_same(ours(text=TEXTS, images=images, suffix=SUFFIXES), run_ref(ref, TEXTS, images, SUFFIXES))


def test_max_length_keeps_eos(ours):
    images = [random_image(0)] * 2
    full = ours(text=["a", "b"], images=images, suffix=["a cat on a mat", "x"])
    n_prompt = int((full["token_type_ids"][0] == 0).sum())
    out = ours(text=["a", "b"], images=images, suffix=["a cat on a mat", "x"], max_length=n_prompt + 2)
    assert out["input_ids"].shape[1] == n_prompt + 2
    assert out["input_ids"][0, -1] == ours.eos_token_id and out["labels"][0, -1] == ours.eos_token_id
    assert torch.equal(out["input_ids"][0, : n_prompt + 1], full["input_ids"][0, : n_prompt + 1])
    assert torch.equal(out["input_ids"][1], full["input_ids"][1, : n_prompt + 2])  # short row untouched
    roomy = ours(text=["a", "b"], images=images, suffix=["a cat on a mat", "x"], max_length=1000)
    assert_same(roomy, full)
    with pytest.raises(ValueError, match="max_length"):
        ours(text=["a"], images=images[:1], suffix=["cat"], max_length=n_prompt)
    with pytest.raises(ValueError, match="max_length"):
        ours(text=["a"], images=images[:1], max_length=n_prompt - 1)


def test_count_mismatch(ours):
    with pytest.raises(ValueError, match=r"3 images \(or lists of images\) for 2 texts"):
        ours(text=["a", "b"], images=[random_image(0)] * 3)
    with pytest.raises(ValueError, match=r"1 suffixes for 2 texts"):
        ours(text=["a", "b"], images=[random_image(0)] * 2, suffix=["x"])


def test_bad_inputs(ours):
    with pytest.raises(ValueError, match="<image>"):
        ours(text="<image>caption en", images=random_image(0))
    with pytest.raises(ValueError, match="padding_side"):
        ours(text="a", images=random_image(0), padding_side="middle")
    with pytest.raises(TypeError, match="PIL"):
        ours(text="a", images=[np.zeros((4, 4, 3), dtype=np.uint8)])
    with pytest.raises(TypeError, match="got ndarray for text 1"):
        ours(text=["a", "b"], images=[[random_image(0)], [random_image(1), np.zeros((4, 4, 3))]])
    with pytest.raises(ValueError, match="text 0 has an empty list of images"):
        ours(text=["a"], images=[[]])


@pytest.mark.parametrize("missing", ["tokenizer.json", "preprocessor_config.json"])
def test_missing_files(tiny_processor_dir, tmp_path, missing):
    shutil.copytree(tiny_processor_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        PaliGemmaProcessor.from_pretrained(tmp_path)


def test_missing_local_dir(tmp_path):
    with pytest.raises(ConfigError, match="not-there"):
        PaliGemmaProcessor.from_pretrained(tmp_path / "not-there")


@pytest.fixture(scope="module")
def transformers5_dir(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint's processor as transformers 5 saves it: image settings in processor_config.json."""
    path = tmp_path_factory.mktemp("transformers5-processor")
    transformers.PaliGemmaProcessor.from_pretrained(tiny_checkpoint).save_pretrained(path)
    assert not (path / "preprocessor_config.json").exists()  # the layout under test
    return path


@pytest.mark.parametrize("nested", [False, True])
def test_transformers5_layout_matches_reference(transformers5_dir, nested):
    ours, ref = PaliGemmaProcessor.from_pretrained(transformers5_dir), hf_processor(transformers5_dir)
    images = nested_images() if nested else [random_image(i) for i in range(len(TEXTS))]
    assert_same(ours(text=TEXTS, images=images, suffix=SUFFIXES), run_ref(ref, TEXTS, images, SUFFIXES))


def test_copied_transformers5_files_load_in_both(transformers5_dir, tmp_path):
    copy_processor_files(transformers5_dir, tmp_path)
    ours = PaliGemmaProcessor.from_pretrained(tmp_path)
    ref = transformers.PaliGemmaProcessor.from_pretrained(tmp_path)
    images = [random_image(i) for i in range(len(TEXTS))]
    expected = run_ref(ref, TEXTS, images, SUFFIXES)
    out = ours(text=TEXTS, images=images, suffix=SUFFIXES)
    assert torch.allclose(
        out.pop("pixel_values"), expected.pop("pixel_values"), atol=0.1
    )  # torchvision's resize
    assert_same(out, expected)


def test_pan_and_scan_is_refused_naming_the_setting(tiny_processor_dir, ours):
    with pytest.raises(ConfigError, match=r"pan & scan: .* is a PaliGemma.*data\.pan_and_scan=false"):
        PaliGemmaProcessor.from_pretrained(tiny_processor_dir, do_pan_and_scan=True)
    assert ours.crop_counts([Image.new("RGB", (90, 10))]) == [0]
    with pytest.raises(ValueError, match=r"no pan & scan crops, got \[2\]"):
        ours.prompt_length("caption en", 1, [2])
