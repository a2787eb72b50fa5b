"""Generate text for one image (or several, or a video's frames, for one prompt) with a PaliGemma checkpoint:

python -m paligemma.generate --model DIR --image PATH --prompt "caption en"
python -m paligemma.generate --model DIR --image a.jpg --image b.jpg --prompt "answer en which is larger?"
python -m paligemma.generate --model DIR --video clip.mp4 --num-frames 8 --prompt "caption en"
python -m paligemma.generate --model DIR --video clip.mp4 --num-frames 16 --frame-token-pool 2  # a quarter of the tokens
python -m paligemma.generate --adapter logs/train/runs/<date>_<time>/adapter --image PATH --prompt "caption en"
python -m paligemma.generate --model DIR --image PATH --prompt "segment cat" --output cat.png

``--adapter`` puts the PEFT adapter a LoRA run writes (``<run>/adapter``) on its base, ``--model`` or, without it,
the base its adapter_config.json records, and merges it. The answer is printed as the model writes it, location
and segmentation tokens included; when it holds objects (``segment ...``: masks and boxes, ``detect ...``: boxes)
and the prompt has one image, the picture with them drawn is written to ``--output`` (segmentation.png).

A bad option (a missing or unreadable image, a model or adapter dir that is not one, an adapter made for another
base, an impossible sampling setting, a device this machine lacks) exits with status 1 and one line,
``error: <message>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

import torch
from PIL import Image, UnidentifiedImageError

from paligemma.data.overlay import answer_overlay
from paligemma.data.processors import load_processor
from paligemma.errors import ConfigError, MissingFileError, find_run_error, one_line
from paligemma.model import DTYPES
from paligemma.model.families import model_class
from paligemma.model.lora import load_adapter
from paligemma.model.mask_vae import MaskVAE
from paligemma.model.vision_language import VisionLanguageModel
from paligemma.paths import local_path, looks_local, read_json

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MASK_VAE = REPO_ROOT / "assets" / "tiny-mask-vae" / "mask_vae.safetensors"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Generate text for one image with a PaliGemma checkpoint.")
    parser.add_argument("--model", help="HF-format checkpoint directory or hub id; with --adapter, its base "
                        "(default: the base the adapter records)")  # fmt: skip
    parser.add_argument(
        "--adapter", help="PEFT adapter directory (a LoRA run's <run>/adapter), merged into the base"
    )
    pictures = parser.add_mutually_exclusive_group(required=True)
    pictures.add_argument("--image", action="append",
                          help="path of the image; repeat it for several images in one prompt, in order")  # fmt: skip
    pictures.add_argument(
        "--video", help="path of a video: --num-frames frames of it, uniformly over the clip"
    )
    parser.add_argument("--num-frames", type=int, default=8, help="with --video")
    parser.add_argument("--frame-token-pool", type=int, default=1,
                        help="image tokens of each picture pooled P x P, as data.frame_token_pool in training")  # fmt: skip
    parser.add_argument("--pan-and-scan", action="store_true",
                        help="Gemma 3: crops of a wide or tall image too, as data.pan_and_scan in training")  # fmt: skip
    parser.add_argument("--prompt", default="caption en", help='task prefix, e.g. "caption en"')
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams if > 1")
    parser.add_argument("--output", default="segmentation.png",
                        help="where the picture with the answer's masks and boxes goes, when it has objects")  # fmt: skip
    parser.add_argument("--mask-vae", default=str(TINY_MASK_VAE),
                        help="the mask VQ-VAE that decodes <seg> tokens: .safetensors, or big_vision's vae-oid.npz "
                        "for the hub's checkpoints (default: the tiny model's)")  # fmt: skip
    return parser.parse_args(argv)


def check_options(args: argparse.Namespace) -> torch.device:
    """The options' values that no model could run, as a ConfigError naming the option; the device."""
    if args.num_frames < 1:
        raise ConfigError(f"--num-frames must be at least 1, got {args.num_frames}")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.num_beams < 1:
        raise ConfigError(f"--num-beams must be at least 1, got {args.num_beams}")
    if args.num_beams > 1 and args.sample:
        raise ConfigError("--num-beams > 1 with --sample: beam sampling is not supported; drop one of them")
    if args.temperature <= 0:
        raise ConfigError(
            f"--temperature must be above 0, got {args.temperature} (greedy: leave out --sample)"
        )
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ConfigError(
            f"--device: {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: this machine has no CUDA GPU (use --device cpu)")
    return device


