import pytest
import torch
import torch.nn.functional as F

from paligemma import PaliGemmaConfig
from paligemma.model.lora import LoraSettings, add_lora
from paligemma.model.packed_weights import (
    PACKED,
    PACKING_PAYS_FROM,
    SHARED_INPUT_PRODUCTS,
    pack,
    packed_product,
    packed_weights,
)
from paligemma.model.precision import native_bf16_cpu
from tests.helpers import SMALL_CONFIGS, hf_reference, ours_from_hf
from tests.model.test_generation import prompt_batch

needs_bf16_instructions = pytest.mark.skipif(
    not native_bf16_cpu(), reason="oneDNN packs bf16 weights only on a CPU with bf16 instructions"
)


def bf16_model(name="gqa", lora=False):
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS[name])
    model = ours_from_hf(hf_reference(config)).to(torch.bfloat16)
    if lora:
        add_lora(model, LoraSettings(r=4))
        for name, param in model.named_parameters():  # peft starts B at zero: make the adapters count
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    batch = prompt_batch(config, [2, 6, 3])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    return model.eval(), batch


def packed_linears(model) -> int:
    """Linears multiplying by packed weights: one product by a packed concatenation counts each of its linears."""
    methods = {entry[0]: len(entry[1]) for entry in SHARED_INPUT_PRODUCTS.values()}
    return sum(
        ("forward" in m.__dict__) + sum(n for method, n in methods.items() if method in m.__dict__)
        for m in model.modules()
    )


def shared_products(model) -> int:
    """Products of one input by several linears that run as one."""
    methods = [entry[0] for entry in SHARED_INPUT_PRODUCTS.values()]
    return sum(method in m.__dict__ for m in model.modules() for method in methods)


def test_the_private_ops_are_there():
    """torch.ops.mkldnn's packing ops, as inductor's freezing pass calls them; a release that drops them fails here."""
    assert callable(torch.ops.mkldnn._reorder_linear_weight)
    assert callable(torch.ops.mkldnn._linear_pointwise)


@needs_bf16_instructions
@pytest.mark.parametrize("rows", [1, 3, 17, 300])
def test_a_packed_product_is_bit_identical_to_f_linear(rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 64, generator=gen).bfloat16()
    x, bias = torch.randn(rows, 64, generator=gen).bfloat16(), torch.randn(96, generator=gen).bfloat16()
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
    out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    assert torch.equal(out, F.linear(x, weight, bias))


@needs_bf16_instructions
@pytest.mark.parametrize("rows", [1, 4, 300])
def test_one_product_by_weights_packed_side_by_side_is_bit_identical_to_each_by_its_own(rows):
    gen = torch.Generator().manual_seed(rows)
    weights = [torch.randn(n, 128, generator=gen).bfloat16() for n in (512, 128, 128)]
    x = torch.randn(rows, 128, generator=gen).bfloat16()
    outputs = packed_product(x, pack(torch.cat(weights))).split([512, 128, 128], -1)
    assert all(torch.equal(out, F.linear(x, w)) for out, w in zip(outputs, weights, strict=True))


@pytest.mark.parametrize(
    "name, lora, num_beams", [("gqa", False, 1), ("gemma2", False, 1), ("gemma2", True, 1), ("gqa", True, 3)]
)
def test_generation_is_the_same_with_packed_weights(name, lora, num_beams):
    model, batch = bf16_model(name, lora)
    seen = []
    hook = model.language_model.layers[0].register_forward_pre_hook(
        lambda *_: seen.append((packed_linears(model), shared_products(model)))
    )
    packed = model.generate(
        **batch, max_new_tokens=6, eos_token_id=[], num_beams=num_beams, pack_weights=True
    )
    hook.remove()
    plain = model.generate(
        **batch, max_new_tokens=6, eos_token_id=[], num_beams=num_beams, pack_weights=False
    )
    assert torch.equal(packed, plain)
    layers = model.config.text_config.num_hidden_layers
    # q k v o gate up down, the LM head; without LoRA q k v and gate up as two products a layer
    expected = (7 * layers + 1, 0 if lora else 2 * layers) if native_bf16_cpu() else (0, 0)
    assert set(seen) == {expected}
    assert packed_linears(model) == 0 and shared_products(model) == 0


def test_closing_leaves_the_model_as_it_was():
    model, batch = bf16_model(lora=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with packed_weights(model):
        with packed_weights(model):  # re-entrant: the inner one packs nothing more
            inner = packed_linears(model)
        assert packed_linears(model) == inner
        loss = model(**batch, labels=batch["input_ids"]).loss  # gradients on: the plain products
        loss.backward()
    assert packed_linears(model) == 0 and not hasattr(model, PACKED)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert any(p.grad is not None for p in model.parameters())


def test_float32_and_disabled_pack_nothing():
    model, _ = bf16_model()
    with packed_weights(model, enabled=False):
        assert packed_linears(model) == 0
    with packed_weights(model.float()):
        assert packed_linears(model) == 0


@needs_bf16_instructions
def test_a_call_packs_by_default_only_where_packing_pays_and_an_open_context_serves_short_calls():
    model, batch = bf16_model()
    seen = []
    model.language_model.layers[0].register_forward_pre_hook(lambda *_: seen.append(packed_linears(model)))
    expected = 7 * model.config.text_config.num_hidden_layers + 1  # q k v o gate up down, the LM head
    short = PACKING_PAYS_FROM - 1
    model.generate(**batch, max_new_tokens=short, eos_token_id=[])
    assert set(seen) == {0}
    seen.clear()
    model.generate(**batch, max_new_tokens=PACKING_PAYS_FROM, eos_token_id=[])
    assert set(seen) == {expected}
    seen.clear()
    with packed_weights(model):
        model.generate(**batch, max_new_tokens=short, eos_token_id=[])
    assert set(seen) == {expected}
