"""Local moves: recipes a few block knobs away from a measured one, for the per-block stage of the search.

In the benchmark (session 8, ONNX Runtime at 0.6x), the per-block TPE draws after the coarse stage were mostly worse
than the best recipe with every block alike: 16-30 trials leave TPE barely past its start over 30-odd per-block
parameters, so its draws are close to random mixes. What per-block freedom can buy near a budget is a finer use of
it. The best recipe within budget leaves part of the budget unspent (a uniform step is coarse), and moving one
block's knob one step lighter, or one block's lighter and another's heavier, spends it. So part of the per-block
draws are such moves from the best trial within budget, among those the cost model predicts to fit the budget, and
then filled: further knobs a step lighter, one at a time, while the recipe is predicted to stay under a target share
of a latency limit (``FILL`` at first: timings vary) and under a memory limit itself (counted, not timed;
``budget.TIMED``). One step alone spent little: in the first runs, the best recipe with every block
alike sat at 0.50x under a 0.6x limit, and its one-step neighbours at 0.51-0.56x. Each fill step takes the knob that
the sensitivity pass says gives back the most accuracy per predicted cost: filled at random, the moves spent the
budget on fp32 weights (which cost time and give back almost nothing: int8 costs about 0.1 point) and measured
0.63-0.65x for at most +0.2 point.

The same moves replace a recipe the sampler proposes again (a duplicate): re-running it would only repeat its score.

A recipe the screen skips as far over budget is *repaired* (:func:`repair`): knobs a step heavier, one at a time,
each time the one the sensitivity pass says costs the least accuracy per predicted saving, until the recipe is
predicted under the fill target of a latency limit, or under a memory limit itself (as a move is filled). Under a
tight budget most of the sampler's per-block draws are far over it (at memory 0.5x on the demo job, 52-53 of 63-64
proposals per seed were skipped, and 11-12 trials measured); repaired, a draw keeps what the sampler chose where the
budget allows it and is run near the budget.
"""

from __future__ import annotations

import functools
import json
import random
from typing import Any, Mapping, NamedTuple, Sequence

import optuna

from autocomp.budget import aims
from autocomp.errors import AutocompError
from autocomp.recipe import Recipe
from autocomp.search._screen import CostPredictor
from autocomp.space import RANK, STATIC, STATIC_BITS, SearchSpace

__all__ = ["recipe_key", "compression_key", "local_move", "repair", "Move", "FILL", "REPAIRED"]

REPAIRED = "repaired: "  # how a repair's label begins (after its trial's "from trial <n>: ")
FILL = 0.95  # a move is filled up to this share of each limit (predicted) at first: measurements vary by several %


class Move(NamedTuple):
    """A local move: the Optuna parameters of its recipe, what it changes, and its predicted share of the budget
    (the largest ratio of predicted cost to limit; None when not predicted)."""

    params: dict[str, Any]
    label: str
    load: float | None


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """A recipe's identity (its dict form, keys sorted): two trials with one key compress and distil alike. The
    uncompressed model is one recipe whatever distillation it names (studies before 2026-12-03 recorded one); a
    recipe recorded before a key existed reads as one with the key's default."""
    return _key(json.dumps(recipe, sort_keys=True))


@functools.lru_cache(maxsize=4096)
def _key(recorded: str) -> str:
    """:func:`recipe_key` of a recipe's JSON, read once: a search asks for the keys of every trial at every draw."""
    recipe = json.loads(recorded)
    try:
        recipe = Recipe.from_dict(recipe).to_dict()
    except AutocompError:  # not a recipe autocomp reads today: compared as recorded
        pass
    if not any(recipe.get("blocks", ())):
        recipe = {name: value for name, value in recipe.items() if name != "distill"}
    return json.dumps(recipe, sort_keys=True)


def compression_key(recipe: Mapping[str, Any]) -> str:
    """What a recipe compresses, without its distillation: two trials with one key build the same candidate, and a
    trial measures its candidate before distilling it, so they measure the same model."""
    return recipe_key({name: value for name, value in recipe.items() if name != "distill"})


