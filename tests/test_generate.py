"""python -m paligemma.generate: one image, greedy or beam search, equal to the model's own generate; bad options
end in one line."""

import numpy as np
import pytest
import torch

from paligemma.generate import main


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_command_line_generates_for_one_image(tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from paligemma import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    image_path = tmp_path / "picture.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(image_path)
    command = [sys.executable, "-m", "paligemma.generate", "--model", str(tiny_checkpoint), "--image",
               str(image_path), "--prompt", "caption en", "--max-new-tokens", "5"]  # fmt: skip
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    processor = PaliGemmaProcessor.from_pretrained(tiny_checkpoint)
    model = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    batch = processor(text=["caption en"], images=[Image.open(image_path)], padding_side="left")
    expected = processor.batch_decode(model.generate(**batch, max_new_tokens=5), skip_special_tokens=True)[0]
    assert printed == expected + "\n"


def test_command_line_beam_search(tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    from paligemma import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    image_path = tmp_path / "picture.png"
    Image.new("RGB", (50, 40), (30, 200, 30)).save(image_path)
    main(
        [
            "--model",
            str(tiny_checkpoint),
            "--image",
            str(image_path),
            "--max-new-tokens",
            "6",
            "--num-beams",
            "2",
        ]
    )
    processor = PaliGemmaProcessor.from_pretrained(tiny_checkpoint)
    model = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    batch = processor(text=["caption en"], images=[Image.open(image_path)], padding_side="left")
    new_tokens = model.generate(**batch, max_new_tokens=6, num_beams=2)
    assert capsys.readouterr().out == processor.batch_decode(new_tokens, skip_special_tokens=True)[0] + "\n"


def broken_model(checkpoint, target, fault: str):
    """A copy of ``checkpoint`` with its weights cut short, or its config.json torn."""
    import shutil

    shutil.copytree(checkpoint, target)
    name = {"truncated weights": "model.safetensors", "torn config": "config.json"}[fault]
    data = (target / name).read_bytes()
    (target / name).write_bytes(data[: len(data) // 2])
    return target


GENERATE_ERRORS = {
    "missing image": (["--image", "{tmp}/none.jpg"], "--image: {tmp}/none.jpg does not exist"),
    "not a picture": (["--image", "{tmp}/notes.txt"], "--image: {tmp}/notes.txt is not a picture PIL can read"),
    "directory as image": (["--image", "{tmp}"], "--image: {tmp} is not a picture PIL can read"),
    "missing model": (["--model", "{tmp}/none"], "{tmp}/none is not a directory, nor a hub id"),
    "truncated weights": (["--model", "{tmp}/truncated weights"], "model.safetensors is truncated"),
    "torn config": (["--model", "{tmp}/torn config"], "config.json is not JSON"),
    "no new tokens": (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    "beams with sampling": (["--num-beams", "2", "--sample"], "--num-beams > 1 with --sample"),
    "zero temperature": (["--temperature", "0"], "--temperature must be above 0"),
    "top-p above 1": (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    "no GPU": (["--device", "cuda"], "--device cuda: this machine has no CUDA GPU"),
    "no such device": (["--device", "gpu0"], "--device: 'gpu0' is not a torch device"),
    "pan & scan on a PaliGemma": (["--pan-and-scan"], "is a PaliGemma, whose prompts have no crops"),
    "missing adapter": (["--adapter", "{tmp}/none"], "--adapter: {tmp}/none is not a directory"),
    "adapter without its config": (["--adapter", "{tmp}"], "--adapter: {tmp} has no adapter_config.json"),
    "adapter for another base": (["--adapter", "{tmp}/adapter"], "adapter {tmp}/adapter does not fit the base model"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(GENERATE_ERRORS))
def test_bad_options_end_in_one_line_naming_the_culprit(tiny_checkpoint, tmp_path, case):
    import subprocess
    import sys

    from PIL import Image

    from tests.helpers import assert_one_line_error

    if case == "no GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    Image.new("RGB", (20, 20)).save(tmp_path / "picture.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    if case in ("truncated weights", "torn config"):
        broken_model(tiny_checkpoint, tmp_path / case, case)
    if case == "adapter for another base":
        write_adapter(tmp_path / "adapter", tiny_base())  # tiny-paligemma's, on the smaller tiny_checkpoint
    options, culprit = GENERATE_ERRORS[case]
    args = ["--model", str(tiny_checkpoint), "--image", str(tmp_path / "picture.png")]
    args += [o.format(tmp=tmp_path) for o in options]  # argparse: the last --model / --image wins
    result = subprocess.run(
        [sys.executable, "-m", "paligemma.generate", *args], capture_output=True, text=True
    )
    assert_one_line_error(result, culprit.format(tmp=tmp_path))


def test_several_images_generate_for_one_prompt_as_the_processor_batches_them(tiny_checkpoint, tmp_path):
    from PIL import Image

    from paligemma import PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from paligemma.generate import generate, parse_args

    paths = [tmp_path / "red.png", tmp_path / "blue.png"]
    for path, color in zip(paths, [(200, 30, 30), (30, 30, 200)], strict=True):
        Image.new("RGB", (50, 40), color).save(path)
    args = parse_args(["--model", str(tiny_checkpoint), "--image", str(paths[0]), "--image", str(paths[1]),
                       "--prompt", "caption en", "--max-new-tokens", "5"])  # fmt: skip
    processor = PaliGemmaProcessor.from_pretrained(tiny_checkpoint)
    model = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    images = [[Image.open(p) for p in paths]]
    batch = processor(text=["caption en"], images=images, padding_side="left")
    assert batch["pixel_values"].shape[0] == 2
    expected = processor.batch_decode(model.generate(**batch, max_new_tokens=5), skip_special_tokens=True)[0]
    assert generate(args) == expected


def test_pan_and_scan_generates_from_the_picture_and_its_crops(tiny_gemma3_chat_checkpoint, tmp_path):
    from PIL import Image

    from paligemma import Gemma3ForConditionalGeneration, Gemma3Processor
    from paligemma.generate import generate, parse_args

    noise = np.random.default_rng(0).integers(0, 256, (300, 900, 3), dtype=np.uint8)  # crops unlike the whole
    Image.fromarray(noise).save(tmp_path / "wide.png")
    options = ["--model", str(tiny_gemma3_chat_checkpoint), "--image", str(tmp_path / "wide.png"),
               "--prompt", "caption en", "--max-new-tokens", "8"]  # fmt: skip
    processor = Gemma3Processor.from_pretrained(tiny_gemma3_chat_checkpoint, do_pan_and_scan=True)
    model = Gemma3ForConditionalGeneration.from_pretrained(tiny_gemma3_chat_checkpoint).eval()
    batch = processor(text=["caption en"], images=[[Image.open(tmp_path / "wide.png")]], padding_side="left")
    assert batch["pixel_values"].shape[0] == 4  # the picture and 3 crops of 300 x 300
    expected = processor.batch_decode(model.generate(**batch, max_new_tokens=8), skip_special_tokens=True)[0]
    assert generate(parse_args([*options, "--pan-and-scan"])) == expected
    assert generate(parse_args(options)) != expected  # without the crops: another prompt, other tokens


def test_a_video_generates_from_its_frames_and_a_bad_one_is_one_line(tiny_checkpoint, tmp_path):
    pytest.importorskip("av")
    from paligemma import PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from paligemma.data.video import read_frames
    from paligemma.errors import ConfigError
    from paligemma.generate import generate, parse_args
    from tests.helpers import write_clip

    clip = write_clip(tmp_path / "clip.mp4")
    options = ["--model", str(tiny_checkpoint), "--prompt", "caption en", "--max-new-tokens", "4"]
    processor = PaliGemmaProcessor.from_pretrained(tiny_checkpoint)
    model = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    batch = processor(text=["caption en"], images=[read_frames(str(clip), 3)], padding_side="left")
    expected = processor.batch_decode(model.generate(**batch, max_new_tokens=4), skip_special_tokens=True)[0]
    assert generate(parse_args([*options, "--video", str(clip), "--num-frames", "3"])) == expected
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ConfigError, match="--video: .*bad.mp4: video does not decode"):
        generate(parse_args([*options, "--video", str(tmp_path / "bad.mp4")]))
    with pytest.raises(ConfigError, match="--num-frames must be at least 1"):
        generate(parse_args([*options, "--video", str(clip), "--num-frames", "0"]))


# ---- --adapter: a LoRA run's adapter on its base ----


def write_adapter(directory, base, seed: int = 1):
    """A LoRA adapter on ``base`` whose B weights are random (a fresh one's are 0 and change nothing), saved as
    training saves it, its base recorded; and the PeftModel it came from. The seed fixes A and B: seed 1's
    adapter makes the tiny base caption the test's red picture otherwise (seed 0's does not)."""
    from paligemma import PaliGemmaForConditionalGeneration
    from paligemma.model.lora import add_lora, save_adapter

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        peft_model = add_lora(PaliGemmaForConditionalGeneration.from_pretrained(base).eval())
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1
    peft_model.peft_config["default"].base_model_name_or_path = str(base)  # as training/export.py records it
    save_adapter(peft_model, directory)
    return peft_model


def checkout_env() -> dict[str, str]:
    """The environment, with this checkout first on the path of a subprocess run in another directory."""
    import os

    from tests.helpers import ROOT

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def tiny_base():
    from tests.helpers import ROOT

    return ROOT / "assets" / "tiny-paligemma"


@pytest.mark.slow  # a subprocess
def test_command_line_generates_with_an_adapter_on_the_base_it_records(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from paligemma import PaliGemmaProcessor
    from paligemma.generate import generate, parse_args

    peft_model = write_adapter(tmp_path / "adapter", tiny_base())
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "picture.png")
    options = ["--image", str(tmp_path / "picture.png"), "--prompt", "caption en", "--max-new-tokens", "8"]
    command = [sys.executable, "-m", "paligemma.generate", "--adapter", str(tmp_path / "adapter"), *options]
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    processor = PaliGemmaProcessor.from_pretrained(tiny_base())
    batch = processor(text=["caption en"], images=[Image.open(tmp_path / "picture.png")], padding_side="left")
    expected = processor.batch_decode(
        peft_model.generate(**batch, max_new_tokens=8), skip_special_tokens=True
    )[0]
    with peft_model.disable_adapter():
        base_text = processor.batch_decode(
            peft_model.generate(**batch, max_new_tokens=8), skip_special_tokens=True
        )
    assert printed == expected + "\n"
    assert expected != base_text[0]
    with_model = ["--model", str(tiny_base()), "--adapter", str(tmp_path / "adapter"), *options]
    assert generate(parse_args(with_model)) == expected


def test_an_adapter_that_records_no_base_needs_model(tmp_path):
    import json

    from paligemma.errors import ConfigError
    from paligemma.generate import generate, parse_args

    write_adapter(tmp_path / "adapter", tiny_base())
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": None})
    )
    options = ["--adapter", str(tmp_path / "adapter"), "--image", str(tmp_path / "none.png")]
    with pytest.raises(ConfigError, match="adapter_config.json records no base model .*: give --model"):
        generate(parse_args(options))
    with pytest.raises(ConfigError, match="give --model .* or --adapter"):
        generate(parse_args(["--image", str(tmp_path / "none.png")]))


# ---- the overlay of a segmentation or detection answer ----


def random_mask_vae(path):
    """A small random MaskVAE saved at ``path``, its last bias set so that code 5's mask is half in, half out."""
    from paligemma.model.mask_vae import MaskVAE

    torch.manual_seed(0)
    vae = MaskVAE(widths=(4, 8, 8, 8), embedding_dim=8)
    last = vae.decoder[-1]
    assert isinstance(last, torch.nn.Conv2d) and last.bias is not None
    with torch.no_grad():
        last.bias -= vae.decode(torch.full((1, 16), 5)).median()
    vae.save_pretrained(path)
    return vae


def test_a_segmentation_answer_is_drawn_with_its_decoded_masks_and_needs_the_mask_vae(tmp_path):
    from PIL import Image

    from paligemma.data.boxes import Box
    from paligemma.data.overlay import ALPHA, colour
    from paligemma.data.segments import (
        Segment,
        parse_segments,
        paste_mask,
        pixel_corners,
        segmentation_target,
    )
    from paligemma.errors import MissingFileError
    from paligemma.generate import write_overlay

    vae = random_mask_vae(tmp_path / "vae.safetensors")
    image = Image.new("RGB", (120, 90), (40, 40, 40))
    text = segmentation_target([Segment(Box(0.2, 0.1, 0.9, 0.7, "cat"), (5,) * 16)]) + " ; <loc0001> broken"
    assert write_overlay(text, image, str(tmp_path / "vae.safetensors"), str(tmp_path / "out.png"))

    segment = parse_segments(text).segments[0]  # its box as the loc tokens round it
    mask = paste_mask(vae.decode(torch.tensor([segment.codes]))[0].detach(), segment.box, 120, 90)
    y0, x0, y1, x1 = pixel_corners(segment.box, 120, 90)
    inside = np.zeros_like(mask)
    inside[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = True  # off the box's outline
    assert 0.2 < mask[inside].mean() < 0.8  # both in and out: the test sees where the mask is
    drawn = np.asarray(Image.open(tmp_path / "out.png"))
    tinted = np.round((1 - ALPHA) * 40 + ALPHA * np.array(colour(0))).astype(np.uint8)
    assert (drawn[mask & inside] == tinted).all()
    assert (drawn[~mask & inside] == 40).all()
    with pytest.raises(
        MissingFileError, match=r"--mask-vae: mask VAE weights .*none.safetensors do not exist"
    ):
        write_overlay(text, image, str(tmp_path / "none.safetensors"), str(tmp_path / "out.png"))


def test_a_detection_answer_is_drawn_without_a_mask_vae_a_caption_is_not_and_a_bad_output_is_one_line(
    tmp_path,
):
    from PIL import Image

    from paligemma.data.boxes import Box, detection_target, parse_boxes
    from paligemma.data.overlay import colour
    from paligemma.data.segments import pixel_corners
    from paligemma.errors import ConfigError
    from paligemma.generate import write_overlay

    image = Image.new("RGB", (120, 90), (40, 40, 40))
    detection = detection_target([Box(0.2, 0.1, 0.9, 0.7, "cat")])
    assert write_overlay(detection, image, str(tmp_path / "none.safetensors"), str(tmp_path / "boxes.png"))
    y0, x0, y1, x1 = pixel_corners(parse_boxes(detection)[0], 120, 90)
    drawn = np.asarray(Image.open(tmp_path / "boxes.png"))
    assert (drawn[y0:y1, x0] == colour(0)).all() and (drawn[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] == 40).all()
    assert not write_overlay(
        "a cat on a mat", image, str(tmp_path / "none.safetensors"), str(tmp_path / "no.png")
    )
    assert not (tmp_path / "no.png").exists()
    with pytest.raises(ConfigError, match=r"--output: cannot write .*/missing/boxes.png"):
        write_overlay(
            detection, image, str(tmp_path / "none.safetensors"), str(tmp_path / "missing" / "boxes.png")
        )


def test_the_answer_is_printed_with_its_location_and_segmentation_tokens_and_drawn_to_output(
    tmp_path, monkeypatch, capsys
):
    from PIL import Image

    from paligemma import PaliGemmaProcessor
    from paligemma.data.boxes import Box
    from paligemma.data.segments import Segment, segmentation_target
    from paligemma.model.vision_language import VisionLanguageModel

    random_mask_vae(tmp_path / "vae.safetensors")
    answer = segmentation_target([Segment(Box(0.2, 0.1, 0.9, 0.7, "cat"), (5,) * 16)])
    ids = PaliGemmaProcessor.from_pretrained(tiny_base())._encode([answer])[0]
    monkeypatch.setattr(VisionLanguageModel, "generate", lambda *args, **kwargs: torch.tensor([ids + [1]]))
    Image.new("RGB", (120, 90), (40, 40, 40)).save(tmp_path / "picture.png")
    main(["--model", str(tiny_base()), "--image", str(tmp_path / "picture.png"), "--prompt", "segment cat",
          "--mask-vae", str(tmp_path / "vae.safetensors"), "--output", str(tmp_path / "cat.png")])  # fmt: skip
    printed = capsys.readouterr()
    assert printed.out == answer + "\n"
    assert printed.err == f"wrote overlay: {tmp_path / 'cat.png'}\n"
    assert (np.asarray(Image.open(tmp_path / "cat.png")) != 40).any()


@pytest.mark.slow  # a subprocess
def test_command_line_writes_no_overlay_when_no_object_parses(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from paligemma.data.boxes import parse_boxes
    from paligemma.data.segments import parse_segments

    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "picture.png")
    command = [sys.executable, "-m", "paligemma.generate", "--model", str(tiny_base()), "--image",
               str(tmp_path / "picture.png"), "--prompt", "segment square", "--max-new-tokens", "8"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=tmp_path, env=checkout_env()
    )
    assert not parse_segments(result.stdout).segments and not parse_boxes(
        result.stdout
    )  # the untrained answer
    assert list(tmp_path.iterdir()) == [tmp_path / "picture.png"]  # no segmentation.png in the cwd
    assert "overlay" not in result.stderr
