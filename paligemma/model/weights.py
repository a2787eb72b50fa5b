"""HF checkpoint I/O: every layout transformers has written, single-file or sharded safetensors.

Loading builds the model on the meta device and fills it tensor by tensor, so no second full copy
of the weights is ever held. Keys are renamed by a flat prefix table; anything unknown, missing or
mis-shaped is an error that lists the keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from safetensors.torch import save_file
from torch import nn

from paligemma.errors import CheckpointError
from paligemma.paths import read_json, resolve_model_dir

if TYPE_CHECKING:
    from paligemma.model.vision_language import VisionLanguageModel

ModelT = TypeVar("ModelT", bound="VisionLanguageModel")  # a family's model class

# checkpoint prefix -> our prefix; the first match wins, so longer prefixes come first.
KEY_PREFIXES = [
    ("model.vision_tower.vision_model.", "model.vision_tower."),  # transformers 4.5x
    ("model.vision_tower.", "model.vision_tower."),
    ("model.multi_modal_projector.", "model.multi_modal_projector."),
    ("model.embed_vision.", "model.multi_modal_projector."),  # Gemma 4's projector
    ("model.language_model.", "model.language_model."),
    ("vision_tower.vision_model.", "model.vision_tower."),  # hub original
    ("vision_tower.", "model.vision_tower."),  # transformers 5 save
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
]
# What a hub download of a checkpoint fetches.
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer.model"]
# Tensors no family uses: SigLIP's pooling head (configs with vision_use_head), the tied head, and Gemma 4's audio
# tower and its projector (not implemented: its audio inputs are refused).
UNUSED_PREFIXES = ("model.vision_tower.head.", "lm_head.", "model.audio_tower.", "model.embed_audio.")
# Our key prefix -> the key written by save_pretrained (the hub's original layout).
SAVE_PREFIXES = [
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
]


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def our_key(checkpoint_key: str) -> str | None:
    for prefix, ours in KEY_PREFIXES:
        if checkpoint_key.startswith(prefix):
            return ours + checkpoint_key[len(prefix) :]
    return None


def checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"{path}: shards listed in {index.name} are missing: {missing}")
        return [path / s for s in shards]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(p.name for p in path.glob("*.safetensors"))
    if found:
        return [path / name for name in found]
    raise CheckpointError(
        f"{path} holds no safetensors weights (model.safetensors or model.safetensors.index.json); "
        "only safetensors checkpoints are read"
    )


def read_safetensors(file: Path):
    """Yield (key, shape, read) per tensor; read(dtype) loads that one tensor from disk.

    Plain reads instead of safetensors' memory map: a mapped file stays resident while open, so a
    dtype conversion would hold the whole file plus the converted copy (1.65x instead of ~1x).
    """
    with open(file, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError, MemoryError, OverflowError):
            raise CheckpointError(
                f"{file} has no safetensors header: the file is damaged; copy it again"
            ) from None
        header.pop("__metadata__", None)
        data_start = 8 + header_len

        def reader(key, info):
            def read(dtype: torch.dtype) -> torch.Tensor:
                begin, end = info["data_offsets"]
                buffer = bytearray(end - begin)
                f.seek(data_start + begin)
                if f.readinto(buffer) != len(buffer):
                    raise CheckpointError(f"{file} is truncated: it ends inside tensor {key}; copy it again")
                src = SAFETENSORS_DTYPES[info["dtype"]]
                flat = torch.frombuffer(buffer, dtype=src) if buffer else torch.empty(0, dtype=src)
                return flat.reshape(info["shape"]).to(dtype)

            return read

        for key, info in header.items():
            yield key, tuple(info["shape"]), reader(key, info)


def _set_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._buffers:  # a persistent buffer (Gemma 4's layer scalars, clip bounds): stays one
        module._buffers[attr] = tensor
        return
    setattr(module, attr, nn.Parameter(tensor, requires_grad=getattr(module, attr).requires_grad))


def checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds of ``model``: its parameters (the tied head once) and persistent buffers."""
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
    persistent = model.state_dict(keep_vars=True)
    tensors.update((name, b) for name, b in model.named_buffers() if name in persistent)
    return tensors


def unused_keys(model: nn.Module) -> set[str]:
    """Our names of checkpoint tensors the model has no place for and does not need (the decoder's
    ``unused_checkpoint_keys``: Gemma 4's KV-sharing layers' key and value projections)."""
    decoder = model.get_submodule("model.language_model")
    unused = getattr(decoder, "unused_checkpoint_keys", None)
    return {f"model.language_model.{key}" for key in unused()} if unused is not None else set()


def load_pretrained(
    cls: type[ModelT],
    path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    on_loaded=None,
) -> ModelT:
    """``on_loaded(model, name)`` runs after each tensor is in place (quantize.py quantizes its layer there)."""
    path = resolve_model_dir(path, MODEL_FILES)
    config = cls.config_class.from_pretrained(path)
    with torch.device("meta"):
        model = cls(config)
    expected = {name: p.shape for name, p in checkpoint_tensors(model).items()}  # tied head listed once
    skipped = unused_keys(model)
    loaded, unexpected, mis_shaped = set(), [], []
    for file in checkpoint_files(path):
        for key, shape, read in read_safetensors(file):
            name = our_key(key)
            if name in skipped:
                continue
            if name is None or (name not in expected and not name.startswith(UNUSED_PREFIXES)):
                unexpected.append(key)
            elif name in expected:
                if shape != tuple(expected[name]):
                    mis_shaped.append(f"{key}: checkpoint {shape}, model {tuple(expected[name])}")
                    continue
                _set_tensor(model, name, read(dtype).to(device))
                loaded.add(name)
                if on_loaded is not None:
                    on_loaded(model, name)
    missing = sorted(set(expected) - loaded)
    if missing or unexpected or mis_shaped:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
            if keys
        ]
        raise CheckpointError(f"checkpoint {path} does not match its config: " + "; ".join(problems))
    model.tie_weights()
    return model


def hub_key(our_name: str, prefixes: list[tuple[str, str]] = SAVE_PREFIXES) -> str:
    for ours, hub in prefixes:
        if our_name.startswith(ours):
            return hub + our_name[len(ours) :]
    raise KeyError(our_name)


def save_pretrained(model: VisionLanguageModel, path, max_shard_bytes: int = 5 * 2**30) -> None:
    """config.json + model.safetensors (or shards with an index) in the hub's original layout (the model class's
    ``save_prefixes``: Gemma 4 writes transformers 5's)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    prefixes = model.save_prefixes
    tensors = {
        hub_key(n, prefixes): p.detach().contiguous()
        for n, p in checkpoint_tensors(model).items()
        if n != "lm_head.weight"
    }
    shards, current, size = [], {}, 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensor
        size += nbytes
    shards.append(current)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / name, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
