"""Per-token decode and prefill of our PaliGemma against transformers: same weights, prompts, precision, and the
memory bandwidth each decode reaches.

    python bench/bench_decode.py [--shapes small-vocab vocab32k --batch-sizes 1 4 16 --dtypes float32 bfloat16
                                  --repeats 3 --threads 2 --full-bf16 --profile]

A decode step is the time between two consecutive entries into the first decoder layer of one ``generate`` call
(a forward pre-hook): one whole iteration of the generation loop, its sampling and bookkeeping included, the
prompt's prefill excluded. Quoted: the median step over every step of every repeat; prefill = the time from the
call to its first decode step. Ours and transformers run interleaved in one process (the machines are shared and
noisy). Where our bf16 generation packs its weights (a CPU with bf16 instructions), the same generation on
``F.linear``'s products runs beside them ("weights unpacked": how it ran before), and packing is timed alone: our
prefill includes it, and it pays after (packing seconds / seconds saved per token) tokens. Bandwidth = the bytes a
decode step must read (the decoder layers' and the LM head's weights, and the KV cache at the median step, all in the
dtype measured) / the time per token. Ratios are transformers time / ours: > 1 means we are faster. Without native bf16 (AVX2) torch's bf16 matmuls are ~30x slower than fp32: bf16 then runs
only the first shape at batch <= 4, once, unless ``--full-bf16``. ``--profile`` prints torch.profiler's top
operators of our decode steps.
"""

import argparse
import statistics
import sys
import time
from itertools import pairwise

import torch
import transformers
from machine import cpu_kind, cpu_name

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.model.decode_weights import DecodeWeights
from paligemma.model.precision import native_bf16_cpu
from paligemma.model.presets import hub_config
from paligemma.tiny import random_batch

VISION = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
              image_size=224, patch_size=14)  # fmt: skip
SMALL_SHAPES = {  # the training, packing and feature-cache benchmarks' shapes too
    # ~40M parameters, 256 image tokens: a decode step reads ~123 MB of fp32 weights.
    "small-vocab": dict(
        vision_config=VISION,
        text_config=dict(vocab_size=1024, hidden_size=512, intermediate_size=4096, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=256),
        image_token_index=1000, projection_dim=512,
    ),
    # bench_model.py's "small": 6 layers and a 32k vocabulary (the LM head is a third of a step's weights).
    "vocab32k": dict(
        vision_config=VISION,
        text_config=dict(vocab_size=32000, hidden_size=512, intermediate_size=4096, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=256),
        image_token_index=31000, projection_dim=512,
    ),
    # small-vocab as PaliGemma 2: soft-caps, and a window of 128 on layers 0 and 2 that the 266-token prompt
    # crosses (their ring caches hold 128 slots).
    "gemma2-window128": dict(
        vision_config=VISION,
        text_config=dict(model_type="gemma2", vocab_size=1024, hidden_size=512, intermediate_size=4096,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                         query_pre_attn_scalar=256, sliding_window=128),
        image_token_index=1000, projection_dim=512,
    ),
}  # fmt: skip
PG2_3B = hub_config("paligemma2-3b-pt-224")
SHAPES = {
    **SMALL_SHAPES,
    # PaliGemma 2 3B's decoder (width, vocabulary, Gemma 2 settings), 4 of its 26 layers: a step reads ~1.8 GB in
    # bf16, far more than any cache, so it runs at the memory's speed, as a real-size model's decode does.
    "pg2-3b-width": {
        **PG2_3B,
        "vision_config": VISION,
        "text_config": {**PG2_3B["text_config"], "num_hidden_layers": 4},
    },
}
SHORT = {"float32": "fp32", "bfloat16": "bf16"}


def build(shape: str, dtype: torch.dtype, device: str):
    """Our model and transformers' (SDPA attention; eager for Gemma 2, which SDPA cannot soft-cap) with the same
    random weights, in eval mode."""
    config = PaliGemmaConfig.from_dict(SHAPES[shape])
    hf_config = transformers.PaliGemmaConfig.from_dict(config.to_dict())
    hf_config._attn_implementation = "eager" if config.text_config.model_type == "gemma2" else "sdpa"
    torch.manual_seed(0)
    hf = transformers.PaliGemmaForConditionalGeneration(hf_config).to(device, dtype).eval()
    hf.generation_config.eos_token_id = None  # run every new token, like ours with eos_token_id=[]
    ours = PaliGemmaForConditionalGeneration(config).to(device, dtype).eval()
    ours.load_state_dict(hf.state_dict())
    return config, ours, hf


def prompts(config, batch_size: int, dtype: torch.dtype, device: str) -> dict:
    batch = random_batch(
        config, [8 + 3 * i for i in range(batch_size)], [0] * batch_size, padding_side="left"
    )
    batch.pop("labels")
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return {k: v.to(device) for k, v in batch.items()}


