"""autocomp: find the best compressed Vision Transformer for a device budget.

The pipeline, in the layout of this package: ``recipe`` -> ``ops`` (compress) -> ``measure`` / ``hardware`` ->
``search`` -> ``results`` (load, export).
"""

from __future__ import annotations

from autocomp.compress import compress
from autocomp.errors import AutocompError
from autocomp.recipe import Distill, Recipe

__all__ = ["AutocompError", "Recipe", "Distill", "compress", "load", "load_preprocessing"]
__version__ = "0.1.0"


def load(path, *, base=None):  # noqa: ANN001, ANN201 - thin re-export, typed in autocomp.saving
    """Load a saved compressed model (a ``best/`` or exported folder) as a ready ``nn.Module``; ``base``: the
    uncompressed model, when the search was given it as an ``nn.Module``."""
    from autocomp.saving import load_model

    return load_model(path, base=base)


def load_preprocessing(path):  # noqa: ANN001, ANN201 - thin re-export, typed in autocomp.saving
    """How a saved model's inputs are made (``.transform()`` turns a PIL image into one), or None."""
    from autocomp.saving import load_preprocessing as _load

    return _load(path)
