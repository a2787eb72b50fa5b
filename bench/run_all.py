"""Every speed ratio of bench/ in one run, as a markdown page headed by the machine it ran on: one page per CPU kind
(machine.page_kind), since the kind decides which kernels run (bf16 is native on AVX512-BF16 / AMX only).

    python bench/run_all.py [--threads 2 --repeats 3] --out docs/benchmarks   # writes docs/benchmarks/<kind>.md

Runs, each side by side with transformers (+ peft) in this process: the LoRA training step and its peak memory
(bench_train.py; fp32, and bf16 where the CPU computes it natively), per-token decode in fp32 and bf16 with
the bandwidth it reaches, and prefill (bench_decode.py), the candidate kernels of a decode step's products
(bench_decode_kernels.py), the second epoch with cached image features
(bench_feature_cache.py), packed vs padded caption batches (bench_packing.py, ours only: packed / padded
tokens/s), and peak memory and time of a step at 224 / 448 / 896 px and 8 frames (bench_long.py, the longest part:
``--skip-long`` leaves it out). Ratios are transformers time / ours (> 1: we are faster), medians of interleaved
repeats.
"""

import argparse
import os
import sys
import time
from datetime import date
from pathlib import Path

import peft
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
import bench_decode  # noqa: E402
import bench_decode_kernels  # noqa: E402
import bench_feature_cache  # noqa: E402
import bench_long  # noqa: E402
import bench_packing  # noqa: E402
import bench_train  # noqa: E402
from machine import cpu_kind, cpu_name, page_kind  # noqa: E402

from paligemma.model.precision import native_bf16_cpu  # noqa: E402


def machine(threads: int) -> str:
    return (
        f"{cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({cpu_kind()}; {threads} threads), transformers {transformers.__version__}, "
        f"peft {peft.__version__}, load average {os.getloadavg()[0]:.1f} at the start, {date.today()}"
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def training_table(dtypes: list[str], repeats: int) -> str:
    rows = []
    for dtype in dtypes:
        for shape in bench_train.SHAPES:
            r = bench_train.measure(shape, dtype, repeats)
            rows.append([shape, dtype, str(r["batch"]), f"{r['hf_s']:.2f} s", f"{r['ours_s']:.2f} s",
                         f"x{r['speedup']:.2f}", f"{r['hf_peak_mb']:,.0f}", f"{r['ours_peak_mb']:,.0f}"])  # fmt: skip
            print(f"  train {shape} {dtype}: x{r['speedup']:.2f}", file=sys.stderr, flush=True)
    header = ["shape", "dtype", "batch", "step: transformers+peft", "ours", "speed-up", "peak MB: transformers+peft",
              "ours"]  # fmt: skip
    return table(header, rows)


def feature_cache_table() -> str:
    r = bench_feature_cache.measure("small-vocab", n_batches=4, batch_size=4)
    rows = [
        [f"{epoch} ({what})", f"{plain:.1f} s", f"{cached:.1f} s", f"x{plain / cached:.2f}"]
        for epoch, what, plain, cached in zip(
            (1, 2), ("features computed, stored", "features reused"), r["plain_s"], r["cached_s"], strict=True
        )
    ]
    table_md = table(["epoch (4 batches of 4)", "plain", "cached", "speed-up"], rows)
    return f"{table_md}\n\nLosses' largest gap, cached vs plain: {r['loss_gap']:.1e}."


def packing_table(repeats: int) -> str:
    r = bench_packing.measure("tiny", batch_size=16, max_length=512, n_batches=8, repeats=repeats)
    print(f"  packing: x{r['speedup']:.2f}", file=sys.stderr, flush=True)
    return bench_packing.markdown(r)


def long_table(threads: int, repeats: int) -> str:
    args = bench_long.parser().parse_args(["--threads", str(threads), "--repeats", str(repeats)])
    return table(bench_long.HEADER, list(bench_long.table_rows(args)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, help="also write the markdown into this directory, as <cpu kind>.md"
    )
    parser.add_argument("--skip-long", action="store_true", help="leave out bench_long.py's rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dtypes = ["float32", "bfloat16"] if native_bf16_cpu() else ["float32"]
    kind = page_kind()
    sections = [
        f"# Benchmarks: {kind}\n\nThis page is generated: `python bench/run_all.py --out docs/benchmarks` on an "
        f"{kind} machine measures each row side by side with transformers (+ peft) in one process and writes it. "
        "Speed-ups are transformers' time / ours (> 1: we are faster), medians of interleaved repeats after a "
        "warm-up of each row.",
        f"Measured on: {machine(torch.get_num_threads())}.",
        "LoRA r=8 training step (forward + backward, train mode; peak = resident high-water mark growth of one "
        "step, each implementation alone in a fresh process; transformers with SDPA, eager for Gemma 2):\n\n"
        + training_table(dtypes, args.repeats),
        "Greedy decode, 33 new tokens (bench_decode.py): the median decode step (one iteration of the generation "
        "loop, sampling included) in ms/token, and the bandwidth it reaches: the bytes a step must read (the "
        "decoder layers' and LM head's weights, and the KV cache at the median step, in the dtype measured) / its "
        "time. Prefill = the call's time to its first decode step; where our bf16 packs its weights (native bf16) "
        "it includes that packing, timed alone in its own column. Without native bf16, bf16 runs the first shape "
        "at batch <= 4, once (it is ~30x slower there):\n\n"
        + bench_decode.decode_table(
            bench_decode.measure_all(
                list(bench_decode.SHAPES), [1, 4, 16], ["float32", "bfloat16"], "cpu", 33, args.repeats
            )
        ),
        "Decode kernels (bench_decode_kernels.py): one pass over the seven products of one PaliGemma 2 3B decoder "
        "layer per candidate kernel; cells: ms, GB/s of weights read, largest difference from `torch`'s output "
        "relative to its largest value. The memory read multiplies nothing: the bandwidth that bounds them all:\n\n"
        + bench_decode_kernels.table([torch.float32, torch.bfloat16], [1, 4, 16], 20),
        "Cached image features (`model.cache_image_features=true`), small-vocab, LoRA training over the same "
        "batches twice:\n\n" + feature_cache_table(),
        "Packing (`data.packing=true`), the tiny shape, LoRA steps over 8 batches of 16 captions of 4 to 160 "
        "tokens (64 image tokens each), padded vs packed into sequences of at most 512 tokens:\n\n"
        + packing_table(args.repeats),
    ]
    if not args.skip_long:
        sections.append(
            "Long sequences, LoRA r=8 step at real width (2 decoder layers, 1 SigLIP layer, real vocabulary, batch "
            "1, float32; peak as above, medians of fresh processes; transformers' sdpa keeps Gemma 2's decoder "
            "eager):\n\n" + long_table(torch.get_num_threads(), args.repeats)
        )
    if "bfloat16" not in dtypes:
        sections.append("bf16 training not measured: this CPU has no native bf16 (AVX512-BF16 or AMX).")
    if not torch.cuda.is_available():
        sections.append("GPU rows: no GPU here; `python bench/gpu_check.py` measures them on one.")
    sections.append(f"Whole run: {time.perf_counter() - start:.0f} s.")
    markdown = "\n\n".join(sections) + "\n"
    print(markdown)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{kind.lower()}.md").write_text(markdown)


if __name__ == "__main__":
    main()
