"""What the tests share: small configs and the transformers reference, data rows in hub schemas, Hydra
composition as the entry scripts do it, the CLI runner, and a reader of offline W&B runs."""

import io
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from PIL import Image
from wandb.proto import wandb_internal_pb2

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.data.synthetic import COLORS
from paligemma.model.vision_language import VisionLanguageModel
from paligemma.training.configs import register_configs

ROOT = Path(__file__).resolve().parents[1]

# ---- models ----

# Small configs that differ where bugs hide: MQA / GQA / MHA, head_dim != hidden / heads, patch grids.
SMALL_CONFIGS = {
    "mqa": dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16),
        image_token_index=380, projection_dim=64,
    ),
    "gqa": dict(
        vision_config=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=1, num_attention_heads=3,
                           image_size=16, patch_size=4),
        text_config=dict(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=500.0),
        image_token_index=290, projection_dim=48,
    ),
    "mha": dict(
        vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=14),
        text_config=dict(vocab_size=260, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=16),
        image_token_index=257, projection_dim=32,
    ),
    # PaliGemma 2: a window (5) shorter than prompts and generations, caps that bite, scale != head_dim.
    "gemma2": dict(
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        text_config=dict(model_type="gemma2", vocab_size=320, hidden_size=48, intermediate_size=80,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         query_pre_attn_scalar=24, attn_logit_softcapping=4.0, final_logit_softcapping=3.0,
                         sliding_window=5, rope_theta=800.0),
        image_token_index=310, projection_dim=48, eos_token_id=[1, 7],
    ),
}  # fmt: skip


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter random values, norm weights and biases included (a wrong `1 + w` shows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = 0.5 if ("norm" in name or name.endswith("bias")) else 0.15
            if "embed_tokens" in name:  # tied with the head: large values make a model that repeats its input
                std = 0.03
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def hf_reference(config: PaliGemmaConfig, seed: int = 0):
    """transformers' PaliGemma built from our config dict, randomised, in eval mode (eager attention)."""
    import transformers

    hf_config = transformers.PaliGemmaConfig.from_dict(config.to_dict())
    hf_config._attn_implementation = "eager"
    model = transformers.PaliGemmaForConditionalGeneration(hf_config).eval()
    randomize_(model, seed)
    return model


def ours_from_hf(hf_model) -> PaliGemmaForConditionalGeneration:
    config = PaliGemmaConfig.from_dict(hf_model.config.to_dict())
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.load_state_dict(hf_model.state_dict(), strict=True)
    return model


def family_batch(config) -> dict:
    """A small training batch of either family: two rows, the Gemma 3 ones with images mid-text."""
    from paligemma.tiny import random_batch, random_gemma3_batch

    if hasattr(config, "mm_tokens_per_image"):  # Gemma3Config
        return random_gemma3_batch(config, [[3, "image", 4, "image", 2], ["image", 6]], [3, 5])
    return random_batch(config, prefix_lens=[7, 4], suffix_lens=[3, 5])


TINY_TEXTS = [
    "caption en",
    "answer en what color is the circle?",
    "a red circle on the left and a blue square on the right",
    "two shapes: a green triangle at the top and a yellow circle at the bottom",
] * 20


# ---- data ----


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise(size=(40, 30), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def vqav2_rows(n: int) -> dict:
    answers = [["yes"] * 6 + ["no"] * 4, ["2", "3", "2", "two", "2", "2", "3", "2", "2", "4"], ["red"] * 10]
    rows = [
        {
            "question_type": "what", "multiple_choice_answer": max(answers[i % 3], key=answers[i % 3].count),
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers[i % 3])],
            "image_id": 1000 + i // 2, "answer_type": ["yes/no", "number", "other"][i % 3],
            "question_id": 1000 * (1000 + i // 2) + i % 2, "question": f"question number {i}?",
            "image": {"bytes": png(noise(seed=i)), "path": None},
        }
        for i in range(n)
    ]  # fmt: skip
    return {key: [r[key] for r in rows] for key in rows[0]}


VQAV2_FEATURES = datasets.Features(
    {
        "question_type": datasets.Value("string"),
        "multiple_choice_answer": datasets.Value("string"),
        "answers": [
            {
                "answer": datasets.Value("string"),
                "answer_confidence": datasets.Value("string"),
                "answer_id": datasets.Value("int64"),
            }
        ],
        "image_id": datasets.Value("int64"),
        "answer_type": datasets.Value("string"),
        "question_id": datasets.Value("int64"),
        "question": datasets.Value("string"),
        "image": datasets.Image(),
    }
)


COCO_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_id": datasets.Value("int64"),
        "text": datasets.Value("string"),
        "captions": [datasets.Value("string")],
        "split": datasets.Value("string"),
    }
)


