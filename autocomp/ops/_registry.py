"""The operator registry: each compression technique registers its config class and one apply function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["CompressContext", "Operator", "register", "registry"]


@dataclass(frozen=True)
class CompressContext:
    """What an operator may use besides the model.

    Attributes:
        calibration: a batch of calibration images (for data-aware importance scores), or None.
        structure_only: rebuild shapes only (loading saved weights); skip scoring and weight maths.
    """

    calibration: torch.Tensor | None = None
    structure_only: bool = False


@dataclass(frozen=True)
class Operator:
    """One registered technique.

    Attributes:
        name: its key in a recipe's block (YAML).
        config_cls: frozen dataclass of its settings, validated in ``__post_init__``.
        apply: ``apply(model, {block_index: config}, context)``; changes the model in place.
        order: operators run in ascending order (structure first, quantization last).
    """

    name: str
    config_cls: type
    apply: Callable[[nn.Module, dict[int, Any], CompressContext], None]
    order: int


_REGISTRY: dict[str, Operator] = {}


def register(name: str, config_cls: type, *, order: int) -> Callable:
    """Decorator: register ``apply`` as the operator ``name`` with its config class."""

    def wrap(apply: Callable) -> Callable:
        _REGISTRY[name] = Operator(name=name, config_cls=config_cls, apply=apply, order=order)
        return apply

    return wrap


def registry() -> dict[str, Operator]:
    """All operators, in application order."""
    return dict(sorted(_REGISTRY.items(), key=lambda item: item[1].order))
