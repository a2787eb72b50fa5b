import copy
from contextlib import nullcontext

import peft
import pytest
import torch
from torch import nn

from paligemma import Gemma3Config, PaliGemmaConfig, PaliGemmaForConditionalGeneration
from paligemma.model.lora import (
    DECODER_LINEAR_LAYERS,
    LoraDropout,
    LoraSettings,
    LoraUp,
    add_lora,
    lora_config,
)
from paligemma.tiny import random_batch, random_gemma3_batch
from tests.helpers import hf_reference, ours_from_hf, randomize_
from tests.model.test_gemma3 import GEMMA3_CONFIGS
from tests.model.test_gemma3 import hf_reference as gemma3_reference
from tests.model.test_gemma3 import ours_from_hf as gemma3_from_hf


def test_lora_on_3b_config_adapts_the_decoder_only():
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(PaliGemmaConfig())
    model.requires_grad_(False)
    model = peft.get_peft_model(model, lora_config(LoraSettings(r=8, alpha=16, dropout=0.05)))
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == 9_805_824
    assert not any("vision_tower" in name or "projector" in name for name in trainable)
    assert all(".language_model.layers." in name and "lora_" in name for name in trainable)


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_lora_dropout_drops_each_element_with_probability_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    x = torch.rand(4, 251, 1000) + 0.5  # no zeros of its own; 1,004,000 elements, not a multiple of 8
    x.requires_grad_(True)
    y = LoraDropout(p).train()(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept] * (1 / (1 - p)))
    for lane in range(4):  # each int16 of a 64-bit draw is uniform: rate within 5 standard deviations
        rate = 1 - kept.flatten()[lane::4].float().mean().item()
        assert abs(rate - p) < 5 * (p * (1 - p) / (x.numel() / 4)) ** 0.5
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, kept * (1 / (1 - p)))


def test_lora_dropout_draws_seeded_masks_in_training_and_none_in_eval_mode(tiny_checkpoint):
    """add_lora's dropout as a training step meets it (on the LoRA branch's input, masks from torch's global RNG,
    whose state checkpoints keep): the same loss under the same seed, another under another; in eval mode
    (validation) the loss without dropout; at p = 1 the LoRA branch dropped whole, the base's loss."""
    base = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint)
    batch = random_batch(base.config, prefix_lens=[7, 4], suffix_lens=[3, 5])

    def loss(p: float, training: bool = True, seed: int = 1, adapter: bool = True) -> torch.Tensor:
        model = add_lora(copy.deepcopy(base), LoraSettings(dropout=p)).train(training)
        randomize_(model)  # the same weights in every model, LoRA's B nonzero
        torch.manual_seed(seed)
        with torch.no_grad(), nullcontext() if adapter else model.disable_adapter():
            return model(**batch, return_logits=False).loss

    dropped = loss(0.5)
    assert torch.equal(dropped, loss(0.5)) and not torch.equal(dropped, loss(0.5, seed=2))
    assert not torch.equal(dropped, loss(0.0))
    assert torch.equal(loss(0.5, training=False), loss(0.0, training=False))
    base_loss = loss(1.0, adapter=False)
    assert torch.equal(loss(1.0), base_loss) and not torch.equal(loss(0.0), base_loss)


def test_lora_up_computes_nn_linear_and_its_gradients():
    torch.manual_seed(0)
    linear = nn.Linear(8, 300, bias=False)
    up = LoraUp.sharing(linear)
    assert up.weight is linear.weight and list(up.state_dict()) == ["weight"]
    x = torch.randn(3, 50, 8, requires_grad=True)
    grad_out = torch.randn(3, 50, 300)
    grads = []
    for layer in (linear, up):
        x.grad = linear.weight.grad = None
        y = layer(x)
        y.backward(grad_out)
        grads.append((y, x.grad, linear.weight.grad))
    for reference, ours in zip(*grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_add_lora_uses_lora_dropout_and_lora_up_in_every_adapted_layer(tiny_checkpoint):
    model = add_lora(
        PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint), LoraSettings(dropout=0.1)
    )
    dropouts = [m for name, m in model.named_modules() if ".lora_dropout." in name]
    n_layers = model.base_model.model.config.text_config.num_hidden_layers
    assert len(dropouts) == n_layers * len(DECODER_LINEAR_LAYERS)
    assert all(type(d) is LoraDropout and d.p == 0.1 for d in dropouts)
    ups = [m for name, m in model.named_modules() if ".lora_B." in name]
    assert len(ups) == len(dropouts) and all(type(m) is LoraUp for m in ups)
    assert all(m.weight.requires_grad for m in ups)
    without = add_lora(
        PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint), LoraSettings(dropout=0.0)
    )
    assert not any(isinstance(m, nn.Dropout) for m in without.modules())


def test_lora_training_step_matches_transformers_and_peft(small_config):
    """Ours with add_lora (LoraUp; dropout off, as masks come from different draws) against transformers + peft,
    every weight random and the same LoRA weights, in train mode: equal loss and LoRA gradients."""
    hf = hf_reference(small_config)
    ours = ours_from_hf(hf)
    settings = LoraSettings(dropout=0.0)
    batch = random_batch(small_config, prefix_lens=[3, 7, 5, 1], suffix_lens=[4, 2, 2, 6])
    our_grads = assert_lora_step_matches(hf, ours, settings, batch)
    assert any("lora_B" in n for n in our_grads)


def assert_lora_step_matches(hf, ours, settings: LoraSettings, batch) -> dict:
    """peft on ``hf`` and add_lora on ``ours`` (same weights), the same random LoRA weights, one training-mode
    forward and backward: equal loss and LoRA gradients. Returns our LoRA gradients by name."""
    hf_lora = peft.get_peft_model(hf, lora_config(settings)).train()
    ours_lora = add_lora(ours, settings).train()
    randomize_(hf_lora, seed=1)
    ours_lora.load_state_dict(hf_lora.state_dict())
    hf_loss, our_loss = hf_lora(**batch).loss, ours_lora(**batch, return_logits=False).loss
    hf_loss.backward()
    our_loss.backward()
    assert abs(hf_loss.item() - our_loss.item()) < 1e-5
    hf_grads = {n: p.grad for n, p in hf_lora.named_parameters() if p.requires_grad}
    our_grads = {n: p.grad for n, p in ours_lora.named_parameters() if p.requires_grad}
    assert hf_grads.keys() == our_grads.keys()
    for name, grad in hf_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    return our_grads


@pytest.mark.parametrize("name", sorted(GEMMA3_CONFIGS))
def test_gemma3_lora_training_step_matches_transformers_and_peft(name):
    """As for PaliGemma: the same adapted layers (the decoder's, not the tower's nor the projector's), equal loss
    and LoRA gradients."""
    config = Gemma3Config.from_dict(GEMMA3_CONFIGS[name])
    hf = gemma3_reference(config)
    ours = gemma3_from_hf(hf)
    settings = LoraSettings(dropout=0.0)
    batch = random_gemma3_batch(config, [[3, "image", 4, "image", 2], ["image", 6]], [4, 3])
    our_grads = assert_lora_step_matches(hf, ours, settings, batch)
    assert len(our_grads) == 2 * len(DECODER_LINEAR_LAYERS) * config.text_config.num_hidden_layers
    assert all(".language_model.layers." in n for n in our_grads)
