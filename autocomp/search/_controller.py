"""The search controller: an Optuna study used through ask/tell, behind Ray Tune's ``Searcher`` interface.

Before a recipe is handed to Ray, the controller predicts its cost; a candidate the screen judges far over budget is
told to the study as PRUNED (user attr ``skipped_reason``) without ever being compressed, distilled, measured or
evaluated, and the next recipe is asked for in its place: a skipped candidate does not use up one of the job's
trials (up to ``SKIPS_PER_TRIAL`` per trial asked for in a run; beyond that each one does, so that a budget the
sampler can hardly meet still ends the search). It carries its predicted budget violations as its
constraints: TPE ranks infeasible trials by how far they violate the budget, whatever their state, so the sampler
learns where the budget lies from them (told as plain PRUNED trials, they ranked above measured near misses).

The first recipes can be drawn coarse (``coarse``, :mod:`autocomp.search._coarse`): every block alike, queued into
the study as per-block recipes, so that its own sampler refines from a region that works. After it, a share of the
draws (``local``) are local moves from the best trial within budget (:mod:`autocomp.search._local`): one block knob
a step away, or one a step lighter and another a step heavier, predicted to fit the budget, then filled with further
knobs a step lighter while the recipe is predicted to stay under the budget.

A recipe that compresses as a trial already measured did, and differs from it only in its distillation, reuses that
trial's measurement (the trial measures its candidate before distilling it, so it would export and time the same
model again): only its distillation and score run.

A recipe the screen skips is repaired (:func:`~autocomp.search._local.repair`): its knobs made heavier, those that
cost least accuracy first, until it is predicted under the budget, and queued as the next trial.

A recipe the sampler proposes again (a duplicate of one measured, running or skipped) is not run: it is told as
PRUNED with user attr ``duplicate_of``, does not count as a trial, and a local move from it is queued in its place.
The coarse stage draws again instead (:mod:`autocomp.search._coarse`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Any, Callable, Mapping, Sequence

import optuna
from ray.tune.search import Searcher

from autocomp.recipe import Recipe
from autocomp.results import best_feasible, trial_rows
from autocomp.search._coarse import COARSE, CoarseStage
from autocomp.search._local import FILL, compression_key, local_move, recipe_key, repair
from autocomp.search._objective import ERROR, MEASURED, MEASUREMENT_OF, PHASES, STOP, distils
from autocomp.search._ray import check_cluster
from autocomp.search._screen import Screen
from autocomp.space import SearchSpace
from autocomp.search._start import START

__all__ = ["OptunaController", "OBJECTIVES", "RECORDED", "SKIPPED", "RETRY_OF", "COARSE", "LOCAL", "DUPLICATE", "ERROR",
           "again", "counted"]

OBJECTIVES = ("accuracy", "latency_ms", "memory_mb")
DIRECTIONS = ("maximize", "minimize", "minimize")
RECORDED = ("latency_ratio", "raw_latency_ms", "latency_iqr_ms", "weights_mb", "activations_mb", "simulated_layers",
            "int8_activations", "distilled", "trial_seconds", "measured_on", "runtime", "export_top1",
            "export_max_logit_diff", "fidelity", "short_accuracy", "saved_seconds", "paused_seconds", MEASUREMENT_OF,
            *(f"seconds_{p}" for p in PHASES))
# set by the trainable: the Ray node id the trial ran on (``node``), recorded for failed trials too
SKIPPED = "skipped_reason"  # user attr of a trial the screen skipped (state PRUNED)
SKIPS_PER_TRIAL = 3  # skipped candidates that use up no trial, per trial asked for in a run
RETRY_OF = "retry_of"  # user attr of a trial that runs again the recipe of one that failed or was interrupted
LOCAL = "local_move"  # user attr of a trial queued as a local move: from which trial, and what it changes
LOCAL_LOAD = "local_load"  # ... and its predicted share of the budget (scaled by its base's measurement)
CARRIED = (START, LOCAL, LOCAL_LOAD)  # what a trial run again keeps of the one it repeats: where its recipe came from
DUPLICATE = "duplicate_of"  # user attr of a proposal not run (state PRUNED): the trial that has its recipe


def measured_of(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """A complete trial's objectives by name, and its weights' MB (a limit of the budget, not an objective)."""
    return {**dict(zip(OBJECTIVES, trial.values)), "weights_mb": trial.user_attrs.get("weights_mb", math.nan)}


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a stored trial counts towards the job's trial count on resume: a measured one (not one the screen
    skipped, nor one that failed: both are asked for again)."""
    return trial.state == optuna.trial.TrialState.COMPLETE


