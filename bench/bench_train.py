"""LoRA training step and its peak memory, ours against transformers + peft: same weights, LoRA, batch.

    python bench/bench_train.py [--shapes small-vocab vocab32k gemma2-window128 3b-vocab --dtype float32
                                 --repeats 5 --threads 1]

A step is forward + backward in train mode (LoRA dropout on), as training runs it (transformers with SDPA, eager
for Gemma 2, which SDPA cannot soft-cap): ours computes the LM head at the answer tokens only
(``return_logits=False``), transformers at every position. Times are interleaved medians; ratios are
transformers / ours (> 1: we are faster). Peak memory is the growth of the process's resident high-water mark over
one step (reset after building the models; Linux), each implementation
measured alone in a fresh subprocess.
"""

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import peft
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from bench_decode import SMALL_SHAPES as DECODE_SHAPES  # noqa: E402

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration  # noqa: E402
from paligemma.model.lora import LoraSettings, add_lora, lora_config  # noqa: E402
from paligemma.model.presets import hub_config  # noqa: E402
from paligemma.tiny import random_batch  # noqa: E402


def with_layers(config: dict, vision: int, text: int) -> dict:
    """A hub config with fewer vision and decoder layers (so that it runs on a CPU)."""
    return {**config, "vision_config": {**config["vision_config"], "num_hidden_layers": vision},
            "text_config": {**config["text_config"], "num_hidden_layers": text}}  # fmt: skip


SHAPES = {
    **DECODE_SHAPES,
    # PaliGemma-3B's decoder layer and real 257,216-token vocabulary, one decoder and two vision layers.
    "3b-vocab": with_layers(hub_config("paligemma-3b-pt-224"), vision=2, text=1),
}
BATCH_SIZES = {"small-vocab": 4, "vocab32k": 4, "gemma2-window128": 4, "3b-vocab": 1}


def build(shape: str, dtype: torch.dtype, which=("hf", "ours")) -> dict:
    """name -> LoRA model (train mode) for the implementations in ``which``, all with the same weights."""
    config = PaliGemmaConfig.from_dict(SHAPES[shape])
    hf_config = transformers.PaliGemmaConfig.from_dict(config.to_dict())
    hf_config._attn_implementation = "eager" if config.text_config.model_type == "gemma2" else "sdpa"
    torch.manual_seed(0)
    hf = transformers.PaliGemmaForConditionalGeneration(hf_config).to(dtype)
    models = {}
    if "ours" in which:
        ours = PaliGemmaForConditionalGeneration(config).to(dtype)
        ours.load_state_dict(hf.state_dict())
        models["ours"] = add_lora(ours)
    if "hf" in which:
        models["hf"] = peft.get_peft_model(hf, lora_config(LoraSettings()))
    for model in models.values():
        model.train()
    return config, models


def batch_for(config, shape: str, dtype: torch.dtype) -> dict:
    n = BATCH_SIZES[shape]
    batch = random_batch(config, [8 + 3 * i for i in range(n)], [12] * n)
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return batch


def step_fn(name: str, model, batch: dict):
    extra = {"return_logits": False} if name == "ours" else {}

    def step():
        model.zero_grad(set_to_none=True)
        model(**batch, **extra).loss.backward()

    return step


def peak_rss_growth_mb(shape: str, name: str, dtype: str) -> float:
    """Peak RSS growth over one training step of one implementation, in a fresh process (see ``--peak-of``)."""
    cmd = [sys.executable, __file__, "--peak-of", name, "--shapes", shape, "--dtype", dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_growth_mb"]


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the high-water mark since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_peak(shape: str, name: str, dtype: torch.dtype) -> None:
    config, models = build(shape, dtype, which=(name,))
    batch = batch_for(config, shape, dtype)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: building the models is not the step
    before = rss_mb("VmRSS")
    step_fn(name, models[name], batch)()
    print(json.dumps({"peak_growth_mb": rss_mb("VmHWM") - before}))


def measure(shape: str, dtype_name: str, repeats: int, memory: bool = True) -> dict:
    """One shape's interleaved median step seconds (and peak MB unless not ``memory``), transformers and ours."""
    dtype = getattr(torch, dtype_name)
    config, models = build(shape, dtype)
    batch = batch_for(config, shape, dtype)
    steps = {name: step_fn(name, model, batch) for name, model in models.items()}
    times = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    del models, steps
    row = {"shape": shape, "batch": BATCH_SIZES[shape], "dtype": dtype_name}
    row |= {f"{name}_s": statistics.median(t) for name, t in times.items()}
    row["speedup"] = row["hf_s"] / row["ours_s"]
    if memory:
        row |= {f"{name}_peak_mb": peak_rss_growth_mb(shape, name, dtype_name) for name in ("hf", "ours")}
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--peak-of", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_of:
        return measure_peak(args.shapes[0], args.peak_of, getattr(torch, args.dtype))
    print(f"LoRA r=8 train step, dtype={args.dtype} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"{'shape':12s} {'batch':>5s} {'step ms: hf+peft':>17s} {'ours':>8s} {'x':>6s}   "
          f"{'peak MB: hf+peft':>17s} {'ours':>7s}")  # fmt: skip
    for shape in args.shapes:
        r = measure(shape, args.dtype, args.repeats, memory=not args.no_memory)
        mem = "" if args.no_memory else f"{r['hf_peak_mb']:17.0f} {r['ours_peak_mb']:7.0f}"
        print(f"{shape:12s} {r['batch']:5d} {r['hf_s'] * 1e3:17.0f} {r['ours_s'] * 1e3:8.0f} {r['speedup']:6.2f}   "
              f"{mem}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
