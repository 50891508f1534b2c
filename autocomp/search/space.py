"""A search space: per-block choices the controller samples, read from ``search_spaces/*.yaml``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from autocomp.errors import AutocompError
from autocomp.importance import HEAD_SCORES
from autocomp.ops.heads import PruneHeads
from autocomp.ops.quantize import WEIGHT_BITS, Quantize
from autocomp.recipe import Recipe

__all__ = ["SearchSpace", "load_space"]

FLOAT_BITS = 32


@dataclass(frozen=True)
class SearchSpace:
    """Choices sampled independently for every transformer block.

    Attributes:
        heads_keep: fractions of each block's heads to keep (rounded, at least one head).
        weight_bits: weight bit-widths; 32 leaves the block in fp32.
        head_importance: how heads are scored (``autocomp.importance.HEAD_SCORES``).
    """

    heads_keep: tuple[float, ...] = (1.0,)
    weight_bits: tuple[int, ...] = (FLOAT_BITS,)
    head_importance: str = "output_norm"

    def __post_init__(self) -> None:
        if not self.heads_keep or any(not 0 < f <= 1 for f in self.heads_keep):
            raise AutocompError(f"heads_keep must list fractions in (0, 1], got {list(self.heads_keep)}")
        allowed = (FLOAT_BITS, *WEIGHT_BITS)
        if not self.weight_bits or any(b not in allowed for b in self.weight_bits):
            raise AutocompError(f"weight_bits must list values from {list(allowed)}, got {list(self.weight_bits)}")
        if self.head_importance not in HEAD_SCORES:
            raise AutocompError(f"head_importance must be one of {sorted(HEAD_SCORES)}, got {self.head_importance!r}")

    def sample(self, trial: Any, heads_per_block: Sequence[int]) -> Recipe:
        """Ask an Optuna trial for one choice per block and knob; returns the recipe."""
        blocks = []
        for index, heads in enumerate(heads_per_block):
            block: dict[str, Any] = {}
            fraction = trial.suggest_categorical(f"b{index}.heads_keep", list(self.heads_keep))
            keep = max(1, round(fraction * heads))
            if keep < heads:
                block["prune_heads"] = PruneHeads(keep=keep, importance=self.head_importance)
            bits = trial.suggest_categorical(f"b{index}.weight_bits", list(self.weight_bits))
            if bits != FLOAT_BITS:
                block["quantize"] = Quantize(weight_bits=bits)
            blocks.append(block)
        return Recipe(blocks=tuple(blocks))


def load_space(path: str | Path) -> SearchSpace:
    """Read a search-space YAML; unknown keys and bad values are named with the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError:
        raise AutocompError(f"search space file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise AutocompError(f"search space {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise AutocompError(f"search space {path}: expected a mapping of knobs")
    allowed = [f.name for f in dataclasses.fields(SearchSpace)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise AutocompError(f"search space {path}: unknown key(s) {unknown}; allowed: {allowed}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return SearchSpace(**values)
    except AutocompError as exc:
        raise AutocompError(f"search space {path}: {exc}") from None
