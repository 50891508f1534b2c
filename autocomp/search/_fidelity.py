"""Multi-fidelity: which candidates finish their distillation.

Every distilled candidate reports a short result first (part of its distillation, a validation subset; see
:func:`autocomp.search._objective.run_trial`). Only one that could still enter the front goes on: within budget, and
not dominated by another short result, one at most as slow and as large and more accurate by more than the slack
(the subset's noise). Optuna 5 cannot prune multi-objective trials, so the rule runs as a Ray Tune scheduler: it
sees each trial's intermediate result on the driver and stops the trial there.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from autocomp.search._objective import SHORT

__all__ = ["FrontRule", "FrontScheduler"]


class FrontRule:
    """Decides, from short results, which candidates go on.

    Args:
        slack: accuracy points a short score may trail one that dominates it and still go on.
        seen: short results ``(accuracy, latency_ms, memory_mb)`` of candidates within budget seen before (a
            resumed search's earlier trials).
    """

    def __init__(self, *, slack: float, seen: Iterable[tuple[float, float, float]] = ()) -> None:
        self.slack = slack
        self.seen: list[tuple[float, float, float]] = list(seen)
        self.stopped = self.promoted = 0

    def goes_on(self, result: Mapping[str, Any]) -> bool:
        """Whether the candidate of this short result finishes; remembers the result."""
        within = all(value <= 0 for key, value in result.items() if key.startswith("violation:"))
        if not within:  # an infeasible candidate's accuracy does not rank it: its violation does
            self.stopped += 1
            return False
        point = (result["short_accuracy"], result["latency_ms"], result["memory_mb"])
        dominated = any(accuracy > point[0] + self.slack and latency <= point[1] and memory <= point[2]
                        for accuracy, latency, memory in self.seen)
        self.seen.append(point)
        if dominated:
            self.stopped += 1
        else:
            self.promoted += 1
        return not dominated


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