def read_image(path: str) -> Image.Image:
    try:
        with Image.open(local_path(path)) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise ConfigError(f"--image: {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigError(f"--image: {path} is not a picture PIL can read ({one_line(error)})") from None


def read_video(path: str, num_frames: int) -> list[Image.Image]:
    from paligemma.data.video import read_frames

    if not local_path(path).is_file():
        raise ConfigError(f"--video: {path} does not exist")
    try:
        return read_frames(str(local_path(path)), num_frames)
    except ValueError as error:
        raise ConfigError(f"--video: {path}: {one_line(error)}") from None


def adapter_config(adapter: str) -> dict:
    """The adapter_config.json of the PEFT adapter dir ``adapter``: a missing dir or file is a one-line error."""
    directory = local_path(adapter)
    if not directory.is_dir():
        raise MissingFileError(f"--adapter: {adapter} is not a directory (a LoRA run writes <run>/adapter)")
    if not (directory / "adapter_config.json").is_file():
        raise MissingFileError(
            f"--adapter: {adapter} has no adapter_config.json, so it is no PEFT adapter (a LoRA run writes "
            "<run>/adapter)"
        )
    config = read_json(directory / "adapter_config.json")
    if not isinstance(config, dict):
        raise ConfigError(f"--adapter: {directory / 'adapter_config.json'} is not a JSON object")
    return config


def same_model(a: str, b: str) -> bool:
    """Whether two model paths (or hub ids) name the same model."""
    if looks_local(a) and looks_local(b):
        return local_path(a).resolve() == local_path(b).resolve()
    return a == b


def base_model(args: argparse.Namespace) -> str:
    """The base to load: ``--model``, or else the one ``--adapter`` records (base_model_name_or_path)."""
    if args.adapter is None:
        if args.model is None:
            raise ConfigError(
                "give --model (a checkpoint dir or hub id) or --adapter (a LoRA run's <run>/adapter)"
            )
        return args.model
    recorded = adapter_config(args.adapter).get("base_model_name_or_path")
    if args.model is not None:
        if recorded and not same_model(args.model, recorded):
            print(
                f"note: adapter {args.adapter} was trained on {recorded}; putting it on {args.model}",
                file=sys.stderr,
            )
        return args.model
    if not recorded:
        raise ConfigError(
            f"--adapter: {args.adapter}/adapter_config.json records no base model (base_model_name_or_path): "
            "give --model"
        )
    if looks_local(recorded) and not local_path(recorded).is_dir():
        raise ConfigError(
            f"--adapter: the base model {args.adapter}/adapter_config.json records, {recorded}, is not a "
            "directory: give --model"
        )
    return recorded


def load_model(
    base: str, adapter: str | None, dtype: torch.dtype, device: torch.device
) -> VisionLanguageModel:
    """The checkpoint ``base`` in eval mode, with the PEFT adapter dir ``adapter`` merged into it when given."""
    model = model_class(base).from_pretrained(base, dtype=dtype, device=device)
    if adapter is not None:
        model = load_adapter(model, adapter, base=base).merge_and_unload()
    return cast(VisionLanguageModel, model).eval()


def generate(args: argparse.Namespace) -> str:
    """The answer to ``--prompt`` about the pictures, special tokens dropped, location and segmentation kept."""
    device = check_options(args)
    base = base_model(args)
    images = read_video(args.video, args.num_frames) if args.video else [read_image(p) for p in args.image]
    pan_and_scan = {"do_pan_and_scan": True} if args.pan_and_scan else {}
    processor = load_processor(base, args.frame_token_pool, **pan_and_scan)
    model = load_model(base, args.adapter, DTYPES[args.dtype], device)
    batch = processor(text=[args.prompt], images=[images], padding_side="left")
    batch = {k: v.to(device) for k, v in batch.items()}
    new_tokens = model.generate(
        **batch,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        num_beams=args.num_beams,
    )
    return processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


def read_mask_vae(path: str) -> MaskVAE:
    try:
        return MaskVAE.from_pretrained(local_path(path))
    except MissingFileError as error:
        raise MissingFileError(f"--mask-vae: {error}") from None


def write_overlay(text: str, image: Image.Image, mask_vae: str, path: str) -> bool:
    """The picture with the answer's objects drawn (paligemma/data/overlay.py) written to ``path``; whether
    there was any (no object parses: nothing written). ``mask_vae``: the VAE's weights, read for masks only."""
    overlay = answer_overlay(text, image, lambda: read_mask_vae(mask_vae))
    if overlay is None:
        return False
    try:
        overlay.save(local_path(path))
    except (OSError, ValueError) as error:
        raise ConfigError(f"--output: cannot write {path} ({one_line(error)})") from None
    print(f"wrote overlay: {path}", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        text = generate(args)
        print(text, flush=True)
        if args.image and len(args.image) == 1:
            write_overlay(text, read_image(args.image[0]), args.mask_vae, args.output)
    except Exception as error:
        if (known := find_run_error(error)) is None:
            raise
        sys.exit(f"error: {one_line(known)}")


if __name__ == "__main__":
    main()
