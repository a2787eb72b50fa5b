"""Tiny PaliGemma, Gemma 3 and Gemma 4 checkpoints built from scratch: the starting point of the embedded default
model.

    python -m paligemma.tiny --out checkpoints/tiny-random [--decoder gemma2] [--family gemma3|gemma4]

writes a randomly initialised HF-format PaliGemma (``--decoder gemma2``: a PaliGemma 2; ``--family gemma3``: a
Gemma 3 with its processor files and chat template; ``--family gemma4``: a Gemma 4, likewise) with a byte-fallback tokenizer trained on the synthetic shapes
texts; ``python train.py experiment=pretrain_tiny`` then trains every parameter on the synthetic captions.
``random_batch`` makes prefix-LM batches of any config, for tests and benchmarks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from paligemma.data import gemma4_files
from paligemma.data.gemma3_files import save_gemma3_processor_files
from paligemma.data.tokenizer import (
    BOI_TOKEN,
    END_OF_TURN,
    EOI_TOKEN,
    IMAGE_SOFT_TOKEN,
    IMAGE_TOKEN,
    build_tokenizer,
    save_processor_files,
)
from paligemma.errors import ConfigError, RunError, one_line
from paligemma.model.config import PaliGemmaConfig
from paligemma.model.gemma import GemmaRMSNorm
from paligemma.model.gemma3 import Gemma3ForConditionalGeneration, Gemma3MultiModalProjector
from paligemma.model.gemma3_config import Gemma3Config
from paligemma.model.gemma4 import Gemma4ForConditionalGeneration
from paligemma.model.gemma4_config import Gemma4Config
from paligemma.model.gemma4_vision import Gemma4RMSNorm, Gemma4VisionPatchEmbedder
from paligemma.model.paligemma import PaliGemmaForConditionalGeneration

TINY_VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                   image_size=64, patch_size=8)  # fmt: skip
TINY_TEXT = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=48)  # fmt: skip
# PaliGemma 2's decoder at the same size: grouped KV heads, soft-caps 50 / 30 (Gemma 2's defaults) and a
# window of 32 slots, shorter than the 64 image tokens, on even layers.
TINY_TEXT_GEMMA2 = dict(TINY_TEXT, model_type="gemma2", num_key_value_heads=2, query_pre_attn_scalar=48,
                        sliding_window=32)  # fmt: skip
TINY_TEXTS_BY_DECODER = {"gemma": TINY_TEXT, "gemma2": TINY_TEXT_GEMMA2}
# Gemma 3's decoder at the same size: QK norms, three sliding layers (window 32) then a full one, each type with its
# own RoPE base; the 8x8 patches of a 64 px image pooled to 16 tokens.
TINY_TEXT_GEMMA3 = dict(TINY_TEXT, model_type="gemma3_text", num_key_value_heads=2, query_pre_attn_scalar=48,
                        sliding_window=32, layer_types=["sliding_attention"] * 3 + ["full_attention"],
                        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0)  # fmt: skip
TINY_GEMMA3_IMAGE_TOKENS = 16
# Gemma 4 at the same width: per-layer embeddings (16 wide), three sliding layers (window 32) then a full one with
# wider heads and RoPE on a quarter of them, each image's tokens bidirectional on the sliding layers ("vision"), a
# final soft-cap; the tower takes the processor's 16 px patches, at most 70 soft tokens per image.
TINY_TEXT_GEMMA4 = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=48, global_head_dim=96, sliding_window=32,
                        layer_types=["sliding_attention"] * 3 + ["full_attention"], hidden_size_per_layer_input=16,
                        use_bidirectional_attention="vision", final_logit_softcapping=30.0)  # fmt: skip
TINY_VISION_GEMMA4 = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=4, head_dim=32, patch_size=16, position_embedding_size=128)  # fmt: skip
TINY_GEMMA4_IMAGE_TOKENS = 70


def init_weights_(model: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Initialise by module type: Normal(0, std) matrices (Gemma 3's projector too), embeddings and convolutions, zero biases,
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
            elif isinstance(module, GemmaRMSNorm):  # identity: 1 + w with w = 0, or w = 1 (Gemma 4's)
                module.weight.fill_(1.0 - module.offset)
            elif isinstance(module, Gemma4RMSNorm):
                assert module.weight is not None  # a norm without a scale has no parameter
                module.weight.fill_(1.0)
            elif isinstance(
                module, Gemma4VisionPatchEmbedder
            ):  # its position table is a parameter of its own
                table = module.position_embedding_table
                table.copy_(torch.randn(table.shape, generator=gen) * std)
            elif isinstance(module, Gemma3MultiModalProjector):  # its matrix is a parameter of its own
                weight = module.mm_input_projection_weight
                weight.copy_(torch.randn(weight.shape, generator=gen) * std)
            elif isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                bias = getattr(module, "bias", None)  # nn.Embedding has none
                if bias is not None:
                    bias.zero_()
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
    image_token_index = tokenizer.token_to_id(IMAGE_TOKEN)
    assert image_token_index is not None  # build_tokenizer adds it
    config = PaliGemmaConfig.from_dict(
        dict(
            vision_config=dict(TINY_VISION if vision is None else vision),
            text_config=text_config,
            image_token_index=image_token_index,
        )
    )
    model = PaliGemmaForConditionalGeneration(config)
    init_weights_(model, seed=seed)
    model.save_pretrained(out_dir)
    save_processor_files(out_dir, tokenizer, config.vision_config.image_size, config.num_image_tokens)
    return out_dir


def create_tiny_gemma3_checkpoint(
    out_dir: str | Path,
    texts: Iterable[str],
    vocab_size: int = 512,
    vision: dict | None = None,
    text: dict | None = None,
    mm_tokens_per_image: int = TINY_GEMMA3_IMAGE_TOKENS,
    seed: int = 0,
) -> Path:
    """Train a Gemma 3 tokenizer on ``texts``, build a random Gemma 3 around it and save both (with the processor
    files and the chat template) to ``out_dir``. It stops at ``<eos>`` and ``<end_of_turn>``, as the -it
    checkpoints."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size, gemma3=True)
    ids = {t: token_id(tokenizer, t) for t in (BOI_TOKEN, EOI_TOKEN, IMAGE_SOFT_TOKEN, END_OF_TURN)}
    text_config = dict(
        TINY_TEXT_GEMMA3 if text is None else text,
        vocab_size=tokenizer.get_vocab_size(),
        eos_token_id=[tokenizer.token_to_id("<eos>"), ids[END_OF_TURN]],
    )
    config = Gemma3Config.from_dict(
        dict(
            vision_config=dict(TINY_VISION if vision is None else vision),
            text_config=text_config,
            mm_tokens_per_image=mm_tokens_per_image,
            boi_token_index=ids[BOI_TOKEN],
            eoi_token_index=ids[EOI_TOKEN],
            image_token_index=ids[IMAGE_SOFT_TOKEN],
        )
    )
    model = Gemma3ForConditionalGeneration(config)
    init_weights_(model, seed=seed)
    model.save_pretrained(out_dir)
    save_gemma3_processor_files(out_dir, tokenizer, config.vision_config.image_size, mm_tokens_per_image)
    return out_dir


