"""The quantize operator's config: which bit-widths, groups, scales and layers (:class:`Quantize`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from autocomp.errors import AutocompError
from autocomp.ops._quantizers import SCALE_METHODS

__all__ = ["Quantize", "WEIGHT_BITS", "ACT_BITS", "MIN_GROUP_SIZE", "NORM_FED"]

WEIGHT_BITS = (16, 8, 6, 4, 3, 2)
ACT_BITS = (None, 8)
MIN_GROUP_SIZE = 8
NORM_FED = ("attn.qkv", "mlp.fc1")  # the Linears a timm Block's LayerNorms feed: where smoothing folds a scale


@dataclass(frozen=True)
class Quantize:
    """Quantize the Linears of a block (all, or those ``layers`` names).

    Attributes:
        weight_bits: bits per weight, one of ``WEIGHT_BITS`` (16 = bf16 half precision).
        group_size: input weights sharing one fp16 scale below 8 bits (8 bits: one scale per output channel; 16
            bits: no scale). A row whose length is not a multiple keeps a shorter last group.
        scale: how scales are chosen, one of ``SCALE_METHODS`` (``minmax``, ``percentile``, ``mse``).
        act_bits: None (weights only; 8-bit weights still quantize activations per batch in their kernel) or 8:
            static uint8 activations, one scale per layer input, calibrated on the calibration images.
        smooth: None, or the migration strength ``alpha`` in (0, 1] of SmoothQuant (Xiao et al. 2023), 8-bit
            weights only: a Linear fed by its block's LayerNorm (``qkv`` by ``norm1``, ``fc1`` by ``norm2``, or the
            first factor of their low-rank form) has each input channel ``j`` divided by
            ``s_j = max|x_j| ** alpha / max|W[:, j]| ** (1 - alpha)`` (``x`` over the calibration images) and its
            weight column multiplied by it. The division is folded into the LayerNorm's weight and bias, so the
            float model computes the same function and nothing is added at run time, but the outlier channels of a
            pretrained ViT's LayerNorm outputs no longer set the range that every other channel is quantized on (the
            per-tensor activation scale, static or dynamic). Linears fed by anything else are quantized unsmoothed.
        layers: None for every Linear of the block, or which: a name matches a Linear whose path in the block has
            it as a part (``qkv`` matches ``attn.qkv`` and both factors of a low-rank ``attn.qkv``), and ``re:`` plus
            a regular expression matches whole paths (``re:mlp[.].*``). E.g. ``[qkv, fc1]``: int8 qkv and fc1, fp32
            proj and fc2.
    """

    weight_bits: int = 8
    group_size: int = 64
    scale: str = "minmax"
    act_bits: int | None = None
    smooth: float | None = None
    layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.weight_bits) or self.weight_bits not in WEIGHT_BITS:
            raise AutocompError(f"weight_bits must be one of {list(WEIGHT_BITS)}, got {self.weight_bits!r}")
        if not _is_int(self.group_size) or self.group_size < MIN_GROUP_SIZE:
            raise AutocompError(f"group_size must be a whole number >= {MIN_GROUP_SIZE}, got {self.group_size!r}")
        if self.scale not in SCALE_METHODS:
            raise AutocompError(f"scale must be one of {list(SCALE_METHODS)}, got {self.scale!r}")
        if self.act_bits is not None and (not _is_int(self.act_bits) or self.act_bits not in ACT_BITS):
            raise AutocompError(f"act_bits must be one of {list(ACT_BITS)} (null: weights only), got {self.act_bits!r}")
        if self.smooth is not None:
            if isinstance(self.smooth, bool) or not isinstance(self.smooth, (int, float)) or not 0 < self.smooth <= 1:
                raise AutocompError(f"smooth must be null (off) or a migration strength in (0, 1], e.g. 0.5, got "
                                    f"{self.smooth!r}")
            if self.weight_bits != 8:
                raise AutocompError(f"smooth={self.smooth} moves activation outliers into the weights, which only "
                                    f"8-bit weights quantize activations for; weight_bits is {self.weight_bits}: "
                                    "leave smooth out")
            object.__setattr__(self, "smooth", float(self.smooth))
        if self.layers is not None:
            if (not isinstance(self.layers, (list, tuple)) or not self.layers
                    or not all(isinstance(e, str) and e for e in self.layers)):
                raise AutocompError(f"layers must be null (every Linear) or a non-empty list of layer names or "
                                    f"'re:' patterns, e.g. [qkv, fc1], got {self.layers!r}")
            for entry in self.layers:
                if entry.startswith("re:"):
                    try:
                        re.compile(entry[3:])
                    except re.error as exc:
                        raise AutocompError(f"layers: {entry!r} is not a valid regular expression: {exc}") from None
            object.__setattr__(self, "layers", tuple(self.layers))  # YAML gives a list; a tuple stays hashable

    def targets(self, path: str) -> bool:
        """Whether this config quantizes the Linear at ``path`` in its block (``attn.qkv``, ``mlp.fc1``, or
        ``attn.qkv.first`` for a low-rank factor); the operator and the cost model both ask this."""
        if self.layers is None:
            return True
        parts = path.split(".")
        return any(re.fullmatch(e[3:], path) is not None if e.startswith("re:") else e in parts for e in self.layers)

    @property
    def weight_group(self) -> int | None:
        """Input weights per scale; None for one scale per output channel (8 bits) or none at all (16 bits)."""
        return self.group_size if self.weight_bits < 8 else None

    @property
    def reads_norm_outputs(self) -> bool:
        """Whether the layers include one a LayerNorm feeds (``NORM_FED``, or the first factor of its low-rank form):
        the only ones smoothing changes."""
        return any(self.targets(path) for layer in NORM_FED for path in (layer, layer + ".first"))

    @property
    def smooths(self) -> bool:
        """Whether ``smooth`` changes anything: it is set and the layers include one a LayerNorm feeds."""
        return self.smooth is not None and self.reads_norm_outputs

    @property
    def reads_calibration(self) -> bool:
        """Whether the layers depend on the calibration images (static activation ranges, smoothing scales)."""
        return bool(self.act_bits) or self.smooths

    def tag(self) -> str:
        """E.g. ``w8``, ``w4g64``, ``w3g32-mse``, ``w8a8``, ``w8a8-sq`` (smoothed at alpha 0.5), ``w8-sq0.8``."""
        text = f"w{self.weight_bits}" + (f"g{self.group_size}" if self.weight_bits < 8 else "")
        if self.scale != "minmax" and self.weight_bits <= 8:
            text += f"-{self.scale}"
        text += f"a{self.act_bits}" if self.act_bits else ""
        if self.smooth is not None:
            text += "-sq" + ("" if self.smooth == 0.5 else f"{self.smooth:g}")
        return text + ("[" + ",".join(self.layers) + "]" if self.layers is not None else "")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
