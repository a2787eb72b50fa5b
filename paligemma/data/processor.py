"""PaliGemma inputs: prompt/suffix tokenization, labels and SigLIP image preprocessing.

Outputs equal transformers' ``PaliGemmaProcessor(..., padding="longest", return_tensors="pt")`` for the
same files (tests/data/test_processor.py compares them):

    prompt = "<image>" * (num_image_tokens * images) + "<bos>" + prefix + "\\n"   token_type_ids 0, labels -100
    suffix = suffix + "<eos>"                                           token_type_ids 1, labels = ids
    padding: pad id, attention_mask 0, token_type_ids 0, labels -100

Tokenization is the ``tokenizers`` library on the repo's tokenizer.json; images go through PIL + numpy
exactly as transformers' SiglipImageProcessor (PIL backend) does, except 16-bit images (see ``to_rgb``).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import isqrt
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer

from paligemma.data.processor_files import (
    PROCESSOR_FILES,
    load_tokenizer,
    read_image_settings,
    square_size,
    token_names,
)
from paligemma.data.tokenizer import EXTRA_TOKENS, IMAGE_TOKEN
from paligemma.errors import ConfigError
from paligemma.paths import resolve_model_dir

IGNORE_INDEX = -100


def normalize_image(
    image: Image.Image, size: int, resample: int, rescale_factor: float, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """(3, size, size) float32 of an RGB image: resize, x * rescale_factor, (x - mean) / std; as transformers'
    PIL image processors do."""
    image = image.resize((size, size), resample=resample)
    x = (np.asarray(image, dtype=np.float64) * rescale_factor).astype(np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited onto white, as transformers does.

    16-bit images (I;16*) keep their top 8 bits; PIL's own conversion, and so transformers', clips
    every value above 255 to white.
    """
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def images_per_prompt(images, n_prompts: int) -> list[list[Image.Image]]:
    """``images`` as one list per prompt, read as transformers reads them: one image (one prompt), one image per
    prompt, or a list of images per prompt (1..N each, mixed within a batch)."""
    if isinstance(images, Image.Image):
        images = [images]
    nested = [list(i) if isinstance(i, list | tuple) else [i] for i in images]
    if len(nested) != n_prompts:
        raise ValueError(
            f"got {len(nested)} images (or lists of images) for {n_prompts} texts; each text needs its own"
        )
    for i, row in enumerate(nested):
        if not row:
            raise ValueError(f"text {i} has an empty list of images; each text needs at least one image")
        if not all(isinstance(im, Image.Image) for im in row):
            bad = next(im for im in row if not isinstance(im, Image.Image))
            raise TypeError(
                f"images must be PIL images (or lists of them), got {type(bad).__name__} for text {i}"
            )
    return nested


