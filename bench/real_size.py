"""Real-size PaliGemma without the hub: random weights in the hub checkpoints' shapes, saved sharded, loaded
back, one LoRA training step and one short generation, with seconds and peak memory of each stage.

    python bench/real_size.py                                   # paligemma-3b-pt-224 and paligemma2-3b-pt-224
    python bench/real_size.py --models gemma-3-4b-pt --quantization nf4          # Gemma 3 (896 px, 256 tokens)
    python bench/real_size.py --models paligemma2-10b-pt-224 --device cuda
    python bench/real_size.py --checkpoints /data/random --load-dtype bfloat16 --quantization nf4 --until step

Weights are made and saved in bf16; they are loaded back in bf16 where the device multiplies bf16 natively
(CUDA, or a CPU with AVX512-BF16 / AMX), else in float32 (``--load-dtype`` overrides): without those
instructions torch's bf16 matrix products fall back to a scalar kernel (0.2 GFLOP/s measured on an AVX2
EPYC), and a 3B LoRA step would take hours. Peak memory is the process's resident high-water mark (Linux),
reset before each stage; on CUDA, torch's allocator peak.

``--quantization nf4|fp4|int8`` loads the decoder's linear layers quantized (QLoRA, paligemma/model/quantize.py),
the rest in ``--load-dtype``; ``--compute-dtype`` is that of the 4-bit matmuls (float32 by default on a CPU
without native bf16, for the reason above). ``--checkpoints DIR`` keeps the random checkpoints (DIR/<model>) and
reuses them, so that each configuration runs in a process of its own without building the weights again.
``--until load|forward|step`` stops early (a bf16 step on an AVX2 CPU takes longer than anyone waits).
"""

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from paligemma import Gemma3Config, PaliGemmaConfig
from paligemma.model import DTYPES
from paligemma.model.build import ModelSettings, build_model
from paligemma.model.config import VisionLanguageConfig
from paligemma.model.families import MODEL_CLASSES
from paligemma.model.lora import LoraSettings
from paligemma.model.presets import gemma3_hub_config, hub_config
from paligemma.model.quantize import QUANTIZATIONS
from paligemma.model.vision_language import VisionLanguageModel
from paligemma.tiny import init_weights_, random_batch, random_gemma3_batch


def native_bf16(device: str) -> bool:
    if device == "cuda":
        return True
    flags = Path("/proc/cpuinfo").read_text().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def stage(name: str, device: str, fn, report: list):
    gc.collect()
    reset_peak(device)
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    report.append((name, time.perf_counter() - start, peak_gb(device)))
    return result


def hub_shapes(name: str) -> tuple[str, VisionLanguageConfig, dict]:
    """The family (a key of MODEL_CLASSES) and config of a hub checkpoint (``gemma-3-*``: Gemma 3, else PaliGemma),
    and a batch of one row for it: an image, 10 prompt tokens, 6 answer tokens and the stop token."""
    if name.startswith("gemma-3-"):
        config = Gemma3Config.from_dict(gemma3_hub_config(name))
        return "gemma3", config, random_gemma3_batch(config, [["image", 10]], [6])
    config = PaliGemmaConfig.from_dict(hub_config(name))
    return "paligemma", config, random_batch(config, prefix_lens=[10], suffix_lens=[6])


def random_model(family: str, config: VisionLanguageConfig, dtype: torch.dtype) -> VisionLanguageModel:
    """Built on the meta device and materialised in ``dtype``: no float32 copy of the weights ever exists."""
    with torch.device("meta"):
        model = MODEL_CLASSES[family](config)
    model = model.to(dtype).to_empty(device="cpu")
    model.tie_weights()
    init_weights_(model)
    return model


