"""Compression operators and the one verb that applies a recipe.

Order of application (fixed, whatever the order in a recipe): ``prune_heads`` (10), ``prune_mlp`` (20),
``low_rank`` (30), ``reduce_tokens`` (40), ``quantize`` (90). Pruning first, so that importance scores and SVDs see
only what stays; token reduction after the weight surgery (it changes no weights); quantization last, so that it
sees the final shapes (it also quantizes the two factors of a low-rank layer).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp.models import vit_blocks
from autocomp.ops import heads, lowrank, mlp, quantize, tokens  # noqa: F401 - registers the operators
from autocomp.ops._registry import CompressContext, registry
from autocomp.ops.heads import PruneHeads
from autocomp.ops.lowrank import LowRank, LowRankLinear
from autocomp.ops.mlp import PruneMlp
from autocomp.ops.quantize import Int8Linear, Quantize
from autocomp.ops.tokens import ReduceTokens
from autocomp.recipe import Recipe

__all__ = ["compress", "CompressContext", "PruneHeads", "PruneMlp", "LowRank", "LowRankLinear", "ReduceTokens",
           "Quantize", "Int8Linear", "registry"]


@torch.no_grad()
def compress(model: nn.Module, recipe: Recipe, *, calibration: torch.Tensor | None = None,
             structure_only: bool = False, inplace: bool = False) -> nn.Module:
    """Apply ``recipe`` to ``model`` and return the compressed model.

    Args:
        model: a timm ViT-family model.
        recipe: one entry per transformer block.
        calibration: calibration images for data-aware importance scores.
        structure_only: only rebuild the shapes (used when loading saved weights).
        inplace: change ``model`` itself instead of a copy.

    Raises:
        AutocompError: the recipe does not fit the model (block count, head count).
    """
    blocks = vit_blocks(model)
    if len(recipe.blocks) != len(blocks):
        raise AutocompError(f"the recipe has {len(recipe.blocks)} blocks but the model has {len(blocks)}; "
                            "give one entry per transformer block")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    context = CompressContext(calibration=calibration, structure_only=structure_only)
    for name, operator in registry().items():
        configs = {index: block[name] for index, block in enumerate(recipe.blocks) if name in block}
        if configs:
            operator.apply(model, configs, context)
    return model
