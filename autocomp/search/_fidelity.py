"""Multi-fidelity: which candidates finish their distillation.

Every distilled candidate reports a short result first (part of its distillation, a validation subset; see
:func:`autocomp.search._objective.run_trial`). Only one that could still enter the front goes on: within budget, and
not dominated by another short result, one at most as slow and as large and more accurate by more than the subset's
noise: one standard deviation of the difference of two accuracies measured on that many images, or the slack if it is
larger. On 1,000 images near 87% that is 1.5 points; a fixed 0.5 stopped the best recipe of a search (uniform rank
0.25 on the wide benchmark model, 86.1 short; 87.54-87.88 in full in other searches) behind a higher short score.
Optuna 5 cannot prune multi-objective trials, so the rule runs as a Ray Tune scheduler: it sees each trial's
intermediate result on the driver and stops the trial there.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from autocomp.search._objective import SHORT

__all__ = ["FrontRule", "FrontScheduler"]


class FrontRule:
    """Decides, from short results, which candidates go on.

    Args:
        slack: accuracy points a short score may always trail one that dominates it and still go on.
        images: how many validation images a short score is measured on (its noise); None: the slack alone.
        seen: short results ``(accuracy, latency_ms, memory_mb)`` of candidates within budget seen before (a
            resumed search's earlier trials).
    """

    def __init__(self, *, slack: float, images: int | None = None,
                 seen: Iterable[tuple[float, float, float]] = ()) -> None:
        self.slack, self.images = slack, images
        self.seen: list[tuple[float, float, float]] = list(seen)
        self.stopped = self.promoted = 0

    def goes_on(self, result: Mapping[str, Any]) -> bool:
        """Whether the candidate of this short result finishes; remembers the result."""
        within = all(value <= 0 for key, value in result.items() if key.startswith("violation:"))
        if not within:  # an infeasible candidate's accuracy does not rank it: its violation does
            self.stopped += 1
            return False
        point = (result["short_accuracy"], result["latency_ms"], result["memory_mb"])
        dominated = any(accuracy > point[0] + self.margin(accuracy, point[0]) and latency <= point[1]
                        and memory <= point[2] for accuracy, latency, memory in self.seen)
        self.seen.append(point)
        if dominated:
            self.stopped += 1
        else:
            self.promoted += 1
        return not dominated

    def margin(self, a: float, b: float) -> float:
        """Accuracy points (in %) by which a short score must beat another to dominate it: the slack, or one
        standard deviation of the difference of two binomial accuracies ``a`` and ``b`` on ``images`` images."""
        if not self.images:
            return self.slack
        pa, pb = min(max(a / 100, 0.0), 1.0), min(max(b / 100, 0.0), 1.0)
        return max(self.slack, 100 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / self.images))


class FrontScheduler(FIFOScheduler):
    """Ray Tune's FIFO scheduling, with a trial stopped at its short result when :class:`FrontRule` says so (its
    short result is then its last: the searcher is told that one)."""

    def __init__(self, rule: FrontRule) -> None:
        super().__init__()
        self.rule = rule

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("fidelity") != SHORT:
            return TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE if self.rule.goes_on(result) else TrialScheduler.STOP
