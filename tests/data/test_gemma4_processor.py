"""Our Gemma4Processor against transformers' on the same files: tokens, modality types, patches and their positions
(every budget, both paddings), video frames, chat rows, labels, truncation, errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from paligemma.data.gemma4_files import GEMMA4_TOKENS, save_gemma4_processor_files
from paligemma.data.gemma4_processor import Gemma4Processor, VideoClip
from paligemma.data.processors import load_processor
from paligemma.data.tokenizer import build_tokenizer, save_processor_files
from paligemma.errors import ConfigError

transformers = pytest.importorskip("transformers")
processing_gemma4 = pytest.importorskip("transformers.models.gemma4.processing_gemma4")

CORPUS = ["a cat on a mat", "what is in the image?", "answer en how many dogs", "caption en", "two"] * 30
IMAGE, VIDEO = "<|image|>", "<|video|>"


def random_image(seed, size=(31, 17), mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((len(mode),) if len(mode) > 1 else ())
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.fixture(scope="session")
def gemma4_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma4-processor")
    save_gemma4_processor_files(path, build_tokenizer(CORPUS, vocab_size=360, special_tokens=GEMMA4_TOKENS))
    return path


class ReferenceVideoProcessor:
    """Gemma4VideoProcessor._preprocess transcribed, as transformers' Gemma4Processor calls it: its module needs
    torchvision, which is not installed here. torchvision resizes uint8 frames on CPU with torch's antialiased
    bicubic; the fused rescale and identity normalization is (x - 0) / 255."""

    def __call__(self, videos, video_metadata, max_soft_tokens=70, **kwargs):
        max_patches, pixels, positions, tokens = max_soft_tokens * 9, [], [], []
        for video in videos:
            v = torch.from_numpy(video).permute(0, 3, 1, 2).contiguous()
            h, w = processing_gemma4.get_aspect_ratio_preserving_size(
                v.shape[2], v.shape[3], 16, max_patches, 3
            )
            if (h, w) != tuple(v.shape[2:]):
                v = F.interpolate(v, size=[h, w], mode="bicubic", align_corners=False, antialias=True)
            v = v.to(torch.float32).sub_(0.0).div_(255.0)
            frames, rows, cols = v.shape[0], h // 16, w // 16
            patches = (
                v.reshape(frames, 3, rows, 16, cols, 16)
                .permute(0, 2, 4, 3, 5, 1)
                .reshape(frames, rows * cols, -1)
            )
            grid = torch.stack(torch.meshgrid(torch.arange(cols), torch.arange(rows), indexing="xy"), dim=-1)
            grid = grid.reshape(rows * cols, 2)[None].repeat(frames, 1, 1)
            pad = max_patches - rows * cols
            pixels.append(F.pad(patches, [0, 0, 0, pad, 0, 0]))
            positions.append(F.pad(grid, (0, 0, 0, pad, 0, 0), value=-1))
            tokens.append(rows * cols // 9)
        return {
            "pixel_values_videos": torch.cat(pixels),
            "video_position_ids": torch.cat(positions),
            "num_frames_per_video": [len(p) for p in pixels],
            "num_soft_tokens_per_video": tokens,
            "video_metadata": [transformers.video_utils.VideoMetadata(**m) for m in video_metadata],
        }


class RefProcessor(transformers.Gemma4Processor):
    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name != "video_processor":  # the stand-in above
            return super().check_argument_for_proper_class(argument_name, argument)


@pytest.fixture(scope="session")
def ref(gemma4_dir):
    """transformers' Gemma4Processor with the PIL image processor (the torchvision one resizes differently)."""
    return RefProcessor(
        feature_extractor=transformers.Gemma4AudioFeatureExtractor(),
        image_processor=transformers.Gemma4ImageProcessorPil.from_pretrained(gemma4_dir),
        tokenizer=transformers.AutoTokenizer.from_pretrained(gemma4_dir),
        video_processor=ReferenceVideoProcessor(),
        chat_template=(gemma4_dir / "chat_template.jinja").read_text(),
    )


