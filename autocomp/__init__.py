"""autocomp: find the best compressed Vision Transformer for a device budget.

The pipeline, in the layout of this package: ``recipe`` -> ``ops`` (compress) -> ``measure`` / ``hardware`` ->
``search`` -> ``results`` (load, export).

Importing the package loads neither torch nor timm: :func:`compress`, :class:`Recipe` and :class:`Distill` are
imported on first use, so that ``autocomp --help`` and ``autocomp pareto`` answer at once.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from autocomp.errors import AutocompError, AutocompTypeError, AutocompWarning

if TYPE_CHECKING:
    from autocomp._compress import compress
    from autocomp.recipe import Distill, Recipe

__all__ = ["AutocompError", "AutocompTypeError", "AutocompWarning", "Recipe", "Distill", "compress", "load", "save",
           "load_preprocessing", "load_classes"]
__version__ = "0.1.0"

_ON_FIRST_USE = {"compress": "autocomp._compress", "Recipe": "autocomp.recipe", "Distill": "autocomp.recipe"}


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: the exports that need torch, and the submodules
    if name in _ON_FIRST_USE:
        value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # autocomp.ops ... after a bare `import autocomp`
    raise AttributeError(f"module 'autocomp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ON_FIRST_USE))


def load(path, *, base=None):  # noqa: ANN001, ANN201 - thin re-export, typed in autocomp.saving
    """Load a saved compressed model (a ``best/`` or exported folder) as a ready ``nn.Module``; ``base``: the
    uncompressed model, when the search was given it as an ``nn.Module``."""
    from autocomp.saving import load_model

    return load_model(path, base=base)


def save(path, model, recipe, *, base, preprocessing=None, classes=None):  # noqa: ANN001, ANN201 - typed in saving
    """Save a model compressed with ``recipe`` (by :func:`compress`, then distilled, say) as a folder :func:`load`
    reads: weights as safetensors, recipe.yaml, model.yaml. ``base``: what it was compressed from, the ``nn.Module``
    (``load`` then needs it back, as for a search given a module) or a :class:`~autocomp.models.ModelSpec` (a timm
    name or factory: the folder loads on its own); ``preprocessing`` (:class:`~autocomp.data.Preprocessing`) and
    ``classes`` (the class of each output) are written beside it when given."""
    from pathlib import Path

    from torch import nn

    from autocomp.errors import AutocompTypeError, shown
    from autocomp.models import ModelSpec
    from autocomp.recipe import Recipe
    from autocomp.saving import check_fits, save_model

    for name, value, kind, what in (("model", model, nn.Module, "the compressed nn.Module"),
                                    ("recipe", recipe, Recipe, "the autocomp.Recipe it was compressed with"),
                                    ("base", base, (nn.Module, ModelSpec), "the uncompressed nn.Module, or a "
                                     "ModelSpec")):
        if not isinstance(value, kind):
            raise AutocompTypeError(f"save's {name} must be {what}, got {type(value).__name__} {shown(value)}")
    check_fits(model, recipe, base)  # the folder loads: refused now, not when it is loaded
    save_model(Path(path), model, recipe, base, preprocessing=preprocessing, classes=classes)


def load_preprocessing(path):  # noqa: ANN001, ANN201 - thin re-export, typed in autocomp.saving
    """How a saved model's inputs are made (``.transform()`` turns a PIL image into one), or None."""
    from autocomp.saving import load_preprocessing as _load

    return _load(path)


def load_classes(path):  # noqa: ANN001, ANN201 - thin re-export, typed in autocomp.saving
    """The class of each output of a saved model, in order (an image folder's class folders), or None."""
    from autocomp.saving import load_classes as _load

    return _load(path)