def packs_weights(dtype: torch.dtype) -> bool:
    """Whether our generation packs its weights here (decode weights, paligemma/model/decode_weights.py): bf16,
    bf16 instructions."""
    return dtype == torch.bfloat16 and native_bf16_cpu()


def generators(ours, hf, batch: dict, new_tokens: int) -> dict:
    """name -> (callable generating new_tokens greedily, all of them; the first decoder layer it runs). Where ours
    packs its weights, also "ours, unpacked": the same generation on ``F.linear``'s products (what it was before)."""

    def run_hf():
        with torch.inference_mode():
            hf.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    def run_ours(with_decode_weights=True):  # built per call, as generate builds them
        decode_weights = DecodeWeights.build(ours) if with_decode_weights else None
        ours.generate(**batch, max_new_tokens=new_tokens, eos_token_id=[], decode_weights=decode_weights)

    runs = {
        "transformers": (run_hf, hf.model.language_model.layers[0]),
        "ours": (run_ours, ours.language_model.layers[0]),
    }
    if packs_weights(ours.dtype):
        runs["ours, unpacked"] = (lambda: run_ours(with_decode_weights=False), ours.language_model.layers[0])
    return runs


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_steps(run, first_layer, new_tokens: int, device: str) -> tuple[float, list[float]]:
    """(prefill seconds, decode step seconds) of one generation call: its first layer runs once per forward."""
    entries = []

    def stamp(module, args):
        sync(device)
        entries.append(time.perf_counter())

    handle = first_layer.register_forward_pre_hook(stamp)
    try:
        sync(device)
        start = time.perf_counter()
        run()
    finally:
        handle.remove()
    if len(entries) != new_tokens:
        raise RuntimeError(f"{len(entries)} forward passes of the first layer for {new_tokens} new tokens")
    return entries[1] - start, [end - begin for begin, end in pairwise(entries[1:])]


def interleaved_medians(fns: dict, new_tokens: int, repeats: int, device: str) -> dict:
    """name -> (median prefill seconds, median decode step seconds), the names run alternately after a warm-up."""
    for run, first_layer in fns.values():
        timed_steps(run, first_layer, new_tokens, device)
    prefills, steps = {name: [] for name in fns}, {name: [] for name in fns}
    for _ in range(repeats):
        for name, (run, first_layer) in fns.items():
            prefill, decode_steps = timed_steps(run, first_layer, new_tokens, device)
            prefills[name].append(prefill)
            steps[name].extend(decode_steps)
    return {name: (statistics.median(prefills[name]), statistics.median(steps[name])) for name in fns}


def bytes_read(model, batch_size: int, cache_len: int) -> tuple[int, int]:
    """(weight bytes, KV cache bytes) a decode step reads: the decoder layers, final norm and LM head; the keys
    and values of cache_len positions. The embedding table is not read whole (one row per token)."""
    lm, text = model.language_model, model.config.text_config
    weights = [*lm.layers.parameters(), *lm.norm.parameters(), model.lm_head.weight]
    per_position = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim
    kv = per_position * batch_size * cache_len * model.lm_head.weight.element_size()
    return sum(p.numel() * p.element_size() for p in weights), kv