def create_tiny_gemma4_checkpoint(
    out_dir: str | Path,
    texts: Iterable[str],
    vocab_size: int = 512,
    vision: dict | None = None,
    text: dict | None = None,
    image_tokens: int = TINY_GEMMA4_IMAGE_TOKENS,
    seed: int = 0,
) -> Path:
    """Train a Gemma 4 tokenizer on ``texts``, build a random Gemma 4 around it and save both (with the processor
    files and the chat template) to ``out_dir``. It stops at ``<eos>`` and ``<turn|>``, as the -it checkpoints."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size, special_tokens=gemma4_files.GEMMA4_TOKENS)
    names = (
        gemma4_files.BOI_TOKEN,
        gemma4_files.EOI_TOKEN,
        gemma4_files.IMAGE_TOKEN,
        gemma4_files.END_OF_TURN,
    )
    ids = {t: token_id(tokenizer, t) for t in (*names, "<pad>", "<bos>", "<eos>")}
    vocab = tokenizer.get_vocab_size()
    text_config = dict(
        TINY_TEXT_GEMMA4 if text is None else text,
        vocab_size=vocab,
        vocab_size_per_layer_input=vocab,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids["<eos>"], ids[gemma4_files.END_OF_TURN]],
    )
    config = Gemma4Config.from_dict(
        dict(
            vision_config=dict(TINY_VISION_GEMMA4 if vision is None else vision),
            text_config=text_config,
            boi_token_id=ids[gemma4_files.BOI_TOKEN],
            eoi_token_id=ids[gemma4_files.EOI_TOKEN],
            image_token_id=ids[gemma4_files.IMAGE_TOKEN],
        )
    )
    model = Gemma4ForConditionalGeneration(config)
    init_weights_(model, seed=seed)
    model.save_pretrained(out_dir)
    gemma4_files.save_gemma4_processor_files(out_dir, tokenizer, image_tokens)
    return out_dir


def token_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of ``token``, which ``build_tokenizer`` adds."""
    found = tokenizer.token_to_id(token)
    if found is None:
        raise ValueError(f"the tokenizer has no {token!r}")
    return found


