"""python -m paligemma.generate: one image, greedy or beam search, equal to the model's own generate."""

from paligemma.generate import main


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