@pytest.fixture(scope="session")
def ours(gemma4_dir):
    return Gemma4Processor.from_pretrained(gemma4_dir)


@pytest.fixture(scope="session")
def chat(gemma4_dir):
    return Gemma4Processor.from_pretrained(gemma4_dir, chat_template=True)


def run_ref(ref, text, images=None, padding_side="right", **kwargs):
    out = ref(
        text=text, images=images, padding="longest", padding_side=padding_side, return_tensors="pt", **kwargs
    )
    return dict(out)


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# 1, 2 and 3 images of different aspect ratios (wide, tall, square, one so narrow that its width rounds to
# nothing); markers first, mid-text and last; RGBA, L and palette images among them.
TEXTS = [
    f"{IMAGE} caption en",
    f"what is in the image? {IMAGE} and in {IMAGE}",
    f"a{IMAGE}b {IMAGE}{IMAGE} 日本語 😀  two  spaces\nlines",
]


def mixed_images(seed=0):
    palette = random_image(seed + 5, (19, 23), "L").convert("P")
    return [
        [random_image(seed, (100, 40))],
        [random_image(seed + 1, (50, 300), "RGBA"), random_image(seed + 2, (64, 64), "L")],
        [random_image(seed + 3, (20, 3000)), palette, random_image(seed + 4, (333, 97))],
    ]


@pytest.mark.parametrize(
    "budget, padding_side",
    [
        (70, "right"),
        (140, "left"),
        (280, "right"),
        (280, "left"),
        pytest.param(560, "right", marks=pytest.mark.slow),
        pytest.param(1120, "left", marks=pytest.mark.slow),
    ],  # fmt: skip
)
def test_images_match_reference_at_each_budget(gemma4_dir, ref, budget, padding_side):
    ours = Gemma4Processor.from_pretrained(gemma4_dir, image_tokens=budget)
    images = mixed_images()
    out = ours(text=TEXTS, images=images, padding_side=padding_side)
    assert_same(out, run_ref(ref, TEXTS, images, padding_side, max_soft_tokens=budget))
    assert out["pixel_values"].shape == (6, budget * 9, 16 * 16 * 3)
    counts = ours.soft_token_counts([im for row in images for im in row])
    assert max(counts) <= budget and len(set(counts)) > 1
    assert out["mm_token_type_ids"].sum(1).tolist() == [sum(counts[:1]), sum(counts[1:3]), sum(counts[3:])]
    for positions, n in zip(out["image_position_ids"], counts, strict=True):
        real = positions[: n * 9]
        assert (real >= 0).all() and (positions[n * 9 :] == -1).all()
        cols, rows = (real.max(0).values + 1).tolist()  # patches of 16 px, 3 x 3 to a soft token: 48 px sides
        assert cols % 3 == 0 and rows % 3 == 0 and cols * rows == n * 9


def test_without_markers_the_images_come_first(ours, ref):
    images = mixed_images()
    texts = ["caption en", "what is in the image?", ""]
    expected = run_ref(ref, [IMAGE * len(ims) + t for t, ims in zip(texts, images, strict=True)], images)
    assert_same(ours(text=texts, images=images), expected)