def random_batch(
    config: PaliGemmaConfig,
    prefix_lens,
    suffix_lens,
    seed: int = 0,
    padding_side="right",
    images_per_row=None,
    tokens_per_image: int | None = None,
):
    """A training-style batch: image tokens + <bos> + prefix + "\\n" | suffix + <eos>, then padding.
    ``images_per_row``: how many images each row's prompt starts with (default one each); ``tokens_per_image``:
    image tokens per image (default one per patch; fewer pool the patches).

    Text ids avoid the special ids (0-3) and the image token; "\\n" is played by id 4.
    """
    gen = torch.Generator().manual_seed(seed)
    text = config.text_config
    n_img = tokens_per_image or config.num_image_tokens
    rows = []
    images_per_row = images_per_row or [1] * len(prefix_lens)
    for p_len, s_len, n_images in zip(prefix_lens, suffix_lens, images_per_row, strict=True):
        prefix = torch.randint(5, config.image_token_index, (p_len,), generator=gen).tolist()
        suffix = torch.randint(5, config.image_token_index, (s_len,), generator=gen).tolist()
        prompt = [config.image_token_index] * (n_img * n_images) + [text.bos_token_id] + prefix + [4]
        target = suffix + text.stop_token_ids[:1] if s_len else []
        rows.append((prompt, target))
    width = max(len(p) + len(t) for p, t in rows)
    ids, mask, types, labels = [], [], [], []
    for prompt, target in rows:
        pad = width - len(prompt) - len(target)
        row_ids = prompt + target
        row_types = [0] * len(prompt) + [1] * len(target)
        row_labels = [-100] * len(prompt) + target
        if padding_side == "right":
            ids.append(row_ids + [text.pad_token_id] * pad)
            mask.append([1] * len(row_ids) + [0] * pad)
            types.append(row_types + [0] * pad)
            labels.append(row_labels + [-100] * pad)
        else:
            ids.append([text.pad_token_id] * pad + row_ids)
            mask.append([0] * pad + [1] * len(row_ids))
            types.append([0] * pad + row_types)
            labels.append([-100] * pad + row_labels)
    vision = config.vision_config
    pixels = torch.randn(sum(images_per_row), 3, vision.image_size, vision.image_size, generator=gen)
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "token_type_ids": torch.tensor(types),
        "labels": torch.tensor(labels),
        "pixel_values": pixels,
    }