def awkward_and_bad_rows() -> datasets.DatasetDict:
    palette = noise(mode="P")
    palette.info["transparency"] = 0
    images = {
        "rgb": png(noise()),
        "cmyk": png(noise(mode="CMYK"), "JPEG"),
        "16-bit": png(Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16))),
        "palette": png(palette),
        "rgba": png(noise(mode="RGBA")),
        "1x1": png(noise(size=(1, 1))),
        "large": png(Image.new("RGB", (3000, 2000), (200, 30, 90))),
        "corrupt": b"\x89PNG\r\n\x1a\n this is not a png",
    }
    rows = [(images[k], "what is it?", [k]) for k in images]  # the last one is bad: corrupt bytes
    rows += [
        (None, "what is it?", ["missing"]),
        (images["rgb"], "what is it?", [" "]),
        (images["rgb"], "", ["x"]),
    ]
    image = [None if b is None else {"bytes": b, "path": None} for b, _, _ in rows]
    data = {"image": image, "question": [r[1] for r in rows], "answers": [r[2] for r in rows]}
    features = datasets.Features(
        image=datasets.Image(),
        question=datasets.Value("string"),
        answers=[datasets.Value("string")],
    )
    split = datasets.Dataset.from_dict(data, features=features)
    return datasets.DatasetDict(train=split, validation=split.select([0, 7, 8]))


# ---- Hydra and the entry scripts ----

FAST = ["data.batch_size=4", "data.val_batch_size=8", "trainer.max_steps=3", "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1", "generation.max_new_tokens=4", "data.num_workers=0", "data.max_val_samples=8",
        "checkpoint.every_n_steps=2", "lora.dropout=0.05"]  # fmt: skip  # dropout on: resumes restore its draws


SYNTHETIC = ["data.synthetic.num_train=24", "data.synthetic.num_val=8", "data.synthetic.image_size=32"]


def offline_hub_cache(monkeypatch, cache: Path) -> Path:
    """huggingface_hub offline over ``cache``: the environment for subprocesses, and its constants, which it
    read at import."""
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def compose_config(output_dir: Path, overrides: list[str], config_name: str = "config"):
    """conf/<config_name>.yaml composed as the entry script would, writing to output_dir."""
    output_dir.mkdir(parents=True, exist_ok=True)
    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def write_parquet(directory: Path, splits: dict[str, tuple[dict, datasets.Features]]) -> Path:
    (directory / "data").mkdir(parents=True)
    for split, (rows, features) in splits.items():
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            directory / "data" / f"{split}.parquet"
        )
    return directory


def coco_rows(n: int) -> dict:
    captions = [[f"a cat number {i}", "a cat", "two cats on a mat", "a mat", "a photo"] for i in range(n)]
    return {"image": [{"bytes": png(noise(seed=i)), "path": None} for i in range(n)], "image_id": list(range(n)),
            "text": [c[0] for c in captions], "captions": captions, "split": ["x"] * n}  # fmt: skip


