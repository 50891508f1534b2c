"""Importance scores: *what* to remove. The surgery in ``autocomp.ops`` decides nothing, it removes what it is told.

Each head scorer returns one score per head for one attention module, each neuron scorer one score per hidden
neuron of one MLP; higher means more important.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from autocomp.errors import AutocompError

__all__ = ["HEAD_SCORES", "NEURON_SCORES", "head_scores", "neuron_scores"]


def _weight_norm(attn: nn.Module, proj_inputs: torch.Tensor | None) -> torch.Tensor:
    """Data-free: L2 norm of each head's rows in q, k, v and its columns in proj."""
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = attn.qkv.weight.detach().reshape(3, heads, head_dim, -1)
    proj = attn.proj.weight.detach().reshape(-1, heads, head_dim)
    return qkv.pow(2).sum(dim=(0, 2, 3)).sqrt() + proj.pow(2).sum(dim=(0, 2)).sqrt()


def _output_norm(attn: nn.Module, proj_inputs: torch.Tensor | None) -> torch.Tensor:
    """Data-aware: mean L2 norm of each head's contribution to the block output on calibration tokens."""
    if proj_inputs is None:
        raise AutocompError("importance 'output_norm' (prune_heads' default) needs calibration data; pass "
                            "calibration images (compress(..., calibration=images)) or use importance 'weight_norm'")
    heads, head_dim = attn.num_heads, attn.head_dim
    per_head = proj_inputs.reshape(-1, heads, head_dim)  # tokens, heads, head_dim
    proj = attn.proj.weight.detach().reshape(-1, heads, head_dim)  # out, heads, head_dim
    contribution = torch.einsum("thd,ohd->tho", per_head, proj)
    return contribution.norm(dim=-1).mean(dim=0)


HEAD_SCORES: dict[str, Callable[[nn.Module, torch.Tensor | None], torch.Tensor]] = {
    "weight_norm": _weight_norm,
    "output_norm": _output_norm,
}


def head_scores(method: str, attn: nn.Module, proj_inputs: torch.Tensor | None) -> torch.Tensor:
    """Score the heads of ``attn`` with ``method``; ``proj_inputs`` are its proj's inputs on calibration data."""
    return HEAD_SCORES[method](attn, proj_inputs)


def _neuron_weight_norm(mlp: nn.Module, mean_activation: torch.Tensor | None) -> torch.Tensor:
    """Data-free: L2 norm of each neuron's fc1 row times the L2 norm of its fc2 column."""
    return mlp.fc1.weight.detach().norm(dim=1) * mlp.fc2.weight.detach().norm(dim=0)


def _neuron_activation(mlp: nn.Module, mean_activation: torch.Tensor | None) -> torch.Tensor:
    """Data-aware: mean |activation| of each neuron on calibration tokens times the L2 norm of its fc2 column."""
    if mean_activation is None:
        raise AutocompError("importance 'activation' needs calibration data; pass calibration images or use "
                            "importance 'weight_norm'")
    return mean_activation * mlp.fc2.weight.detach().norm(dim=0)


NEURON_SCORES: dict[str, Callable[[nn.Module, torch.Tensor | None], torch.Tensor]] = {
    "weight_norm": _neuron_weight_norm,
    "activation": _neuron_activation,
}


def neuron_scores(method: str, mlp: nn.Module, mean_activation: torch.Tensor | None) -> torch.Tensor:
    """Score the hidden neurons of ``mlp`` with ``method``; ``mean_activation`` is each neuron's mean |activation|
    (after ``mlp.act``) on calibration tokens."""
    return NEURON_SCORES[method](mlp, mean_activation)