def pooled_token_count(num_image_tokens: int, pool: int) -> int:
    """Image tokens per image when each ``pool`` x ``pool`` block of the square patch grid becomes one."""
    if pool == 1:
        return num_image_tokens
    side = isqrt(num_image_tokens)
    if pool < 1 or side**2 != num_image_tokens or side % pool:
        raise ConfigError(
            f"frame_token_pool={pool} does not divide the {side}x{side} grid of {num_image_tokens} image tokens: "
            f"use a divisor of {side}"
        )
    return (side // pool) ** 2


class ProcessorBase:
    """What PaliGemma's and Gemma 3's processors share: special ids, image settings, batches of prompt + suffix
    rows (padding, labels' mask, truncation) and decoding."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_size: int,
        bos_token: str,
        eos_token: str,
        pad_token: str,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        rescale_factor: float,
        resample: int,
    ):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_token_id = self._token_id(bos_token)
        self.eos_token_id = self._token_id(eos_token)
        self.pad_token_id = self._token_id(pad_token)
        self.stop_token_ids = [
            self.eos_token_id
        ]  # what ends an answer (Gemma 3's chat rows add <end_of_turn>)
        self.image_mean = np.array(image_mean, dtype=np.float32)
        self.image_std = np.array(image_std, dtype=np.float32)
        self.rescale_factor = rescale_factor
        self.resample = resample
        # Gemma 3's crop settings (min crop size, max crops, min aspect ratio); None: each image is only resized
        self.pan_and_scan: tuple[int, int, float] | None = None

    def crop_counts(self, images: Sequence[Image.Image]) -> list[int]:
        """The pan & scan crops each image adds to ``pixel_values`` and its prompt: none (Gemma 3's processor
        crops when asked)."""
        return [0] * len(images)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    def _normalize(self, image: Image.Image) -> np.ndarray:
        return normalize_image(
            image, self.image_size, self.resample, self.rescale_factor, self.image_mean, self.image_std
        )

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _text_batch(
        self,
        prompts: list[str],
        suffixes: list[str] | None,
        padding_side: str,
        max_length: int | None,
        stop_ids: set[int],
    ) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask of the rows ``prompt`` + ``suffix``, padded; "suffix_mask" (1 on the
        suffix's tokens), "prompt_lengths" and "truncated" (whether its suffix was cut to fit ``max_length``).

        Truncation keeps the suffix's end from its last stop token (``stop_ids``) on; a prompt that cannot fit,
        with that end, raises naming the row.
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        prompt_ids = self._encode(prompts)
        suffix_ids = [[] for _ in prompts] if suffixes is None else self._encode(suffixes)
        rows = [
            truncate(i, p, s, max_length, stop_ids)
            for i, (p, s) in enumerate(zip(prompt_ids, suffix_ids, strict=True))
        ]
        length, left = max(len(p) + len(s) for p, s in rows), padding_side == "left"
        batch = {
            "input_ids": [pad(p + s, self.pad_token_id, length, left) for p, s in rows],
            "attention_mask": [pad([1] * (len(p) + len(s)), 0, length, left) for p, s in rows],
            "suffix_mask": [pad([0] * len(p) + [1] * len(s), 0, length, left) for p, s in rows],
        }
        out = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        out["prompt_lengths"] = torch.tensor([len(p) for p in prompt_ids])
        out["truncated"] = torch.tensor(
            [len(s) < len(full) for (_, s), full in zip(rows, suffix_ids, strict=True)]
        )
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        sequences = (
            sequences.tolist() if isinstance(sequences, torch.Tensor) else [list(s) for s in sequences]
        )
        return self.tokenizer.decode_batch(sequences, skip_special_tokens=skip_special_tokens)


def pad(seq: list[int], value: int, length: int, left: bool) -> list[int]:
    fill = [value] * (length - len(seq))
    return fill + seq if left else seq + fill


def truncate(
    row: int, prompt: list[int], suffix: list[int], max_length: int | None, stop_ids: set[int]
) -> tuple[list[int], list[int]]:
    """``prompt`` and ``suffix`` cut to ``max_length`` tokens: the suffix loses tokens before its end, the tokens
    from its last stop token on (PaliGemma's ``<eos>``; a chat turn's ``<end_of_turn>\\n``)."""
    if max_length is None or len(prompt) + len(suffix) <= max_length:
        return prompt, suffix
    stops = [i for i, t in enumerate(suffix) if t in stop_ids]
    end = suffix[stops[-1] :] if stops else []
    if len(prompt) + len(end) > max_length:
        held = f" (and the suffix's final {len(end)})" if end else ""
        raise ValueError(
            f"text {row}: max_length={max_length} cannot hold its prompt of {len(prompt)} tokens{held}"
        )
    return prompt, suffix[: max_length - len(prompt) - len(end)] + end


class PaliGemmaProcessor(ProcessorBase):
    def __init__(
        self,
        tokenizer: Tokenizer,
        image_size: int,
        num_image_tokens: int,
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        pad_token: str = "<pad>",
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        rescale_factor: float = 1 / 255,
        resample: int = Image.Resampling.BICUBIC,
    ):
        # As transformers' processor: register <image> and the loc/seg tokens if the tokenizer lacks them.
        if tokenizer.token_to_id(IMAGE_TOKEN) is None:
            tokenizer.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)])
        added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        if missing := [t for t in EXTRA_TOKENS if t not in added]:
            tokenizer.add_tokens(missing)
        super().__init__(
            tokenizer,
            image_size,
            bos_token,
            eos_token,
            pad_token,
            image_mean,
            image_std,
            rescale_factor,
            resample,
        )
        self.num_image_tokens = num_image_tokens
        self.image_token_id = self._token_id(IMAGE_TOKEN)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, frame_token_pool: int = 1, chat_template: bool = False, **pan_and_scan
    ) -> PaliGemmaProcessor:
        """Load from a local dir or a hub id holding tokenizer.json and the image settings (either layout).

        ``frame_token_pool`` P > 1 writes (side / P)^2 image tokens per image instead of side^2, one per P x P block
        of patches, whose mean the model puts there (``pool_image_features``): more pictures fit a prompt.
        ``chat_template`` and ``pan_and_scan`` (``do_pan_and_scan=True``): refused, they are Gemma 3's options.
        """
        if chat_template:
            raise ConfigError(
                f"data.chat_template=true: {path} is a PaliGemma, whose prompts have no chat template (Gemma 3 -it "
                "checkpoints have one); set data.chat_template=false"
            )
        if pan_and_scan.get("do_pan_and_scan"):
            raise ConfigError(
                f"pan & scan: {path} is a PaliGemma, whose prompts have no crops (Gemma 3's have); set "
                "data.pan_and_scan=false (python -m paligemma.generate: leave out --pan-and-scan)"
            )
        path = resolve_model_dir(path, PROCESSOR_FILES)
        tokenizer = load_tokenizer(path)
        image_cfg = read_image_settings(path)
        if "image_seq_length" not in image_cfg:
            raise ConfigError(f"{path}: image settings have no image_seq_length (the number of image tokens)")
        token = token_names(path)
        return cls(
            tokenizer,
            image_size=square_size(path, image_cfg),
            num_image_tokens=pooled_token_count(image_cfg["image_seq_length"], frame_token_pool),
            bos_token=token("bos_token", "<bos>"),
            eos_token=token("eos_token", "<eos>"),
            pad_token=token("pad_token", "<pad>"),
            image_mean=image_cfg.get("image_mean", [0.5] * 3),
            image_std=image_cfg.get("image_std", [0.5] * 3),
            rescale_factor=image_cfg.get("rescale_factor", 1 / 255),
            resample=image_cfg.get("resample", Image.Resampling.BICUBIC),
        )

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        """(3, size, size) float32: RGB, bicubic resize, x / 255, (x - mean) / std; as SiglipImageProcessor."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"images must be PIL images, got {type(image).__name__}")
        return self._normalize(to_rgb(image))

    def __call__(
        self,
        text: str | Sequence[str],
        images: Image.Image | Sequence[Image.Image] | Sequence[Sequence[Image.Image]],
        suffix: str | Sequence[str] | None = None,
        padding_side: str = "right",
        max_length: int | None = None,
        return_lengths: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Batch of prompts (``text``, with one image or a list of images each) and optional target ``suffix``es.
        ``pixel_values`` holds every image of the batch, prompt after prompt; each prompt's image tokens come
        first, one run of ``num_image_tokens`` per image, in its order.

        ``max_length`` caps each row: a too-long suffix loses tokens from its end but keeps ``<eos>``; a
        prompt that cannot fit (with its ``<eos>`` when a suffix is given) raises. ``return_lengths`` adds
        "prompt_lengths" (B,), the tokens of each prompt, and "truncated" (B,), whether its suffix was cut.
        """
        texts = [text] if isinstance(text, str) else list(text)
        per_prompt = images_per_prompt(images, len(texts))
        if any(IMAGE_TOKEN in t for t in texts):
            raise ValueError(f"text is the prefix only; the processor adds the {IMAGE_TOKEN} tokens itself")
        prompts = [
            IMAGE_TOKEN * (self.num_image_tokens * len(ims)) + self.bos_token + t + "\n"
            for t, ims in zip(texts, per_prompt, strict=True)
        ]
        suffixes = None
        if suffix is not None:
            suffixes = [s + self.eos_token for s in suffixes_for(suffix, len(texts))]
        batch = self._text_batch(prompts, suffixes, padding_side, max_length, {self.eos_token_id})
        suffix_mask = batch.pop("suffix_mask")
        out = {k: batch[k] for k in ("input_ids", "attention_mask")}
        out["token_type_ids"] = suffix_mask
        if suffix is not None:
            out["labels"] = out["input_ids"].masked_fill(suffix_mask == 0, IGNORE_INDEX)
        out["pixel_values"] = torch.from_numpy(
            np.stack([self.preprocess_image(im) for ims in per_prompt for im in ims])
        )
        if return_lengths:
            out.update({k: batch[k] for k in ("prompt_lengths", "truncated")})
        return out

    def prompt_length(self, prefix: str, num_images: int = 1, num_crops: Sequence[int] = ()) -> int:
        """Tokens of the prompt ``prefix`` becomes: image tokens, ``<bos>``, the prefix and "\\n" (PaliGemma has
        no pan & scan: ``num_crops`` are zeros, as ``crop_counts`` gives)."""
        if any(num_crops):
            raise ValueError(f"a PaliGemma prompt has no pan & scan crops, got {list(num_crops)}")
        text_tokens = len(self.tokenizer.encode(prefix + "\n", add_special_tokens=False))
        return self.num_image_tokens * num_images + 1 + text_tokens


def suffixes_for(suffix: str | Sequence[str], n_texts: int) -> list[str]:
    suffixes = [suffix] if isinstance(suffix, str) else list(suffix)
    if len(suffixes) != n_texts:
        raise ValueError(f"got {len(suffixes)} suffixes for {n_texts} texts")
    return suffixes
