import peft
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paligemma import Gemma3Config, Gemma3ForConditionalGeneration, PaliGemmaConfig
from paligemma.model import decode_weights as decode_weights_module
from paligemma.model.decode_weights import (
    DecodeWeights,
    blocked_product,
    lora_forward,
    plain_lora,
    reorder,
)
from paligemma.model.generation import DECODE_WEIGHTS_PAY_FROM
from paligemma.model.lora import LoraSettings, add_lora
from paligemma.model.precision import native_bf16_cpu
from paligemma.model.quantize import QuantSettings, is_quantized, quantize_layer_
from tests.helpers import SMALL_CONFIGS, hf_reference, ours_from_hf, randomize_
from tests.model.test_gemma3 import GEMMA3_CONFIGS
from tests.model.test_gemma3 import prompt_batch as gemma3_prompt_batch
from tests.model.test_generation import prompt_batch

needs_bf16_instructions = pytest.mark.skipif(
    not native_bf16_cpu(), reason="oneDNN reorders bf16 weights only on a CPU with bf16 instructions"
)


def counted_blocked_products(monkeypatch, stand_in: bool) -> list[int]:
    """Counts the blocked products run, one entry per call. ``stand_in``: on any CPU, the weight kept as it is and
    multiplied by ``F.linear``, so that building the view and passing it down the decode path are tested where
    oneDNN refuses bf16 (AVX2); else the real kernels (a CPU with bf16 instructions only)."""
    kernel = blocked_product
    if stand_in:
        monkeypatch.setattr(decode_weights_module, "native_bf16_cpu", lambda: True)
        monkeypatch.setattr(decode_weights_module, "reorder", lambda weight: weight.clone())
        kernel = F.linear
    calls = []

    def counted(x, weight, bias=None):
        calls.append(1)
        return kernel(x, weight, bias)

    monkeypatch.setattr(decode_weights_module, "blocked_product", counted)
    return calls


@pytest.fixture(params=["onednn", "stand-in"])
def blocked_products(request, monkeypatch) -> list[int]:
    """``counted_blocked_products`` with oneDNN's kernels (skipped without bf16 instructions) and the stand-in."""
    if request.param == "onednn" and not native_bf16_cpu():
        pytest.skip("oneDNN reorders bf16 weights only on a CPU with bf16 instructions")
    return counted_blocked_products(monkeypatch, stand_in=request.param == "stand-in")


def bf16_model(name="gqa", lora=False):
    """A small bf16 model of ``SMALL_CONFIGS`` (``gemma3-<name>``: of ``GEMMA3_CONFIGS``) and a prompt batch."""
    if name.startswith("gemma3-"):
        config = Gemma3Config.from_dict(GEMMA3_CONFIGS[name.removeprefix("gemma3-")])
        model, batch = Gemma3ForConditionalGeneration(config), gemma3_prompt_batch(config)
        randomize_(model)
    else:
        config = PaliGemmaConfig.from_dict(SMALL_CONFIGS[name])
        model, batch = ours_from_hf(hf_reference(config)), prompt_batch(config, [2, 6, 3])
    model = model.to(torch.bfloat16)
    if lora:
        add_lora(model, LoraSettings(r=4))
        for name, param in model.named_parameters():  # peft starts B at zero: make the adapters count
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    return model.eval(), batch


def linears_held(view: DecodeWeights) -> int:
    """Linears whose products run blocked: a product by weights side by side counts each of its linears."""
    return len(view.blocked) + sum(len(linears) for linears in view.side_by_side)


def test_the_private_ops_are_there():
    """torch.ops.mkldnn's reordering ops, as inductor's freezing pass calls them; a release that drops them fails here."""
    assert callable(torch.ops.mkldnn._reorder_linear_weight)
    assert callable(torch.ops.mkldnn._linear_pointwise)


@needs_bf16_instructions
@pytest.mark.parametrize("rows", [1, 3, 17, 300])
def test_a_blocked_product_is_bit_identical_to_f_linear(rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 64, generator=gen).bfloat16()
    x, bias = torch.randn(rows, 64, generator=gen).bfloat16(), torch.randn(96, generator=gen).bfloat16()
    blocked = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
    out = torch.ops.mkldnn._linear_pointwise(x, blocked, bias, "none", [], "")
    assert torch.equal(out, F.linear(x, weight, bias))


@needs_bf16_instructions
@pytest.mark.parametrize("rows", [1, 4, 300])
def test_one_product_by_weights_side_by_side_is_bit_identical_to_each_by_its_own(rows):
    gen = torch.Generator().manual_seed(rows)
    weights = [torch.randn(n, 128, generator=gen).bfloat16() for n in (512, 128, 128)]
    x = torch.randn(rows, 128, generator=gen).bfloat16()
    outputs = blocked_product(x, reorder(torch.cat(weights))).split([512, 128, 128], -1)
    assert all(torch.equal(out, F.linear(x, w)) for out, w in zip(outputs, weights, strict=True))