def random_clip(seed, frames, size):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, size[1], size[0], 3), dtype=np.uint8)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_videos_and_images_match_reference(ours, ref, padding_side):
    # 2 fps: frames 0, 3 and 130 are at 00:00, 00:01 and 01:05
    clips = [random_clip(0, 3, (90, 40)), random_clip(1, 2, (30, 30)), random_clip(2, 1, (48, 48 * 9))]
    metadata = [
        {"total_num_frames": 200, "fps": 2.0, "frames_indices": [0, 3, 130]},
        {"total_num_frames": 20, "fps": 4.0, "frames_indices": [2, 7]},
        {"total_num_frames": 1, "fps": 24.0, "frames_indices": [0]},
    ]
    texts = [f"{VIDEO} what happens?", f"{IMAGE} then {VIDEO}{VIDEO} and", "no video"]
    images = [[], [random_image(0, (100, 40))], []]
    expected = run_ref(ref, texts, images, padding_side, videos=clips, video_metadata=metadata)
    videos = [
        VideoClip([Image.fromarray(f) for f in clip], [i / m["fps"] for i in m["frames_indices"]])
        for clip, m in zip(clips, metadata, strict=True)
    ]
    out = ours(text=texts, images=images, videos=[videos[:1], videos[1:], []], padding_side=padding_side)
    assert_same(out, expected)
    assert out["pixel_values_videos"].shape == (6, 70 * 9, 768)
    # 70 tokens at most a frame: 90 x 40 px makes 12 x 5 of them, 30 x 30 px 8 x 8, 48 x 432 px 2 x 25
    assert (out["mm_token_type_ids"] == 2).sum(1).tolist() == [3 * 60, 2 * 64 + 50, 0]
    decoded = ours.decode(out["input_ids"][0])
    assert "00:00 <|image>" in decoded and " 00:01 <|image>" in decoded and " 01:05 <|image>" in decoded


def test_plain_training_rows(ours):
    images = mixed_images()
    answers = ["a cat", "", "two dogs 🐕"]
    out = ours(text=TEXTS, images=images, suffix=answers, return_lengths=True)
    prompt_only = ours(text=TEXTS, images=images)
    for row, answer in enumerate(answers):
        n_prompt = int(out["prompt_lengths"][row])
        assert n_prompt == int(prompt_only["attention_mask"][row].sum())
        n_row = int(out["attention_mask"][row].sum())
        ids, labels = out["input_ids"][row, :n_row], out["labels"][row, :n_row]
        assert torch.equal(ids[:n_prompt], prompt_only["input_ids"][row, :n_prompt])
        assert (labels[:n_prompt] == -100).all() and torch.equal(labels[n_prompt:], ids[n_prompt:])
        assert ours.decode(ids[n_prompt:]) == answer + "<eos>"
        assert (out["labels"][row, n_row:] == -100).all()
        counts = ours.soft_token_counts(images[row])
        assert n_prompt == ours.prompt_length(TEXTS[row], len(images[row]), image_tokens=counts)
    assert not (out["labels"][out["mm_token_type_ids"] > 0] != -100).any()
    assert not out["truncated"].any()
    assert ours.stop_token_ids == [ours.eos_token_id]
    assert ours.prompt_length(TEXTS[0], 1) > ours.prompt_length(TEXTS[0], 1, image_tokens=[1])


