"""Compressed models on disk: a folder with the recipe, the base architecture and the weights, loadable anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from autocomp._io import write_json
from autocomp._loader import build
from autocomp.compress import compress
from autocomp.data import Preprocessing
from autocomp.errors import AutocompError
from autocomp.models import ModelSpec, create_model
from autocomp.recipe import Recipe

__all__ = ["save_model", "load_model", "load_preprocessing"]


def save_model(directory: Path, model: nn.Module, recipe: Recipe, spec: ModelSpec | nn.Module,
               metrics: Mapping[str, Any] | None = None, preprocessing: Preprocessing | None = None) -> None:
    """Write a loadable model folder: recipe.yaml, the base architecture, weights.safetensors and
    preprocessing.json (how its inputs were made: size, crop, interpolation, mean, std).

    The architecture is model.yaml (timm name and kwargs), or, for a model given as an ``nn.Module``, model.pt (the
    whole compressed module, pickled: load such files only from sources you trust).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recipe.save(directory / "recipe.yaml")
    if isinstance(spec, ModelSpec):
        (directory / "model.yaml").write_text(yaml.safe_dump({"name": spec.name, "kwargs": dict(spec.kwargs)},
                                                             sort_keys=False))
    else:
        torch.save(model, directory / "model.pt")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "weights.safetensors"))
    if metrics is not None:
        write_json(directory / "metrics.json", dict(metrics))
    if preprocessing is not None:
        write_json(directory / "preprocessing.json", preprocessing.to_dict())


def load_preprocessing(directory: str | Path) -> Preprocessing | None:
    """The preprocessing a saved model was scored with (``.transform()`` turns a PIL image into its input), or
    None for a folder saved without it."""
    path = Path(directory) / "preprocessing.json"
    if not path.is_file():
        return None
    return build(Preprocessing, json.loads(path.read_text()), where=str(path))


def load_model(directory: str | Path) -> nn.Module:
    """Rebuild a saved compressed model: base architecture, recipe shapes, then the saved weights. Its
    ``pretrained_cfg`` carries the saved preprocessing, so timm's ``resolve_model_data_config`` and
    ``create_transform`` give the transform it was scored with."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if (directory / "model.pt").is_file() and not (directory / "model.yaml").is_file():
        return torch.load(directory / "model.pt", weights_only=False).eval()  # saved by autocomp from an nn.Module
    needed = [directory / name for name in ("model.yaml", "recipe.yaml", "weights.safetensors")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise AutocompError(f"{directory} is not a saved autocomp model (missing {missing}); pass a run's best/ "
                            "folder or one written by 'autocomp export'")
    spec_data = yaml.safe_load((directory / "model.yaml").read_text())
    spec = ModelSpec(name=spec_data["name"], kwargs=spec_data.get("kwargs") or {})
    model = compress(create_model(spec, load_weights=False), Recipe.load(directory / "recipe.yaml"),
                     structure_only=True, inplace=True)
    model.load_state_dict(load_file(str(directory / "weights.safetensors")))
    preprocessing = load_preprocessing(directory)
    if preprocessing is not None:
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **preprocessing.timm_config()}
    return model.eval()
