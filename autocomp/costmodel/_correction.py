"""A measured correction of the roofline, and the statistics that say how good a latency predictor is.

The roofline gets the shape of the cost right and the constants wrong: achieved throughput differs per kernel, small
ops are dominated by dispatch, caches hide memory traffic. The correction keeps the roofline's per-operator terms
and learns one non-negative scale per operator group (``linear.int8``, ``attention.fp32``, ``norm`` ...), one for
the per-op overhead, and a fixed per-forward cost::

    latency = sum_g scale_g * roofline_time_g + scale_overhead * overhead + fixed_ms

by least squares on *relative* errors (each trial's residual divided by its measured latency), pulled towards the
uncorrected model (scales 1, fixed 0) with weight ``prior_weight``, so a few trials cannot swing it far. A group's
scale is only identifiable when its time varies across the measured trials independently of the others; groups that
barely vary (the stem, the head) trade off against the fixed cost, and the prior decides between them. The total is
what the correction is for, and :meth:`CorrectedCostModel.fidelity` measures exactly that.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Sequence

import numpy as np

from autocomp.errors import AutocompError

if TYPE_CHECKING:
    from autocomp.costmodel import Prediction

__all__ = ["CorrectedCostModel", "fidelity", "OVERHEAD", "FIXED"]

OVERHEAD, FIXED = "overhead", "fixed_ms"
WITHIN = 0.10


def fidelity(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """How well ``predicted`` latencies match ``measured`` ones.

    Returns:
        ``n``; ``spearman``: rank correlation (what a search needs: the right order; nan below 2 points or when
        one side is constant); ``mape``: mean absolute percentage error, as a fraction; ``within_10pct``: share of
        predictions within ±10 % of the measurement; ``median_ratio``: median of predicted / measured (a
        systematic bias shows here); ``max_ratio``: the largest predicted / measured (the worst over-prediction,
        which decides whether a candidate within budget is skipped as predicted over it).
    """
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if p.shape != m.shape or p.ndim != 1:
        raise AutocompError(f"fidelity needs two equally long lists, got {p.shape} and {m.shape}")
    if len(m) == 0:
        raise AutocompError("fidelity needs at least one (predicted, measured) pair")
    if np.any(m <= 0):
        raise AutocompError("measured latencies must be positive")
    error = np.abs(p - m) / m
    return {"n": float(len(m)), "spearman": _spearman(p, m), "mape": float(error.mean()),
            "within_10pct": float(np.mean(error <= WITHIN + 1e-12)), "median_ratio": float(np.median(p / m)),
            "max_ratio": float(np.max(p / m))}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation; nan below 2 points or when one side is constant (scipy would warn and return nan)."""
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    import scipy.stats  # here, not at the top: the trials' Ray workers import this module and never need scipy

    return float(scipy.stats.spearmanr(a, b).statistic)


def _features(prediction: Prediction) -> dict[str, float]:
    """Roofline milliseconds per operator group, the overhead milliseconds, and 1 ms for the fixed cost."""
    features: dict[str, float] = defaultdict(float)
    for op in prediction.ops:
        features[op.group] += max(op.compute_ms, op.memory_ms)
        features[OVERHEAD] += op.overhead_ms
    features[FIXED] = 1.0
    return dict(features)


class CorrectedCostModel:
    """The roofline's latency, corrected from (prediction, measured latency) pairs.

    Args:
        prior_weight: how strongly the scales stay at 1 (and the fixed cost at 0); in units of one trial's squared
            relative error per unit of scale.
    """

    def __init__(self, *, prior_weight: float = 0.05) -> None:
        if not prior_weight > 0:
            raise AutocompError(f"prior_weight must be positive, got {prior_weight!r}")
        self.prior_weight = prior_weight
        self._features: list[dict[str, float]] = []
        self._measured: list[float] = []
        self.scales: dict[str, float] = {}

    def add(self, prediction: Prediction, measured_ms: float) -> None:
        """Record one measured trial and refit."""
        if not measured_ms > 0:
            raise AutocompError(f"measured latency must be positive, got {measured_ms!r}")
        self._features.append(_features(prediction))
        self._measured.append(float(measured_ms))
        self.scales = self._fit(self._features, self._measured)

    def __len__(self) -> int:
        return len(self._measured)

    def latency_ms(self, prediction: Prediction) -> float:
        """The corrected latency of ``prediction`` (the roofline's own before any trial is added)."""
        return _apply(self.scales, _features(prediction))

    def fidelity(self) -> dict[str, float]:
        """Leave-one-out error of the correction on the trials added so far: each trial predicted by a fit to
        the others (an in-sample error would flatter it). Uses :func:`fidelity`."""
        if len(self) < 2:
            raise AutocompError("the correction's error needs at least 2 measured trials")
        predicted = []
        for left_out in range(len(self)):
            keep = [i for i in range(len(self)) if i != left_out]
            scales = self._fit([self._features[i] for i in keep], [self._measured[i] for i in keep])
            predicted.append(_apply(scales, self._features[left_out]))
        return fidelity(predicted, self._measured)

    def _fit(self, features: list[dict[str, float]], measured: list[float]) -> dict[str, float]:
        names = sorted({name for row in features for name in row})
        prior = np.array([0.0 if name == FIXED else 1.0 for name in names])
        target = np.asarray(measured)
        design = np.array([[row.get(name, 0.0) for name in names] for row in features]) / target[:, None]
        root = math.sqrt(self.prior_weight)
        design = np.vstack([design, root * np.eye(len(names))])
        goal = np.concatenate([np.ones(len(target)), root * prior])
        import scipy.optimize  # see _spearman

        solution, _ = scipy.optimize.nnls(design, goal)  # the ridge rows make the solution unique
        return {name: float(x) for name, x in zip(names, solution, strict=True)}


def _apply(scales: dict[str, float], features: dict[str, float]) -> float:
    return sum(value * scales.get(name, 0.0 if name == FIXED else 1.0) for name, value in features.items())
