"""The coarse stage of a search: its first recipes drawn with every block alike, by a TPE of its own over the few
uniform parameters (an in-memory study), each queued into the search's study as per-block parameters, so that the
study's own sampler refines from a region that works instead of learning 30-odd per-block parameters from scratch.

A uniform recipe already run is drawn again, at random (the coarse space is small: its TPE, which ignores failed
trials, may keep to one); one the screen would skip is drawn again after the coarse study is told its predicted
violations (it learns where the budget lies, and no trial is spent on it): up to ``COARSE_REDRAWS`` times, after
which the per-block sampler takes the draw.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Mapping, Sequence

import optuna

from autocomp.search._local import recipe_key
from autocomp.search._screen import Screen
from autocomp.space import RANK, SearchSpace
from autocomp.search._start import alike_choices

__all__ = ["COARSE", "COARSE_REDRAWS", "CoarseStage"]

COARSE = "coarse"  # user attr of a trial drawn in the coarse stage (every block alike): its recipe summary
COARSE_REDRAWS = 20  # coarse draws of recipes already run, or skipped, before the per-block sampler takes the draw


class CoarseStage:
    """``draws`` coarse draws over ``space`` for a model of ``heads`` per block, within ``allowed``, by a TPE seeded
    with ``seed``; their coarse study is told what became of each (:meth:`tell`), keyed by the Ray trial that ran
    it."""

    def __init__(self, space: SearchSpace, heads: Sequence[int], *, draws: int, directions: Sequence[str],
                 allowed: Mapping[str, Sequence[Any]] | None, seed: int, rng: random.Random) -> None:
        self.left = draws
        self._space, self._heads, self._allowed = space, list(heads), allowed
        self._rng = rng  # the redraws' (the controller's, shared with its local moves)
        self._study = optuna.create_study(directions=list(directions), sampler=optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=min(4, max(1, draws // 3))))
        self._running: dict[str, optuna.Trial] = {}  # Ray trial id -> its trial in the coarse study

    @property
    def study(self) -> optuna.Study:
        """The coarse study (every block alike)."""
        return self._study

    def draw(self, study: optuna.Study, seen: Mapping[str, int], screen: Screen | None) -> optuna.Trial | None:
        """A uniform recipe from the coarse study, neither in ``seen`` (recipes run, running or skipped) nor one
        ``screen`` skips, queued into ``study`` as per-block parameters (its next ask takes it); its coarse trial, or
        None where the redraws ran out."""
        self.left -= 1
        blocks = len(self._heads)
        uniform = dataclasses.replace(self._space, uniform=True, blocks={})  # blocks of their own: _per_block
        allowed = {uniform.name(0, knob): choices
                   for knob, choices in alike_choices(self._space, blocks, self._allowed or {}).items()}
        for _ in range(COARSE_REDRAWS):
            coarse = self._study.ask()
            recipe = uniform.sample(coarse, self._heads, allowed=allowed)
            params = self._space.params(self._per_block(coarse, allowed), allowed=self._allowed)
            if self._space.blocks:  # a block with choices of its own takes its least compressing where it must:
                # the recipe screened and queued is that one, a block made 8-bit so given its layers and activations
                params = self._space.completed(params, blocks, allowed=self._allowed)
                recipe = self._space.sample(optuna.trial.FixedTrial(params), self._heads, allowed=self._allowed)
            if recipe_key(recipe.to_dict()) in seen:
                drawn = self._study.tell(coarse, state=optuna.trial.TrialState.FAIL)
                self._study.enqueue_trial({name: _at_random(dist, self._rng)
                                           for name, dist in drawn.distributions.items()})
                continue
            verdict = screen.judge(recipe) if screen is not None else None
            if verdict is None or verdict.skip_reason is None:
                break
            self.skipped(coarse, verdict.violations)
        else:
            return None
        study.enqueue_trial(params, user_attrs={COARSE: recipe.summary()})
        return coarse

    def _per_block(self, coarse: optuna.Trial, allowed: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """The per-block knob values of a coarse draw (``allowed``: the uniform parameters' choices), each block
        with choices of its own at its least compressing where they leave the draw's value out."""
        blocks = len(self._heads)
        values = {self._space.name(i, name.removeprefix("all.")): options[0]  # a knob with one choice left
                  for name, options in allowed.items() if len(options) == 1 for i in range(blocks)}
        for name, value in coarse.params.items():
            name, ranked = name.removesuffix(RANK), name.endswith(RANK)
            knob = name.removeprefix("all.")
            if ranked:
                value = sorted(allowed.get(name, getattr(self._space, knob)))[value]
            if name.startswith("all."):
                values.update({self._space.name(i, knob): value for i in range(blocks)})
            else:
                values[name] = value
        for name, value in list(values.items()):
            block, _, knob = name.partition(".")
            if block[1:].isdigit():
                values[name] = self._space.fitted(int(block[1:]), knob, value)
        return values

    def skipped(self, coarse: optuna.Trial, violations: Mapping[str, float]) -> None:
        """``coarse``'s recipe is one the screen skips: told PRUNED, with its predicted violations."""
        for key, value in violations.items():
            coarse.set_constraint(key, value)
        self._study.tell(coarse, state=optuna.trial.TrialState.PRUNED)

    def failed(self, coarse: optuna.Trial) -> None:
        self._study.tell(coarse, state=optuna.trial.TrialState.FAIL)

    def started(self, trial_id: str, coarse: optuna.Trial) -> None:
        """``coarse``'s recipe is run as Ray trial ``trial_id``."""
        self._running[trial_id] = coarse

    def tell(self, trial_id: str, frozen: optuna.trial.FrozenTrial) -> None:
        """What became of Ray trial ``trial_id`` (its trial in the search's study, ``frozen``), where it ran a coarse
        draw: its values and constraints, or a failure."""
        coarse = self._running.pop(trial_id, None)
        if coarse is None:
            return
        for key, value in frozen.system_attrs.items():
            if key.startswith("constraints:"):
                coarse.set_constraint(key.split(":", 1)[1], value)
        if frozen.state == optuna.trial.TrialState.COMPLETE:
            self._study.tell(coarse, frozen.values)
        else:
            self.failed(coarse)


def _at_random(dist: optuna.distributions.BaseDistribution, rng: random.Random) -> Any:
    """A value of a sampled parameter's distribution, drawn uniformly."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return rng.choice(dist.choices)
    return rng.randint(dist.low, dist.high)  # the rank of an ordered knob's choice
