"""Reading config dicts into the config dataclasses: the fields a class knows, the activations it accepts."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from paligemma.errors import UnsupportedConfigError

# Every name the reference maps to the tanh approximation of GELU.
TANH_GELU_NAMES = {"gelu_pytorch_tanh", "gelu_new", "gelu_fast"}


def known_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``d`` that are init fields of the dataclass ``cls``."""
    names = {f.name for f in fields(cls) if f.init}
    return {k: v for k, v in d.items() if k in names}


def check_activation(name: str, where: str) -> None:
    if name not in TANH_GELU_NAMES:
        raise UnsupportedConfigError(
            f"{where}.hidden_act={name!r} is not supported; PaliGemma uses the tanh GELU "
            f"({', '.join(sorted(TANH_GELU_NAMES))})"
        )
