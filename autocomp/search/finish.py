"""The end of a search: final results, the summary, and the best model rebuilt, checked and saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from torch import nn

from autocomp.config import JobConfig
from autocomp.data import Splits
from autocomp.recipe import Recipe
from autocomp.results import TrialRow, best_feasible, closest_trial, save_model, trial_rows, write_results
from autocomp.search.objective import build_candidate, distill_subset
from autocomp.train import evaluate

__all__ = ["finalize"]


def finalize(run_dir: Path, study: optuna.Study, *, config: JobConfig, splits: Splits, base: nn.Module,
             baseline: Mapping[str, Any], limits: Mapping[str, float],
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write all results; save best/ (the most accurate trial within budget) and summary.json."""
    rows = trial_rows(study, list(limits))
    front = write_results(run_dir, rows, limits)
    best = best_feasible(rows)
    summary: dict[str, Any] = {
        "budget": config.budget.describe(), "limits": dict(limits), "baseline": dict(baseline),
        "trials": {"total": len(rows), "complete": sum(r.complete for r in rows),
                   "failed": sum(r.state == "FAIL" for r in rows), "within_budget": sum(r.feasible for r in rows)},
        "pareto_size": len(front), "met_budget": best is not None,
    }
    if best is not None:
        model = build_candidate(base, Recipe.from_dict(best.recipe), splits.calib.x, distill_subset(splits.train))
        entry = _trial_entry(best)
        entry.update(val_accuracy=evaluate(model, splits.val), test_accuracy=evaluate(model, splits.test),
                     path=str((run_dir / "best").resolve()))
        save_model(run_dir / "best", model, Recipe.from_dict(best.recipe), config.model, metrics=entry)
        summary["best"] = entry
        log(f"best within budget: trial {best.number}  val {entry['val_accuracy']:.2f}%  "
            f"test {entry['test_accuracy']:.2f}%  latency {best.latency_ms:.2f} ms  memory {best.memory_mb:.2f} MB")
    else:
        closest = closest_trial(rows)
        summary["closest"] = _trial_entry(closest) if closest is not None else None
        message = "no candidate met the budget"
        if closest is not None:
            over = ", ".join(f"{k} over by {100 * v:.0f}%" for k, v in closest.violations.items() if v > 0)
            message += f"; closest was trial {closest.number} ({over})"
        summary["message"] = message + "; loosen the budget or widen the search space"
        log(summary["message"])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _trial_entry(row: TrialRow) -> dict[str, Any]:
    return {"trial": row.number, "recipe_summary": row.recipe_summary, "val_accuracy": row.accuracy,
            "latency_ms": row.latency_ms, "latency_ratio": row.latency_ratio, "memory_mb": row.memory_mb,
            "violations": dict(row.violations)}
