"""DDP and FSDP on GPUs (NCCL, bf16-mixed): what the CPU tests (tests/training/test_distributed.py, gloo, float32) cannot.

    python bench/fsdp_gpu_check.py            # every visible GPU; about a minute; offline (tiny random model)

Trains a tiny random PaliGemma for 3 steps on counting questions (all answers equally long, so a global batch
gives the same gradient however it is split) and compares the adapters with a one-GPU float32 run:
- trainer=ddp and trainer=fsdp in float32: the same adapter (max difference ~1e-5),
- trainer=fsdp with bf16-mixed (FSDP MixedPrecision + autocast): runs to the end, its adapter pointing the
  same way as float32's (cosine > 0.95),
and that every run wrote one metrics.json, adapter/ and model/ (export.merged=true). Exits 1 on a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(tmp: Path) -> tuple[Path, Path]:
    from paligemma.data.synthetic import make_shapes_dataset, synthetic_texts
    from paligemma.tiny import create_tiny_checkpoint

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)  # fmt: skip
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16)  # fmt: skip
    data = make_shapes_dataset(num_train=96, num_val=28, image_size=32, seed=0)
    model = create_tiny_checkpoint(
        tmp / "model", synthetic_texts(data), vocab_size=400, vision=vision, text=text
    )
    data.filter(lambda kind: kind == "count", input_columns="kind").save_to_disk(tmp / "data")
    return Path(model), tmp / "data"


def train(run: Path, model: Path, data: Path, *overrides: str) -> dict[str, torch.Tensor]:
    command = [sys.executable, "train.py", f"model.path={model}", "data=vqa", f"data.path={data}",
               "data.kind_column=kind", "data.max_val_samples=null", "data.val_batch_size=4", "data.num_workers=0",
               "logger=csv", "lora.dropout=0", "optim.lr=1e-3", "trainer.max_steps=3", "generation.max_new_tokens=4",
               "checkpoint.every_n_steps=2", "export.merged=true", f"hydra.run.dir={run}", *overrides]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        sys.exit(f"FAIL {' '.join(overrides)}\n{result.stderr[-4000:]}")
    assert (run / "metrics.json").is_file() and (run / "model" / "model.safetensors").is_file()
    return load_file(run / "adapter" / "adapter_model.safetensors")


def main() -> None:
    gpus = torch.cuda.device_count()
    if gpus == 0:
        sys.exit("no GPU visible")
    if 4 % gpus:
        sys.exit(f"{gpus} GPUs: use 1, 2 or 4 (CUDA_VISIBLE_DEVICES=...) so that they split a batch of 4")
    per_gpu = [f"trainer.devices={gpus}", f"data.batch_size={4 // gpus}"]
    with tempfile.TemporaryDirectory() as tmp:
        model, data = make_inputs(Path(tmp))
        runs = {
            "1 GPU, float32": ["trainer=gpu", "trainer.precision=32-true", "data.batch_size=4"],
            f"ddp x{gpus}, float32": ["trainer=ddp", "trainer.precision=32-true", *per_gpu],
            f"fsdp x{gpus}, float32": ["trainer=fsdp", "trainer.precision=32-true", *per_gpu],
            f"fsdp x{gpus}, bf16-mixed": ["trainer=fsdp", "trainer.precision=bf16-mixed", *per_gpu],
        }
        adapters = {
            name: train(Path(tmp) / f"run{i}", model, data, *args)
            for i, (name, args) in enumerate(runs.items())
        }
        reference = adapters.pop("1 GPU, float32")
        ok = True
        moved = sorted(k for k in reference if "lora_B" in k)  # zero at the start: what training wrote
        flat = torch.cat([reference[k].flatten() for k in moved])
        for name, adapter in adapters.items():
            diff = max((adapter[k] - reference[k]).abs().max().item() for k in reference)
            ours = torch.cat([adapter[k].flatten() for k in moved])
            cosine = torch.nn.functional.cosine_similarity(ours, flat, dim=0).item()
            good = (
                cosine > 0.95 if "bf16" in name else diff < 1e-4
            )  # bf16: same direction; float32: same adapter
            ok &= good and bool(torch.isfinite(ours).all())
            print(
                f"{name:>22s}: max |adapter - 1 GPU float32| {diff:.2e}, cosine {cosine:.5f}  {'ok' if good else 'FAIL'}"
            )
        print(json.dumps({"gpus": gpus, "device": torch.cuda.get_device_name(0), "ok": ok}))
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
