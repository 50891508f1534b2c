"""Surgery helpers shared by the structural operators."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["slice_linear"]


def slice_linear(linear: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding only the given output ``rows`` and input ``cols`` of ``linear``."""
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    # skip_init: the weights are copied in below, so drawing random ones would only consume the global RNG
    new = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                             device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new
