"""The one verb: apply a recipe to a model."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from autocomp.errors import AutocompError, AutocompTypeError, shown
from autocomp.models import model_images, require_float32, timm_equivalent, vit_blocks
from autocomp.ops import OPERATORS, CompressContext
from autocomp.recipe import Recipe

__all__ = ["compress"]


@torch.no_grad()
def compress(model: nn.Module, recipe: Recipe, *, calibration: torch.Tensor | None = None,
             structure_only: bool = False, inplace: bool = False) -> nn.Module:
    """Apply ``recipe`` to ``model`` and return the compressed model.

    The operators run in the order of :data:`autocomp.ops.OPERATORS`, whatever the order in the recipe.

    Args:
        model: a timm ViT-family model.
        recipe: one entry per transformer block.
        calibration: calibration images for data-aware importance scores and activation ranges.
        structure_only: only rebuild the shapes (used when loading saved weights).
        inplace: change ``model`` itself instead of a copy.

    Raises:
        AutocompError: the recipe does not fit the model (block count, head count).
    """
    if not isinstance(model, nn.Module):
        raise AutocompTypeError(f"compress's model must be the nn.Module to compress (a timm ViT, or torchvision's or "
                                f"transformers' ViT), got {type(model).__name__} {shown(model)}; build it first, "
                                "e.g. timm.create_model(name, pretrained=False, ...) with its weights loaded")
    if isinstance(recipe, (str, Path)):  # the recipe.yaml of a run's best/, or one written by hand
        recipe = Recipe.load(recipe)
    elif isinstance(recipe, Mapping):  # Recipe.to_dict()'s form
        recipe = Recipe.from_dict(recipe)
    elif not isinstance(recipe, Recipe):
        raise AutocompTypeError(f"compress's recipe must be an autocomp.Recipe, a recipe.yaml's path or its dict, "
                                f"got {type(recipe).__name__} {shown(recipe)}")
    if calibration is not None and (not isinstance(calibration, torch.Tensor) or calibration.dim() != 4
                                    or not calibration.is_floating_point()):
        got = (f"a {calibration.dim()}-D {calibration.dtype} tensor of shape {tuple(calibration.shape)}"
               if isinstance(calibration, torch.Tensor) else type(calibration).__name__)
        raise AutocompTypeError(f"compress's calibration must be a float tensor of preprocessed images (N, C, H, W), "
                                f"got {got}; torch.as_tensor(...).float() a NumPy array, unsqueeze(1) gray images")
    rebuilt = timm_equivalent(model)  # a torchvision ViT comes back as timm's, with its weights
    if rebuilt is not model:
        model, inplace = rebuilt, True  # a new module already: the caller's is not changed
    blocks = vit_blocks(model)
    if not structure_only:  # loading onto a half base gives a half model, as before
        require_float32(model)
    if calibration is not None:
        calibration = model_images(model, calibration, "compress's calibration images")
    if len(recipe.blocks) != len(blocks):
        raise AutocompError(f"the recipe has {len(recipe.blocks)} blocks but the model has {len(blocks)}; "
                            "give one entry per transformer block")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    context = CompressContext(calibration=calibration, structure_only=structure_only)
    for name, operator in OPERATORS.items():
        configs = {index: block[name] for index, block in enumerate(recipe.blocks) if name in block}
        if configs:
            operator.apply(model, configs, context)
    return model
