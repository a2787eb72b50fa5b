"""Tiny PaliGemma checkpoints built from scratch: the starting point of the embedded default model.

    python -m paligemma.tiny --out checkpoints/tiny-random

writes a randomly initialised HF-format PaliGemma with a byte-fallback tokenizer trained on the
synthetic shapes texts; ``python train.py experiment=pretrain_tiny`` then trains every parameter on
the synthetic captions.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from paligemma.config import PaliGemmaConfig
from paligemma.gemma import GemmaRMSNorm
from paligemma.model import PaliGemmaForConditionalGeneration
from paligemma.tokenizer import IMAGE_TOKEN, build_tokenizer, save_processor_files

TINY_VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                   image_size=64, patch_size=8)  # fmt: skip
TINY_TEXT = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=48)  # fmt: skip


def init_weights_(model: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Initialise by module type: Normal(0, std) matrices, embeddings and convolutions, zero biases,
    LayerNorm (w, b) = (1, 0), Gemma RMSNorm w = 0 (its scale is 1 + w: identity).

    A module type with parameters of its own and no rule here is an error, not a silent zero.
    """
    gen = torch.Generator().manual_seed(seed)
    done: set[int] = set()  # tied parameters (lm_head = embed_tokens) are drawn once
    with torch.no_grad():
        for module in model.modules():
            params = [p for p in module.parameters(recurse=False) if id(p) not in done]
            if not params:
                continue
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, GemmaRMSNorm):
                module.weight.zero_()
            elif isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            else:
                raise TypeError(f"init_weights_ has no rule for {type(module).__name__}")
            done.update(id(p) for p in params)


def create_tiny_checkpoint(
    out_dir: str | Path,
    texts: Iterable[str],
    vocab_size: int = 512,
    vision: dict | None = None,
    text: dict | None = None,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``texts``, build a random PaliGemma around it and save both to ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    text_config = dict(TINY_TEXT if text is None else text, vocab_size=tokenizer.get_vocab_size())
    config = PaliGemmaConfig(
        vision_config=dict(TINY_VISION if vision is None else vision),
        text_config=text_config,
        image_token_index=tokenizer.token_to_id(IMAGE_TOKEN),
        projection_dim=text_config["hidden_size"],
    )
    model = PaliGemmaForConditionalGeneration(config)
    init_weights_(model, seed=seed)
    model.save_pretrained(out_dir)
    save_processor_files(out_dir, tokenizer, config.vision_config.image_size, config.num_image_tokens)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    from paligemma.synthetic import make_shapes_dataset, synthetic_texts

    parser = argparse.ArgumentParser(
        description="Write a random tiny PaliGemma + tokenizer (synthetic texts)."
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    texts = synthetic_texts(make_shapes_dataset(num_train=2000, num_val=0, seed=args.seed))
    path = create_tiny_checkpoint(args.out, texts, vocab_size=args.vocab_size, seed=args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
