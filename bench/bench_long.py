"""Long sequences: peak memory and time of one LoRA training step at 224 / 448 / 896 px and at 8 frames of 224 px,
ours against transformers + peft with eager and with sdpa attention.

    python bench/bench_long.py [--models paligemma-3b paligemma2-3b --sizes 224 448 896 8x224 --repeats 3]
    python bench/bench_long.py --device cuda        # the same rows on a GPU (torch.cuda.max_memory_allocated)

Models: each decoder at real width (PaliGemma: hidden 2048, 8 heads, 1 KV head; PaliGemma 2: 2304, 8 heads, 4 KV
heads, soft-cap 50, window 4096), ``--text-layers`` layers (default 2: PaliGemma 2's first sliding and first global
layer), the real 257,216-token vocabulary, and a SigLIP So400m of ``--vision-layers`` layers (default 1; frozen, so
it adds compute, not saved activations). Batch 1: the image tokens (256 per 224 px image, 1,024 at 448, 4,096 at
896) + a 10-token prompt, a 10-token answer. A step is forward + backward in train mode; both compute the LM head
at the answer tokens only (transformers through ``logits_to_keep``: its default head at every position would
dominate the peak, which bench_train.py shows), so the rows compare vision tower and decoder. transformers' "sdpa"
is its default: SDPA where it has one (it refuses it for Gemma 2's decoder, which stays eager).

Peak memory on a CPU is the growth of the resident high-water mark over one step, after a warm-up step whose freed
heap is handed back to the system (malloc_trim), each configuration alone in a fresh process; on a GPU,
max_memory_allocated over the step minus the memory before it. Medians of ``--repeats`` fresh processes (CPU) or
steps (GPU).
"""

import argparse
import ctypes
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

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.model.lora import LoraSettings, add_lora, lora_config
from paligemma.model.presets import hub_config
from paligemma.tiny import random_batch

SIZES = {
    "224": (224, 1),
    "448": (448, 1),
    "896": (896, 1),
    "8x224": (224, 8),
}  # image size, images per prompt
IMPLEMENTATIONS = ("ours", "hf-eager", "hf-sdpa")


def model_config(model: str, size: str, vision_layers: int, text_layers: int) -> PaliGemmaConfig:
    config = hub_config(f"{model}-pt-{SIZES[size][0]}")
    config["vision_config"]["num_hidden_layers"] = vision_layers
    config["text_config"]["num_hidden_layers"] = text_layers
    return PaliGemmaConfig.from_dict(config)


def build(config: PaliGemmaConfig, implementation: str, device: str):
    """A LoRA r=8 model (train mode, dropout on) of one implementation, on ``device`` in float32."""
    torch.manual_seed(0)
    if implementation == "ours":
        with torch.device(device):
            return add_lora(PaliGemmaForConditionalGeneration(config)).train()
    hf_config = transformers.PaliGemmaConfig.from_dict(config.to_dict())
    text = "sdpa" if implementation == "hf-sdpa" and config.text_config.model_type == "gemma" else "eager"
    vision = implementation.removeprefix("hf-")
    attention = {"text_config": text, "vision_config": vision, "": vision}
    with torch.device(device):
        hf = transformers.PaliGemmaForConditionalGeneration._from_config(
            hf_config, attn_implementation=attention
        )
    return peft.get_peft_model(hf, lora_config(LoraSettings())).train()


def step_fn(implementation: str, model, batch: dict):
    """Both compute the LM head at the answer positions only: ours with ``return_logits=False``, transformers
    with ``logits_to_keep`` and the labels cut to match (batch 1, no padding: the answer is last)."""
    if implementation == "ours":
        inputs = {**batch, "return_logits": False}
    else:
        keep = batch["input_ids"].shape[1] - int((batch["labels"][0, 1:] != -100).nonzero()[0])
        inputs = {**batch, "labels": batch["labels"][:, -keep:], "logits_to_keep": keep}

    def step():
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()

    return step


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the high-water mark since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_step(config: PaliGemmaConfig, implementation: str, images: int, device: str) -> dict:
    """Peak MB and seconds of one step after a warm-up step, in this process."""
    model = build(config, implementation, device)
    batch = random_batch(config, [10], [10], images_per_row=[images])
    batch = {k: v.to(device) for k, v in batch.items()}
    step = step_fn(implementation, model, batch)
    step()
    gc.collect()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(
            0
        )  # the warm-up's freed heap leaves the RSS: the step's growth shows
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = rss_mb("VmRSS")
    start = time.perf_counter()
    step()
    sync(device)
    seconds = time.perf_counter() - start
    peak = (
        (torch.cuda.max_memory_allocated() - before) / 2**20 if device == "cuda" else rss_mb("VmHWM") - before
    )
    return {"peak_mb": peak, "step_s": seconds, "tokens": batch["input_ids"].shape[1]}


def measure(model: str, size: str, implementation: str, args) -> dict:
    """Median peak MB and step seconds over ``args.repeats`` fresh processes (CPU) or steps (GPU)."""
    runs = []
    for _ in range(args.repeats):
        if args.device == "cuda":
            config = model_config(model, size, args.vision_layers, args.text_layers)
            runs.append(measure_step(config, implementation, SIZES[size][1], "cuda"))
            torch.cuda.empty_cache()
            continue
        cmd = [sys.executable, __file__, "--one", model, size, implementation, "--threads", str(args.threads or 0),
               "--vision-layers", str(args.vision_layers), "--text-layers", str(args.text_layers)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {key: statistics.median(run[key] for run in runs) for key in ("peak_mb", "step_s", "tokens")}


def table_rows(args):
    """Yields one row per model and size: peak MB and step seconds of each implementation, and ours' ratios."""
    for model in args.models:
        for size in args.sizes:
            r = {impl: measure(model, size, impl, args) for impl in IMPLEMENTATIONS}
            ours, eager, sdpa = r["ours"]["peak_mb"], r["hf-eager"]["peak_mb"], r["hf-sdpa"]["peak_mb"]
            print(f"  long {model} {size}: peak {ours / eager:.0%} of eager", file=sys.stderr, flush=True)
            yield ([model, size, f"{r['ours']['tokens']:.0f}"]
                   + [f"{r[impl]['peak_mb']:,.0f}" for impl in IMPLEMENTATIONS] + [f"{ours / eager:.0%}", f"{ours / sdpa:.0%}"]
                   + [f"{r[impl]['step_s']:.2f}" for impl in IMPLEMENTATIONS])  # fmt: skip


HEADER = ["model", "size", "tokens", "peak MB: ours", "transformers eager", "transformers sdpa", "ours / eager",
          "ours / sdpa", "step s: ours", "transformers eager", "transformers sdpa"]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["paligemma-3b", "paligemma2-3b"])
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--vision-layers", type=int, default=1)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "SIZE", "IMPLEMENTATION"), help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        model, size, implementation = args.one
        config = model_config(model, size, args.vision_layers, args.text_layers)
        return print(json.dumps(measure_step(config, implementation, SIZES[size][1], "cpu")))
    print(f"LoRA r=8 step, float32, {args.device}, threads={torch.get_num_threads()}, {args.text_layers} decoder and "
          f"{args.vision_layers} vision layers, medians of {args.repeats}")  # fmt: skip
    print(" | ".join(HEADER))
    for row in table_rows(args):
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
