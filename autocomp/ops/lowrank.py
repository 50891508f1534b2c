"""Low-rank factorization: a block's Linear ``W`` (out x in) becomes two thin Linears, ``in -> r`` then ``r -> out``,
from a truncated SVD. Plain SVD keeps the weight closest to ``W``; whitened SVD keeps the layer whose outputs on the
calibration data are closest to the original outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp.models import vit_blocks
from autocomp.ops._base import CompressContext, observe

__all__ = ["LowRank", "LowRankLinear", "LOW_RANK_LAYERS", "LOW_RANK_METHODS", "low_rank_factors", "useful_rank"]

LOW_RANK_LAYERS = {"qkv": ("attn", "qkv"), "proj": ("attn", "proj"), "fc1": ("mlp", "fc1"), "fc2": ("mlp", "fc2")}
LOW_RANK_METHODS = ("svd", "whitened")

# Whitening adds RIDGE * (mean input energy) to X^T X / n: it keeps the Cholesky factor invertible when some input
# direction never occurs in the calibration data, and it makes the factors also fit the weights in those directions
# instead of leaving them arbitrary (the objective becomes output error + RIDGE-weighted weight error).
RIDGE = 1e-2


@dataclass(frozen=True)
class LowRank:
    """Factor some Linears of a block into two thin ones.

    Attributes:
        rank: fraction of each layer's full rank ``min(in, out)`` kept, in (0, 1]; 1.0 leaves the layers as they are.
        layers: which Linears, from ``LOW_RANK_LAYERS`` (``qkv``, ``proj``, ``fc1``, ``fc2``).
        method: ``svd`` (data-free) or ``whitened`` (fits the outputs on calibration data).
    """

    rank: float
    layers: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
    method: str = "svd"

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, float)) or not 0 < self.rank <= 1:
            raise AutocompError(f"rank must be the fraction of each layer's full rank kept, in (0, 1], "
                                f"got {self.rank!r}")
        object.__setattr__(self, "rank", float(self.rank))
        allowed = list(LOW_RANK_LAYERS)
        if not isinstance(self.layers, (list, tuple)) or not self.layers:
            raise AutocompError(f"layers must be a non-empty list of layer names from {allowed}, got {self.layers!r}")
        unknown = [name for name in self.layers if not isinstance(name, str) or name not in LOW_RANK_LAYERS]
        if unknown or len(set(self.layers)) != len(self.layers):
            raise AutocompError(f"layers must name each of {allowed} at most once, got {list(self.layers)!r}")
        object.__setattr__(self, "layers", tuple(self.layers))  # YAML gives a list; a tuple keeps the config hashable
        if self.method not in LOW_RANK_METHODS:
            raise AutocompError(f"method must be one of {list(LOW_RANK_METHODS)}, got {self.method!r}")

    @property
    def reads_calibration(self) -> bool:
        """Whether the factors depend on the calibration images (whitened by their activations)."""
        return self.method == "whitened"

    def tag(self) -> str:
        tag = f"r{self.rank:g}" + ("w" if self.method == "whitened" else "")
        if self.layers != LowRank.layers:
            tag += "[" + ",".join(self.layers) + "]"
        return tag


class LowRankLinear(nn.Module):
    """``second(first(x))``: a Linear of rank ``rank`` held as ``first`` (in -> rank, no bias) and ``second``
    (rank -> out, with the original bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        # skip_init: the factors are always filled in afterwards (SVD or a state dict)
        self.first = nn.utils.skip_init(nn.Linear, in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.utils.skip_init(nn.Linear, rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, *, gram: torch.Tensor | None = None) -> LowRankLinear:
        """The rank-``rank`` factorization of ``linear``; whitened by ``gram`` (its inputs' ``X^T X / n``) if given."""
        weight = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                     device=weight.device, dtype=weight.dtype)
        first, second = low_rank_factors(weight, rank, gram=gram)
        with torch.no_grad():
            module.first.weight.copy_(first)
            module.second.weight.copy_(second)
            if linear.bias is not None:
                module.second.bias.copy_(linear.bias)
        return module

    # Read from the children, so they stay true if a later operator (quantize) replaces them.
    @property
    def in_features(self) -> int:
        return self.first.in_features

    @property
    def out_features(self) -> int:
        return self.second.out_features

    @property
    def rank(self) -> int:
        return self.second.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def low_rank_factors(weight: torch.Tensor, rank: int, *, gram: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``first`` (rank x in) and ``second`` (out x rank) with ``second @ first`` close to ``weight``.

    Without ``gram`` this is the truncated SVD ``U_r S_r V_r^T``, the best rank-``rank`` weight. With ``gram`` =
    ``X^T X / n`` of the layer's inputs ``X`` it minimises the output error ``|X W^T - X (second @ first)^T|``: with
    ``gram = L L^T`` (Cholesky), that error is ``|(W - second @ first) L|``, so the SVD is taken of ``W L`` and
    ``L^{-1}`` is folded back into ``first``. ``sqrt(S_r)`` goes to each factor.
    """
    matrix = weight.double()
    if gram is not None:
        gram = gram.double()
        ridge = RIDGE * gram.diagonal().mean().clamp(min=1e-12)
        chol = torch.linalg.cholesky(gram + ridge * torch.eye(len(gram), dtype=gram.dtype, device=gram.device))
        matrix = matrix @ chol
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    right = vh[:rank]
    if gram is not None:
        right = torch.linalg.solve_triangular(chol, right, upper=False, left=False)  # right @ L^{-1}
    return (root[:, None] * right).to(weight.dtype), (u[:, :rank] * root).to(weight.dtype)


def useful_rank(in_features: int, out_features: int) -> int:
    """The largest rank whose two factors hold fewer weights than the full ``in x out`` matrix (0 if none)."""
    return -(-in_features * out_features // (in_features + out_features)) - 1


def _layer(block: nn.Module, name: str, index: int) -> nn.Linear:
    parent, attr = LOW_RANK_LAYERS[name]
    layer = getattr(getattr(block, parent), attr)
    if not isinstance(layer, nn.Linear):
        raise AutocompError(f"block {index}: {parent}.{attr} is a {type(layer).__name__}, not an nn.Linear; "
                            f"low_rank factors each layer once, before quantize; leave {name!r} out of layers")
    return layer


def checked_rank(config: LowRank, layer: nn.Linear, index: int, name: str) -> int:
    """The rank ``config.rank`` gives ``layer``, refused unless the two factors are smaller than the layer."""
    full = min(layer.in_features, layer.out_features)
    rank = max(1, round(config.rank * full))
    size = layer.in_features * layer.out_features
    if rank * (layer.in_features + layer.out_features) < size:
        return rank
    best = useful_rank(layer.in_features, layer.out_features)
    fix = (f"use rank <= {math.floor(1000 * best / full) / 1000} for this layer" if best > 0
           else "no rank makes this layer smaller")
    raise AutocompError(f"block {index}: low_rank rank={config.rank} keeps {rank} of {full} ranks of {name} "
                        f"({layer.in_features} -> {layer.out_features}), whose factors would hold "
                        f"{rank * (layer.in_features + layer.out_features)} weights against {size} for the layer "
                        f"itself; {fix}, or leave {name!r} out of layers (lowrank_layers in a search "
                        "space)")


def layer_ranks(config: LowRank, block: nn.Module, index: int) -> dict[str, int]:
    """The rank ``config`` gives each of its layers in ``block`` (block ``index`` of its model); none at rank 1.

    Raises:
        AutocompError: a layer it cannot factorize (:func:`checked_rank`, :func:`_layer`).
    """
    if config.rank >= 1:
        return {}
    return {name: checked_rank(config, _layer(block, name, index), index, name) for name in config.layers}


def refusal(config: LowRank, block: nn.Module, index: int) -> str | None:
    """Why ``config`` cannot factorize ``block``: the first of its layers it refuses, or None where it takes them."""
    try:
        layer_ranks(config, block, index)
    except AutocompError as exc:
        return str(exc)
    return None


def apply(model: nn.Module, configs: dict[int, LowRank], context: CompressContext) -> None:
    blocks = vit_blocks(model)
    ranks = {(index, name): rank for index, config in configs.items()
             for name, rank in layer_ranks(config, blocks[index], index).items()}
    whitened = [key for key in ranks if configs[key[0]].method == "whitened"]
    if whitened and context.calibration is None and not context.structure_only:
        raise AutocompError("low_rank method 'whitened' needs calibration data; pass calibration images or use "
                            "method 'svd'")
    grams = {} if context.structure_only else _capture_input_grams(model, blocks, whitened, context)
    for (index, name), rank in ranks.items():
        parent, attr = LOW_RANK_LAYERS[name]
        module = getattr(blocks[index], parent)
        layer = getattr(module, attr)
        if context.structure_only:
            weight = layer.weight
            factored = LowRankLinear(layer.in_features, layer.out_features, rank, bias=layer.bias is not None,
                                     device=weight.device, dtype=weight.dtype)
        else:
            factored = LowRankLinear.from_linear(layer, rank, gram=grams.get((index, name)))
        setattr(module, attr, factored)


@torch.no_grad()
def _capture_input_grams(model: nn.Module, blocks: list[nn.Module], wanted: list[tuple[int, str]],
                         context: CompressContext) -> dict[tuple[int, str], torch.Tensor]:
    """One forward pass of the calibration images, giving ``X^T X / n`` of each wanted layer's inputs ``X``.

    The hooks reduce as they go, so memory stays one ``in x in`` matrix per layer whatever the calibration size.
    """
    if not wanted:
        return {}
    sums: dict[tuple[int, str], torch.Tensor] = {}
    rows: dict[tuple[int, str], int] = {}

    def record(key: tuple[int, str], inputs: torch.Tensor) -> None:
        flat = inputs.reshape(-1, inputs.shape[-1]).double()
        sums[key] = sums.get(key, 0) + flat.T @ flat
        rows[key] = rows.get(key, 0) + flat.shape[0]

    layers = {(index, name): getattr(getattr(blocks[index], LOW_RANK_LAYERS[name][0]), LOW_RANK_LAYERS[name][1])
              for index, name in wanted}
    observe(model, context.calibration, layers, record)
    return {key: sums[key] / rows[key] for key in sums}
