import peft
import pytest
import torch

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.model.lora import LoraSettings, lora_config
from paligemma.model.presets import hub_config

# (parameters, LoRA r=8 on the decoder's seven projections), counted by transformers 5.24 + peft on meta.
REFERENCE_COUNTS = {
    "paligemma-3b-pt-224": (2_923_466_480, 9_805_824),
    "paligemma2-3b-pt-224": (3_032_242_416, 10_383_360),
    "paligemma2-3b-pt-448": (3_033_127_152, 10_383_360),
    "paligemma2-10b-pt-224": (9_662_638_832, 27_009_024),
    "paligemma2-28b-pt-224": (27_650_487_024, 57_090_048),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_and_lora_counts_equal_the_reference(name):
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(PaliGemmaConfig.from_dict(hub_config(name)))
    total, lora = REFERENCE_COUNTS[name]
    assert sum(p.numel() for p in model.parameters()) == total
    model.requires_grad_(False)
    model = peft.get_peft_model(model, lora_config(LoraSettings(r=8, alpha=16)))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == lora


def test_paligemma2_28b_reads_as_gemma2_with_its_own_query_scale():
    text = PaliGemmaConfig.from_dict(hub_config("paligemma2-28b-mix-448")).text_config
    assert text.model_type == "gemma2" and text.head_dim == 128
    assert text.attention_scale == 144**-0.5
    assert (text.attn_logit_softcapping, text.final_logit_softcapping, text.sliding_window) == (
        50.0,
        30.0,
        4096,
    )
    assert text.layer_types[:3] == ["sliding_attention", "full_attention", "sliding_attention"]


def test_unknown_checkpoint_name_is_a_key_error():
    with pytest.raises(KeyError, match="paligemma3-3b"):
        hub_config("paligemma3-3b-pt-224")
