"""What every operator shares: the context it is applied in, and one calibration pass with hooks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Mapping

import torch
from torch import nn

__all__ = ["CompressContext", "observe"]


@dataclass(frozen=True)
class CompressContext:
    """What an operator may use besides the model.

    Attributes:
        calibration: a batch of calibration images (for data-aware importance scores), or None.
        structure_only: rebuild shapes only (loading saved weights); skip scoring and weight maths.
    """

    calibration: torch.Tensor | None = None
    structure_only: bool = False


@torch.no_grad()
def observe(model: nn.Module, images: torch.Tensor, layers: Mapping[Hashable, nn.Module],
            record: Callable[[Hashable, torch.Tensor], None], *, what: str = "input") -> None:
    """One forward pass of ``images``, calling ``record(key, tensor)`` with the input (``what="input"``) or the output
    (``"output"``) of each layer in ``layers`` (key -> module) every time it runs; the hooks are removed after.

    ``record`` should reduce as it goes (a sum, a range), so memory does not grow with the number of images.
    """
    if what not in ("input", "output"):
        raise ValueError(f"what must be 'input' or 'output', got {what!r}")
    if what == "input":
        hooks = [layer.register_forward_pre_hook(lambda module, args, key=key: record(key, args[0].detach()))
                 for key, layer in layers.items()]
    else:
        hooks = [layer.register_forward_hook(lambda module, args, out, key=key: record(key, out.detach()))
                 for key, layer in layers.items()]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
