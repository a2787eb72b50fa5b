"""Generate text for one image with a PaliGemma checkpoint:

python -m paligemma.generate --model DIR --image PATH --prompt "caption en"
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image

from paligemma.data.processor import PaliGemmaProcessor
from paligemma.model import DTYPES, PaliGemmaForConditionalGeneration


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate text for one image with a PaliGemma checkpoint.")
    parser.add_argument("--model", required=True, help="HF-format checkpoint directory or hub id")
    parser.add_argument("--image", required=True, help="path of the image")
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
    args = parser.parse_args(argv)

    processor = PaliGemmaProcessor.from_pretrained(args.model)
    model = PaliGemmaForConditionalGeneration.from_pretrained(
        args.model, dtype=DTYPES[args.dtype], device=args.device
    ).eval()
    with Image.open(args.image) as image:
        batch = processor(text=[args.prompt], images=[image], padding_side="left")
    batch = {k: v.to(args.device) for k, v in batch.items()}
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
    print(processor.batch_decode(new_tokens, skip_special_tokens=True)[0])


if __name__ == "__main__":
    main()