def random_gemma3_batch(config, prompts, answer_lens, seed: int = 0, padding_side="right"):
    """A Gemma 3 training-style batch: <bos> + prompt | answer + <eos>, then padding; labels on the answer only.

    ``prompts``: per row a list of segments, an int n for n random text tokens or "image" for <start_of_image>,
    ``mm_tokens_per_image`` image tokens and <end_of_image>. Text ids avoid the special ids (0-3) and the image ids.
    """
    gen = torch.Generator().manual_seed(seed)
    text = config.text_config
    image = (
        [config.boi_token_index]
        + [config.image_token_index] * config.mm_tokens_per_image
        + [config.eoi_token_index]
    )
    lowest_special = min(config.boi_token_index, config.eoi_token_index, config.image_token_index)
    rows, n_images = [], 0
    for segments, answer_len in zip(prompts, answer_lens, strict=True):
        prompt = [text.bos_token_id]
        for segment in segments:
            prompt += (
                image
                if segment == "image"
                else torch.randint(4, lowest_special, (segment,), generator=gen).tolist()
            )
            n_images += segment == "image"
        answer = torch.randint(4, lowest_special, (answer_len,), generator=gen).tolist()
        rows.append((prompt, answer + text.stop_token_ids[:1] if answer_len else []))
    width = max(len(p) + len(a) for p, a in rows)
    ids, mask, labels = [], [], []
    for prompt, answer in rows:
        pad = width - len(prompt) - len(answer)
        row = [(i, 1, -100) for i in prompt] + [(i, 1, i) for i in answer]
        padding = [(text.pad_token_id, 0, -100)] * pad
        row = row + padding if padding_side == "right" else padding + row
        ids.append([i for i, _, _ in row])
        mask.append([m for _, m, _ in row])
        labels.append([label for _, _, label in row])
    input_ids = torch.tensor(ids)
    vision = config.vision_config
    return {
        "input_ids": input_ids,
        "attention_mask": torch.tensor(mask),
        "token_type_ids": (input_ids == config.image_token_index).long(),
        "labels": torch.tensor(labels),
        "pixel_values": torch.randn(n_images, 3, vision.image_size, vision.image_size, generator=gen),
    }


def main(argv: list[str] | None = None) -> None:
    from paligemma.data.synthetic import make_shapes_dataset, synthetic_texts

    parser = argparse.ArgumentParser(
        description="Write a random tiny PaliGemma (or Gemma 3) + tokenizer (synthetic texts)."
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--decoder", choices=sorted(TINY_TEXTS_BY_DECODER),
                        help="gemma (default): PaliGemma 1; gemma2: PaliGemma 2")  # fmt: skip
    parser.add_argument("--family", choices=["paligemma", "gemma3", "gemma4"], default="paligemma",
                        help="gemma3 / gemma4: a Gemma 3 / 4 (its own decoder: --decoder does not apply)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.family != "paligemma" and args.decoder is not None:
        own = {"gemma3": "Gemma 3's own", "gemma4": "Gemma 4's own"}[args.family]
        parser.error(f"--decoder picks PaliGemma's decoder; --family {args.family} has {own}")
    try:
        out = writable_dir(args.out)
        texts = synthetic_texts(make_shapes_dataset(num_train=2000, num_val=0, seed=args.seed))
        if args.family == "gemma3":
            path = create_tiny_gemma3_checkpoint(out, texts, vocab_size=args.vocab_size, seed=args.seed)
        elif args.family == "gemma4":
            path = create_tiny_gemma4_checkpoint(out, texts, vocab_size=args.vocab_size, seed=args.seed)
        else:
            text = TINY_TEXTS_BY_DECODER[args.decoder or "gemma"]
            path = create_tiny_checkpoint(out, texts, vocab_size=args.vocab_size, text=text, seed=args.seed)
    except RunError as error:
        sys.exit(f"error: {one_line(error)}")
    print(f"wrote {path}")


def writable_dir(out: str) -> Path:
    """``out`` made (with its parents) as a directory, or a ConfigError saying why it cannot be."""
    path = Path(out).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out: cannot make the directory {out} ({error.strerror})") from None
    return path


if __name__ == "__main__":
    main()
