"""The operator registry: one table, read by ``compress``, the recipe loader, the search space and the cost model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from autocomp.ops import heads, lowrank, mlp, quantize, tokens
from autocomp.ops._base import CompressContext

__all__ = ["Operator", "OPERATORS", "operator_of"]


@dataclass(frozen=True)
class Operator:
    """One compression technique.

    Attributes:
        name: its key in a recipe's block (YAML).
        config_cls: frozen dataclass of its settings, validated in ``__post_init__``.
        apply: ``apply(model, {block_index: config}, context)``; changes the model in place.
    """

    name: str
    config_cls: type
    apply: Callable[[nn.Module, dict[int, Any], CompressContext], None]


# In the order they are applied, whatever the order in a recipe: pruning first, so that importance scores and SVDs
# see only what stays; token reduction after the weight surgery (it changes no weights); quantization last, so that
# it sees the final shapes (it also quantizes the two factors of a low-rank layer).
OPERATORS: dict[str, Operator] = {op.name: op for op in (
    Operator("prune_heads", heads.PruneHeads, heads.apply),
    Operator("prune_mlp", mlp.PruneMlp, mlp.apply),
    Operator("low_rank", lowrank.LowRank, lowrank.apply),
    Operator("reduce_tokens", tokens.ReduceTokens, tokens.apply),
    Operator("quantize", quantize.Quantize, quantize.apply),
)}


def operator_of(config: Any) -> Operator:
    """The operator whose config ``config`` is."""
    for operator in OPERATORS.values():
        if type(config) is operator.config_cls:
            return operator
    raise TypeError(f"{type(config).__name__} is not the config of an operator; known: "
                    f"{[op.config_cls.__name__ for op in OPERATORS.values()]}")
