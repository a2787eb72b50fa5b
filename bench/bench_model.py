"""Speed of our PaliGemma against transformers + peft: same weights, same LoRA, same inputs, one run.

    python bench/bench_model.py [--device cuda --dtype bfloat16 --repeats 10]

Prints medians and ratios (transformers time / ours: > 1 means we are faster). Compare only numbers
from one run: these machines are shared and noisy.
"""

import argparse
import statistics
import time

import peft
import torch
import transformers

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.model.lora import LoraSettings, add_lora, lora_config
from paligemma.tiny import random_batch

CONFIGS = {
    # A scaled-down PaliGemma-3B: same head layout (MQA, head_dim 256), 256 image tokens.
    "small": dict(
        vision_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                           image_size=224, patch_size=14),
        text_config=dict(vocab_size=32000, hidden_size=512, intermediate_size=4096, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=256),
        image_token_index=31000, projection_dim=512,
    ),
    "3b": {},
}  # fmt: skip


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    config = PaliGemmaConfig.from_dict(CONFIGS[args.config])
    hf_config = transformers.PaliGemmaConfig.from_dict(config.to_dict())
    hf_config._attn_implementation = "sdpa"
    hf = transformers.PaliGemmaForConditionalGeneration(hf_config).to(args.device, dtype).eval()
    ours = PaliGemmaForConditionalGeneration(config).to(args.device, dtype).eval()
    ours.load_state_dict(hf.state_dict())

    n = args.batch_size
    train = random_batch(config, [8 + 3 * i for i in range(n)], [12] * n)
    prompts = random_batch(config, [8 + 3 * i for i in range(n)], [0] * n, padding_side="left")
    prompts.pop("labels")
    train = {k: v.to(args.device) for k, v in train.items()}
    prompts = {k: v.to(args.device) for k, v in prompts.items()}
    for batch in (train, prompts):
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
    stop = dict(eos_token_id=[])  # run all new tokens in both

    lora_hf, lora_ours = (
        peft.get_peft_model(hf, lora_config(LoraSettings())),
        add_lora(ours),
    )  # frozen base + LoRA
    results = {
        "forward (logits + loss)": (lambda: lora_hf(**train), lambda: lora_ours(**train)),
        f"generate {args.new_tokens} tokens": (
            lambda: lora_hf.generate(**prompts, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, pad_token_id=0),
            lambda: lora_ours.get_base_model().generate(**prompts, max_new_tokens=args.new_tokens, **stop),
        ),
        # what training runs (train mode: LoRA dropout on): ours computes the LM head only at the answer tokens
        "LoRA train step (fwd+bwd)": (
            lambda: lora_hf(**train).loss.backward(),
            lambda: lora_ours(**train, return_logits=False).loss.backward(),
        ),
    }  # fmt: skip
    print(f"config={args.config} device={args.device} dtype={args.dtype} batch={n} repeats={args.repeats}")
    for name, (reference, candidate) in results.items():
        for model in (lora_hf, lora_ours):
            model.train("train" in name)
        with torch.enable_grad() if "train" in name else torch.no_grad():
            t_ref = timed(reference, args.repeats, args.device)
            t_ours = timed(candidate, args.repeats, args.device)
        print(f"{name:28s} transformers {t_ref * 1e3:8.1f} ms   ours {t_ours * 1e3:8.1f} ms   "
              f"speed-up x{t_ref / t_ours:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