def _moves(params: Mapping[str, Any], distributions: Mapping[str, optuna.distributions.BaseDistribution], *,
           lighter_only: bool = False, heavier_only: bool = False) -> list[tuple[dict[str, Any], str]]:
    """Every recipe one block knob one step away (ordered knobs: the next choice up or down; named ones: any other)
    and every pair of one knob a step lighter and another a step heavier, with what each changes. ``lighter_only``:
    only one knob a step lighter (an ordered knob's next choice up); ``heavier_only``: only one a step heavier."""
    lighter, down, other = [], [], []
    for name, value in params.items():
        if name.startswith("distill") or name not in distributions:
            continue
        dist, knob = distributions[name], name.removesuffix(RANK)
        if isinstance(dist, optuna.distributions.IntDistribution):
            if value < dist.high:
                lighter.append((name, value + 1, f"{knob} up"))
            if value > dist.low:
                down.append((name, value - 1, f"{knob} down"))
        elif isinstance(dist, optuna.distributions.CategoricalDistribution):
            other += [(name, choice, f"{knob} {choice}") for choice in dist.choices if choice != value]
    if lighter_only or heavier_only:
        return [({**params, name: value}, label) for name, value, label in (lighter if lighter_only else down)]
    return ([({**params, name: value}, label) for name, value, label in lighter + down + other]
            + [({**params, up: a, lower: b}, f"{la}, {lb}")
               for up, a, la in lighter for lower, b, lb in down if up != lower])


def local_move(base: optuna.trial.FrozenTrial, *, space: SearchSpace, heads_per_block: Sequence[int],
               allowed: Mapping[str, Sequence[Any]] | None, predictor: CostPredictor | None,
               limits: Mapping[str, float], seen: set[str], rng: random.Random,
               measured: Mapping[str, float] | None = None, must_fit: bool = True, fill_to: float | None = None,
               drops: Mapping[tuple[int, str, float], float] | None = None) -> Move | None:
    """A move from ``base``'s parameters to a recipe not in ``seen`` (:func:`recipe_key`), drawn with ``rng``; with
    its label. None when there is none to draw.

    Drawn among the moves the predictor puts within ``limits``, and among those, the ones that spend at least as
    much of the budget as ``base`` (the largest ratio of predicted cost to limit) when there are any. Without a
    predictor, or when no move is predicted within budget and not ``must_fit``: among all unseen moves.

    ``fill_to``: the moves drawn are those predicted under this share of every timed limit and under every counted
    one (:func:`~autocomp.budget.aims`), or no dearer than ``base`` (not just under the limits); then, while a knob a
    step lighter keeps the recipe under them, one such step more:
    the one whose accuracy given back (``drops``: the sensitivity pass's points lost per block, knob and setting,
    alone and before distillation) is largest per predicted cost (ties drawn at random).

    ``measured``: ``base``'s measured costs (``latency_ms``, ``memory_mb``). The moves' predictions are then scaled
    by measured / predicted of ``base``: a move's cost relative to its base is predicted better than its absolute
    cost, and a base measured within budget but predicted over it would otherwise leave no move to draw.
    """
    def new(moves: list[tuple[dict[str, Any], str]]) -> list[tuple[dict[str, Any], str, Recipe]]:
        return _unseen(moves, space, heads_per_block, allowed, seen)

    unseen = new(_moves(base.params, base.distributions))
    if not unseen:
        return None
    if predictor is None:
        if must_fit:
            return None
        params, label, _ = rng.choice(unseen)
        return Move(params, label, None)

    scale = dict.fromkeys(limits, 1.0)
    if measured is not None and "recipe" in base.user_attrs:
        try:
            own = predictor.predict(Recipe.from_dict(base.user_attrs["recipe"]))
            scale = {key: measured[key] / own[key] for key in limits if own[key] > 0}
        except AutocompError:
            pass

    targets = aims(limits, 1.0 if fill_to is None else fill_to)

    def load(recipe: Recipe) -> float | None:
        """The largest predicted share of a target the recipe uses; None when it is predicted over a limit."""
        predicted = _predicted(recipe, predictor, scale)
        if predicted is None or _most(predicted, limits) > 1.0:
            return None
        return _most(predicted, targets)

    floor = load(Recipe.from_dict(base.user_attrs["recipe"])) if "recipe" in base.user_attrs else None
    cap = max(1.0, floor or 0.0)  # no dearer than the base, which measured within
    fitting = [(params, label, recipe, share) for params, label, recipe in unseen
               if (share := load(recipe)) is not None and share <= cap]
    spending = [m for m in fitting if floor is not None and m[3] >= floor]
    drawn = spending or fitting or ([] if must_fit else [(p, lb, r, None) for p, lb, r in unseen])
    if not drawn:
        return None
    params, label, recipe, share = rng.choice(drawn)
    while fill_to is not None and share is not None and share <= 1.0:
        steps = [(step, step_label, after_recipe, after) for step, step_label, after_recipe
                 in new(_moves(params, base.distributions, lighter_only=True))
                 if (after := load(after_recipe)) is not None and after <= 1.0]
        if not steps:
            break
        worth = [_given_back(params, step, space, heads_per_block, allowed, drops or {}) / max(after - share, 1e-3)
                 for step, _, _, after in steps]
        params, _, recipe, share = rng.choice([m for m, w in zip(steps, worth) if w >= max(worth) - 1e-9])
        label = _net_label(base.params, params, base.distributions)  # a step up may undo the move's step down
    return Move(params, label, None if share is None else _share(recipe, predictor, limits, scale))