def again(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The user attrs of ``trial``'s recipe queued to run again: which trial it repeats, and where the recipe came
    from (a starting point, a local move)."""
    return {RETRY_OF: trial.number, **{key: trial.user_attrs[key] for key in CARRIED if key in trial.user_attrs}}


class OptunaController(Searcher):
    """Asks the study for a recipe per Ray trial and tells it the measured result.

    Args:
        study: the multi-objective study (accuracy up, latency down, memory down).
        space: what to sample per block.
        heads_per_block: head count of each block of the base model.
        n_trials: trials to measure in this run. A candidate the screen skips is asked for again, at most
            ``SKIPS_PER_TRIAL * n_trials`` times in a run; beyond that, each skipped one takes a trial's place.
        on_told: called with each finished Optuna trial (progress, anytime results).
        screen: predicts each recipe's cost and skips those far over budget; None predicts nothing. It learns from
            the trials already complete in the study and from each one measured here.
        retries: how many times a crashed trial's recipe is run again; each retry is asked for on top of
            ``n_trials``. A trial that fails for a reason a rerun would meet again (an operator's refusal,
            non-finite logits, a time limit), or whose retries are spent, is replaced by a new recipe instead, at most
            ``n_trials`` times in a run: failures do not cost the user completed trials, up to that cap.
        allowed: narrower choices for some parameters (what the sensitivity pass left), as ``SearchSpace.sample``.
        coarse: how many of the recipes the sampler draws in this run are drawn coarse first: every block alike, by
            a TPE over the few uniform parameters (an in-memory study of its own), queued into the study as
            per-block recipes; the study's own sampler then refines per block from there. 0: none.
        local: the share of the draws after the coarse stage made as local moves from the best trial within budget
            (needs ``screen``: the moves are drawn among those predicted to fit); 0: none, 1: all. A move is filled
            up to ``FILL`` of the budget, less by as far as earlier moves measured over their prediction.
        drops: the sensitivity pass's accuracy drop per (block, knob, setting), which guides the moves' fill.
        seed: the seed of the coarse sampler and of the local moves.

    A trial whose device left the cluster stops the search (:attr:`stopped` says why): no new trial is asked for,
    and its recipe is queued in the study, to run first when the search is resumed.
    """

    def __init__(self, *, study: optuna.Study, space: SearchSpace, heads_per_block: Sequence[int], n_trials: int,
                 on_told: Callable[[optuna.trial.FrozenTrial], None] | None = None,
                 screen: Screen | None = None, retries: int = 0,
                 allowed: Mapping[str, Sequence[Any]] | None = None, coarse: int = 0, local: float = 0.0,
                 drops: Mapping[tuple[int, str, float], float] | None = None, seed: int = 0) -> None:
        super().__init__()
        self._local = local if screen is not None else 0.0
        self._local_credit = 1.0 - self._local  # the first draw after the coarse stage is a local move
        self._drops = dict(drops or {})
        self._duplicates_left = n_trials  # duplicates replaced at no trial's cost, at most this many per run
        self._skips_left = SKIPS_PER_TRIAL * n_trials  # ... and skipped candidates
        self.places_taken = {"skipped": 0, "drawn again": 0}  # trials of the run they took once none was left
        self._rng = random.Random(seed)
        self.coarse = CoarseStage(space, heads_per_block, draws=coarse, directions=DIRECTIONS, allowed=allowed,
                                  seed=seed, rng=self._rng) if coarse else None
        self._study, self._space, self._heads = study, space, list(heads_per_block)
        self._remaining, self._on_told, self._screen = n_trials, on_told, screen
        self._retries, self._replacements, self._allowed = retries, n_trials, allowed
        self.stopped: str | None = None
        self._live: dict[str, tuple[optuna.Trial, Recipe]] = {}
        self._started: dict[str, float] = {}  # when each trial was handed to Ray: the rest of its time is the engine's
        self.asking_seconds = 0.0  # time spent choosing trials (sampler, screen, moves, repairs), while a slot waits
        if screen is not None:  # resuming: what earlier runs measured
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                if "recipe" in trial.user_attrs and trial.user_attrs.get(MEASUREMENT_OF) is None:  # once each
                    screen.observe(Recipe.from_dict(trial.user_attrs["recipe"]), trial.values[1], trial.values[2],
                                   trial.user_attrs.get("weights_mb"))

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its searcher into its experiment checkpoint; the study lives in its file and is resumed from
        # there, so the live handles (database engine, callbacks) are left out.
        return {"_remaining": self._remaining}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _study=None, _space=None, _heads=[], _on_told=None, _screen=None, _live={},
                             _started={}, _retries=0, _replacements=0, stopped=None,
                             _allowed=None, coarse=None, _local=0.0,
                             _local_credit=0.0, _duplicates_left=0, _skips_left=0, _rng=random.Random(0), _drops={},
                             asking_seconds=0.0, places_taken={"skipped": 0, "drawn again": 0})

    @property
    def unfinished(self) -> int:
        """The trials of this run not yet asked for, and those asked for and not yet told (0 once all ran)."""
        return self._remaining + len(self._live)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        started = time.perf_counter()
        try:
            return self._suggest(trial_id)
        finally:
            self.asking_seconds += time.perf_counter() - started

    def _suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        while self._remaining > 0:
            self._remaining -= 1
            coarse = self._ask_coarse()
            if coarse is None:
                self._ask_local()
            trial = self._study.ask()
            recipe = self._space.sample(trial, self._heads, allowed=self._allowed)
            trial.set_user_attr("recipe", recipe.to_dict())
            trial.set_user_attr("recipe_summary", recipe.summary())
            if self._replace_duplicate(trial, recipe, coarse):
                continue
            if self._screen is not None:
                verdict = self._screen.judge(recipe)
                for key, value in verdict.predicted.items():
                    trial.set_user_attr(f"predicted_{key}", value)
                if verdict.skip_reason is not None:
                    trial.set_user_attr(SKIPPED, verdict.skip_reason)
                    for key, value in verdict.violations.items():
                        trial.set_constraint(key, value)
                    if coarse is not None:
                        self.coarse.skipped(coarse, verdict.violations)
                    if self._skips_left > 0:
                        self._skips_left -= 1
                        self._remaining += 1
                    else:
                        self.places_taken["skipped"] += 1
                    frozen = self._study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    if coarse is None:
                        self._queue_repair(frozen)
                    self._told(frozen)
                    continue
            if coarse is not None:
                self.coarse.started(trial_id, coarse)
            self._live[trial_id] = (trial, recipe)
            self._started[trial_id] = time.perf_counter()
            config = {"trial_number": trial.number, "recipe": recipe.to_dict()}
            measured = self._measurement(recipe)
            if measured is not None:
                config["measured"] = measured
            return config
        if self._live and self.stopped is None:  # one running may yet fail and be retried or replaced: ask later
            return None
        return Searcher.FINISHED

    def _measurement(self, recipe: Recipe) -> dict[str, Any] | None:
        """The measurement of the first trial complete in the study that compresses as ``recipe`` does (its number
        under ``trial``, and the ``MEASURED`` keys), or None."""
        key = compression_key(recipe.to_dict())
        for t in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if "recipe" in t.user_attrs and compression_key(t.user_attrs["recipe"]) == key:
                values = measured_of(t)
                return {"trial": t.number, **{k: values[k] if k in values else t.user_attrs.get(k) for k in MEASURED}}
        return None

    def _ask_coarse(self) -> optuna.Trial | None:
        """While coarse draws are left and nothing else is queued: a uniform recipe queued into the study (its next
        ask takes it); its coarse trial, or None."""
        if (self.coarse is None or self.coarse.left <= 0
                or self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))):
            return None
        return self.coarse.draw(self._study, self._seen(), self._screen)

    def _ask_local(self) -> None:
        """After the coarse stage, while nothing else is queued: queue a local move from the best trial within
        budget for ``local`` of the draws."""
        if (self._local <= 0 or (self.coarse is not None and self.coarse.left > 0)
                or self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))):
            return
        self._local_credit = min(1.0, self._local_credit + self._local)
        best = best_feasible(trial_rows(self._study, list(self._screen.limits)))  # ranked as best/ is named
        if self._local_credit < 1.0 - 1e-9 or best is None:
            return
        self._local_credit -= 1.0
        best = self._study.get_trials(deepcopy=False)[best.number]
        self._queue_move(best, must_fit=True, fill_to=self._fill_target(),
                         measured=measured_of(best))

    def _fill_target(self) -> float:
        """``FILL``, divided by the largest factor by which a local move of this study measured over its predicted
        share of the budget."""
        limits, over = self._screen.limits, 1.0
        for t in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.user_attrs.get(LOCAL_LOAD):
                values = measured_of(t)
                measured = max(values[key] / limit for key, limit in limits.items())
                over = max(over, measured / t.user_attrs[LOCAL_LOAD])
        return FILL / over

    def _queue_move(self, base: optuna.trial.FrozenTrial, *, must_fit: bool, fill_to: float | None = None,
                    measured: Mapping[str, float] | None = None) -> bool:
        """Queue a local move from ``base`` (:func:`~autocomp.search._local.local_move`); whether one was queued."""
        move = local_move(base, space=self._space, heads_per_block=self._heads, allowed=self._allowed,
                          predictor=self._screen.predictor if self._screen is not None else None,
                          limits=self._screen.limits if self._screen is not None else {},
                          seen=self._seen(), rng=self._rng, measured=measured, must_fit=must_fit, fill_to=fill_to,
                          drops=self._drops)
        if move is None:
            return False
        # a recipe drawn again moves from the trial that ran it (the draw itself never ran)
        attrs = {LOCAL: f"from trial {base.user_attrs.get(DUPLICATE, base.number)}: {move.label}"}
        if move.load is not None and measured is not None:
            attrs[LOCAL_LOAD] = move.load
        self._study.enqueue_trial(move.params, user_attrs=attrs, skip_if_exists=False)
        return True

    def _queue_repair(self, skipped: optuna.trial.FrozenTrial) -> None:
        """Queue ``skipped``'s recipe made heavier until predicted under the fill target
        (:func:`~autocomp.search._local.repair`), where one is reached that was not run or skipped already."""
        move = repair(skipped, space=self._space, heads_per_block=self._heads, allowed=self._allowed,
                      predictor=self._screen.predictor, limits=self._screen.limits, seen=self._seen(),
                      fill_to=self._fill_target(), drops=self._drops)
        if move is not None:
            self._study.enqueue_trial(move.params, user_attrs={LOCAL: f"from trial {skipped.number}: {move.label}",
                                                               LOCAL_LOAD: move.load}, skip_if_exists=False)

    def _seen(self, *, but: int | None = None) -> dict[str, int]:
        """The recipes already run, running or skipped in the study (not those that crashed: a rerun may succeed),
        by :func:`~autocomp.search._local.recipe_key`: the first trial that has each."""
        seen: dict[str, int] = {}
        for t in self._study.get_trials(deepcopy=False):
            if t.number == but or "recipe" not in t.user_attrs or DUPLICATE in t.user_attrs:
                continue
            if (t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
                    or SKIPPED in t.user_attrs or "refused" in t.user_attrs):
                seen.setdefault(recipe_key(t.user_attrs["recipe"]), t.number)
        return seen

    def _replace_duplicate(self, trial: optuna.Trial, recipe: Recipe, coarse: optuna.Trial | None) -> bool:
        """When ``trial`` proposes a recipe the study has already run, is running or skipped: tell it PRUNED with
        ``duplicate_of``, give the trial back to the run (at most ``n_trials`` times in a run), and queue a local move
        from it in its place; whether it was a duplicate. A retry is never one."""
        if RETRY_OF in trial.user_attrs:
            return False
        original = self._seen(but=trial.number).get(recipe_key(recipe.to_dict()))
        if original is None:
            return False
        trial.set_user_attr(DUPLICATE, original)
        frozen = self._study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        if self._duplicates_left > 0:
            self._duplicates_left -= 1
            self._remaining += 1
        else:
            self.places_taken["drawn again"] += 1
        if coarse is not None:  # a safeguard: coarse draws are checked against the same recipes before queued
            self.coarse.failed(coarse)
        self._queue_move(frozen, must_fit=False)
        self._told(frozen)
        return True

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial, recipe = self._live.pop(trial_id, (None, None))
        started = self._started.pop(trial_id, None)
        if trial is None:
            return
        result = result or {}
        if result.get("node") is not None:
            trial.set_user_attr("node", result["node"])
        if "refused" in result:  # the operators refuse this recipe: running it again would not help
            trial.set_user_attr("refused", result["refused"])
            trial.set_user_attr(ERROR, f"refused: {result['refused']}")
            frozen = self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self._replace()
        elif error or "accuracy" not in result:
            if not result.get(ERROR):  # its worker died: the cluster this search joined may have stopped (said)
                check_cluster()
            reason = result.get(ERROR) or ("the trial's Ray worker died without a result (its node left the "
                                           "cluster, or the process crashed, e.g. out of memory)")
            trial.set_user_attr(ERROR, reason)
            frozen = self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if result.get(STOP):
                self._stop(frozen, reason)
            elif not (result.get("retry", True) and self._retry(frozen)):
                self._replace()
        else:
            for key, value in result.items():
                if key.startswith("violation:"):
                    trial.set_constraint(key.split(":", 1)[1], value)
            for key in RECORDED:
                trial.set_user_attr(key, result[key])
            if result.get("distilled") is False and recipe is not None and recipe.distill is not None:
                # scored undistilled: shown without the distillation (its recipe keeps what it asked for), and why
                # where it had something to recover: measured far over budget
                trial.set_user_attr("recipe_summary", dataclasses.replace(recipe, distill=None).summary()
                                    + (" (not distilled: far over budget)" if distils(recipe) else ""))
            if started is not None:  # Ray, transfers and results writing: everything but the trial's own work
                trial.set_user_attr("engine_seconds", max(0.0, time.perf_counter() - started - result["trial_seconds"]))
            frozen = self._study.tell(trial, [result[key] for key in OBJECTIVES])
            if self._screen is not None and result.get(MEASUREMENT_OF) is None:  # a reused one is known already
                self._screen.observe(recipe, result["latency_ms"], result["memory_mb"], result.get("weights_mb"))
        if self.coarse is not None:
            self.coarse.tell(trial_id, frozen)
        self._told(frozen)

    def _retry(self, failed: optuna.trial.FrozenTrial) -> bool:
        """Queue a crashed trial's recipe again, ``retries`` times at most per recipe; whether it was queued."""
        attempt, first = 1, failed
        trials = {t.number: t for t in self._study.get_trials(deepcopy=False)}
        while RETRY_OF in first.user_attrs and first.user_attrs[RETRY_OF] in trials:
            first = trials[first.user_attrs[RETRY_OF]]
            attempt += 1
        if attempt > self._retries:
            return False
        self._study.enqueue_trial(failed.params, user_attrs=again(failed), skip_if_exists=False)
        if self.stopped is None:  # stopped: the queued recipe waits in the study for the resumed search
            self._remaining += 1
        return True

    def _replace(self) -> None:
        """Ask for one more new recipe in place of a failed one, while the cap allows."""
        if self.stopped is None and self._replacements > 0:
            self._replacements -= 1
            self._remaining += 1

    def _stop(self, failed: optuna.trial.FrozenTrial, reason: str) -> None:
        """Ask for no further trial; the failed recipe waits in the study for the resumed search."""
        self._study.enqueue_trial(failed.params, user_attrs=again(failed), skip_if_exists=False)
        self.stopped, self._remaining = reason, 0

    def _told(self, frozen: optuna.trial.FrozenTrial) -> None:
        if self._on_told is not None:
            self._on_told(frozen)

