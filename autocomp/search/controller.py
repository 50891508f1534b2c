"""The search controller: an Optuna study used through ask/tell, behind Ray Tune's ``Searcher`` interface."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import optuna
from ray.tune.search import Searcher

from autocomp.search.space import SearchSpace

__all__ = ["OptunaController", "OBJECTIVES", "RECORDED"]

OBJECTIVES = ("accuracy", "latency_ms", "memory_mb")
DIRECTIONS = ("maximize", "minimize", "minimize")
RECORDED = ("latency_ratio", "raw_latency_ms", "latency_iqr_ms", "weights_mb", "activations_mb", "simulated_layers")


class OptunaController(Searcher):
    """Asks the study for a recipe per Ray trial and tells it the measured result.

    Args:
        study: the multi-objective study (accuracy up, latency down, memory down).
        space: what to sample per block.
        heads_per_block: head count of each block of the base model.
        n_trials: trials to ask for in this run.
        on_told: called with each finished Optuna trial (progress, anytime results).
    """

    def __init__(self, *, study: optuna.Study, space: SearchSpace, heads_per_block: Sequence[int], n_trials: int,
                 on_told: Callable[[optuna.trial.FrozenTrial], None] | None = None) -> None:
        super().__init__()
        self._study, self._space, self._heads = study, space, list(heads_per_block)
        self._remaining, self._on_told = n_trials, on_told
        self._live: dict[str, optuna.Trial] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its searcher into its experiment checkpoint; the study lives in SQLite and is resumed from
        # there, so the live handles (database engine, callbacks) are left out.
        return {"_remaining": self._remaining}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _study=None, _space=None, _heads=[], _on_told=None, _live={})

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._remaining <= 0:
            return Searcher.FINISHED
        self._remaining -= 1
        trial = self._study.ask()
        recipe = self._space.sample(trial, self._heads)
        trial.set_user_attr("recipe", recipe.to_dict())
        trial.set_user_attr("recipe_summary", recipe.summary())
        self._live[trial_id] = trial
        return {"trial_number": trial.number, "recipe": recipe.to_dict()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._live.pop(trial_id, None)
        if trial is None:
            return
        if result and "refused" in result:
            trial.set_user_attr("refused", result["refused"])
            frozen = self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif error or not result or "accuracy" not in result:
            frozen = self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            for key, value in result.items():
                if key.startswith("violation:"):
                    trial.set_constraint(key.split(":", 1)[1], value)
            for key in RECORDED:
                trial.set_user_attr(key, result[key])
            frozen = self._study.tell(trial, [result[key] for key in OBJECTIVES])
        if self._on_told is not None:
            self._on_told(frozen)
