import pytest
from torch import nn

from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.model.gemma import GemmaRMSNorm
from paligemma.tiny import TINY_TEXT, TINY_VISION, init_weights_


def test_init_weights_sets_each_module_type_by_its_rule():
    config = PaliGemmaConfig(
        vision_config=TINY_VISION, text_config=dict(TINY_TEXT, vocab_size=600), image_token_index=599,
        projection_dim=TINY_TEXT["hidden_size"],
    )  # fmt: skip
    model = PaliGemmaForConditionalGeneration(config)
    init_weights_(model, std=0.02)
    rms_norms = [m for m in model.modules() if isinstance(m, GemmaRMSNorm)]
    layer_norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(rms_norms) == 2 * TINY_TEXT["num_hidden_layers"] + 1  # the final norm too
    assert all(bool((m.weight == 0).all()) for m in rms_norms)  # (1 + w) = 1: identity scale
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in layer_norms)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d | nn.Embedding):
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.2), name
            bias = getattr(module, "bias", None)
            assert bias is None or bool((bias == 0).all()), name
    assert model.lm_head.weight is model.language_model.embed_tokens.weight


def test_init_weights_refuses_a_module_it_has_no_rule_for():
    with pytest.raises(TypeError, match="BatchNorm1d"):
        init_weights_(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
