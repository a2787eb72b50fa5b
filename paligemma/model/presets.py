"""The hub checkpoints' configs, to build a model of real size without downloading one (meta-device
counts, memory and speed benchmarks): ``PaliGemmaConfig.from_dict(hub_config("paligemma2-3b-pt-224"))``,
``Gemma3Config.from_dict(gemma3_hub_config("gemma-3-4b-it"))``."""

from __future__ import annotations

from typing import Any

# SigLIP So400m/14, the vision tower of every PaliGemma and Gemma 3 checkpoint (Gemma 3's at 896 px).
SO400M = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=14
)
# Decoders by size; Gemma 2 fields left out take Gemma2Config's defaults (soft-caps 50 / 30, window 4096).
DECODERS = {
    "paligemma-3b": dict(model_type="gemma", hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                         num_attention_heads=8, num_key_value_heads=1, head_dim=256),
    "paligemma2-3b": dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                          num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256),
    "paligemma2-10b": dict(model_type="gemma2", hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                           num_attention_heads=16, num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256),
    "paligemma2-28b": dict(model_type="gemma2", hidden_size=4608, intermediate_size=36864, num_hidden_layers=46,
                           num_attention_heads=32, num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=144),
}  # fmt: skip


# Gemma 3's decoders by size, as the hub's config.json files list them (the rest: Gemma3TextConfig's defaults).
GEMMA3_DECODERS = {
    "gemma-3-4b": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256),
    "gemma-3-12b": dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256),
    "gemma-3-27b": dict(hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32,
                        num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=168),
}  # fmt: skip


def gemma3_hub_config(name: str) -> dict[str, Any]:
    """The config dict of ``google/gemma-3-{4b,12b,27b}-{pt,it}`` (pt and it share their architecture; it stops at
    ``<end_of_turn>``, 106, too)."""
    size, _, variant = name.rpartition("-")
    if size not in GEMMA3_DECODERS or variant not in ("pt", "it"):
        raise KeyError(
            f"{name!r} is not a known Gemma 3 checkpoint; sizes: {sorted(GEMMA3_DECODERS)}, pt or it"
        )
    text = dict(GEMMA3_DECODERS[size], model_type="gemma3_text", sliding_window=1024,
                rope_scaling={"rope_type": "linear", "factor": 8.0})  # fmt: skip
    return dict(
        model_type="gemma3",
        vision_config=dict(SO400M, image_size=896, vision_use_head=False),
        text_config=text,
        mm_tokens_per_image=256,
        boi_token_index=255999,
        eoi_token_index=256000,
        image_token_index=262144,
        eos_token_id=[1, 106] if variant == "it" else 1,
    )


def hub_config(name: str) -> dict[str, Any]:
    """The config dict of a hub checkpoint named like ``paligemma2-10b-pt-448`` or ``paligemma-3b-mix-224``
    (pt and mix checkpoints share their architecture)."""
    family, _, resolution = name.rpartition("-")
    decoder = family.removesuffix("-pt").removesuffix("-mix")
    if decoder not in DECODERS or not resolution.isdigit():
        raise KeyError(f"{name!r} is not a known PaliGemma checkpoint; decoders: {sorted(DECODERS)}")
    text = dict(DECODERS[decoder], vocab_size=257216)
    return dict(
        vision_config=dict(SO400M, image_size=int(resolution)),
        text_config=text,
        image_token_index=257152,
        projection_dim=text["hidden_size"],
    )
