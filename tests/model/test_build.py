"""build_model on each family's checkpoint: the class its config.json names, what trains (LoRA, full decoder,
QLoRA) and gradient checkpointing."""

import peft
import pytest
import torch
import transformers

from paligemma import Gemma3ForConditionalGeneration, PaliGemmaForConditionalGeneration
from paligemma.model.build import ModelSettings, build_model
from paligemma.model.gemma import GemmaRMSNorm
from paligemma.model.lora import LoraSettings, lora_config
from paligemma.model.quantize import is_quantized
from tests.helpers import family_batch

FAMILIES = {
    "paligemma": ("tiny_checkpoint", PaliGemmaForConditionalGeneration, transformers.PaliGemmaForConditionalGeneration),
    "gemma3": ("tiny_gemma3_checkpoint", Gemma3ForConditionalGeneration, transformers.Gemma3ForConditionalGeneration),
}  # fmt: skip


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    fixture, ours, theirs = FAMILIES[request.param]
    return request.getfixturevalue(fixture), ours, theirs


def trainable(model) -> dict[str, int]:
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


def test_lora_adapts_the_decoder_as_transformers_and_peft_do(family):
    path, ours, theirs = family
    settings = LoraSettings(r=4, alpha=8)
    built = build_model(ModelSettings(path=str(path), dtype="float32"), settings)
    assert type(built.net) is ours and built.peft_model is not None
    hf = theirs.from_pretrained(path).requires_grad_(False)
    reference = trainable(peft.get_peft_model(hf, lora_config(settings)))
    got = trainable(built.peft_model)
    assert got == reference and got
    assert all(".language_model.layers." in name and ".lora_" in name for name in got)


def test_without_lora_the_whole_decoder_trains_and_nothing_else(family):
    path, ours, _ = family
    net = build_model(ModelSettings(path=str(path), dtype="float32"), None).net
    decoder = {f"model.language_model.{n}" for n, _ in net.model.language_model.named_parameters()}
    assert set(trainable(net)) == decoder


def test_qlora_quantizes_the_decoder_projections_only_and_a_lora_step_trains(family):
    path, ours, _ = family
    settings = ModelSettings(path=str(path), dtype="float32", quantization="nf4", compute_dtype="float32")
    built = build_model(settings, LoraSettings(r=4, dropout=0.0))
    net, peft_model = built.net, built.peft_model
    assert type(net) is ours and peft_model is not None
    bnb = {name.replace(".base_layer", "") for name, m in net.named_modules() if is_quantized(m)}
    projections = {
        f"model.language_model.layers.{i}.{part}"
        for i in range(net.config.text_config.num_hidden_layers)
        for part in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    }  # fmt: skip
    assert bnb <= projections and bnb  # widths bitsandbytes cannot dequantize here hold a frozen stand-in
    norms = [m for n, m in net.named_modules() if isinstance(m, GemmaRMSNorm)]
    assert norms and all(type(m.weight) is torch.nn.Parameter for m in norms)  # q/k norms too (Gemma 3)
    if ours is Gemma3ForConditionalGeneration:
        weight = net.model.multi_modal_projector.mm_input_projection_weight
        assert (
            type(weight) is torch.nn.Parameter and weight.dtype == torch.float32 and not weight.requires_grad
        )
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    batch = family_batch(net.config)
    peft_model.train()
    for _ in range(2):  # lora_B starts at 0: lora_A's gradient is non-zero from the second step
        optimizer.zero_grad()
        peft_model(**batch, return_logits=False).loss.backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(torch.equal(p, frozen[n]) for n, p in net.named_parameters() if not p.requires_grad)


def loss_and_grads(path, checkpointing: bool):
    settings = ModelSettings(path=str(path), dtype="float32", gradient_checkpointing=checkpointing)
    torch.manual_seed(0)  # the same lora_A draws
    peft_model = build_model(settings, LoraSettings(r=4, dropout=0.0)).peft_model
    assert peft_model is not None
    with torch.no_grad():  # lora_B starts at 0: make every LoRA weight's gradient non-zero
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    peft_model.train()
    loss = peft_model(**family_batch(peft_model.get_base_model().config), return_logits=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_leaves_the_loss_and_lora_gradients_as_they_were(family):
    path, _, _ = family
    loss, grads = loss_and_grads(path, checkpointing=False)
    checkpointed_loss, checkpointed = loss_and_grads(path, checkpointing=True)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=1e-6)
    assert checkpointed.keys() == grads.keys()
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
