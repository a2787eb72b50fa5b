"""Shared fixtures: offline environment, small random configs and the transformers reference."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per process (pytest's and every CLI or rank it starts): the test models are so small that a second
# thread only waits on the first, and a DDP test's two ranks would otherwise fight over the two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

from paligemma import PaliGemmaConfig  # noqa: E402
from tests.helpers import SMALL_CONFIGS, TINY_TEXTS  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case a plugin imported torch before this file


@pytest.fixture(autouse=True)
def no_wandb_run_left_open():
    """A run that raised inside this process (train.train in a test) leaves its W&B run open, and the next
    WandbLogger would log into it: end it, as train.py's process exit does."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


@pytest.fixture(params=sorted(SMALL_CONFIGS))
def small_config(request) -> PaliGemmaConfig:
    return PaliGemmaConfig.from_dict(SMALL_CONFIGS[request.param])


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
def tiny_gemma2_checkpoint(tmp_path_factory):
    """A random tiny PaliGemma 2: Gemma 2 decoder whose sliding window (6) is shorter than its prompts."""
    from paligemma.tiny import create_tiny_checkpoint

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)  # fmt: skip
    text = dict(model_type="gemma2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                sliding_window=6)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-gemma2-checkpoint")
    return create_tiny_checkpoint(path, TINY_TEXTS, vocab_size=400, vision=vision, text=text)


@pytest.fixture(scope="session")
def tiny_gemma3_chat_checkpoint(tmp_path_factory):
    """A random tiny Gemma 3 with its own tokenizer and chat template: 4 image tokens pooled from 4x4 patches, a
    window (6) shorter than its prompts, one full layer after a sliding one."""
    from paligemma.tiny import create_tiny_gemma3_checkpoint

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)  # fmt: skip
    text = dict(model_type="gemma3_text", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                sliding_window=6, layer_types=["sliding_attention", "full_attention"], rope_theta=10_000.0,
                rope_local_base_freq=1_000.0)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-gemma3-chat-checkpoint")
    return create_tiny_gemma3_checkpoint(path, TINY_TEXTS, vocab_size=400, vision=vision, text=text,
                                         mm_tokens_per_image=4)  # fmt: skip


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


@pytest.fixture(scope="session")
def packable_checkpoint(tmp_path_factory):
    """A random tiny PaliGemma whose decoder projections bitsandbytes can repack for AVX512-BF16 (every dimension a
    multiple of 64: hidden 256, MLP 1024, head_dim 64), as in every real checkpoint."""
    from paligemma.tiny import create_tiny_checkpoint

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)  # fmt: skip
    text = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=1, head_dim=64)  # fmt: skip
    path = tmp_path_factory.mktemp("packable-checkpoint")
    return create_tiny_checkpoint(path, TINY_TEXTS, vocab_size=400, vision=vision, text=text)


@pytest.fixture
def avx512_bf16_bitsandbytes(monkeypatch):
    """bitsandbytes as it behaves on an AVX512-BF16 CPU, on any CPU: its 4-bit layers are made with the packed CPU
    path on (``support_avx512bf16_for_cpu``). Only the detection is replaced: the repacking and the packed kernel
    are bitsandbytes' own and run on AVX2 too (there with other numbers, which makes a change easier to see)."""
    import bitsandbytes.nn.modules

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)


@pytest.fixture(scope="session")
def tiny_gemma3_checkpoint(tmp_path_factory, tiny_checkpoint):
    """A random small Gemma 3 (tests/model/test_gemma3.py's "window3": a window shorter than an image), every
    parameter randomised, with the tiny PaliGemma's processor files (for model-only tests: their ids are not
    Gemma 3's)."""
    from paligemma import Gemma3Config, Gemma3ForConditionalGeneration
    from paligemma.data.processor_files import copy_processor_files
    from tests.helpers import randomize_
    from tests.model.test_gemma3 import GEMMA3_CONFIGS

    path = tmp_path_factory.mktemp("tiny-gemma3-checkpoint")
    model = Gemma3ForConditionalGeneration(Gemma3Config.from_dict(GEMMA3_CONFIGS["window3"]))
    randomize_(model)
    model.save_pretrained(path)
    copy_processor_files(tiny_checkpoint, path)
    return path
