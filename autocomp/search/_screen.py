"""Predicted cost of a trial's recipe, and the screen that skips candidates predicted to be far over budget.

The roofline's milliseconds are not this machine's milliseconds (on a shared CPU the measured ones swing by several
times, and dispatch dominates small models), but its *ratios* between recipes are good. So a trial's latency is
predicted as::

    predicted_latency_ms = base_latency_ms * roofline(recipe) / roofline(identity)

anchored on the uncompressed model measured at the start of the run. Once ``CORRECT_AFTER`` trials are measured,
the :class:`~autocomp.costmodel.CorrectedCostModel` fitted on them predicts instead: it learns per operator group how
far the roofline is off here. It is fitted on measured latencies expressed in the roofline's units through the same
anchor (divided by ``base_latency_ms / roofline(identity)``), so that its starting point and prior (every scale 1,
no fixed cost) *are* the anchored ratio, and a few trials only move it where they disagree with it. Memory is
predicted directly: the cost model counts the bytes the compressed model will hold and allocate, which does not
depend on the machine's load.

The screen skips a candidate predicted over a limit by more than its margin: ``skip_margin`` (50 %) while the cost
model is unproven on this machine, and narrower once it has shown how close it comes. Each latency the corrected model
predicted before it was measured (latency pass and trials) is an error sample. A candidate predicted over a limit is
within it only if the model over-predicts it by that much, so the margin is the largest over-prediction among the
last ``TRACKED`` samples (at least ``FLOOR``; under-predictions, however large, only make such a candidate slower): a
candidate predicted further over would be within the limit only if the model erred by more than it has lately.
In session 16's benchmark at 0.6x (BENCHMARKS.md: 3 seeds, 48 trials) the fixed 50 % margin let five coarse draws
predicted 12-39 % over run, measure 0.63-0.84x and stop as over budget: trials spent on candidates the cost model
had already placed out of reach. Memory has a margin of its own, learnt the same way from the trials' measured
memory (bytes counted, not timed: its floor is ``MEMORY_FLOOR``). In session 18's benchmark at memory 0.5x, with one
margin learnt from latency alone, 7 of every 16 trials were coarse draws predicted 11-36 % over the memory limit,
which the cost model had predicted to within 0.01 %: each ran, measured over and stopped. In session 19's at 0.5x
latency, with the margin 1.5x the largest over-prediction and at least 10 %, 31 of 48 trials measured over the
limit, 29 of them candidates predicted 0.2-9 % over it by a model within 2 % of the measured latencies on average
(over-predicting by 4-6 % at most); of the trials predicted over the limit, one measured within it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from torch import nn

from autocomp.budget import TIMED, feasible, violations
from autocomp.costmodel import CorrectedCostModel, CostModel, Prediction, describe
from autocomp.errors import AutocompError
from autocomp.hardware import HardwareProfile
from autocomp.recipe import Recipe

__all__ = ["CostPredictor", "Screen", "Verdict", "CORRECT_AFTER", "MIN_MEASURED", "TRACKED", "PROVEN", "FLOOR",
           "MEMORY_FLOOR"]

MB = 1e6
CORRECT_AFTER = 5  # measured trials before the fitted correction replaces the anchored ratio
MIN_MEASURED = 1  # nothing is skipped before a trial was measured: the run keeps a closest candidate to report
TRACKED = 10  # the latest prediction errors the skip margin is learnt from
PROVEN = 3  # ... and how many it needs: fewer, and the configured margin holds
FLOOR = 0.05  # the narrowest learnt margin: timings swing by a few % (the learnt margin covers those it has seen)
MEMORY_FLOOR = 0.02  # ... for a limit counted, not timed (memory: weights' and activations' bytes; budget.TIMED)


class CostPredictor:
    """Latency (ms) and memory (MB) of recipes on the run's device, learning from measured trials.

    Args:
        base: the uncompressed model.
        profile: the device.
        base_latency_ms: the uncompressed model's latency, measured at the start of the run.
    """

    def __init__(self, *, base: nn.Module, profile: HardwareProfile, base_latency_ms: float) -> None:
        self._model = CostModel(description=describe(base), profile=profile)
        identity = self._model.predict(Recipe.identity(len(self._model.description.num_heads)))
        self._ms_per_unit = base_latency_ms / identity.latency_ms  # the anchor: measured ms per roofline ms
        self._correction = CorrectedCostModel()
        self._correction.add(identity, identity.latency_ms)
        self.measured = 0
        self.errors: list[float] = []  # log(predicted / measured) of latencies the corrected model predicted
        self.memory_errors: list[float] = []  # log(predicted / measured) of memory
        self.weights_errors: list[float] = []  # and of the weights alone (exact on PyTorch; a runtime's file may
        # hold what the cost model did not count, on a tiny model a few % of it)

    def prediction(self, recipe: Recipe) -> Prediction:
        """The cost model's own prediction (roofline terms per operator)."""
        return self._model.predict(recipe)

    def predict(self, recipe: Recipe) -> dict[str, float]:
        """``latency_ms``, ``memory_mb`` and ``weights_mb`` of ``recipe`` (see the module docstring for how latency is
        anchored).

        Raises:
            AutocompError: the recipe does not fit the model.
        """
        prediction = self._model.predict(recipe)
        units = self._correction.latency_ms(prediction) if self.measured >= CORRECT_AFTER else prediction.latency_ms
        return {"latency_ms": units * self._ms_per_unit, "memory_mb": prediction.memory_nbytes / MB,
                "weights_mb": prediction.weight_nbytes / MB}

    def observe(self, recipe: Recipe, latency_ms: float, memory_mb: float | None = None,
                weights_mb: float | None = None) -> None:
        """Learn from a measured trial (``memory_mb``, ``weights_mb``: its measured memory and weights, where
        measured)."""
        if self.measured >= CORRECT_AFTER and latency_ms > 0:
            self.errors.append(math.log(self.predict(recipe)["latency_ms"] / latency_ms))
        for key, value, errors in (("memory_mb", memory_mb, self.memory_errors),
                                   ("weights_mb", weights_mb, self.weights_errors)):
            if value is not None and value > 0:
                errors.append(math.log(self.predict(recipe)[key] / value))
        self._correction.add(self._model.predict(recipe), latency_ms / self._ms_per_unit)
        self.measured += 1