@pytest.mark.parametrize(
    "name, lora, num_beams",
    [
        ("gqa", False, 1),
        ("gemma2", False, 1),
        ("gemma2", True, 1),
        ("gqa", True, 3),
        ("gemma3-window3", False, 1),
    ],
)
def test_generation_is_the_same_with_decode_weights(blocked_products, name, lora, num_beams):
    model, batch = bf16_model(name, lora)
    view = DecodeWeights.build(model)
    assert view is not None
    layers = model.config.text_config.num_hidden_layers
    # q k v o gate up down, the LM head; without LoRA q k v and gate up as two products a layer
    assert (linears_held(view), len(view.side_by_side)) == (7 * layers + 1, 0 if lora else 2 * layers)
    forwards = []
    model.language_model.layers[0].register_forward_pre_hook(lambda *_: forwards.append(1))
    options = dict(max_new_tokens=6, eos_token_id=[], num_beams=num_beams)
    blocked = model.generate(**batch, **options, decode_weights=view)
    assert len(blocked_products) == len(forwards) * (7 * layers + 1 if lora else 4 * layers + 1)
    blocked_products.clear()
    plain = model.generate(**batch, **options, decode_weights=None)
    assert not blocked_products
    assert torch.equal(blocked, plain)


def test_building_leaves_the_model_as_it_was_and_gradients_run_the_plain_products(blocked_products):
    model, batch = bf16_model(lora=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attributes = [set(vars(module)) for module in model.modules()]
    view = DecodeWeights.build(model)
    assert view is not None
    assert [set(vars(module)) for module in model.modules()] == attributes  # no method replaced, no marker
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    loss = model(**batch, labels=batch["input_ids"], decode_weights=view).loss  # gradients on: plain products
    assert not blocked_products
    assert torch.equal(loss, model(**batch, labels=batch["input_ids"]).loss)
    loss.backward()
    assert any(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        model(**batch, labels=batch["input_ids"], return_logits=False, decode_weights=view)
    assert blocked_products  # validation's loss, gradients off: on the view


def test_quantized_linears_are_left_alone(blocked_products):
    """bitsandbytes' layers multiply as they do, with or without a view; the plain bf16 ones (the LM head) run on it."""
    model, batch = bf16_model()
    settings = QuantSettings("nf4", torch.bfloat16)
    for name in [name for name, _ in model.named_modules() if settings.covers(name)]:
        quantize_layer_(model, f"{name}.weight", settings)
    quantized = {module for module in model.modules() if is_quantized(module)}
    view = DecodeWeights.build(model)
    assert quantized and view is not None and model.lm_head in view.blocked
    held = set(view.blocked) | {linear for linears in view.side_by_side for linear in linears}
    assert not quantized & held
    options = dict(max_new_tokens=4, eos_token_id=[])
    assert torch.equal(
        model.generate(**batch, **options, decode_weights=view), model.generate(**batch, **options)
    )


def test_float32_builds_none(blocked_products):
    model, _ = bf16_model()
    assert DecodeWeights.build(model.float()) is None


def test_no_view_without_bf16_instructions(monkeypatch):
    monkeypatch.setattr(decode_weights_module, "native_bf16_cpu", lambda: False)
    assert DecodeWeights.build(bf16_model()[0]) is None


def test_a_call_builds_by_default_only_where_it_pays_and_a_view_given_serves_short_calls(blocked_products):
    model, batch = bf16_model()
    short = DECODE_WEIGHTS_PAY_FROM - 1
    model.generate(**batch, max_new_tokens=short, eos_token_id=[])
    assert not blocked_products
    model.generate(**batch, max_new_tokens=DECODE_WEIGHTS_PAY_FROM, eos_token_id=[])
    assert blocked_products
    blocked_products.clear()
    model.generate(**batch, max_new_tokens=short, eos_token_id=[], decode_weights=DecodeWeights.build(model))
    assert blocked_products


def lora_layer(base_dtype: torch.dtype, dropout: float) -> peft.tuners.lora.Linear:
    """peft's LoRA on a random linear with a bias: two adapters, both active, B random (peft starts it at zero)."""
    model = nn.ModuleDict({"proj": nn.Linear(24, 40)}).to(base_dtype)
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=3, lora_alpha=5, target_modules=["proj"], lora_dropout=dropout)
    )
    model.add_adapter("second", peft.LoraConfig(r=2, lora_alpha=3, target_modules=["proj"]))
    layer = model.base_model.model["proj"]
    layer.set_adapter(["default", "second"])
    for name, param in layer.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    return layer


@pytest.mark.parametrize("base_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train-dropout"])
def test_lora_forward_is_pefts_forward_bit_for_bit(base_dtype, train):
    """``lora_forward`` rebuilds peft's ``lora.Linear.forward`` from its attributes: a peft release that computes
    it otherwise (another order, dtype, scaling) fails here."""
    layer = lora_layer(base_dtype, dropout=0.3).train(train)
    assert type(layer) is peft.tuners.lora.Linear and plain_lora(layer)
    base = layer.base_layer
    x = torch.randn(3, 5, 24).to(base_dtype)
    with torch.no_grad():
        torch.manual_seed(0)
        expected = layer(x)
        torch.manual_seed(0)
        ours = lora_forward(layer, x, F.linear(x, base.weight, base.bias))
    assert ours.dtype == expected.dtype == base_dtype
    assert torch.equal(ours, expected)


def test_disabled_merged_or_variant_lora_is_not_plain():
    layer = lora_layer(torch.bfloat16, dropout=0.0)
    layer.enable_adapters(False)
    assert not plain_lora(layer)
    layer.enable_adapters(True)
    layer.merge()
    assert not plain_lora(layer)
    layer.unmerge()
    assert plain_lora(layer)
    dora = peft.get_peft_model(
        nn.ModuleDict({"proj": nn.Linear(24, 40)}),
        peft.LoraConfig(r=4, target_modules=["proj"], use_dora=True),
    )
    assert not plain_lora(dora.base_model.model["proj"])
