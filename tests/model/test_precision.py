import pytest
import torch

from paligemma.model import precision
from paligemma.model.precision import resolve_dtype


def test_named_dtypes_are_taken_as_they_are():
    assert resolve_dtype("bfloat16") == (torch.bfloat16, "bfloat16 (model.dtype=bfloat16)")
    assert resolve_dtype("float32")[0] is torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bfloat16_only_on_cpus_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dtype, why = resolve_dtype("auto")
    assert dtype is (torch.bfloat16 if native else torch.float32)
    assert why.startswith("bfloat16 base" if native else "float32 (auto: no native bf16")


def test_auto_keeps_float32_where_the_run_refuses_a_bf16_base_and_says_why(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dtype, why = resolve_dtype("auto", bf16_refused_by="trainer=fsdp needs one dtype")
    assert dtype is torch.float32
    assert why.startswith("float32 (auto: trainer=fsdp needs one dtype, though this CPU has native bf16")
    assert resolve_dtype("bfloat16", bf16_refused_by="trainer=fsdp")[0] is torch.bfloat16  # named: as asked
