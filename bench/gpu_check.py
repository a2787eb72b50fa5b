"""GPU speed of our PaliGemma at real size, random weights: LoRA training throughput, MFU, peak memory, and
per-token decode against transformers.

    python bench/gpu_check.py                       # paligemma-3b-pt-224 and paligemma2-3b-pt-224, bf16, cuda
    python bench/gpu_check.py --tiny --device cpu   # the same code on a tiny shape (a smoke test, ~1 min)

Training: LoRA r=8 on the decoder (frozen bf16 base, fp32 adapters, AdamW), 224 px (256 image tokens),
batch ``--batch-size`` of prompts ~20 tokens and answers ~10, our step (LM head at the answer tokens only).
MFU = model FLOPs per second / ``--peak-tflops`` (989: H100/H200 SXM dense bf16), where a step's FLOPs are
those the step must do with a frozen base:
    2 * N_vision * image_tokens                      (vision tower + projector, forward only)
  + 4 * N_decoder * tokens                           (decoder matmuls, forward + input-gradient backward)
  + 12 * layers * B * T^2 * heads * head_dim         (attention scores and values: forward 4, backward 8)
  + 4 * vocab * hidden * answer_tokens               (LM head at the answer tokens, forward + backward)
(N_decoder: the decoder layers' weights without the embedding; LoRA's own FLOPs are left out.)
Decode: per-token time = (generate 33 tokens - generate 1) / 32, greedy, at batch 1, 8 and 32, ours vs
transformers (their default attention for the model), same weights. Medians of ``--repeats``.
``--long`` adds bench_long.py's rows on this device: peak memory and step time at 224 / 448 / 896 px and 8 frames.
"""

from __future__ import annotations

import argparse
import statistics
import time

import bench_long
import torch
import transformers

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.model.lora import add_lora
from paligemma.model.presets import hub_config
from paligemma.tiny import random_batch

TINY = dict(
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       image_size=224, patch_size=14),
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=1, head_dim=16, vocab_size=1024),
    image_token_index=1000, projection_dim=64,
)  # fmt: skip


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> float:
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_models(config_dict: dict, dtype: torch.dtype, device: str):
    config = PaliGemmaConfig.from_dict(config_dict)
    with torch.device(device):
        ours = PaliGemmaForConditionalGeneration(config).to(dtype).eval()
    hf_config = transformers.PaliGemmaConfig.from_dict(config.to_dict())
    hf = transformers.PaliGemmaForConditionalGeneration(hf_config).to(device, dtype).eval()
    hf.load_state_dict(ours.state_dict())
    hf.generation_config.eos_token_id = None  # every new token, like ours with eos_token_id=[]
    return config, ours, hf


def step_flops(config: PaliGemmaConfig, batch: dict) -> float:
    text, vision = config.text_config, config.vision_config
    B, T = batch["input_ids"].shape
    answers = int((batch["labels"][:, 1:] != -100).sum())
    d, f, hd = text.hidden_size, text.intermediate_size, text.head_dim
    layer = d * hd * (text.num_attention_heads * 2 + text.num_key_value_heads * 2) + 3 * d * f
    v, vf = vision.hidden_size, vision.intermediate_size
    vision_params = vision.num_hidden_layers * (4 * v * v + 2 * v * vf) + v * config.projection_dim
    attention = 12 * text.num_hidden_layers * B * T * T * text.num_attention_heads * hd
    return (2 * vision_params * B * config.num_image_tokens + 4 * text.num_hidden_layers * layer * B * T
            + attention + 4 * text.vocab_size * d * answers)  # fmt: skip


def train_report(config, ours, batch: dict, args) -> str:
    lora = add_lora(ours).train()
    ours.model.vision_tower.eval()
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        lora(**batch, return_logits=False).loss.backward()
        optimizer.step()

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, args.repeats, args.device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    tokens = batch["input_ids"].numel()
    tflops = step_flops(config, batch) / seconds / 1e12
    lora.unload()  # the plain model again, for decoding
    ours.eval()
    return (f"train: batch {batch['input_ids'].shape[0]} x {batch['input_ids'].shape[1]} tokens, "
            f"{seconds * 1e3:.0f} ms/step, {tokens / seconds:,.0f} tokens/s, {tflops:.1f} TFLOP/s, "
            f"MFU {100 * tflops / args.peak_tflops:.1f}%, peak {peak:.1f} GiB")  # fmt: skip


def decode_report(config, ours, hf, batch_size: int, args) -> str:
    batch = random_batch(config, [20] * batch_size, [0] * batch_size, padding_side="left")
    batch.pop("labels")
    batch = {k: v.to(args.device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(ours.dtype)
    n = args.new_tokens

    def ours_n(k):
        return lambda: ours.generate(**batch, max_new_tokens=k, eos_token_id=[])

    def hf_n(k):
        return lambda: hf.generate(**batch, max_new_tokens=k, do_sample=False, pad_token_id=0)

    with torch.inference_mode():
        per_token = {}
        for name, make in (("ours", ours_n), ("transformers", hf_n)):
            one, many = timed(make(1), args.repeats, args.device), timed(make(n), args.repeats, args.device)
            per_token[name] = (many - one) / (n - 1)
    ratio = per_token["transformers"] / per_token["ours"]
    return (f"decode batch {batch_size:3d}: ours {per_token['ours'] * 1e3:7.2f} ms/token, transformers "
            f"{per_token['transformers'] * 1e3:7.2f} ms/token, x{ratio:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["paligemma-3b-pt-224", "paligemma2-3b-pt-224"])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape of each model's decoder family")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--decode-batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=33)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--long", action="store_true", help="also bench_long.py's rows on this device")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    name = torch.cuda.get_device_name() if args.device == "cuda" else torch.backends.cpu.get_cpu_capability()
    print(
        f"device {args.device} ({name}), {dtype}, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    for model_name in args.models:
        config_dict = hub_config(model_name)
        if args.tiny:
            text = dict(TINY["text_config"], model_type=config_dict["text_config"]["model_type"])
            config_dict = dict(TINY, text_config=text)
        torch.manual_seed(0)
        config, ours, hf = build_models(config_dict, dtype, args.device)
        n = args.batch_size
        batch = random_batch(config, [20] * n, [10] * n)
        batch = {k: v.to(args.device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
        print(f"== {model_name}{' (tiny)' if args.tiny else ''}")
        print("  " + train_report(config, ours, batch, args), flush=True)
        for batch_size in args.decode_batches:
            print("  " + decode_report(config, ours, hf, batch_size, args), flush=True)
        del ours, hf
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if args.long:
        long_args = bench_long.parser().parse_args(["--device", args.device, "--repeats", str(args.repeats)])
        print("== long sequences (bench_long.py)\n  " + " | ".join(bench_long.HEADER))
        for row in bench_long.table_rows(long_args):
            print("  " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
