"""Compression operators: one technique per module, each a frozen config dataclass and one ``apply`` function, all
listed in one table, :data:`OPERATORS` (name in a recipe -> config class, apply function; in application order).
:func:`autocomp.compress` applies a whole recipe."""

from __future__ import annotations

from autocomp.ops._base import CompressContext
from autocomp.ops._registry import OPERATORS, Operator, operator_of
from autocomp.ops.heads import PruneHeads
from autocomp.ops.lowrank import LowRank, LowRankLinear
from autocomp.ops.mlp import PruneMlp
from autocomp.ops.quantize import Int8Linear, Quantize
from autocomp.ops.tokens import ReduceTokens

__all__ = ["OPERATORS", "Operator", "operator_of", "CompressContext", "PruneHeads", "PruneMlp", "LowRank",
           "LowRankLinear", "ReduceTokens", "Quantize", "Int8Linear"]
