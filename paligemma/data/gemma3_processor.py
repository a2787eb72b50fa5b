"""Gemma 3 inputs: images spliced into the text where ``<start_of_image>`` stands, labels on the answer.

Outputs equal transformers' ``Gemma3Processor`` (PIL image backend) for the same files
(tests/data/test_gemma3_processor.py compares them). Each image's ``<start_of_image>`` becomes

    "\\n\\n<start_of_image>" + num_image_tokens x "<image_soft_token>" + "<end_of_image>\\n\\n"

(with pan & scan, "Here is the original image {that} and here are some crops to help you see better {one per
crop}"); token_type_ids is 1 on the soft tokens, as transformers' model reads it. A text without any marker gets its
images first, as PaliGemma's prompts do. Rows are

    plain:  "<bos>" + text                                    | answer + "<eos>"
    chat:   the checkpoint's template, one user turn (images and text), generation prompt
                                                              | the assistant turn it adds: answer + "<end_of_turn>\\n"

labels cover the part after "|" only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

from paligemma.data.processor import (
    IGNORE_INDEX,
    ProcessorBase,
    images_per_prompt,
    pooled_token_count,
    suffixes_for,
    to_rgb,
)
from paligemma.data.processor_files import (
    PROCESSOR_FILES,
    load_tokenizer,
    read_image_settings,
    square_size,
    token_names,
)
from paligemma.data.tokenizer import BOI_TOKEN, END_OF_TURN, EOI_TOKEN, IMAGE_SOFT_TOKEN
from paligemma.errors import ConfigError, MissingFileError
from paligemma.paths import read_json, resolve_model_dir


def pan_and_scan_boxes(
    width: int, height: int, min_crop_size: int, max_num_crops: int, min_ratio_to_activate: float
) -> list[tuple[int, int, int, int]]:
    """The crops (left, top, right, bottom) of a ``width`` x ``height`` image, as transformers'
    Gemma3ImageProcessor.pan_and_scan takes them: 2..max_num_crops equal tiles along the long side of an image
    whose aspect ratio reaches ``min_ratio_to_activate``; none when a tile would be under ``min_crop_size``."""
    long, short = max(width, height), min(width, height)
    if long / short < min_ratio_to_activate:
        return []
    n = min(int(math.floor(long / short + 0.5)), int(math.floor(long / min_crop_size)))
    n = min(max_num_crops, max(2, n))
    n_w, n_h = (n, 1) if width >= height else (1, n)
    crop_w, crop_h = math.ceil(width / n_w), math.ceil(height / n_h)
    if min(crop_w, crop_h) < min_crop_size:
        return []
    return [
        (x, y, min(x + crop_w, width), min(y + crop_h, height))
        for y in range(0, crop_h * n_h, crop_h)
        for x in range(0, crop_w * n_w, crop_w)
    ]


class Gemma3Processor(ProcessorBase):
    def __init__(
        self,
        tokenizer: Tokenizer,
        image_size: int,
        num_image_tokens: int,
        chat_template: str | None = None,
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        pad_token: str = "<pad>",
        boi_token: str = BOI_TOKEN,
        eoi_token: str = EOI_TOKEN,
        image_token: str = IMAGE_SOFT_TOKEN,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        rescale_factor: float = 1 / 255,
        resample: int = Image.Resampling.BILINEAR,
        do_pan_and_scan: bool = False,
        pan_and_scan_min_crop_size: int = 256,
        pan_and_scan_max_num_crops: int = 4,
        pan_and_scan_min_ratio_to_activate: float = 1.2,
    ):
        """``chat_template``: the jinja text rows are rendered with (None: plain rows). The pan & scan settings
        default to transformers' Gemma3Processor's, which the hub's files leave null."""
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
        self.boi_token, self.eoi_token, self.image_token = boi_token, eoi_token, image_token
        self.boi_token_id = self._token_id(boi_token)
        self.eoi_token_id = self._token_id(eoi_token)
        self.image_token_id = self._token_id(image_token)
        self.image_sequence = f"\n\n{boi_token}{image_token * num_image_tokens}{eoi_token}\n\n"
        self.pan_and_scan = (
            (pan_and_scan_min_crop_size, pan_and_scan_max_num_crops, pan_and_scan_min_ratio_to_activate)
            if do_pan_and_scan
            else None
        )
        self.chat_template = chat_template
        if chat_template is not None:
            self._template = compile_chat_template(chat_template)
            self.stop_token_ids.append(self._token_id(END_OF_TURN))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, frame_token_pool: int = 1, chat_template: bool = False, **pan_and_scan
    ) -> Gemma3Processor:
        """Load from a local dir or a hub id laid out as the gemma-3 repos (or as transformers 5 saves them).

        ``chat_template``: rows in the checkpoint's chat template (for the -it checkpoints). ``frame_token_pool``
        P > 1: (side / P)^2 soft tokens per image, as PaliGemma's. ``pan_and_scan``: ``do_pan_and_scan`` and the
        ``pan_and_scan_*`` settings (transformers' call arguments of the same names).
        """
        path = resolve_model_dir(path, PROCESSOR_FILES)
        tokenizer = load_tokenizer(path)
        image_cfg = read_image_settings(path)
        processor_cfg = (
            read_json(path / "processor_config.json") if (path / "processor_config.json").is_file() else {}
        )
        n_tokens = processor_cfg.get("image_seq_length") or image_cfg.get("image_seq_length")
        if n_tokens is None:
            raise ConfigError(
                f"{path}: neither processor_config.json nor the image settings give image_seq_length"
            )
        token = token_names(path)
        return cls(
            tokenizer,
            image_size=square_size(path, image_cfg),
            num_image_tokens=pooled_token_count(n_tokens, frame_token_pool),
            chat_template=read_chat_template(path) if chat_template else None,
            bos_token=token("bos_token", "<bos>"),
            eos_token=token("eos_token", "<eos>"),
            pad_token=token("pad_token", "<pad>"),
            boi_token=token("boi_token", BOI_TOKEN),
            eoi_token=token("eoi_token", EOI_TOKEN),
            image_token=token("image_token", IMAGE_SOFT_TOKEN),
            image_mean=image_cfg.get("image_mean", [0.5] * 3),
            image_std=image_cfg.get("image_std", [0.5] * 3),
            rescale_factor=image_cfg.get("rescale_factor", 1 / 255),
            resample=image_cfg.get("resample", Image.Resampling.BILINEAR),
            **pan_and_scan,
        )

    def preprocess_image(self, image: Image.Image) -> list[np.ndarray]:
        """(3, size, size) float32 arrays: the image, then its pan & scan crops (when on); RGB, bilinear resize,
        x / 255, (x - mean) / std."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"images must be PIL images, got {type(image).__name__}")
        image = to_rgb(image)
        boxes = pan_and_scan_boxes(*image.size, *self.pan_and_scan) if self.pan_and_scan is not None else []
        return [self._normalize(image)] + [self._normalize(image.crop(box)) for box in boxes]

    def image_text(self, num_crops: int) -> str:
        """What one image's marker becomes: its tokens, and its crops' after them."""
        if not num_crops:
            return self.image_sequence
        return (
            f"Here is the original image {self.image_sequence} and here are some crops to help you see better "
            + " ".join([self.image_sequence] * num_crops)
        )

    def __call__(
        self,
        text: str | Sequence[str],
        images: Image.Image | Sequence[Image.Image] | Sequence[Sequence[Image.Image]],
        suffix: str | Sequence[str] | None = None,
        padding_side: str = "right",
        max_length: int | None = None,
        return_lengths: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Batch of ``text``s, each with one image or a list of them (one per ``<start_of_image>`` it holds, or
        placed before it when it holds none), and optional answers ``suffix``. ``pixel_values`` holds every image
        of the batch in order, each followed by its crops.

        ``max_length`` caps each row: a too-long answer loses tokens before its final stop token (and what
        follows it); a prompt that cannot fit raises. ``return_lengths`` adds "prompt_lengths" (B,) and
        "truncated" (B,), whether its answer was cut.
        """
        texts = [text] if isinstance(text, str) else list(text)
        per_prompt = images_per_prompt(images, len(texts))
        pixels, prompts = [], []
        for i, (t, ims) in enumerate(zip(texts, per_prompt, strict=True)):
            arrays = [self.preprocess_image(im) for im in ims]
            pixels += [a for image_arrays in arrays for a in image_arrays]
            prompts.append(self._expand(self.prompt_text(t, len(ims), row=i), [len(a) - 1 for a in arrays]))
        suffixes = None
        if suffix is not None:
            answers = suffixes_for(suffix, len(texts))
            suffixes = [
                self.answer_text(t, len(ims), a) for t, ims, a in zip(texts, per_prompt, answers, strict=True)
            ]
        batch = self._text_batch(prompts, suffixes, padding_side, max_length, set(self.stop_token_ids))
        suffix_mask = batch.pop("suffix_mask")
        out = {k: batch[k] for k in ("input_ids", "attention_mask")}
        out["token_type_ids"] = (out["input_ids"] == self.image_token_id).long()
        if suffix is not None:
            out["labels"] = out["input_ids"].masked_fill(suffix_mask == 0, IGNORE_INDEX)
        out["pixel_values"] = torch.from_numpy(np.stack(pixels))
        if return_lengths:
            out.update({k: batch[k] for k in ("prompt_lengths", "truncated")})
        return out

    def prompt_text(self, text: str, num_images: int, row: int = 0) -> str:
        """The prompt string of ``text`` with ``num_images`` images, before their markers are expanded: "<bos>" +
        text, or the chat template's user turn and generation prompt (what transformers'
        ``apply_chat_template(..., tokenize=False, add_generation_prompt=True)`` gives)."""
        text = self._with_markers(text, num_images, row)
        if self.chat_template is None:
            return self.bos_token + text
        return self._render([user_turn(text, self.boi_token)], add_generation_prompt=True)

    def answer_text(self, text: str, num_images: int, answer: str) -> str:
        """What follows the prompt in a training row: answer + "<eos>", or the assistant turn the chat template
        adds after the prompt."""
        if self.chat_template is None:
            return answer + self.eos_token
        user = user_turn(self._with_markers(text, num_images), self.boi_token)
        prompt = self._render([user], add_generation_prompt=True)
        full = self._render([user, {"role": "assistant", "content": answer}], add_generation_prompt=False)
        if not full.startswith(prompt):
            raise ConfigError("the chat template's conversation does not start with its generation prompt")
        return full[len(prompt) :]

    def _with_markers(self, text: str, num_images: int, row: int = 0) -> str:
        if self.image_token in text or self.eoi_token in text:
            raise ValueError(f"text {row} holds image tokens; the processor writes them itself: {text!r}")
        n_markers = text.count(self.boi_token)
        if n_markers == 0:
            return self.boi_token * num_images + text
        if n_markers != num_images:
            raise ValueError(
                f"text {row} has {n_markers} {self.boi_token} markers for {num_images} images: give one image per "
                f"marker, or none to put the images before the text"
            )
        return text

    def crop_counts(self, images: Sequence[Image.Image]) -> list[int]:
        """The pan & scan crops each image adds to ``pixel_values`` and its prompt (none when off)."""
        if self.pan_and_scan is None:
            return [0] * len(images)
        return [len(pan_and_scan_boxes(*image.size, *self.pan_and_scan)) for image in images]

    def prompt_length(self, prefix: str, num_images: int = 1, num_crops: Sequence[int] = ()) -> int:
        """Tokens of the prompt ``prefix`` with ``num_images`` images becomes, ``num_crops`` (``crop_counts``)
        after each of them (none: no crops)."""
        prompt = self._expand(self.prompt_text(prefix, num_images), list(num_crops) or [0] * num_images)
        return len(self.tokenizer.encode(prompt, add_special_tokens=False))

    def _expand(self, prompt: str, num_crops: list[int]) -> str:
        head, *rest = prompt.split(self.boi_token)
        if len(rest) != len(num_crops):
            raise ConfigError(
                f"the chat template wrote {len(rest)} {self.boi_token} markers for {len(num_crops)} images"
            )
        return head + "".join(self.image_text(n) + part for n, part in zip(num_crops, rest, strict=True))

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )


def user_turn(text: str, marker: str) -> dict:
    """A user message of images and text items, one image per ``marker`` in ``text``, as transformers' chat
    messages hold them."""
    head, *rest = text.split(marker)
    content = [{"type": "text", "text": head}] if head else []
    for part in rest:
        content.append({"type": "image"})
        if part:
            content.append({"type": "text", "text": part})
    return {"role": "user", "content": content}


def read_chat_template(path: Path) -> str:
    """The chat template of ``path``: chat_template.jinja, chat_template.json or tokenizer_config.json's."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ["chat_template.json", "tokenizer_config.json"]:
        if (path / name).is_file() and isinstance(
            template := read_json(path / name).get("chat_template"), str
        ):
            return template
    raise MissingFileError(
        f"{path} has no chat template (chat_template.jinja, chat_template.json, or one in tokenizer_config.json): "
        "chat_template=true needs an instruction-tuned (-it) checkpoint's files"
    )


def compile_chat_template(template: str):
    """The jinja template as transformers compiles chat templates: sandboxed, trim_blocks and lstrip_blocks,
    loop controls and ``raise_exception``."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)
