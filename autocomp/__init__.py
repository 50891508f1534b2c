"""autocomp: find the best compressed Vision Transformer for a device budget.

The pipeline, in the layout of this package: ``recipe`` -> ``ops`` (compress) -> ``measure`` / ``hardware`` ->
``search`` -> ``results`` (load, export).
"""

from __future__ import annotations

from autocomp.compress import compress
from autocomp.errors import AutocompError
from autocomp.recipe import Recipe

__all__ = ["AutocompError", "Recipe", "compress", "load"]
__version__ = "0.1.0"


def load(path):  # noqa: ANN001, ANN201 - thin re-export, typed in autocomp.saving
    """Load a saved compressed model (a ``best/`` or exported folder) as a ready ``nn.Module``."""
    from autocomp.saving import load_model

    return load_model(path)
