"""Shared fixtures: offline environment, small random configs and the transformers reference."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration  # noqa: E402

# Small configs that differ where bugs hide: MQA / GQA / MHA, head_dim != hidden / heads, patch grids.
SMALL_CONFIGS = {
    "mqa": dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16),
        image_token_index=380, projection_dim=64,
    ),
    "gqa": dict(
        vision_config=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=1, num_attention_heads=3,
                           image_size=16, patch_size=4),
        text_config=dict(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=500.0),
        image_token_index=290, projection_dim=48,
    ),
    "mha": dict(
        vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=14),
        text_config=dict(vocab_size=260, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=16),
        image_token_index=257, projection_dim=32,
    ),
}  # fmt: skip


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter random values, norm weights and biases included (a wrong `1 + w` shows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = 0.5 if ("norm" in name or name.endswith("bias")) else 0.15
            if "embed_tokens" in name:  # tied with the head: large values make a model that repeats its input
                std = 0.03
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def hf_reference(config: PaliGemmaConfig, seed: int = 0):
    """transformers' PaliGemma built from our config dict, randomised, in eval mode (eager attention)."""
    import transformers

    hf_config = transformers.PaliGemmaConfig.from_dict(config.to_dict())
    hf_config._attn_implementation = "eager"
    model = transformers.PaliGemmaForConditionalGeneration(hf_config).eval()
    randomize_(model, seed)
    return model


def ours_from_hf(hf_model) -> PaliGemmaForConditionalGeneration:
    config = PaliGemmaConfig.from_dict(hf_model.config.to_dict())
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.load_state_dict(hf_model.state_dict(), strict=True)
    return model


def make_batch(config: PaliGemmaConfig, prefix_lens, suffix_lens, seed: int = 0, padding_side="right"):
    """A training-style batch: image tokens + <bos> + prefix + "\\n" | suffix + <eos>, then padding.

    Text ids avoid the special ids (0-3) and the image token; "\\n" is played by id 4.
    """
    gen = torch.Generator().manual_seed(seed)
    text = config.text_config
    n_img = config.num_image_tokens
    rows = []
    for p_len, s_len in zip(prefix_lens, suffix_lens, strict=True):
        prefix = torch.randint(5, config.image_token_index, (p_len,), generator=gen).tolist()
        suffix = torch.randint(5, config.image_token_index, (s_len,), generator=gen).tolist()
        prompt = [config.image_token_index] * n_img + [text.bos_token_id] + prefix + [4]
        target = suffix + [text.eos_token_id] if s_len else []
        rows.append((prompt, target))
    width = max(len(p) + len(t) for p, t in rows)
    ids, mask, types, labels = [], [], [], []
    for prompt, target in rows:
        pad = width - len(prompt) - len(target)
        row_ids = prompt + target
        row_types = [0] * len(prompt) + [1] * len(target)
        row_labels = [-100] * len(prompt) + target
        if padding_side == "right":
            ids.append(row_ids + [text.pad_token_id] * pad)
            mask.append([1] * len(row_ids) + [0] * pad)
            types.append(row_types + [0] * pad)
            labels.append(row_labels + [-100] * pad)
        else:
            ids.append([text.pad_token_id] * pad + row_ids)
            mask.append([0] * pad + [1] * len(row_ids))
            types.append([0] * pad + row_types)
            labels.append([-100] * pad + row_labels)
    vision = config.vision_config
    pixels = torch.randn(len(rows), 3, vision.image_size, vision.image_size, generator=gen)
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "token_type_ids": torch.tensor(types),
        "labels": torch.tensor(labels),
        "pixel_values": pixels,
    }


@pytest.fixture(params=sorted(SMALL_CONFIGS))
def small_config(request) -> PaliGemmaConfig:
    return PaliGemmaConfig.from_dict(SMALL_CONFIGS[request.param])


TINY_TEXTS = [
    "caption en",
    "answer en what color is the circle?",
    "a red circle on the left and a blue square on the right",
    "two shapes: a green triangle at the top and a yellow circle at the bottom",
] * 20


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny PaliGemma in HF format with its tokenizer and preprocessor files."""
    from paligemma.tiny import create_tiny_checkpoint

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)  # fmt: skip
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-checkpoint")
    return create_tiny_checkpoint(path, TINY_TEXTS, vocab_size=400, vision=vision, text=text)


@pytest.fixture(scope="session")
def other_tiny_checkpoint(tmp_path_factory):
    """A second random tiny PaliGemma of other sizes: adapters of tiny_checkpoint do not fit it."""
    from paligemma.tiny import create_tiny_checkpoint

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)  # fmt: skip
    text = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=12)  # fmt: skip
    path = tmp_path_factory.mktemp("other-tiny-checkpoint")
    return create_tiny_checkpoint(
        path, ["caption en", "a red circle"] * 10, vocab_size=300, vision=vision, text=text
    )
