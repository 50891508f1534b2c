"""Compressed models on disk: a folder with the recipe, the base architecture and the weights, loadable anywhere."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from torch import nn

from autocomp._compress import compress
from autocomp._io import read_safetensors, write_json, write_safetensors
from autocomp._loader import build, read_yaml
from autocomp.data import Preprocessing
from autocomp.errors import AutocompError, AutocompTypeError, shown
from autocomp.models import (ModelSpec, create_model, factory_folder, factory_module, model_structure,
                             require_structure, timm_equivalent)
from autocomp.recipe import Recipe

__all__ = ["save_model", "check_fits", "load_model", "load_preprocessing", "load_classes", "GIVEN_AS", "CLASSES"]

CLASSES = "classes.json"  # a saved model's class names, output i's at [i]
GIVEN_AS = "given_as"  # model.yaml of a model the search was given as an nn.Module: {given_as: nn.Module}
STRUCTURE = "structure"  # beside it, what its base must be (autocomp.models.model_structure); run.json's too


def save_model(directory: Path, model: nn.Module, recipe: Recipe, spec: ModelSpec | nn.Module,
               metrics: Mapping[str, Any] | None = None, preprocessing: Preprocessing | None = None,
               classes: Sequence[str] | None = None) -> None:
    """Write a loadable model folder: recipe.yaml, the base architecture, weights.safetensors,
    preprocessing.json (how its inputs were made: size, crop, interpolation, mean, std) and classes.json (the class
    of each output, in order: an image folder's class folders).

    The architecture is model.yaml: the timm name or factory and its kwargs; for a model given as an ``nn.Module``
    it says so, and loading needs that module (``load_model(path, base=module)``). Nothing is pickled.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # written beside the folder's files first, then moved in: a save stopped half-way (Ctrl-C while the weights of
    # a large model are written) leaves an earlier model whole, not its weights under a new recipe
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=directory))
    try:
        write_safetensors(staging / "weights.safetensors", model.state_dict())
        architecture = ({k: v for k, v in spec.to_dict().items() if k != "checkpoint"} if isinstance(spec, ModelSpec)
                        else {GIVEN_AS: "nn.Module", STRUCTURE: model_structure(timm_equivalent(spec))})
        (staging / "model.yaml").write_text(yaml.safe_dump(architecture, sort_keys=False))
        recipe.save(staging / "recipe.yaml")
        if metrics is not None:
            write_json(staging / "metrics.json", dict(metrics))
        if preprocessing is not None:
            write_json(staging / "preprocessing.json", {**preprocessing.to_dict(), "steps": preprocessing.steps()})
        if classes is not None:
            write_json(staging / CLASSES, list(classes))
        written = sorted(os.listdir(staging))
        for name in written:
            os.replace(staging / name, directory / name)
        for name in {"metrics.json", "preprocessing.json", CLASSES} - set(written):  # an earlier model's
            (directory / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def skeleton(base: nn.Module | ModelSpec, recipe: Recipe, *, rebuilt: nn.Module | None = None) -> nn.Module:
    """What loading rebuilds before the weights: ``base``'s architecture (a timm name or factory, built with its
    initial weights, or a copy of the module) with ``recipe``'s shapes. ``rebuilt``: ``timm_equivalent(base)``
    where the caller has it already."""
    if isinstance(base, nn.Module):
        rebuilt = rebuilt if rebuilt is not None else timm_equivalent(base)  # a torchvision ViT: timm's (a new one)
        model = copy.deepcopy(base) if rebuilt is base else rebuilt
    else:
        model = create_model(base, load_weights=False)
    return compress(model, recipe, structure_only=True, inplace=True)


def check_fits(model: nn.Module, recipe: Recipe, base: nn.Module | ModelSpec) -> None:
    """Refuse to save ``model`` where its tensors do not load into what ``recipe`` applied to ``base`` makes, as
    loading would refuse them: the folder would be written, and refused only when loaded (the distilled model
    perhaps gone by then). A recipe that differs in no tensor (another token count, importance measure) is not told
    apart."""
    fix = ("give the recipe the model was compressed with (autocomp.compress(base, recipe)), and as base the model "
           "it was compressed from")
    try:
        rebuilt = skeleton(base, recipe)
    except AutocompError as exc:  # the recipe does not fit the base (blocks, heads)
        raise AutocompError(f"save: {exc}; {fix}") from None
    try:
        rebuilt.load_state_dict(model.state_dict())
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        raise AutocompError(f"save: the model is not what the recipe makes of the base ({mismatch(exc)}), so the "
                            f"folder would not load; {fix}") from None


def mismatch(exc: RuntimeError) -> str:
    """``load_state_dict``'s refusal on one line: its first problem, and how many more."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]  # after "Error(s) in ..."
    return lines[0] + (f" and {len(lines) - 1} more" if len(lines) > 1 else "") if lines else str(exc)


def load_preprocessing(directory: str | Path) -> Preprocessing | None:
    """The preprocessing a saved model was scored with (``.transform()`` turns a PIL image into its input), or
    None for a folder saved without it."""
    path = Path(directory) / "preprocessing.json"
    if not path.is_file():
        return None
    settings = json.loads(path.read_text())
    if isinstance(settings, dict):
        settings.pop("steps", None)  # the settings in words, for a reader
    return build(Preprocessing, settings, where=str(path))


def load_classes(directory: str | Path) -> list[str] | None:
    """The class of each output of a saved model, in order, or None for a folder saved without them."""
    path = Path(directory) / CLASSES
    if not path.is_file():
        return None
    names = json.loads(path.read_text())
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise AutocompError(f"{path} is not a list of class names; export the model again (autocomp export)")
    return names


def load_model(directory: str | Path, *, base: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved compressed model: base architecture, recipe shapes, then the saved weights. Its
    ``pretrained_cfg`` carries the saved preprocessing, so timm's ``resolve_model_data_config`` and
    ``create_transform`` give the transform it was scored with, and the class names (``label_names``, as timm's
    pretrained models have them).

    Args:
        directory: a run's ``best/`` or a folder written by ``autocomp export``.
        base: the uncompressed model, needed (only) when the search was given it as an ``nn.Module``.

    Raises:
        AutocompError: not a saved model, a pickled one (never loaded: a pickle can run code), or a model given as
            an ``nn.Module`` without ``base``.
    """
    directory = Path(directory)
    if base is not None and not isinstance(base, nn.Module):
        raise AutocompTypeError(f"load's base must be the nn.Module the model was compressed from (a folder saved "
                                "from a timm name or a ModelSpec loads without one), got "
                                f"{type(base).__name__} {shown(base)}")
    if (directory / "model.pt").is_file() and not (directory / "model.yaml").is_file():
        raise AutocompError(f"{directory / 'model.pt'} is a pickle, which can run code when loaded, so autocomp does "
                            "not load it; export the trial again with this version (weights as safetensors)")
    needed = [directory / name for name in ("model.yaml", "recipe.yaml", "weights.safetensors")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing and directory.name == "best" and not directory.exists() and (directory.parent / "run.json").is_file():
        raise AutocompError(f"{directory} does not exist: the search in {directory.parent} saved no {directory.name}/ "
                            "model (no candidate met the budget, or the search has not finished); export a trial "
                            f"and load that (autocomp export {directory.parent} --trial N --out folder; summary.json "
                            "'closest' names the trial nearest the budget)")
    if not directory.is_dir():
        raise AutocompError(f"{directory} does not exist" + (" (it is a file)" if directory.exists() else "")
                            + "; pass a run's best/ folder or one written by 'autocomp export' or autocomp.save")
    if missing:
        raise AutocompError(f"{directory} is not a saved autocomp model (missing {missing}); pass a run's best/ "
                            "folder or one written by 'autocomp export'")
    architecture = read_yaml(directory / "model.yaml", what="saved architecture") or {}
    if architecture.get(GIVEN_AS) == "nn.Module":
        if base is None:
            raise AutocompError(f"{directory} holds a model compressed from one given as an nn.Module (a search "
                                "given a module, or autocomp.save with base=module); pass that module: "
                                "autocomp.load(path, base=my_model)")
        rebuilt = timm_equivalent(base)
        require_structure(architecture.get(STRUCTURE), rebuilt, directory)
        model = skeleton(base, Recipe.load(directory / "recipe.yaml"), rebuilt=rebuilt)
    else:
        source = build(ModelSpec, architecture, where=str(directory / "model.yaml"))
        if source.factory is not None and factory_module(source) is None:  # the folder it recorded moved: here?
            source = dataclasses.replace(source, path=factory_folder(source.factory, [Path.cwd()]) or source.path)
        model = skeleton(source, Recipe.load(directory / "recipe.yaml"))
    weights = read_safetensors(directory / "weights.safetensors", "saved weights",
                               "the folder is damaged; export the trial again (autocomp export)")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        first = mismatch(exc)
        fix = ("pass as base the module the search was given (the run folder keeps its weights in "
               "base.safetensors)" if base is not None else "export the trial again (autocomp export)")
        raise AutocompError(f"the weights in {directory} do not fit the model its model.yaml and recipe.yaml "
                            f"build{' from the base given' if base is not None else ''} ({first}); {fix}") from None
    preprocessing = load_preprocessing(directory)
    if preprocessing is not None:
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **preprocessing.timm_config()}
    classes = load_classes(directory)
    if classes is not None:
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "label_names": classes}
    return model.eval()
