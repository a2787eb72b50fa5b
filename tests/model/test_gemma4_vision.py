from dataclasses import dataclass

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

from paligemma.errors import UnsupportedConfigError
from paligemma.model.gemma4_vision import (
    ClippedLinear,
    Gemma4MultimodalEmbedder,
    Gemma4VisionModel,
    soft_tokens_per_image,
)
from paligemma.model.gemma4_vision_config import Gemma4VisionConfig
from tests.helpers import randomize_

# transformers' prefixes inside Gemma4ForConditionalGeneration
TOWER, EMBEDDER = "model.vision_tower.", "model.embed_vision."
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TextWidth:
    hidden_size: int = 24


@dataclass
class Config:  # what the projector reads of Gemma 4's family config
    vision_config: Gemma4VisionConfig
    text_config: TextWidth


def tiny_config(**overrides) -> Gemma4VisionConfig:
    fields = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=24, patch_size=4, position_embedding_size=64)  # fmt: skip
    return Gemma4VisionConfig(**{**fields, **overrides})


def hf_reference(config: Gemma4VisionConfig, seed: int = 0):
    """transformers' Gemma4ForConditionalGeneration with a one-layer text model, every parameter random and the
    clip bounds and standardisation buffers too (finite bounds that clip some activations)."""
    text = dict(
        vocab_size=64, hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, global_head_dim=8, layer_types=["full_attention"],
        vocab_size_per_layer_input=64, hidden_size_per_layer_input=4,
    )  # fmt: skip
    hf_config = transformers.Gemma4Config(text_config=text, vision_config=config.to_dict())
    hf_config._attn_implementation = "eager"
    model = transformers.Gemma4ForConditionalGeneration(hf_config).eval()
    randomize_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buffer in model.state_dict().items():
            if name.endswith(("input_max", "output_max")):
                buffer.copy_(0.3 + torch.rand((), generator=gen))
            elif name.endswith(("input_min", "output_min")):
                buffer.copy_(-0.3 - torch.rand((), generator=gen))
            elif name.endswith(("std_bias", "std_scale")):
                buffer.copy_(torch.randn(buffer.shape, generator=gen))
    return model


def ours_from_hf(hf, config: Gemma4VisionConfig) -> tuple[Gemma4VisionModel, Gemma4MultimodalEmbedder]:
    """Our tower and projector, loaded strictly from transformers' state dict by its two prefixes."""
    state = hf.state_dict()
    tower = Gemma4VisionModel(config).eval()
    embedder = Gemma4MultimodalEmbedder(Config(config, TextWidth())).eval()
    for module, prefix in ((tower, TOWER), (embedder, EMBEDDER)):
        module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return tower, embedder


def images(do_resize: bool) -> tuple[torch.Tensor, torch.LongTensor]:
    """Three images of different aspect ratios, processed as Gemma 4's processor does at 4 px patches: resized to
    fill up to 630 patches (70 soft tokens), or kept at 3x6, 9x3 and 6x6 patches and padded to 630."""
    rng = np.random.default_rng(0)
    sizes = [(12, 24), (36, 12), (24, 24)] if not do_resize else [(30, 70), (90, 40), (50, 50)]
    pil = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    processor = Gemma4ImageProcessorPil(patch_size=4, max_soft_tokens=70, pooling_kernel_size=3)
    batch = processor(pil, do_resize=do_resize, return_tensors="pt")
    return batch["pixel_values"].float(), batch["image_position_ids"]


def hf_soft_tokens(hf, pixels: torch.Tensor, positions: torch.LongTensor) -> list[torch.Tensor]:
    """transformers' get_image_features: one (tokens, text D) tensor per image."""
    tokens = hf.get_image_features(pixel_values=pixels, image_position_ids=positions).pooler_output
    assert tokens is not None
    return list(tokens)


