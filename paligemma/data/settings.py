"""Every option of the data pipeline, in one place: ``data.*`` in the Hydra config (whose defaults these are)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from paligemma.data.tasks import TASKS
from paligemma.errors import ConfigError

MAX_DEFAULT_WORKERS = 4
# data.path values made from data.synthetic, no file read
GENERATED_PATHS = ("synthetic", "synthetic_video", "synthetic_pairs", "synthetic_segmentation")


def check_template(template: str, task: str) -> None:
    """A ``data.prompt`` that formats with the fields of the task, else a ConfigError naming the field."""
    field = TASKS[task].prompt_field
    fields = {"lang": "en"} | ({field: "x"} if field else {})
    try:
        template.format(**fields)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(
            f"data.prompt {template!r} does not format ({type(error).__name__}: {error}); "
            f"its fields for task {task}: {', '.join('{' + f + '}' for f in fields)}"
        ) from error


@dataclass
class DataSettings:
    """Captioning, VQA, any prefix -> suffix task, detection or segmentation, over a Hugging Face dataset.

    ``path``: a hub id, a local data dir (parquet, arrow, imagefolder, ...), a ``save_to_disk`` dir, or
    "synthetic" (``make_shapes_dataset(**synthetic)``), "synthetic_video" (``make_clips_dataset(**synthetic)``,
    clips of ``num_frames`` pictures) or "synthetic_pairs" (``make_pairs_dataset(**synthetic)``, two pictures a
    row). Splits take load_dataset's slicing
    ("train[:95%]"); a saved single Dataset is the split "train". ``max_*_samples`` keep the first rows.
    ``processor_path``: the model dir (or hub id) holding the tokenizer and image settings.
    A local dir may also hold JSONL files (``<split>.jsonl``, one {"image": file, "prefix", "suffix"} per line,
    image files relative to the dir) or COCO-style annotations (``<split>.json``, or Roboflow's
    ``<split>/_annotations.coco.json``): see paligemma/data/sources.py.
    """

    path: str
    task: str = "vqa"
    processor_path: str = "assets/tiny-paligemma"
    name: str | None = None  # the hub dataset's config name, if it has several
    image_column: str = "image"  # one picture per row, or a list of them
    # instead of image_column: a clip per row (a path, bytes, or a datasets.Video column), read as num_frames pictures
    video_column: str | None = None
    num_frames: int = 8  # frames taken from each clip: uniformly over it, or at fps from its start
    fps: float | None = None  # frames per second to take from the start of each clip; null: uniformly over it
    # P > 1: each picture (frame) takes 1/P^2 of its image tokens, the means of P x P blocks of patches: more frames fit
    frame_token_pool: int = 1
    # rows in the checkpoint's chat template, the loss on the assistant's turn only (Gemma 3 -it checkpoints)
    chat_template: bool = False
    # Gemma 3: a wide or tall image also goes in as crops along its long side (transformers' do_pan_and_scan);
    # every crop costs an image's tokens
    pan_and_scan: bool = False
    pan_and_scan_min_crop_size: int = 256  # px, each side of a crop
    pan_and_scan_max_num_crops: int = 4  # crops of one image (at least 2)
    pan_and_scan_min_ratio_to_activate: float = 1.2  # long side / short side from which an image is cropped
    question_column: str = "question"
    answer_column: str = "answers"  # a string, a list of strings or a list of {"answer": ...} dicts
    caption_column: str = "caption"  # a string or a list of strings
    prefix_column: str = "prefix"  # prefix_suffix: the prompt
    suffix_column: str = "suffix"  # prefix_suffix: the target (a string or a list of references)
    objects_column: str = "objects"  # detection: {"bbox": [[4 numbers]...], "category": [names or class ids]}
    box_format: str = "xywh"  # detection boxes in pixels: "xywh" (COCO: x, y, width, height) or "xyxy"
    # detection and segmentation: the objects generation has room for, 8 (26) tokens each (when
    # generation.max_new_tokens is null)
    max_objects: int = 16
    # segmentation (paligemma/data/segmentation.py; masks as RLE, polygons, an image or a 2-D array: data/masks.py)
    mask_column: str = "mask"  # one mask per row, or a list of them (one per name)
    names_column: str = "names"  # segmentation: the name of each object (a list), or of the one object
    expression_column: str = "expression"  # referring_segmentation: the object's referring expression(s)
    box_column: str | None = None  # the objects' boxes in box_format; null: each mask's tight box
    # the VQ-VAE that turns masks into <seg> codes and back: the published vae-oid.npz for PaliGemma checkpoints
    mask_vae: str = "assets/tiny-mask-vae/mask_vae.safetensors"
    lang: str = "en"  # the language code of the VQA and captioning prompts
    prompt: str | None = None  # a prompt template instead of the task's (paligemma/data/tasks.py)
    metric: str | None = None  # None: the task's
    kind_column: str | None = None  # e.g. a question-type column, for per-kind metrics
    train_split: str = "train"
    val_split: str = "validation"
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    batch_size: int = 8
    val_batch_size: int | None = None  # None: batch_size
    num_workers: int | None = None  # None: one per CPU core this process may use but one, at most 4
    max_length: int | None = None  # cap on prompt + target tokens; longer targets are cut, <eos> kept
    packing: bool = False  # training: a batch's rows packed into sequences of at most max_length tokens
    seed: int = 0
    on_bad_sample: str = "skip"  # or "raise"
    synthetic: dict[str, Any] = field(default_factory=dict)  # the generator's arguments

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"data.task must be one of {sorted(TASKS)}, got {self.task!r}")
        counts = {"batch_size": self.batch_size, "val_batch_size": self.val_batch_size,
                  "max_train_samples": self.max_train_samples, "max_val_samples": self.max_val_samples,
                  "max_objects": self.max_objects}  # fmt: skip
        for key, value in counts.items():
            if value is not None and value < 1:
                raise ConfigError(f"data.{key} must be at least 1, got {value}")
        if self.num_frames < 1:
            raise ConfigError(f"data.num_frames must be at least 1, got {self.num_frames}")
        if self.frame_token_pool < 1:
            raise ConfigError(
                f"data.frame_token_pool must be at least 1 (1: no pooling), got {self.frame_token_pool}"
            )
        if self.pan_and_scan_min_crop_size < 1:
            raise ConfigError(
                f"data.pan_and_scan_min_crop_size must be at least 1 px, got {self.pan_and_scan_min_crop_size}"
            )
        if self.pan_and_scan_max_num_crops < 2:
            raise ConfigError(
                "data.pan_and_scan_max_num_crops must be at least 2 (fewer: data.pan_and_scan=false), "
                f"got {self.pan_and_scan_max_num_crops}"
            )
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(
                f"data.fps must be a positive number of frames per second (null: uniform), got {self.fps}"
            )
        if self.packing and self.max_length is None:
            raise ConfigError(
                "data.packing=true needs data.max_length: the most tokens a packed sequence holds"
            )
        if self.prompt is not None:
            check_template(self.prompt, self.task)
        if self.box_format not in ("xywh", "xyxy"):
            raise ConfigError(f"data.box_format must be 'xywh' or 'xyxy', got {self.box_format!r}")
        if self.on_bad_sample not in ("skip", "raise"):
            raise ConfigError(f"data.on_bad_sample must be 'skip' or 'raise', got {self.on_bad_sample!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(
                f"data.num_workers must be 0 or more (null: the machine's), got {self.num_workers}"
            )

    @property
    def workers(self) -> int:
        """DataLoader worker processes: ``num_workers``, or by default what the machine has room for."""
        if self.num_workers is not None:
            return self.num_workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(MAX_DEFAULT_WORKERS, cores - 1)

    @property
    def pan_and_scan_options(self) -> dict[str, Any]:
        """The processor's pan & scan arguments, as transformers' Gemma3Processor names them (none when off)."""
        if not self.pan_and_scan:
            return {}
        return {
            "do_pan_and_scan": True,
            "pan_and_scan_min_crop_size": self.pan_and_scan_min_crop_size,
            "pan_and_scan_max_num_crops": self.pan_and_scan_max_num_crops,
            "pan_and_scan_min_ratio_to_activate": self.pan_and_scan_min_ratio_to_activate,
        }

    @property
    def metric_name(self) -> str:
        return self.metric or TASKS[self.task].metric

    @property
    def columns(self) -> dict[str, str]:
        """The columns this task reads, by option name."""
        wanted = (
            {"video_column": self.video_column} if self.video_column else {"image_column": self.image_column}
        )
        for option in TASKS[self.task].columns:
            wanted[option] = getattr(self, option)
        if self.kind_column is not None:
            wanted["kind_column"] = self.kind_column
        if self.box_column is not None and TASKS[self.task].prepare is not None:
            wanted["box_column"] = self.box_column
        return wanted
