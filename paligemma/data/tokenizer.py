"""Build small Gemma-style tokenizers and write them (with the image settings) as hub PaliGemma and Gemma 3
repos do.

Used by the tests and to make the project's embedded tiny models. The layout follows the real PaliGemma
tokenizer, scaled down:

    0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, 4 <mask>       Gemma's special ids
    5 .. 260         <0x00> .. <0xFF>                 byte fallback: any text encodes losslessly
    261 .. V-1       learned BPE pieces ("▁" marks a space, as in Gemma)
    V .. V+1023      <loc0000> .. <loc1023>           (real: 256000 .. 257023)
    V+1024 .. V+1151 <seg000> .. <seg127>             (real: 257024 .. 257151)
    V+1152           <image>                          (real: 257152)

V <= ``vocab_size`` (smaller when the corpus offers fewer merges); the total is V + 1153. loc/seg
tokens are added but not special: ``skip_special_tokens`` keeps them, as detection and segmentation
outputs need. The Gemma 3 flavour (``gemma3=True``) ends instead with its five special tokens:

    V .. V+4   <start_of_turn> <end_of_turn> <start_of_image> <end_of_image> <image_soft_token>
               (real: 105, 106, 255999, 256000, 262144)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

from paligemma.errors import ConfigError
from paligemma.paths import write_json

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
IMAGE_TOKEN = "<image>"
LOC_TOKENS = [f"<loc{i:04d}>" for i in range(1024)]
SEG_TOKENS = [f"<seg{i:03d}>" for i in range(128)]
EXTRA_TOKENS = LOC_TOKENS + SEG_TOKENS  # what transformers' PaliGemmaProcessor adds when missing
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
BOI_TOKEN, EOI_TOKEN, IMAGE_SOFT_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
GEMMA3_TOKENS = [START_OF_TURN, END_OF_TURN, BOI_TOKEN, EOI_TOKEN, IMAGE_SOFT_TOKEN]
GEMMA_TOKEN_NAMES = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
GEMMA3_IMAGE_TOKENS = {"boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN, "image_token": IMAGE_SOFT_TOKEN}


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    gemma3: bool = False,
    special_tokens: Sequence[str] | None = None,
) -> Tokenizer:
    """Train a byte-fallback BPE on ``texts``; ``vocab_size`` caps specials + bytes + learned pieces.
    ``gemma3``: Gemma 3's chat and image tokens after the pieces, in place of PaliGemma's loc/seg and <image>;
    ``special_tokens``: these special tokens there instead (Gemma 4's, paligemma/data/gemma4_files.py)."""
    if gemma3:
        special_tokens = GEMMA3_TOKENS
    n_fixed = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    if vocab_size <= n_fixed:
        raise ConfigError(f"vocab_size must exceed the {n_fixed} special and byte tokens, got {vocab_size}")
    # Learn pieces within words (as SentencePiece's split_by_whitespace), with spaces already "▁".
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Split(Regex("▁"), behavior="merged_with_next")
    n_learned = vocab_size - n_fixed
    trainer = BpeTrainer(
        vocab_size=n_learned, limit_alphabet=n_learned, initial_alphabet=["▁"], show_progress=False
    )
    trainer_tok.train_from_iterator(texts, trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    # A piece spelling a reserved token (say "<eos>" in the corpus) could never be produced anyway.
    added = list(special_tokens) if special_tokens is not None else EXTRA_TOKENS + [IMAGE_TOKEN]
    reserved = set(SPECIAL_TOKENS + BYTE_TOKENS + added)
    pieces = [p for p in sorted(learned["vocab"], key=learned["vocab"].get) if p not in reserved]
    # each a pair, "a b" or ["a", "b"] as tokenizers' versions write it
    merges = cast(
        list[tuple[str, str]],
        [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]],
    )
    merges = [m for m in merges if "".join(m) not in reserved]

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + BYTE_TOKENS + pieces + added)}
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    # Gemma's tokenizer.json: no pre-tokenizer, spaces -> "▁", no dummy prefix.
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos>:1 $B:1", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    if special_tokens is not None:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in added])
    else:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in EXTRA_TOKENS])
        tok.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)])
    return tok


def token_dict(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def added_tokens_decoder(tok: Tokenizer) -> dict[str, dict]:
    """tokenizer_config.json's "added_tokens_decoder": every added token by id."""
    return {
        str(i): {**token_dict(t.content), "special": t.special}
        for i, t in sorted(tok.get_added_tokens_decoder().items())
    }


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json as hub PaliGemma repos do.

    Deviation from the hub: ``padding_side`` is "right", so transformers' processor pads training
    batches as ours does by default (GemmaTokenizer's class default is "left").
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added_tokens_decoder(tok),
        "additional_special_tokens": [IMAGE_TOKEN],
        **GEMMA_TOKEN_NAMES,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
        "padding_side": "right",
        "processor_class": "PaliGemmaProcessor",
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
    }
    special_map: dict[str, dict | list[dict]] = {"additional_special_tokens": [token_dict(IMAGE_TOKEN)]}
    special_map.update({k: token_dict(v) for k, v in GEMMA_TOKEN_NAMES.items()})
    write_json(directory / "tokenizer_config.json", config)
    write_json(directory / "special_tokens_map.json", special_map)


def save_preprocessor_config(directory: str | Path, image_size: int, num_image_tokens: int) -> None:
    """Write preprocessor_config.json for a SiglipImageProcessor, as hub PaliGemma repos ship it."""
    config = {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
        "image_seq_length": num_image_tokens,
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "PaliGemmaProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
    }
    Path(directory).mkdir(parents=True, exist_ok=True)
    write_json(Path(directory) / "preprocessor_config.json", config)


def save_processor_files(
    directory: str | Path, tok: Tokenizer, image_size: int, num_image_tokens: int
) -> None:
    """Everything ``PaliGemmaProcessor.from_pretrained`` (ours and transformers') reads."""
    save_tokenizer(tok, directory)
    save_preprocessor_config(directory, image_size, num_image_tokens)