VARIANTS = {
    "plain": {},
    "clipped": dict(use_clipped_linears=True),
    "standardized": dict(standardize=True),
    "clipped-standardized": dict(use_clipped_linears=True, standardize=True),
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("do_resize", [False, True], ids=["padded", "resized"])
def test_soft_tokens_match_transformers(variant, do_resize):
    config = tiny_config(**VARIANTS[variant])
    hf = hf_reference(config)
    tower, embedder = ours_from_hf(hf, config)
    pixels, positions = images(do_resize)
    with torch.no_grad():
        ref = hf_soft_tokens(hf, pixels, positions)
        out = embedder(tower(pixels, positions))  # (tokens of all images, text D)
    counts = soft_tokens_per_image(positions, config.pooling_kernel_size)
    assert counts.tolist() == [t.shape[0] for t in ref]
    if not do_resize:
        assert counts.tolist() == [2, 3, 4]  # 630 patches each, mostly padding
    assert out.shape == (int(counts.sum()), 24)
    assert (out - torch.cat(ref)).abs().max() < 1e-5


def test_gradients_match_transformers():
    """Every parameter's gradient of a loss on the soft tokens (padded batch, clipped and standardised)."""
    config = tiny_config(use_clipped_linears=True, standardize=True)
    hf = hf_reference(config)
    tower, embedder = ours_from_hf(hf, config)
    pixels, positions = images(do_resize=False)
    ref = torch.cat(hf_soft_tokens(hf, pixels, positions))
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    (ref * weights).sum().backward()
    (embedder(tower(pixels, positions)) * weights).sum().backward()
    ours = {TOWER + n: p.grad for n, p in tower.named_parameters()}
    ours |= {EMBEDDER + n: p.grad for n, p in embedder.named_parameters()}
    theirs = {n: p.grad for n, p in hf.named_parameters() if n in ours}
    assert theirs.keys() == ours.keys()
    for name, grad in ours.items():
        reference = theirs[name]
        assert grad is not None and reference is not None, name
        assert (grad - reference).abs().max() < 1e-4, name


def test_bf16_soft_tokens_equal_transformers_bit_for_bit(tmp_path):
    """In bf16 as from_pretrained loads transformers' (its default SDPA attention), the same bits."""
    config = tiny_config(use_clipped_linears=True, standardize=True)
    hf_reference(config).save_pretrained(tmp_path)
    hf = transformers.Gemma4ForConditionalGeneration.from_pretrained(
        tmp_path, dtype=torch.bfloat16, attn_implementation="sdpa"
    ).eval()
    tower, embedder = (module.to(torch.bfloat16) for module in ours_from_hf(hf, config))
    pixels, positions = images(do_resize=True)
    with torch.no_grad():
        ref = torch.cat(hf_soft_tokens(hf, pixels, positions))
        out = embedder(tower(pixels, positions))
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(out, ref)


def test_clip_bounds_bite():
    """The bounds the parity test sets change the output (else it would not test the clamps)."""
    config = tiny_config(use_clipped_linears=True)
    tower, _ = ours_from_hf(hf_reference(config), config)
    pixels, positions = images(do_resize=False)
    with torch.no_grad():
        clipped = tower(pixels, positions)
        for module in tower.modules():
            if isinstance(module, ClippedLinear):
                module.clip = False
        unclipped = tower(pixels, positions)
    assert (clipped - unclipped).abs().max() > 1e-2


def test_state_dict_is_transformers_under_two_prefixes():
    """Every vision key of transformers' checkpoint is ours under model.vision_tower. or model.embed_vision.,
    the clip bounds and standardisation buffers included; nothing of ours is left out."""
    config = tiny_config(use_clipped_linears=True, standardize=True)
    hf_keys = set(hf_reference(config).state_dict())
    tower = Gemma4VisionModel(config)
    embedder = Gemma4MultimodalEmbedder(Config(config, TextWidth()))
    ours = {TOWER + k for k in tower.state_dict()} | {EMBEDDER + k for k in embedder.state_dict()}
    assert ours == {k for k in hf_keys if k.startswith((TOWER, EMBEDDER))}
    assert {TOWER + "std_bias", TOWER + "encoder.layers.0.mlp.down_proj.output_max"} <= ours


def test_padding_and_neighbours_change_no_soft_token():
    """An image alone, without padding, gives the soft tokens it gives padded in a batch."""
    config = tiny_config(standardize=True)
    tower, _ = ours_from_hf(hf_reference(config), config)
    pixels, positions = images(do_resize=False)
    with torch.no_grad():
        batch = tower(pixels, positions)
        alone = [tower(pixels[i : i + 1, :n], positions[i : i + 1, :n]) for i, n in enumerate([18, 27, 36])]
    assert (batch - torch.cat(alone)).abs().max() < 1e-5


@pytest.mark.slow
def test_lora_goes_on_the_inner_linears_and_stays_clipped():
    """peft refuses the ClippedLinear wrapper and puts LoRA on its inner nn.Linear; the adapter changes the soft
    tokens and the clamps still bound the adapted layer's output."""
    import peft

    config = tiny_config(use_clipped_linears=True)
    tower, _ = ours_from_hf(hf_reference(config), config)
    args = images(do_resize=False)
    with torch.no_grad():
        base = tower(*args)
    with pytest.raises(ValueError, match="ClippedLinear"):  # the wrapper itself: not a type peft adapts
        peft.get_peft_model(Gemma4VisionModel(config), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    targets = rf".*\.({'|'.join(LINEARS)})\.linear"
    lora = peft.LoraConfig(r=4, lora_alpha=64, target_modules=targets, init_lora_weights=False)
    model = peft.get_peft_model(tower, lora)
    adapted = [m for m in model.modules() if isinstance(m, peft.tuners.lora.Linear)]
    assert len(adapted) == len(LINEARS) * config.num_hidden_layers
    down = model.get_submodule("base_model.model.encoder.layers.0.mlp.down_proj")
    seen = []
    down.register_forward_hook(lambda module, inputs, output: seen.append(output))
    with torch.no_grad():
        out = model(*args)
    assert (out - base).abs().max() > 1e-2
    assert seen[0].max() <= down.output_max and seen[0].min() >= down.output_min


def test_config_reads_transformers_layout():
    hf = transformers.Gemma4VisionConfig(hidden_size=1152, num_hidden_layers=27, standardize=True)
    ours = Gemma4VisionConfig.from_dict(hf.to_dict())
    fields = ours.hidden_size, ours.num_hidden_layers, ours.standardize, ours.rope_theta
    assert fields == (1152, 27, True, 100.0)
    back = transformers.Gemma4VisionConfig.from_dict(ours.to_dict()).to_dict()
    assert all(back[k] == v for k, v in ours.to_dict().items())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hidden_activation", "gelu", "tanh GELU"),
        ("rope_parameters", {"rope_type": "default"}, "axial"),
        ("head_dim", 30, "multiple of 4"),
        ("num_key_value_heads", 5, "num_key_value_heads"),
        ("pooling_kernel_size", 1, "pooling_kernel_size"),
    ],
)
def test_unsupported_configs_are_one_line_errors(field, value, message):
    with pytest.raises(UnsupportedConfigError, match=message):
        Gemma4VisionConfig(**{field: value})
