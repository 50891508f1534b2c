"""MLP neuron pruning: the pruned hidden neurons are removed from ``fc1``'s rows, ``fc2``'s columns and any
per-neuron layer between them (``mlp.norm``); the block keeps timm's ``Mlp`` layout with a narrower hidden layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import Mlp
from torch import nn

from autocomp.errors import AutocompError
from autocomp.importance import NEURON_SCORES, neuron_scores
from autocomp.models import vit_blocks
from autocomp.ops._base import CompressContext, observe
from autocomp.ops._surgery import slice_linear

__all__ = ["PruneMlp", "keep_neurons", "kept_count"]


@dataclass(frozen=True)
class PruneMlp:
    """Keep a fraction of each MLP's hidden neurons, chosen by ``importance``.

    Attributes:
        keep: fraction of ``fc1``'s output neurons kept, in (0, 1]; rounded to a whole count, at least 1.
        importance: neuron score, one of ``autocomp.importance.NEURON_SCORES``.
    """

    keep: float
    importance: str = "activation"

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or not 0 < self.keep <= 1:
            raise AutocompError(f"keep must be the fraction of MLP neurons kept, in (0, 1], got {self.keep!r}")
        object.__setattr__(self, "keep", float(self.keep))
        if self.importance not in NEURON_SCORES:
            raise AutocompError(f"importance must be one of {sorted(NEURON_SCORES)}, got {self.importance!r}")

    @property
    def reads_calibration(self) -> bool:
        """Whether the neurons kept depend on the calibration images (a data-aware score)."""
        return self.importance == "activation"

    def tag(self) -> str:
        return f"m{self.keep:g}"


def kept_count(keep: float, hidden: int) -> int:
    """How many of ``hidden`` neurons a ``keep`` fraction keeps (rounded, at least one)."""
    return max(1, round(keep * hidden))


def keep_neurons(mlp: nn.Module, kept: torch.Tensor) -> None:
    """Physically keep only hidden neurons ``kept`` (indices, any order) of a timm ``Mlp``."""
    kept = torch.sort(kept).values
    mlp.fc1 = slice_linear(mlp.fc1, rows=kept)
    mlp.fc2 = slice_linear(mlp.fc2, cols=kept)
    if isinstance(mlp.norm, nn.LayerNorm):
        _slice_layer_norm(mlp.norm, kept)


def _slice_layer_norm(norm: nn.LayerNorm, kept: torch.Tensor) -> None:
    for name in ("weight", "bias"):
        tensor = getattr(norm, name)
        if tensor is not None:
            setattr(norm, name, nn.Parameter(tensor.detach()[kept].clone()))
    norm.normalized_shape = (len(kept),)


def _check_mlp(mlp: nn.Module, index: int) -> None:
    """Refuse MLPs whose hidden layer is not simply fc1 -> elementwise act -> (LayerNorm) -> fc2."""
    if not isinstance(mlp, Mlp):
        raise AutocompError(f"block {index}: prune_mlp supports timm's Mlp (fc1 -> act -> norm -> fc2), this block "
                            f"has a {type(mlp).__name__}; leave prune_mlp out of this model's recipe")
    for name in ("fc1", "fc2"):
        layer = getattr(mlp, name)
        if not isinstance(layer, nn.Linear):
            raise AutocompError(f"block {index}: mlp.{name} is a {type(layer).__name__}, not an nn.Linear; "
                                "prune_mlp must run on the uncompressed MLP (before low_rank and quantize)")
    if not isinstance(mlp.norm, (nn.LayerNorm, nn.Identity)):
        raise AutocompError(f"block {index}: cannot prune MLP neurons through a {type(mlp.norm).__name__} "
                            "mlp.norm; prune_mlp supports LayerNorm or no norm there")


def apply(model: nn.Module, configs: dict[int, PruneMlp], context: CompressContext) -> None:
    blocks = vit_blocks(model)
    counts = {}
    for index, config in configs.items():
        _check_mlp(blocks[index].mlp, index)
        hidden = blocks[index].mlp.fc1.out_features
        count = kept_count(config.keep, hidden)
        if count < hidden:
            counts[index] = count
    scored = [i for i in counts if configs[i].importance == "activation"]
    activations = {} if context.structure_only else _capture_mean_activations(model, blocks, scored, context)
    for index, count in counts.items():
        mlp = blocks[index].mlp
        if context.structure_only:
            kept = torch.arange(count)
        else:
            scores = neuron_scores(configs[index].importance, mlp, activations.get(index))
            kept = torch.topk(scores, count).indices
        keep_neurons(mlp, kept)


@torch.no_grad()
def _capture_mean_activations(model: nn.Module, blocks: list[nn.Module], wanted: list[int],
                              context: CompressContext) -> dict[int, torch.Tensor]:
    """One forward pass of the calibration images, averaging each wanted block's |activation| per hidden neuron.

    The hooks reduce as they go, so memory stays one vector per block whatever the calibration size.
    """
    if not wanted or context.calibration is None:
        return {}
    sums: dict[int, torch.Tensor] = {}
    tokens: dict[int, int] = {}

    def record(index: int, output: torch.Tensor) -> None:
        flat = output.reshape(-1, output.shape[-1]).abs().double()
        sums[index] = sums.get(index, 0) + flat.sum(dim=0)
        tokens[index] = tokens.get(index, 0) + flat.shape[0]

    observe(model, context.calibration, {i: blocks[i].mlp.act for i in wanted}, record, what="output")
    return {i: (sums[i] / tokens[i]).float() for i in sums}
