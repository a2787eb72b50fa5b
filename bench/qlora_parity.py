"""QLoRA side by side with transformers + peft + bitsandbytes on one small random PaliGemma (1 or 2): the same
4-bit weights, logits, and peak memory of loading and of one LoRA training step, each side in a process of its own.

    python bench/qlora_parity.py                    # nf4, compute float32, PaliGemma 2 decoder
    python bench/qlora_parity.py --compute-dtype bfloat16 --family paligemma

transformers quantizes the decoder only (``llm_int8_skip_modules``: vision tower, projector, head), as ours does by
default; both use double quantization and blocks of 64. Peak memory is the process's resident high-water mark
(Linux), reset before each stage, so what imports hold is counted alike on both sides.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SKIP = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
CONFIGS = {  # about 150M parameters: big enough for the weights to dominate what the processes hold
    "paligemma": dict(
        vision_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=6,
                           image_size=112, patch_size=14),
        text_config=dict(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=1, head_dim=128),
        image_token_index=31999, projection_dim=1024,
    ),
    "paligemma2": dict(
        vision_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=6,
                           image_size=112, patch_size=14),
        text_config=dict(model_type="gemma2", vocab_size=32000, hidden_size=1024, intermediate_size=4096,
                         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, head_dim=128,
                         query_pre_attn_scalar=128),
        image_token_index=31999, projection_dim=1024,
    ),
}  # fmt: skip


def peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def load(side: str, path: Path, compute_dtype: torch.dtype):
    if side == "ours":
        from paligemma import PaliGemmaForConditionalGeneration
        from paligemma.model.quantize import QuantSettings, load_quantized

        return load_quantized(PaliGemmaForConditionalGeneration, path, QuantSettings("nf4", compute_dtype))
    import transformers

    config = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True, llm_int8_skip_modules=SKIP,
    )  # fmt: skip
    from paligemma.model.quantize import keep_off_packed_cpu_path_

    model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        path, quantization_config=config, device_map="cpu", dtype=torch.float32, attn_implementation="eager"
    )
    keep_off_packed_cpu_path_(model)  # as ours: the eval pass below would repack it on AVX512-BF16 CPUs
    return model


def lora(model):
    import peft

    config = peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0,
        target_modules=r".*\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    )  # fmt: skip
    model = peft.get_peft_model(model, config)
    with torch.no_grad():  # the same non-zero LoRA weights on both sides (module paths are the same)
        lora_weights = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
        for i, (_, p) in enumerate(lora_weights):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.02)
    return model


def side_main(side: str, path: Path, compute_dtype: torch.dtype, out: Path) -> None:
    """One side in this process: stages' seconds and peaks, and the logits (saved for the comparison)."""
    from paligemma import PaliGemmaConfig
    from paligemma.tiny import random_batch

    reset_peak()
    start = time.perf_counter()
    model = lora(load(side, path, compute_dtype))
    stages = {"load + LoRA": (time.perf_counter() - start, peak_gb())}
    config = PaliGemmaConfig.from_pretrained(path)
    torch.manual_seed(1)
    batch = random_batch(config, prefix_lens=[12, 8], suffix_lens=[6, 9])
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits.float()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    reset_peak()
    start = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    stages["training step"] = (time.perf_counter() - start, peak_gb())
    tensors = {"logits": logits, "mask": batch["attention_mask"].bool()}
    save_file(tensors, out, metadata={"stages": json.dumps(stages)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(CONFIGS), default="paligemma2")
    parser.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--side", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    compute_dtype = getattr(torch, args.compute_dtype)
    if args.side:
        side_main(args.side, Path(args.path), compute_dtype, Path(args.result))
        return
    from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
    from paligemma.tiny import init_weights_

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = PaliGemmaForConditionalGeneration(PaliGemmaConfig.from_dict(CONFIGS[args.family]))
        init_weights_(model)
        model.save_pretrained(tmp)
        n_params = sum(p.numel() for p in model.parameters())
        del model
        results = {}
        for side in ("ours", "transformers"):
            result = Path(tmp) / f"{side}.safetensors"
            command = [sys.executable, __file__, "--side", side, "--path", tmp, "--result", str(result),
                       "--compute-dtype", args.compute_dtype]  # fmt: skip
            subprocess.run(command, check=True)
            with safe_open(result, "pt") as f:
                results[side] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                results[side]["stages"] = json.loads(f.metadata()["stages"])
    ours, theirs = results["ours"], results["transformers"]
    diff = (ours["logits"] - theirs["logits"])[ours["mask"]]
    scale = theirs["logits"][ours["mask"]].abs().max()
    print(f"\n{args.family}, {n_params:,} parameters, nf4, compute {args.compute_dtype}: logits max |diff| "
          f"{diff.abs().max():.2e} (largest |logit| {scale:.2f})")  # fmt: skip
    print(f"{'stage':<16}{'ours s':>9}{'theirs s':>10}{'ours GB':>9}{'theirs GB':>11}")
    for stage in ours["stages"]:
        (s_ours, gb_ours), (s_theirs, gb_theirs) = ours["stages"][stage], theirs["stages"][stage]
        print(f"{stage:<16}{s_ours:>9.2f}{s_theirs:>10.2f}{gb_ours:>9.2f}{gb_theirs:>11.2f}")
    print(json.dumps({k: v["stages"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