def _net_label(before: Mapping[str, Any], after: Mapping[str, Any],
               distributions: Mapping[str, optuna.distributions.BaseDistribution]) -> str:
    """What ``after`` changes from ``before``, knob by knob: ``b0.heads_keep up 2``, ``b1.weight_bits down``."""
    parts = []
    for name, value in after.items():
        if value == before.get(name) or name.startswith("distill") or name not in distributions:
            continue
        knob = name.removesuffix(RANK)
        if isinstance(distributions[name], optuna.distributions.IntDistribution):
            steps = value - before[name]
            parts.append(f"{knob} {'up' if steps > 0 else 'down'}" + (f" {abs(steps)}" if abs(steps) > 1 else ""))
        else:
            parts.append(f"{knob} {value}")
    return ", ".join(parts)


def repair(base: optuna.trial.FrozenTrial, *, space: SearchSpace, heads_per_block: Sequence[int],
           allowed: Mapping[str, Sequence[Any]] | None, predictor: CostPredictor, limits: Mapping[str, float],
           seen: set[str], fill_to: float, drops: Mapping[tuple[int, str, float], float] | None = None) -> Move | None:
    """``base``'s parameters (a recipe predicted over budget) with knobs a step heavier, one at a time, until the
    recipe is predicted under ``fill_to`` of a latency limit and under a memory limit (memory is counted, not timed:
    no room is left for it to vary); None when no such recipe is reached or it is in ``seen``.

    Each step is the one that costs the least accuracy (``drops``, as in :func:`local_move`) per share of the
    budget it saves, and among equal ones the one that saves the most; where that one reaches the target, the one
    that reaches it using the most of the budget, among those that cost no more."""
    targets = aims(limits, fill_to)
    params, label = dict(base.params), []
    share = _share(space.sample(optuna.trial.FixedTrial(params), heads_per_block, allowed=allowed), predictor,
                   targets, {})
    while share is not None and share > 1.0:
        steps = [(step, step_label, after) for step, step_label, recipe
                 in _unseen(_moves(params, base.distributions, heavier_only=True), space, heads_per_block, allowed,
                            set())
                 if (after := _share(recipe, predictor, targets, {})) is not None and after < share - 1e-9]
        if not steps:
            return None
        cost = [max(0.0, -_given_back(params, step, space, heads_per_block, allowed, drops or {}))
                for step, _, _ in steps]
        best, least = min(zip(steps, cost), key=lambda mc: (mc[1] / (share - mc[0][2]), mc[0][2]))
        if best[2] <= 1.0:  # the last step: of those as cheap that reach the target, the one nearest to it
            best = max((m for m, c in zip(steps, cost) if c <= least and m[2] <= 1.0), key=lambda m: m[2])
        params, step_label, share = best
        label.append(step_label)
    if share is None:
        return None
    recipe = space.sample(optuna.trial.FixedTrial(params), heads_per_block, allowed=allowed)
    if recipe_key(recipe.to_dict()) in seen:
        return None
    return Move(params, REPAIRED + ", ".join(label), _share(recipe, predictor, limits, {}))


