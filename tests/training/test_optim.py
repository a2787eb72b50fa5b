import pytest

from paligemma.training.optim import warmup_cosine


def test_warmup_then_cosine_to_floor():
    multiplier = warmup_cosine(total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
    assert multiplier(0) == pytest.approx(0.1) and multiplier(9) == pytest.approx(1.0)
    assert multiplier(10) == pytest.approx(1.0)
    assert multiplier(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert multiplier(100) == pytest.approx(0.1)
    assert all(multiplier(s) >= multiplier(s + 1) for s in range(10, 100))
