"""Gemma 4 inputs: images and video frames as patch sequences, spliced into the text, labels on the answer.

Outputs equal transformers' ``Gemma4Processor`` (PIL image backend) for the same files
(tests/data/test_gemma4_processor.py compares them). Each image keeps its aspect ratio: it is resized to the
largest size whose sides are multiples of 48 px (3 x 3 patches of 16 px make one soft token) that holds at most
``image_tokens`` soft tokens, cut into 16 px patches (row by row, each 16 x 16 x 3 values, pixels in [0, 1]) and
padded to ``image_tokens * 9`` patches; ``image_position_ids`` holds each patch's (x, y), (-1, -1) on padding.
Each ``<|image|>`` in the text becomes "<|image>" + N x "<|image|>" + "<image|>" with N the image's soft tokens;
each ``<|video|>`` becomes, per frame, "mm:ss <|image>" + 70 x "<|video|>" + "<image|>", joined by spaces (the
frame's time in the clip, and the image boi/eoi tokens, as transformers writes them). ``mm_token_type_ids`` is 1 on image soft tokens, 2 on video ones.
A text without markers gets its images (then its videos) first. Rows are

    plain:  "<bos>" + text                                    | answer + "<eos>"
    chat:   the checkpoint's template, one user turn, generation prompt | answer + "<turn|>\\n"

labels cover the part after "|" only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

from paligemma.data.gemma3_processor import compile_chat_template, read_chat_template
from paligemma.data.gemma4_files import (
    AUDIO_TOKEN,
    BOI_TOKEN,
    END_OF_TURN,
    EOI_TOKEN,
    IMAGE_TOKEN,
    IMAGE_TOKEN_BUDGETS,
    VIDEO_TOKEN,
)
from paligemma.data.processor import IGNORE_INDEX, ProcessorBase, suffixes_for, to_rgb
from paligemma.data.processor_files import PROCESSOR_FILES, load_tokenizer, read_image_settings, token_names
from paligemma.errors import ConfigError
from paligemma.paths import read_json, resolve_model_dir


class VideoClip(NamedTuple):
    """A video as the processor takes it: its frames (PIL images, one size) and each one's time in seconds."""

    frames: Sequence[Image.Image]
    seconds: Sequence[float]


def images_per_row(images, n_texts: int) -> list[list[Image.Image]]:
    """``images`` as one list per text, read as ``images_per_prompt`` reads them, but a text may have none (a
    video or text-only row: an empty list; ``images=None``: none for all)."""
    if images is None:
        return [[] for _ in range(n_texts)]
    images = [images] if isinstance(images, Image.Image) else list(images)
    nested = [list(i) if isinstance(i, list | tuple) else [i] for i in images]
    if len(nested) != n_texts:
        raise ValueError(
            f"got {len(nested)} images (or lists of images) for {n_texts} texts; each text needs its own"
        )
    for i, row in enumerate(nested):
        if bad := [im for im in row if not isinstance(im, Image.Image)]:
            raise TypeError(
                f"images must be PIL images (or lists of them), got {type(bad[0]).__name__} for text {i}"
            )
    return nested


def check_budget(tokens: int, what: str = "image_tokens") -> int:
    if tokens not in IMAGE_TOKEN_BUDGETS:
        allowed = ", ".join(map(str, IMAGE_TOKEN_BUDGETS))
        raise ConfigError(f"{what} must be one of {allowed} (Gemma 4's soft tokens per image), got {tokens}")
    return tokens


