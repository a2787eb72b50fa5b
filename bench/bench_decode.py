"""Per-token decode and prefill of our PaliGemma against transformers: same weights, prompts, precision.

    python bench/bench_decode.py [--shapes small-vocab vocab32k --batch-sizes 1 4 --repeats 5 --threads 1 --profile]

Per-token decode = (generate 33 tokens - generate 1 token) / 32; prefill = generate 1 token. Ours and
transformers run interleaved in one process and medians are quoted (the machines are shared and noisy).
Ratios are transformers time / ours: > 1 means we are faster. ``--profile`` prints torch.profiler's top
operators of our decode steps.
"""

import argparse
import statistics
import time

import torch
import transformers

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.tiny import random_batch

VISION = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
              image_size=224, patch_size=14)  # fmt: skip
SHAPES = {
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


def generators(ours, hf, batch: dict) -> dict:
    """name -> (transformers, ours) callables generating n tokens greedily, all n of them."""

    def run_hf(n):
        with torch.inference_mode():
            return hf.generate(**batch, max_new_tokens=n, do_sample=False, pad_token_id=0)

    def run_ours(n):
        return ours.generate(**batch, max_new_tokens=n, eos_token_id=[])

    return {"transformers": run_hf, "ours": run_ours}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(fns: dict, new_tokens: int, repeats: int, device: str) -> dict:
    """name -> (median prefill seconds, median per-token decode seconds), the names run alternately."""
    for fn in fns.values():  # warm-up of both lengths measured (and compilation, where a path compiles)
        for n in (1, new_tokens):
            fn(n)
    times = {name: {1: [], new_tokens: []} for name in fns}
    for _ in range(repeats):
        for n in (1, new_tokens):
            for name, fn in fns.items():
                sync(device)
                start = time.perf_counter()
                fn(n)
                sync(device)
                times[name][n].append(time.perf_counter() - start)
    out = {}
    for name, t in times.items():
        prefill = statistics.median(t[1])
        out[name] = (prefill, (statistics.median(t[new_tokens]) - prefill) / (new_tokens - 1))
    return out


def profile_decode(ours, batch: dict, new_tokens: int, rows: int = 15) -> None:
    ours.generate(**batch, max_new_tokens=new_tokens, eos_token_id=[])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ours.generate(**batch, max_new_tokens=new_tokens, eos_token_id=[])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def measure(shape: str, batch_sizes: list[int], dtype_name: str, device: str, new_tokens: int, repeats: int):
    """Per batch size of one shape: median prefill and per-token decode seconds, transformers and ours."""
    dtype = getattr(torch, dtype_name)
    config, ours, hf = build(shape, dtype, device)
    for batch_size in batch_sizes:
        batch = prompts(config, batch_size, dtype, device)
        r = interleaved_medians(generators(ours, hf, batch), new_tokens, repeats, device)
        (hf_prefill, hf_token), (ours_prefill, ours_token) = r["transformers"], r["ours"]
        yield {"shape": shape, "batch": batch_size, "hf_token_s": hf_token, "ours_token_s": ours_token,
               "decode_speedup": hf_token / ours_token, "hf_prefill_s": hf_prefill,
               "ours_prefill_s": ours_prefill, "prefill_speedup": hf_prefill / ours_prefill}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--new-tokens", type=int, default=33)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="print our decode profile, then exit")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"new_tokens={args.new_tokens} repeats={args.repeats}")  # fmt: skip
    if args.profile:
        dtype = getattr(torch, args.dtype)
        for shape in args.shapes:
            config, ours, _ = build(shape, dtype, args.device)
            for batch_size in args.batch_sizes:
                print(f"== {shape} batch {batch_size}")
                profile_decode(ours, prompts(config, batch_size, dtype, args.device), args.new_tokens)
        return
    print(f"{'shape':12s} {'batch':>5s} {'decode ms/token: hf':>20s} {'ours':>7s} {'x':>6s}   "
          f"{'prefill ms: hf':>15s} {'ours':>7s} {'x':>6s}")  # fmt: skip
    for shape in args.shapes:
        for r in measure(shape, args.batch_sizes, args.dtype, args.device, args.new_tokens, args.repeats):
            print(f"{shape:12s} {r['batch']:5d} {r['hf_token_s'] * 1e3:20.2f} {r['ours_token_s'] * 1e3:7.2f} "
                  f"{r['decode_speedup']:6.2f}   {r['hf_prefill_s'] * 1e3:15.1f} {r['ours_prefill_s'] * 1e3:7.1f} "
                  f"{r['prefill_speedup']:6.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