# User turns as transformers' chat messages hold them, and as our processor's (text, number of images).
CHAT_TURNS = [
    ([{"type": "image"}, {"type": "text", "text": "caption en"}], "caption en", 1),
    (
        [{"type": "text", "text": "compare "}, {"type": "image"}, {"type": "text", "text": " and "}, {"type": "image"}],
        f"compare {IMAGE} and {IMAGE}",
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
    assert expected.startswith("<bos><|turn>user\n") and expected.endswith("<|turn>model\n")


def with_images(content, images):
    images = iter(images)
    return [dict(item, image=next(images)) if item["type"] == "image" else item for item in content]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_chat_rows_are_transformers_conversations(chat, ref, padding_side):
    images = mixed_images()
    answers = ["a cat", "  two dogs ", "yes\nno"]
    texts = [text for _, text, _ in CHAT_TURNS]
    out = chat(text=texts, images=images, suffix=answers, padding_side=padding_side, return_lengths=True)
    pixels = []
    for row, ((content, text, _), ims, answer) in enumerate(zip(CHAT_TURNS, images, answers, strict=True)):
        user = {"role": "user", "content": with_images(content, ims)}
        conversation = [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        expected = ref.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
        prompt = ref.apply_chat_template([user], tokenize=True, return_dict=True, add_generation_prompt=True)
        mask = out["attention_mask"][row].bool()
        ids, labels = out["input_ids"][row][mask], out["labels"][row][mask]
        assert torch.equal(ids, expected["input_ids"][0])
        assert torch.equal(out["mm_token_type_ids"][row][mask], expected["mm_token_type_ids"][0])
        n_prompt = len(prompt["input_ids"][0])
        counts = chat.soft_token_counts(ims)
        assert (
            int(out["prompt_lengths"][row])
            == n_prompt
            == chat.prompt_length(text, len(ims), image_tokens=counts)
        )
        assert (labels[:n_prompt] == -100).all() and torch.equal(labels[n_prompt:], ids[n_prompt:])
        assert chat.decode(ids[n_prompt:]) == answer.strip() + "<turn|>\n"
        assert (out["labels"][row][~mask] == -100).all()
        pixels.append(expected["pixel_values"])
    assert torch.equal(out["pixel_values"], torch.cat(pixels))
    assert chat.stop_token_ids == [chat.eos_token_id, chat.tokenizer.token_to_id("<turn|>")]


def test_truncation_keeps_the_final_stop_tokens(ours, chat):
    images = [random_image(0, (60, 30))] * 2
    for processor, end in [(ours, "<eos>"), (chat, "<turn|>\n")]:
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
        assert (cut["labels"][0, :n_prompt] == -100).all()
        with pytest.raises(ValueError, match="text 0: max_length"):  # a prompt is never cut, images included
            processor(text=["a"], images=images[:1], max_length=n_prompt - 1)


@pytest.mark.parametrize("budget", [0, 100, 256, 2240])
def test_image_budget_must_be_an_allowed_one(gemma4_dir, budget):
    with pytest.raises(
        ConfigError, match=rf"^image_tokens must be one of 70, 140, 280, 560, 1120 .*got {budget}$"
    ):
        Gemma4Processor.from_pretrained(gemma4_dir, image_tokens=budget)
    with pytest.raises(ConfigError, match=r"^image_tokens must be one of [^\n]*$"):
        load_processor(gemma4_dir, image_tokens=budget)


def test_marker_and_image_counts_must_agree(ours):
    with pytest.raises(ValueError, match=f"text 1 has 2 {IMAGE} markers for 1 images"):
        ours(text=["caption en", f"{IMAGE} and {IMAGE}"], images=[[random_image(0)], [random_image(1)]])
    with pytest.raises(ValueError, match="text 1 holds image tokens"):
        ours(text=["a", "<|image>"], images=[random_image(0)] * 2)
    with pytest.raises(ValueError, match=r"1 suffixes for 2 texts"):
        ours(text=["a", "b"], images=[random_image(0)] * 2, suffix=["x"])
    with pytest.raises(TypeError, match="PIL"):
        ours(text="a", images=[np.zeros((4, 4, 3), dtype=np.uint8)])


def test_load_processor_reads_the_files_as_a_gemma4_processor(gemma4_dir, ref, tmp_path):
    processor = load_processor(gemma4_dir, image_tokens=140)
    assert isinstance(processor, Gemma4Processor) and processor.num_image_tokens == 140
    assert load_processor(gemma4_dir).num_image_tokens == 280  # the files' max_soft_tokens
    tok = ref.tokenizer
    assert (processor.image_token_id, processor.video_token_id) == (ref.image_token_id, ref.video_token_id)
    assert processor.boi_token_id == tok.convert_tokens_to_ids(ref.boi_token)
    assert (processor.pad_token_id, processor.eos_token_id, processor.bos_token_id) == (
        tok.pad_token_id, tok.eos_token_id, tok.bos_token_id,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="pan & scan"):
        load_processor(gemma4_dir, do_pan_and_scan=True)
    save_processor_files(tmp_path, build_tokenizer(CORPUS, vocab_size=300), 24, 4)  # a PaliGemma's
    with pytest.raises(ConfigError, match="image_tokens=280: .* is a PaliGemmaProcessor"):
        load_processor(tmp_path, image_tokens=280)
