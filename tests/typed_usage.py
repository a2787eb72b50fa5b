"""What a user's type checker sees of ``from paligemma import ...``: the classes, not Any (tests/test_types.py runs
pyright on this file; an ``assert_type`` that fails is an error)."""

from typing_extensions import assert_type

from paligemma import (
    Gemma2Config,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    GemmaConfig,
    MaskVAE,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipVisionConfig,
)
from paligemma.data import gemma3_processor, processor
from paligemma.model import (
    config,
    gemma3,
    gemma3_config,
    gemma4,
    gemma4_config,
    gemma_config,
    mask_vae,
    paligemma,
)

assert_type(Gemma2Config, type[gemma_config.Gemma2Config])
assert_type(Gemma3Config, type[gemma3_config.Gemma3Config])
assert_type(Gemma3ForConditionalGeneration, type[gemma3.Gemma3ForConditionalGeneration])
assert_type(Gemma3Processor, type[gemma3_processor.Gemma3Processor])
assert_type(Gemma3TextConfig, type[gemma_config.Gemma3TextConfig])
assert_type(Gemma4Config, type[gemma4_config.Gemma4Config])
assert_type(Gemma4ForConditionalGeneration, type[gemma4.Gemma4ForConditionalGeneration])
assert_type(GemmaConfig, type[gemma_config.GemmaConfig])
assert_type(MaskVAE, type[mask_vae.MaskVAE])
assert_type(PaliGemmaConfig, type[config.PaliGemmaConfig])
assert_type(PaliGemmaForConditionalGeneration, type[paligemma.PaliGemmaForConditionalGeneration])
assert_type(PaliGemmaProcessor, type[processor.PaliGemmaProcessor])
assert_type(SiglipVisionConfig, type[config.SiglipVisionConfig])
assert_type(PaliGemmaConfig().text_config.logit_softcap, float | None)
assert_type(Gemma3Config().text_config, gemma_config.Gemma3TextConfig)
assert_type(Gemma4Config().text_config, gemma4_config.Gemma4TextConfig)