def _unseen(moves: list[tuple[dict[str, Any], str]], space: SearchSpace, heads_per_block: Sequence[int],
            allowed: Mapping[str, Sequence[Any]] | None, seen: set[str]) -> list[tuple[dict[str, Any], str, Recipe]]:
    """The moves to recipes not in ``seen``, with their recipes."""
    found = []
    for params, label in moves:
        # a block the move quantizes, or makes 8-bit, asks what its base never drew: its layers, its activations
        params = space.completed(params, len(heads_per_block), allowed=allowed)
        try:
            recipe = space.sample(optuna.trial.FixedTrial(params), heads_per_block, allowed=allowed)
        except ValueError:  # a parameter still missing
            continue
        if recipe_key(recipe.to_dict()) not in seen:
            found.append((params, label, recipe))
    return found


def _share(recipe: Recipe, predictor: CostPredictor, limits: Mapping[str, float],
           scale: Mapping[str, float]) -> float | None:
    """The largest predicted share of a limit ``recipe`` uses (each prediction times its ``scale``, 1 where none);
    None when it cannot be predicted."""
    predicted = _predicted(recipe, predictor, scale)
    return None if predicted is None else _most(predicted, limits)


def _predicted(recipe: Recipe, predictor: CostPredictor, scale: Mapping[str, float]) -> dict[str, float] | None:
    """``recipe``'s predicted costs, each times its ``scale`` (1 where none); None when it cannot be predicted."""
    try:
        return {key: value * scale.get(key, 1.0) for key, value in predictor.predict(recipe).items()}
    except AutocompError:
        return None


def _most(predicted: Mapping[str, float], limits: Mapping[str, float]) -> float:
    """The largest share of a limit the costs ``predicted`` use."""
    return max((predicted[key] / limit for key, limit in limits.items()), default=0.0)


def _given_back(before: Mapping[str, Any], after: Mapping[str, Any], space: SearchSpace,
                heads_per_block: Sequence[int], allowed: Mapping[str, Sequence[Any]] | None,
                drops: Mapping[tuple[int, str, float], float]) -> float:
    """Points of accuracy the sensitivity pass says a change of parameters gives back (a knob a step lighter: the
    drop of its old setting less that of its new one, in each block it applies to; 0 where the pass has no
    figure, as for the lightest setting)."""
    total = 0.0
    for name, value in after.items():
        if before.get(name) == value or name.startswith("distill"):
            continue
        param, knob = name.removesuffix(RANK), name.removesuffix(RANK).split(".", 1)[1]
        if name.endswith(RANK):  # an ordered knob's rank: its value
            choices = sorted((allowed or {}).get(param, getattr(space, knob)))
            old, new = choices[before[name]], choices[value]
        else:  # a named choice: layers, activations (none before: a block just quantized)
            old, new = before.get(name), value
        blocks = range(len(heads_per_block)) if param.startswith("all.") else [int(param.split(".")[0][1:])]
        total += sum(_drop(drops, b, knob, old) - _drop(drops, b, knob, new) for b in blocks)
    return total


def _drop(drops: Mapping[tuple[int, str, float], float], block: int, knob: str, value: Any) -> float:
    """Points the sensitivity pass saw ``knob`` at ``value`` cost ``block`` alone (0 where it has no figure); static
    activations: what they cost beyond 8-bit weights with dynamic ones (their row is both together)."""
    if (knob, value) == STATIC:
        return (drops.get((block, *STATIC)) or 0.0) - (drops.get((block, "weight_bits", STATIC_BITS)) or 0.0)
    return drops.get((block, knob, value)) or 0.0
