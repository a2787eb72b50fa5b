import json
from pathlib import Path

import pytest
import transformers

from paligemma.errors import UnsupportedConfigError
from paligemma.model.config import PaliGemmaConfig, SiglipVisionConfig
from paligemma.model.gemma_config import TEXT_CONFIGS, Gemma2Config, GemmaConfig

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_hub_config_fills_omitted_fields_with_paligemma_defaults():
    config = PaliGemmaConfig.from_dict(json.loads((FIXTURES / "paligemma-3b-pt-448.config.json").read_text()))
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size, vision.patch_size, config.num_image_tokens) == (448, 14, 1024)
    assert (vision.hidden_act, vision.layer_norm_eps) == ("gelu_pytorch_tanh", 1e-6)
    assert (text.head_dim, text.rope_theta, text.rms_norm_eps) == (256, 10000.0, 1e-6)
    assert text.vocab_size == 257216
    assert (text.num_key_value_heads, config.image_token_index, config.projection_dim) == (1, 257152, 2048)


def test_paligemma2_hub_config_reads_as_transformers_reads_it():
    """A hub-style PaliGemma 2 file: Gemma 2 fields left to defaults, a stale top-level hidden_size, eos a list."""
    d = json.loads((FIXTURES / "paligemma2-3b-pt-224.config.json").read_text())
    ours, ref = (
        PaliGemmaConfig.from_dict(d).text_config,
        transformers.PaliGemmaConfig.from_dict(d).text_config,
    )
    names = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
             "sliding_window", "layer_types", "rms_norm_eps", "vocab_size", "pad_token_id", "bos_token_id"]  # fmt: skip
    assert {n: getattr(ours, n) for n in names} == {n: getattr(ref, n) for n in names}
    assert ours.rope_theta == ref.rope_parameters["rope_theta"] == 10000.0
    assert isinstance(ours, Gemma2Config) and ours.stop_token_ids == [1, 107]
    assert PaliGemmaConfig.from_dict(d).projection_dim == 2304


def test_paligemma2_config_round_trips_through_transformers():
    d = json.loads((FIXTURES / "paligemma2-3b-pt-224.config.json").read_text())
    ours = PaliGemmaConfig.from_dict(d)
    ours.text_config.final_logit_softcapping = None  # switched off, as big_vision fine-tunes
    back = transformers.PaliGemmaConfig.from_dict(ours.to_dict())
    assert back.text_config.model_type == "gemma2" and back.text_config.final_logit_softcapping is None
    assert PaliGemmaConfig.from_dict(back.to_dict()) == PaliGemmaConfig.from_dict(ours.to_dict()) == ours


def test_transformers5_config_round_trips():
    hf = transformers.PaliGemmaConfig(
        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                           patch_size=14, image_size=224, vision_use_head=False),
        text_config=dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                         num_key_value_heads=1, head_dim=256, vocab_size=257216),
        image_token_index=257152, projection_dim=2048,
    )  # fmt: skip
    ours = PaliGemmaConfig.from_dict(hf.to_dict())
    assert ours == PaliGemmaConfig()
    assert PaliGemmaConfig.from_dict(ours.to_dict()) == ours
    back = transformers.PaliGemmaConfig.from_dict(ours.to_dict())
    assert back.text_config.head_dim == 256 and back.vision_config.vision_use_head is False
    assert back.image_token_index == 257152 and back.text_config.num_image_tokens == 256


def test_the_constructor_takes_objects_and_from_dict_dicts():
    vision = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=1)
    text = GemmaConfig(hidden_size=64, vocab_size=500)
    a = PaliGemmaConfig(vision_config=SiglipVisionConfig(**vision), text_config=text, image_token_index=499)
    b = PaliGemmaConfig.from_dict(dict(vision_config=vision, text_config={"hidden_size": 64, "vocab_size": 500},
                                       image_token_index=499))  # fmt: skip
    assert a == b and a.projection_dim == 64


def gemma4_reference():
    """transformers' Gemma 4 text config, whose head_dim (the sliding layers') reads as an attribute only so."""
    ref = transformers.Gemma4TextConfig()
    ref.allow_global_per_layer_attribute_access = True
    return ref


@pytest.mark.parametrize("config_class", list(TEXT_CONFIGS.values()))
def test_each_generations_defaults_are_transformers(config_class):
    """A text config that names its model_type only reads as transformers' class reads it (Gemma 1: the text
    config transformers' PaliGemmaConfig makes; the vocabulary is PaliGemma's for Gemma 1 and 2)."""
    ours = config_class()
    assert config_class.from_dict({"model_type": config_class.model_type}) == ours
    references = {"gemma": lambda: transformers.PaliGemmaConfig().text_config, "gemma2": transformers.Gemma2Config,
                  "gemma3_text": transformers.Gemma3TextConfig, "gemma4_text": gemma4_reference}  # fmt: skip
    ref = references[config_class.model_type]()
    names = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "rms_norm_eps", "max_position_embeddings", "layer_types"]  # fmt: skip
    names += ["final_logit_softcapping", "sliding_window"] * (config_class is not GemmaConfig)
    names += ["query_pre_attn_scalar", "attn_logit_softcapping"] * (
        config_class.model_type in ("gemma2", "gemma3_text")
    )
    assert {n: getattr(ours, n) for n in names} == {
        n: getattr(ref, n, ours.default_layer_types()) for n in names
    }
    if config_class.model_type in ("gemma3_text", "gemma4_text"):
        assert ours.vocab_size == ref.vocab_size


@pytest.mark.parametrize(
    "change, culprit",
    [
        ({"model_type": "llava"}, "model_type='llava'"),
        ({"text_config": {"model_type": "gemma3"}}, "gemma3"),
        ({"text_config": {"model_type": "gemma2", "use_bidirectional_attention": False}}, "bidirectional"),
        ({"text_config": {"model_type": "gemma2", "layer_types": ["sliding_attention"]}}, "layer_types"),
        ({"text_config": {"hidden_act": "relu"}}, "hidden_act='relu'"),
        ({"vision_config": {"image_size": 225}}, "image_size=225"),
        ({"text_config": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}}, "rope_type='linear'"),
        ({"projection_dim": 1024}, "projection_dim=1024"),
        ({"image_token_index": 300000}, "image_token_index=300000"),
    ],
)
def test_unsupported_configs_name_the_culprit(change, culprit):
    d = PaliGemmaConfig().to_dict()
    for key, value in change.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) else value
    with pytest.raises(UnsupportedConfigError) as err:
        PaliGemmaConfig.from_dict(d)
    assert culprit in str(err.value)


def test_from_pretrained_names_a_dir_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        PaliGemmaConfig.from_pretrained(tmp_path)