def lora_step(model, batch) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss = model(**batch, return_logits=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def model_gb(model) -> float:
    """Bytes the model's tensors hold (4-bit weights packed, with their scales)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    scales = [
        m.weight.quant_state.absmax
        for m in model.modules()
        if getattr(getattr(m, "weight", None), "quant_state", None) is not None
    ]
    return sum(t.numel() * t.element_size() for t in [*tensors.values(), *scales]) / 2**30


def parameter_count(model) -> int:
    """Parameters as the full-precision model counts them (a 4-bit weight packs two into a byte)."""
    return sum(
        p.quant_state.shape.numel() if getattr(p, "quant_state", None) is not None else p.numel()
        for p in model.parameters()
    )


def build(path: Path, args, load_dtype: torch.dtype):
    """The training network as train.py builds it (LoRA r=8 on the decoder, gradient checkpointing)."""
    settings = ModelSettings(
        path=str(path), dtype=str(load_dtype).removeprefix("torch."), quantization=args.quantization,
        compute_dtype=args.compute_dtype, quantize_vision=args.quantize_vision, gradient_checkpointing=True,
    )  # fmt: skip
    return build_model(settings, LoraSettings(r=8, alpha=16, dropout=0.0), device=args.device).net


def run(name: str, args, dtype: torch.dtype, load_dtype: torch.dtype, out: Path) -> list:
    family, config, batch = hub_shapes(name)
    device, report = args.device, []
    if not (out / "config.json").is_file():
        model = stage("build random", device, lambda: random_model(family, config, dtype), report)
        shard_bytes = int(args.shard_gb * 2**30)
        stage("save sharded", device, lambda: model.save_pretrained(out, max_shard_bytes=shard_bytes), report)
        del model
    model = stage("load, add LoRA", device, lambda: build(out, args, load_dtype), report)
    n_params, weights_gb = parameter_count(model), model_gb(model)
    model.train()
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(load_dtype)
    loss = float("nan")
    if args.until == "forward":
        with torch.no_grad():
            loss = stage("forward, batch 1", device, lambda: model(**batch, return_logits=False).loss, report)
    elif args.until != "load":
        loss = stage("LoRA step, batch 1", device, lambda: lora_step(model, batch), report)
    if args.until == "generate":
        model.eval()
        prompt = {k: batch[k][:, :-7] for k in ("input_ids", "attention_mask", "token_type_ids")}
        new = stage(
            "generate 4 tokens",
            device,
            lambda: model.generate(
                **prompt, pixel_values=batch["pixel_values"], max_new_tokens=4, eos_token_id=[]
            ),
            report,
        )
        assert new.shape == (1, 4) and torch.isfinite(torch.tensor(loss))
    shards = len(list(out.glob("*.safetensors")))
    made, loaded = (str(d).removeprefix("torch.") for d in (dtype, load_dtype))
    quantized = f", {args.quantization} (compute {args.compute_dtype}{', vision too' if args.quantize_vision else ''})"
    print(f"\n{name}: {n_params:,} parameters made and saved in {made} ({shards} shards), loaded in {loaded}"
          f"{quantized if args.quantization else ''}: {weights_gb:.2f} GB of weights; "
          f"{(batch['input_ids'] == config.image_token_index).sum()} image tokens, loss {float(loss):.3f}")  # fmt: skip
    print(f"{'stage':<22}{'seconds':>10}{'peak GB':>10}")
    for stage_name, seconds, peak in report:
        print(f"{stage_name:<22}{seconds:>10.1f}{peak:>10.2f}")
    measured = [peak for stage_name, _, peak in report if stage_name not in ("build random", "save sharded")]
    print(f"{'peak from load on':<22}{'':>10}{max(measured):>10.2f}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["paligemma-3b-pt-224", "paligemma2-3b-pt-224"])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--load-dtype", choices=sorted(DTYPES), default=None,
                        help="default: --dtype where the device computes it natively, else float32")  # fmt: skip
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=None)
    parser.add_argument("--compute-dtype", choices=sorted(DTYPES), default=None,
                        help="of the 4-bit matmuls; default: bfloat16 where native, else float32")  # fmt: skip
    parser.add_argument("--quantize-vision", action="store_true")
    parser.add_argument("--until", choices=["load", "forward", "step", "generate"], default="generate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shard-gb", type=float, default=2.0)
    parser.add_argument("--out", default=None, help="where to save (default: a temporary directory)")
    parser.add_argument("--checkpoints", default=None, help="keep and reuse the random checkpoints here")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    load_dtype = DTYPES[args.load_dtype] if args.load_dtype else dtype
    if args.load_dtype is None and dtype == torch.bfloat16 and not native_bf16(args.device):
        load_dtype = torch.float32
    args.compute_dtype = args.compute_dtype or ("bfloat16" if native_bf16(args.device) else "float32")
    for name in args.models:
        if args.checkpoints:
            run(name, args, dtype, load_dtype, Path(args.checkpoints) / name)
            continue
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:
            run(name, args, dtype, load_dtype, Path(tmp))


if __name__ == "__main__":
    main()