@dataclass(frozen=True)
class Verdict:
    """What the screen says of one recipe.

    Attributes:
        predicted: ``latency_ms`` and ``memory_mb`` (empty when the cost model cannot predict the recipe).
        skip_reason: why the candidate is skipped, or None when it is run.
        violations: the predicted :func:`~autocomp.budget.violations` of a skipped candidate (empty otherwise).
    """

    predicted: Mapping[str, float]
    skip_reason: str | None = None
    violations: Mapping[str, float] = dataclasses.field(default_factory=dict)


class Screen:
    """Skips candidates predicted to exceed a budget limit by more than a margin (0.25: 25 % over): ``margin``, or
    narrower once the cost model has proven closer (see the module docstring).

    Args:
        predictor: the run's cost predictor.
        limits: the absolute budget limits (``latency_ms``, ``memory_mb``, ``weights_mb``).
        margin: the widest margin: how far over a limit a prediction may be and the candidate still run; None never
            skips.
        uncompressed: the uncompressed model's cost measured at the start of the run (``latency_ms``,
            ``memory_mb``): a recipe that compresses nothing costs that, measured, not predicted, and is skipped
            where that is over a limit (it had run as a trial, a sampler's or coarse stage's draw).
    """

    def __init__(self, *, predictor: CostPredictor, limits: Mapping[str, float], margin: float | None,
                 uncompressed: Mapping[str, float] | None = None) -> None:
        self.predictor, self.limits, self.margin = predictor, dict(limits), margin
        self.uncompressed = None if uncompressed is None else {key: uncompressed[key] for key in self.limits}
        self.observed: list[list[Any]] = []  # [recipe as a dict, latency_ms, memory_mb, weights_mb] of each
        # measurement learnt

    def margin_now(self, key: str = "latency_ms") -> tuple[float | None, str]:
        """The margin in force for the limit ``key`` (``latency_ms``, ``memory_mb``, ``weights_mb``), and how it was
        set (for the skip reason)."""
        recent = {"memory_mb": self.predictor.memory_errors, "weights_mb": self.predictor.weights_errors}.get(
            key, self.predictor.errors)[-TRACKED:]
        if self.margin is None or len(recent) < PROVEN:
            return self.margin, ""
        worst = max(0.0, *recent)  # the largest over-prediction
        learnt = max(FLOOR if key in TIMED else MEMORY_FLOOR, math.exp(worst) - 1)
        if learnt >= self.margin:
            return self.margin, ""
        over = 100 * (math.exp(worst) - 1)
        return learnt, (f"; the cost model over-predicted the last {len(recent)} measured by at most {over:.0f}%"
                        if round(over) > 0 else f"; the cost model over-predicted none of the last {len(recent)} "
                        "measured")

    def judge(self, recipe: Recipe) -> Verdict:
        if self.margin is not None and self.uncompressed is not None and not any(recipe.blocks):
            over = violations(self.uncompressed, self.limits)
            if not feasible(over):
                worst = max(over, key=over.__getitem__)
                return Verdict(predicted=dict(self.uncompressed), violations=over,
                               skip_reason=f"it compresses nothing: the uncompressed model measured {worst} "
                                           f"{self.uncompressed[worst]:.4g} at the start of the run, "
                                           f"{100 * over[worst]:.0f}% over the limit {self.limits[worst]:.4g}")
        try:
            predicted = self.predictor.predict(recipe)
        except AutocompError:
            return Verdict(predicted={})  # the operators will refuse it in the trial, in their own words
        if self.margin is None or self.predictor.measured < MIN_MEASURED:
            return Verdict(predicted=predicted)
        over = violations(predicted, self.limits)
        margins = {key: self.margin_now(key) for key in over}
        beyond = [key for key in over if over[key] > margins[key][0]]
        if not beyond:
            return Verdict(predicted=predicted)
        worst = max(beyond, key=lambda key: over[key] - margins[key][0])
        margin, why = margins[worst]
        return Verdict(predicted=predicted, violations=over,
                       skip_reason=f"predicted {worst} {predicted[worst]:.4g} is {100 * over[worst]:.0f}% over the "
                                   f"limit {self.limits[worst]:.4g} (skip margin {100 * margin:.0f}%{why})")

    def observe(self, recipe: Recipe, latency_ms: float, memory_mb: float | None = None,
                weights_mb: float | None = None) -> None:
        self.predictor.observe(recipe, latency_ms, memory_mb, weights_mb)
        self.observed.append([recipe.to_dict(), latency_ms, memory_mb, weights_mb])

    def learn_again(self, observed: Sequence[Sequence[Any]]) -> None:
        """Learn again what an earlier run of the search learnt before its trials (the passes' and start points'
        measurements, :attr:`observed` then), so that a resumed search skips as the run would have gone on to."""
        for recipe, latency_ms, memory_mb, *weights_mb in observed:  # (runs before weights were learnt: 3 long)
            self.observe(Recipe.from_dict(recipe), latency_ms, memory_mb, *weights_mb)