def resized_size(
    height: int, width: int, max_patches: int, patch: int = 16, pool: int = 3
) -> tuple[int, int]:
    """(height, width) a picture is resized to: the largest multiples of ``pool * patch`` px of its aspect ratio
    with at most ``max_patches`` patches (transformers' get_aspect_ratio_preserving_size)."""
    side = pool * patch
    factor = math.sqrt(max_patches * patch**2 / (height * width))
    h, w = int(math.floor(factor * height / side)) * side, int(math.floor(factor * width / side)) * side
    if h == 0 and w == 0:
        raise ValueError(f"a {width}x{height} picture cannot be resized to multiples of {side} px")
    longest = (max_patches // pool**2) * side
    if h == 0:  # very wide: one row of tokens
        h, w = side, min(int(math.floor(width / height)) * side, longest)
    elif w == 0:
        h, w = min(int(math.floor(height / width)) * side, longest), side
    if h * w > max_patches * patch**2:
        raise ValueError(f"a {width}x{height} picture needs more than {max_patches} patches of {patch} px")
    return h, w


def patches_and_positions(pixels: np.ndarray, patch: int, max_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """(max_patches, patch * patch * C) patches of a (C, H, W) array, row by row, zeros after the picture's;
    (max_patches, 2) int64 (x, y) of each, (-1, -1) after."""
    c, h, w = pixels.shape
    rows, cols = h // patch, w // patch
    patches = pixels.reshape(c, rows, patch, cols, patch).transpose(1, 3, 2, 4, 0).reshape(rows * cols, -1)
    x, y = np.meshgrid(np.arange(cols), np.arange(rows), indexing="xy")
    positions = np.stack([x, y], axis=-1).reshape(rows * cols, 2)
    pad = max_patches - rows * cols
    patches = np.pad(patches, [(0, pad), (0, 0)])
    return patches, np.pad(positions, [(0, pad), (0, 0)], constant_values=-1)


class Gemma4Processor(ProcessorBase):
    def __init__(
        self,
        tokenizer: Tokenizer,
        image_tokens: int = 280,
        video_tokens: int = 70,
        chat_template: str | None = None,
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        pad_token: str = "<pad>",
        boi_token: str = BOI_TOKEN,
        eoi_token: str = EOI_TOKEN,
        image_token: str = IMAGE_TOKEN,
        video_token: str = VIDEO_TOKEN,
        audio_token: str = AUDIO_TOKEN,
        patch_size: int = 16,
        pooling_kernel_size: int = 3,
        rescale_factor: float = 1 / 255,
        resample: int = Image.Resampling.BICUBIC,
    ):
        """``image_tokens``: each image's soft-token budget (70, 140, 280, 560 or 1120); ``video_tokens``: each
        frame's. ``chat_template``: the jinja text rows are rendered with (None: plain rows). ``image_size`` is
        the side of the largest square picture the budget holds unscaled (for placeholders and previews)."""
        self.num_image_tokens = check_budget(image_tokens)
        self.video_tokens = check_budget(video_tokens, "video_tokens")
        side = pooling_kernel_size * patch_size
        super().__init__(
            tokenizer,
            side * math.isqrt(image_tokens),
            bos_token,
            eos_token,
            pad_token,
            (0.0, 0.0, 0.0),
            (1.0, 1.0, 1.0),
            rescale_factor,
            resample,
        )
        self.patch_size, self.pooling_kernel_size = patch_size, pooling_kernel_size
        self.boi_token, self.eoi_token = boi_token, eoi_token
        self.image_token, self.video_token = image_token, video_token
        self.boi_token_id, self.eoi_token_id = self._token_id(boi_token), self._token_id(eoi_token)
        self.image_token_id = self._token_id(image_token)
        self.video_token_id = self._token_id(video_token)
        self.audio_token_id = tokenizer.token_to_id(audio_token)
        self._markers = re.compile(f"({re.escape(image_token)}|{re.escape(video_token)})")
        self.chat_template = chat_template
        if chat_template is not None:
            self._template = compile_chat_template(chat_template)
            self.stop_token_ids.append(self._token_id(END_OF_TURN))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        frame_token_pool: int = 1,
        chat_template: bool = False,
        image_tokens: int | None = None,
        **pan_and_scan,
    ) -> Gemma4Processor:
        """Load from a local dir laid out as transformers 5 saves a Gemma 4 (or a hub id). ``image_tokens``: the
        soft-token budget per image (None: the files'). ``frame_token_pool`` and pan & scan are refused: Gemma 4
        sizes each image's tokens itself."""
        if frame_token_pool != 1:
            raise ConfigError(f"frame_token_pool={frame_token_pool}: Gemma 4 has none; set image_tokens")
        if pan_and_scan.get("do_pan_and_scan"):
            raise ConfigError(f"pan & scan: {path} is a Gemma 4, which keeps each image's aspect ratio")
        path = resolve_model_dir(path, PROCESSOR_FILES)
        image_cfg = read_image_settings(path)
        processor_cfg = (
            read_json(path / "processor_config.json") if (path / "processor_config.json").is_file() else {}
        )
        video_cfg = processor_cfg.get("video_processor", {})
        if (path / "video_preprocessor_config.json").is_file():
            video_cfg = read_json(path / "video_preprocessor_config.json")
        token = token_names(path)
        budget = image_cfg.get("max_soft_tokens") or processor_cfg.get("image_seq_length")
        budget = budget if image_tokens is None else image_tokens
        if budget is None:
            raise ConfigError(f"{path}: the image settings give no max_soft_tokens (nor image_seq_length)")
        return cls(
            load_tokenizer(path),
            image_tokens=budget,
            video_tokens=video_cfg.get("max_soft_tokens", 70),
            chat_template=read_chat_template(path) if chat_template else None,
            bos_token=token("bos_token", "<bos>"),
            eos_token=token("eos_token", "<eos>"),
            pad_token=token("pad_token", "<pad>"),
            boi_token=token("boi_token", BOI_TOKEN),
            eoi_token=token("eoi_token", EOI_TOKEN),
            image_token=token("image_token", IMAGE_TOKEN),
            audio_token=token("audio_token", AUDIO_TOKEN),
            patch_size=image_cfg.get("patch_size", 16),
            pooling_kernel_size=image_cfg.get("pooling_kernel_size", 3),
            rescale_factor=image_cfg.get("rescale_factor", 1 / 255),
            resample=image_cfg.get("resample", Image.Resampling.BICUBIC),
        )

    def _max_patches(self, tokens: int) -> int:
        return tokens * self.pooling_kernel_size**2

    def _resized(self, width: int, height: int, tokens: int) -> tuple[int, int]:
        return resized_size(
            height, width, self._max_patches(tokens), self.patch_size, self.pooling_kernel_size
        )

    def soft_token_counts(self, images: Sequence[Image.Image]) -> list[int]:
        """The soft tokens each image takes in its prompt (at most ``image_tokens``)."""
        return [
            h * w // (self.patch_size * self.pooling_kernel_size) ** 2
            for h, w in (self._resized(*im.size, self.num_image_tokens) for im in images)
        ]

    def preprocess_image(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray, int]:
        """An image's (max_patches, 768) float32 patches, (max_patches, 2) positions and soft tokens: RGB, bicubic
        resize (when the size changes), x / 255, as Gemma4ImageProcessorPil."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"images must be PIL images, got {type(image).__name__}")
        image = to_rgb(image)
        h, w = self._resized(*image.size, self.num_image_tokens)
        if (w, h) != image.size:
            image = image.resize((w, h), resample=self.resample)
        x = (np.asarray(image, dtype=np.float64) * self.rescale_factor).astype(np.float32).transpose(2, 0, 1)
        patches, positions = patches_and_positions(
            x, self.patch_size, self._max_patches(self.num_image_tokens)
        )
        return patches, positions, h * w // (self.patch_size * self.pooling_kernel_size) ** 2

    def preprocess_video(self, video: VideoClip) -> tuple[torch.Tensor, torch.Tensor, int]:
        """A clip's (frames, max_patches, 768) float32 patches, (frames, max_patches, 2) positions and soft tokens
        per frame: uint8 frames resized by torch's antialiased bicubic (what Gemma4VideoProcessor's torchvision
        resize runs on CPU), then / 255."""
        if not video.frames or len(video.frames) != len(video.seconds):
            raise ValueError(
                f"a video needs frames and one time each, got {len(video.frames)} and {len(video.seconds)}"
            )
        frames = np.stack([np.asarray(to_rgb(f)) for f in video.frames])  # (T, H, W, 3) uint8
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        h, w = self._resized(clip.shape[3], clip.shape[2], self.video_tokens)
        if (h, w) != tuple(clip.shape[2:]):
            clip = torch.nn.functional.interpolate(
                clip, size=[h, w], mode="bicubic", align_corners=False, antialias=True
            )
        x = (clip.to(torch.float32) / 255.0).numpy()
        pairs = [patches_and_positions(f, self.patch_size, self._max_patches(self.video_tokens)) for f in x]
        patches = torch.from_numpy(np.stack([p for p, _ in pairs]))
        positions = torch.from_numpy(np.stack([q for _, q in pairs]))
        return patches, positions, h * w // (self.patch_size * self.pooling_kernel_size) ** 2

    def image_text(self, soft_tokens: int) -> str:
        return f"{self.boi_token}{self.image_token * soft_tokens}{self.eoi_token}"

    def video_text(self, soft_tokens: int, seconds: Sequence[float]) -> str:
        frame = f"{self.boi_token}{self.video_token * soft_tokens}{self.eoi_token}"
        return " ".join(f"{int(s // 60):02d}:{int(s % 60):02d} {frame}" for s in seconds)

    def __call__(
        self,
        text: str | Sequence[str],
        images: Image.Image | Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None = None,
        suffix: str | Sequence[str] | None = None,
        padding_side: str = "right",
        max_length: int | None = None,
        return_lengths: bool = False,
        videos: Sequence[Sequence[VideoClip]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Batch of ``text``s with their images (one, or a list, per text: one per ``<|image|>`` it holds, or put
        before it when it holds none) and ``videos`` (a list of ``VideoClip`` per text, one per ``<|video|>``),
        and optional answers ``suffix``. ``pixel_values`` (images, image_tokens * 9, 768) holds every image of
        the batch in order; ``pixel_values_videos`` (frames, video_tokens * 9, 768) every frame.

        ``max_length`` caps each row: a too-long answer loses tokens before its final stop token (and what
        follows it); a prompt that cannot fit raises. ``return_lengths`` adds "prompt_lengths" (B,) and
        "truncated" (B,), whether its answer was cut.
        """
        texts = [text] if isinstance(text, str) else list(text)
        per_image = images_per_row(images, len(texts))
        per_video = [list(v) for v in videos] if videos is not None else [[] for _ in texts]
        if len(per_video) != len(texts):
            raise ValueError(
                f"got {len(per_video)} lists of videos for {len(texts)} texts; each text needs its own"
            )
        image_out = [self.preprocess_image(im) for ims in per_image for im in ims]
        video_out = [self.preprocess_video(v) for vids in per_video for v in vids]
        image_texts = iter([self.image_text(n) for _, _, n in image_out])
        clips = [v for vids in per_video for v in vids]
        video_texts = iter(
            [self.video_text(n, v.seconds) for (_, _, n), v in zip(video_out, clips, strict=True)]
        )
        prompts = []
        for i, (t, ims, vids) in enumerate(zip(texts, per_image, per_video, strict=True)):
            prompt = self.prompt_text(t, len(ims), len(vids), row=i)
            prompts.append(
                self._markers.sub(
                    lambda m: next(image_texts if m.group() == self.image_token else video_texts), prompt
                )
            )
        suffixes = None
        if suffix is not None:
            answers = suffixes_for(suffix, len(texts))
            suffixes = [
                self.answer_text(t, len(ims), a, len(vids))
                for t, ims, vids, a in zip(texts, per_image, per_video, answers, strict=True)
            ]
        batch = self._text_batch(prompts, suffixes, padding_side, max_length, set(self.stop_token_ids))
        suffix_mask = batch.pop("suffix_mask")
        out = {k: batch[k] for k in ("input_ids", "attention_mask")}
        ids = out["input_ids"]
        types = (ids == self.image_token_id).long() + 2 * (ids == self.video_token_id).long()
        out["mm_token_type_ids"] = types
        if self.audio_token_id is not None:
            out["mm_token_type_ids"] += 3 * (ids == self.audio_token_id).long()
        if suffix is not None:
            out["labels"] = ids.masked_fill(suffix_mask == 0, IGNORE_INDEX)
        if image_out:
            out["pixel_values"] = torch.from_numpy(np.stack([p for p, _, _ in image_out]))
            out["image_position_ids"] = torch.from_numpy(np.stack([q for _, q, _ in image_out]))
        if video_out:
            out["pixel_values_videos"] = torch.cat([p for p, _, _ in video_out])
            out["video_position_ids"] = torch.cat([q for _, q, _ in video_out])
            out["num_frames_per_video"] = torch.tensor([len(p) for p, _, _ in video_out])
        if return_lengths:
            out.update({k: batch[k] for k in ("prompt_lengths", "truncated")})
        return out

    def prompt_text(self, text: str, num_images: int, num_videos: int = 0, row: int = 0) -> str:
        """The prompt of ``text`` before its markers are expanded: "<bos>" + text, or the chat template's user
        turn and generation prompt (transformers' ``apply_chat_template(..., add_generation_prompt=True)``)."""
        text = self._with_markers(text, num_images, num_videos, row)
        if self.chat_template is None:
            return self.bos_token + text
        return self._render([self.user_turn(text)], add_generation_prompt=True)

    def answer_text(self, text: str, num_images: int, answer: str, num_videos: int = 0) -> str:
        """What follows the prompt in a training row: answer + "<eos>", or the assistant turn the template adds."""
        if self.chat_template is None:
            return answer + self.eos_token
        user = self.user_turn(self._with_markers(text, num_images, num_videos))
        prompt = self._render([user], add_generation_prompt=True)
        full = self._render([user, {"role": "assistant", "content": answer}], add_generation_prompt=False)
        if not full.startswith(prompt):
            raise ConfigError("the chat template's conversation does not start with its generation prompt")
        return full[len(prompt) :]

    def user_turn(self, text: str) -> dict:
        """A user message of text, image and video items, one per marker, as transformers' chat messages."""
        content = []
        for part in self._markers.split(text):
            if part in (self.image_token, self.video_token):
                content.append({"type": "image" if part == self.image_token else "video"})
            elif part:
                content.append({"type": "text", "text": part})
        return {"role": "user", "content": content}

    def _with_markers(self, text: str, num_images: int, num_videos: int, row: int = 0) -> str:
        if self.boi_token in text or self.eoi_token in text:
            raise ValueError(f"text {row} holds image tokens; the processor writes them itself: {text!r}")
        found = [text.count(self.image_token), text.count(self.video_token)]
        if found == [0, 0]:
            return self.image_token * num_images + self.video_token * num_videos + text
        for n, given, marker in zip(
            found, [num_images, num_videos], [self.image_token, self.video_token], strict=True
        ):
            if n != given:
                raise ValueError(
                    f"text {row} has {n} {marker} markers for {given} {'images' if marker == self.image_token else 'videos'}: "
                    "give one per marker, or none to put them before the text"
                )
        return text

    def prompt_length(
        self,
        prefix: str,
        num_images: int = 1,
        num_crops: Sequence[int] = (),
        image_tokens: Sequence[int] = (),
    ) -> int:
        """Tokens of the prompt ``prefix`` with ``num_images`` images becomes, each taking its ``image_tokens``
        (``soft_token_counts``; none given: the full budget each, an upper bound). Gemma 4 has no crops."""
        if any(num_crops):
            raise ValueError(f"a Gemma 4 prompt has no pan & scan crops, got {list(num_crops)}")
        counts = iter(list(image_tokens) or [self.num_image_tokens] * num_images)
        prompt = self.prompt_text(prefix, num_images)
        prompt = re.sub(re.escape(self.image_token), lambda _: self.image_text(next(counts)), prompt)
        return len(self.tokenizer.encode(prompt, add_special_tokens=False))

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