def packing_seconds(model, repeats: int) -> float:
    """Median seconds to pack the model's weights (``DecodeWeights.build``), what a generation call pays first."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        DecodeWeights.build(model)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_decode(ours, batch: dict, new_tokens: int, rows: int = 15) -> None:
    ours.generate(**batch, max_new_tokens=new_tokens, eos_token_id=[])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ours.generate(**batch, max_new_tokens=new_tokens, eos_token_id=[])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def measure(shape: str, batch_sizes: list[int], dtype_name: str, device: str, new_tokens: int, repeats: int):
    """Per batch size of one shape: median prefill and decode step seconds, transformers and ours, and the bytes
    a decode step reads at the median step."""
    dtype = getattr(torch, dtype_name)
    config, ours, hf = build(shape, dtype, device)
    for batch_size in batch_sizes:
        batch = prompts(config, batch_size, dtype, device)
        r = interleaved_medians(generators(ours, hf, batch, new_tokens), new_tokens, repeats, device)
        (hf_prefill, hf_token), (ours_prefill, ours_token) = r["transformers"], r["ours"]
        weight_bytes, kv_bytes = bytes_read(ours, batch_size, batch["input_ids"].shape[1] + new_tokens // 2)
        unpacked_token = r["ours, unpacked"][1] if "ours, unpacked" in r else None
        pack_s = packing_seconds(ours, repeats) if unpacked_token is not None else None
        yield {"shape": shape, "batch": batch_size, "dtype": dtype_name, "hf_token_s": hf_token,
               "ours_token_s": ours_token, "decode_speedup": hf_token / ours_token, "hf_prefill_s": hf_prefill,
               "ours_prefill_s": ours_prefill, "prefill_speedup": hf_prefill / ours_prefill,
               "unpacked_token_s": unpacked_token, "pack_s": pack_s, "weight_bytes": weight_bytes,
               "kv_bytes": kv_bytes}  # fmt: skip


def plan(shapes: list[str], batch_sizes: list[int], dtypes: list[str], repeats: int, full_bf16: bool) -> list:
    """(shape, batch sizes, dtype, repeats) to measure. Without native bf16 a bf16 row costs ~30x its fp32 one:
    there bf16 runs the first shape at batch <= 4, once, unless full_bf16."""
    runs = []
    for dtype in dtypes:
        cut = dtype == "bfloat16" and not native_bf16_cpu() and not full_bf16
        sizes = [b for b in batch_sizes if b <= 4] if cut else batch_sizes
        runs += [(shape, sizes, dtype, 1 if cut else repeats) for shape in (shapes[:1] if cut else shapes)]
    return runs


def measure_all(shapes, batch_sizes, dtypes, device, new_tokens, repeats, full_bf16=False) -> list[dict]:
    results = []
    for shape, sizes, dtype, shape_repeats in plan(shapes, batch_sizes, dtypes, repeats, full_bf16):
        for r in measure(shape, sizes, dtype, device, new_tokens, shape_repeats):
            results.append(r)
            print(f"  decode {shape} batch {r['batch']} {dtype}: {r['ours_token_s'] * 1e3:.2f} ms/token ours, "
                  f"{r['hf_token_s'] * 1e3:.2f} transformers", file=sys.stderr, flush=True)  # fmt: skip
    return results


def decode_table(results: list[dict]) -> str:
    """Markdown: a row per (shape, batch), ms/token and GB/s per dtype and implementation, then the ratios."""
    dtypes = list(dict.fromkeys(r["dtype"] for r in results))
    by_key = {(r["shape"], r["batch"], r["dtype"]): r for r in results}
    rows_keys = list(dict.fromkeys((r["shape"], r["batch"]) for r in results))
    names = " / ".join(SHORT.get(d, d) for d in dtypes)
    unpacked = any(r["unpacked_token_s"] is not None for r in results)

    def cell(r, seconds_key):
        if r is None or r[seconds_key] is None:
            return "not run"
        gb_per_s = (r["weight_bytes"] + r["kv_bytes"]) / r[seconds_key] / 1e9
        return f"{r[seconds_key] * 1e3:.2f} ms, {gb_per_s:.1f} GB/s"

    def packing(r):
        if r is None or r["pack_s"] is None:
            return "not run"
        saved = r["unpacked_token_s"] - r["ours_token_s"]
        pays = f"pays after {r['pack_s'] / saved:.0f} tokens" if saved > 0 else "never pays"
        return f"{r['pack_s'] * 1e3:.0f} ms, {pays}"

    def joined(rs, fmt):
        return " / ".join("-" if r is None else fmt(r) for r in rs)

    header = [
        "shape, batch",
        f"MB per step, weights + KV: {names}",
        *[f"{SHORT.get(d, d)} {who}" for d in dtypes for who in ("ours", "transformers")],
        *(["bf16 ours, weights unpacked", "bf16 packing the weights"] if unpacked else []),
        f"decode speed-up: {names}",
        f"prefill speed-up: {names}",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for shape, batch in rows_keys:
        rs = [by_key.get((shape, batch, d)) for d in dtypes]
        bf16 = by_key.get((shape, batch, "bfloat16"))
        row = [
            f"{shape}, {batch}",
            joined(rs, lambda r: f"{r['weight_bytes'] / 1e6:.0f} + {r['kv_bytes'] / 1e6:.1f}"),
            *[cell(r, key) for r in rs for key in ("ours_token_s", "hf_token_s")],
            *([cell(bf16, "unpacked_token_s"), packing(bf16)] if unpacked else []),
            joined(rs, lambda r: f"x{r['decode_speedup']:.2f}"),
            joined(rs, lambda r: f"x{r['prefill_speedup']:.2f}"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(SHORT), default=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new-tokens", type=int, default=33)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-bf16", action="store_true", help="every bf16 row, also without native bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="print our decode profile, then exit")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_name()} ({cpu_kind()}), torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"device={args.device} threads={torch.get_num_threads()} new_tokens={args.new_tokens} "
          f"repeats={args.repeats}")  # fmt: skip
    if args.profile:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for shape in args.shapes:
                config, ours, _ = build(shape, dtype, args.device)
                for batch_size in args.batch_sizes:
                    print(f"== {shape} batch {batch_size} {dtype_name}")
                    profile_decode(ours, prompts(config, batch_size, dtype, args.device), args.new_tokens)
        return
    start = time.perf_counter()
    results = measure_all(
        args.shapes, args.batch_sizes, args.dtypes, args.device, args.new_tokens, args.repeats, args.full_bf16
    )
    print(decode_table(results))
    print(f"Whole run: {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
