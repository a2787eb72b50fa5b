import copy

import pytest
import torch

from paligemma.errors import ConfigError
from paligemma.training.optim import OptimSettings, build_optimizer, optimizer_class, warmup_cosine


def test_warmup_then_cosine_to_floor():
    multiplier = warmup_cosine(total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
    assert multiplier(0) == pytest.approx(0.1) and multiplier(9) == pytest.approx(1.0)
    assert multiplier(10) == pytest.approx(1.0)
    assert multiplier(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert multiplier(100) == pytest.approx(0.1)
    assert all(multiplier(s) >= multiplier(s + 1) for s in range(10, 100))


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit"])
def test_bitsandbytes_optimizers_step_in_8_bits_and_resume_exactly(name):
    """On CPU too (the paged one runs unpaged there): 8-bit moments, and a state dict that resumes the very run."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(
        torch.randn(64, 128)
    )  # 8,192 elements: bitsandbytes keeps 8-bit state from 4,096
    settings = OptimSettings(name=name, lr=1e-2, weight_decay=0.1)
    optimizer = build_optimizer([weight], settings, total_steps=4)["optimizer"]
    grads = [torch.randn(64, 128) for _ in range(4)]
    for step, grad in enumerate(grads):
        weight.grad = grad
        optimizer.step()
        if step == 1:
            saved, saved_weight = copy.deepcopy(optimizer.state_dict()), weight.detach().clone()
    assert optimizer.state[weight]["state1"].dtype == torch.uint8
    resumed_weight = torch.nn.Parameter(saved_weight)
    resumed = build_optimizer([resumed_weight], settings, total_steps=4)["optimizer"]
    resumed.load_state_dict(saved)
    for grad in grads[2:]:
        resumed_weight.grad = grad
        resumed.step()
    assert torch.equal(resumed_weight, weight)


def test_unknown_optimizer_is_one_line():
    with pytest.raises(
        ConfigError, match="optim.name: 'sgd' is not one of adamw, adamw8bit, paged_adamw8bit"
    ):
        optimizer_class("sgd")