def run_cli(script: str, overrides: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    command = [sys.executable, script, f"hydra.run.dir={tmp_path / 'run'}", "logger=none", *overrides]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return result, time.perf_counter() - start


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    """Until ``path`` exists (e.g. a run's first checkpoint); fails if ``process`` ends first."""
    start = time.perf_counter()
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.perf_counter() - start < seconds, f"no {path} after {seconds} s"
        time.sleep(0.02)


def rank_1_pid(process: subprocess.Popen) -> int:
    """Rank 1 of a one-machine DDP run of two: the process that rank 0 (``process``) started by re-running train.py."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    (rank_1,) = [int(pid) for pid in children if "train.py" in Path(f"/proc/{pid}/cmdline").read_text()]
    return rank_1


def assert_one_line_error(result: subprocess.CompletedProcess, culprit: str) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and culprit in last, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return last


# ---- offline W&B runs: the .wandb file is a LevelDB-style log of protobuf records ----

HEADER_BYTES, BLOCK_BYTES = 7, 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes):
    pos = HEADER_BYTES
    while pos + 7 <= len(data):
        if BLOCK_BYTES - (pos - HEADER_BYTES) % BLOCK_BYTES < 7:  # block trailer: skip to the next block
            pos += BLOCK_BYTES - (pos - HEADER_BYTES) % BLOCK_BYTES
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        yield kind, data[pos + 7 : pos + 7 + length]
        pos += 7 + length


def records(run_dir: Path) -> list:
    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    out, pending = [], b""
    for kind, chunk in _chunks(path.read_bytes()):
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            out.append(record)
            pending = b""
        elif kind in (FIRST, MIDDLE):
            pending += chunk
    return out


def history(run_dir: Path) -> list[dict]:
    """Every logged row as {metric name: value}."""
    rows = [r.history for r in records(run_dir) if r.WhichOneof("record_type") == "history"]
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in h.item} for h in rows
    ]


def run_group(run_dir: Path) -> str:
    (run,) = [r.run for r in records(run_dir) if r.WhichOneof("record_type") == "run"]
    return run.run_group


def write_jsonl_dir(directory: Path) -> Path:
    """big_vision's JSONL-plus-images layout; validation has a line that is not JSON and a missing image."""
    directory.mkdir()
    for i in range(3):
        noise(seed=i).save(directory / f"{i}.png")
    rows = {
        "train": [{"image": f"{i}.png", "prefix": "answer fr combien ?", "suffix": str(i)} for i in range(3)],
        "validation": [
            {"image": "0.png", "prefix": "ocr", "suffix": ["STOP", "stop"]},
            {"image": "gone.png", "prefix": "ocr", "suffix": "x"},
        ],  # fmt: skip
    }
    for split, lines in rows.items():
        text = "".join(json.dumps(row) + "\n" for row in lines)
        (directory / f"{split}.jsonl").write_text(text + ("{not json\n" if split == "validation" else ""))
    return directory


IMAGE_SIZE, NUM_IMAGE_TOKENS = 32, 16  # of the data tests' processor (tests/data/conftest.py)


def batches(dm, loader) -> list:
    """What the LightningModule receives: each batch after the data module's on_before_batch_transfer."""
    return [dm.on_before_batch_transfer(batch, 0) for batch in loader]


def from_config(name: str, processor_dir: Path, **data_overrides):
    """The data module of conf/data/<name>.yaml as train.py types it, with ``model.path`` = processor_dir (a
    processor without weights)."""
    from paligemma.data.datamodule import PaliGemmaDataModule
    from paligemma.data.settings import DataSettings
    from paligemma.training.checks import typed

    cfg = compose_config(Path(tempfile.mkdtemp()), [f"data={name}", f"model.path={processor_dir}"])
    for key, value in data_overrides.items():
        OmegaConf.update(cfg, f"data.{key}", value)
    return PaliGemmaDataModule(typed(DataSettings, cfg.data, "data"))


def built_run(cfg):
    """The data module and LightningModule of a composed train.py config, built as train.py builds them."""
    from paligemma.training.build import build_datamodule, build_module
    from paligemma.training.checks import run_settings

    settings = run_settings(cfg)
    datamodule = build_datamodule(settings)
    return datamodule, build_module(settings, datamodule)


def load_network(path: Path | str, **model_fields) -> VisionLanguageModel:
    """The frozen base ``build_model`` loads from ``path``: float32 unless ``model_fields`` say otherwise."""
    from paligemma.model.build import ModelSettings, build_model

    return build_model(ModelSettings(path=str(path), **{"dtype": "float32", **model_fields}), None).net


def lit_module(path: Path | str, lora: dict | None = None, optim: dict | None = None, metric: str = "vqa_accuracy",
               generation: dict | None = None, **model_fields):  # fmt: skip
    """A LightningModule on the network ``build_model`` makes of ``path``, ``lora`` (None: the decoder trains
    fully) and ``model_fields`` (float32 unless they say otherwise), with the base's processor."""
    from paligemma.data.processors import load_processor
    from paligemma.model.build import ModelSettings, build_model
    from paligemma.model.lora import LoraSettings
    from paligemma.training.module import PaliGemmaLitModule
    from paligemma.training.optim import OptimSettings
    from paligemma.training.scoring import GenerationSettings, Metric

    model = ModelSettings(path=str(path), **{"dtype": "float32", **model_fields})
    network = build_model(model, LoraSettings(**lora) if lora is not None else None)
    return PaliGemmaLitModule(network, load_processor(str(path)), OptimSettings(**(optim or {})),
                              GenerationSettings(**(generation or {})), Metric(metric))  # fmt: skip


def write_clip(path: Path, levels=tuple(12 * i for i in range(20)), fps: int = 10, size: int = 32) -> Path:
    """An MPEG-4 clip (PyAV) whose frame i is a flat grey of ``levels[i]``: 20 frames at 10 fps by default."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for level in levels:
            picture = np.full((size, size, 3), level, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return path


def drawn(picture) -> set[tuple[str, str, int]]:
    """The (colour, shape, cell) of every shape in a 64 px frame, read back from its pixels: a shape's kind
    from how much of its bounding box it fills (square 1, circle pi/4, triangle 1/2)."""
    pixels = np.asarray(picture, dtype=int)
    found = set()
    for cell in range(4):
        quadrant = pixels[cell // 2 * 32 : cell // 2 * 32 + 32, cell % 2 * 32 : cell % 2 * 32 + 32]
        for color, rgb in COLORS.items():
            ys, xs = np.nonzero(np.abs(quadrant - rgb).sum(-1) < 10)
            if len(ys) > 20:
                fill = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
                found.add((color, "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle", cell))
    return found


def random_mask_vae(path: Path, seed: int = 0) -> Path:
    """A narrow MaskVAE with random weights in the published key layout, saved as safetensors at ``path``."""
    from paligemma.model.mask_vae import MaskVAE

    torch.manual_seed(seed)
    MaskVAE(widths=(4, 8, 8, 8), num_embeddings=128, embedding_dim=8).save_pretrained(path)
    return path
