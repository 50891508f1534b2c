"""Known-good starting points: recipes a new search evaluates first, queued in the study (Optuna ``enqueue_trial``)
before the sampler draws its own.

A pretrained ViT is fragile (one head pruned in every block can cost 20 points before distillation), so random
start-up trials, mostly heavy compression, can spend a whole small budget far from anything usable. The search
therefore starts from, in this order (a quarter of the trials at most, one in a search of 1 to 3): the uncompressed
model (the accuracy anchor); uniform int8 weights (cheap in accuracy almost everywhere; with each choice of
``act_bits`` the space offers, dynamic and static activations); the uniform combination of knobs predicted within
budget that the sensitivity pass says costs least, or without one, predicted closest under the budget (after
the latency pass the cost model is corrected by what that pass measured; under a latency budget the best-ranked
combinations are measured on the target until one is within it); after a sensitivity pass, the quiet point: only
settings that alone cost a block at most ``QUIET`` points, as many as the budget needs (the uncompressed model
repaired into the budget through them, :func:`~autocomp.search._local.repair`; without a budget or a cost model,
every block at the strongest of them); the front's fast end: the strongest settings,
those that cost least alone first, while what they cost alone adds up to at most ``FAST`` points (one trial far
under a latency budget, but the Pareto front handed back then shows what a much faster model costs, and later trials
near the budget need not find it by chance); and for each searched knob alone the uniform setting the cost model
predicts to fit ``FILL`` (95 %) of the budget with the least compression. Per-block knobs are given; the
distillation settings are left to the sampler. A point that uses a choice the sensitivity pass removed from a block,
or that the cost model predicts over budget (the uncompressed model under any budget below 1x), is left out.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna

from autocomp.budget import feasible, violations
from autocomp.errors import AutocompError
from autocomp.recipe import Recipe
from autocomp.search._local import FILL, repair
from autocomp.search._screen import CostPredictor
from autocomp.space import FLOAT_BITS, RANK, STATIC, STATIC_BITS, SearchSpace

__all__ = ["start_points", "as_built", "lightest", "held_by_all", "recipe_of", "setting_values", "alike_choices",
           "uniform_values", "KNOBS", "START", "QUIET"]

START = "start_point"  # user attr of a queued starting trial: what it is
# per-block knobs, each with its "not compressed" value
KNOBS = {"heads_keep": 1.0, "mlp_keep": 1.0, "rank": 1.0, "tokens_keep": 1.0, "weight_bits": FLOAT_BITS}
QUIET = 0.5  # accuracy points a setting may cost alone, without distillation, to be in the least-sensitive point
FAST = 5.0  # accuracy points the fast-end point's settings may cost alone, without distillation, added up


def start_points(space: SearchSpace, heads_per_block: Sequence[int], *, predictor: CostPredictor | None,
                 limits: Mapping[str, float], cap: int, allowed: Mapping[str, Sequence[Any]] | None = None,
                 sensitivity: Sequence[Any] = (),
                 measure: Callable[[Recipe], float] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(label, Optuna params) of the starting recipes, at most ``cap``, most useful first, without repeats.

    Args:
        allowed: choices per parameter name left by the sensitivity pass (:func:`~autocomp.search._sensitivity.
            allowed_choices`).
        sensitivity: its :class:`~autocomp.search._sensitivity.Setting` rows.
        measure: a recipe's latency in ms, measured on the target. Under a latency limit, the all-knobs point is
            then the first of the best-ranked combinations (at most ``MEASURED_MIXES``) measured within it: the
            cost model is least sure of combinations, and one predicted just under the limit often measures over.
    """
    light, blocks = lightest(space), len(heads_per_block)
    sensitivity = as_built(space, sensitivity, allowed or {})
    # a space without each knob's "not compressed" value (weight_bits [8]) starts from its least compression
    least = ("uncompressed" if all(value in getattr(space, knob) for knob, value in KNOBS.items())
             else f"the least compression the space offers ({held_by_all(space)})" if held_by_all(space)
             else "the least compression the space offers")
    points = [(least, uniform_values(space, light, blocks))]
    if STATIC_BITS in space.weight_bits and (len(space.weight_bits) > 1 or space.chooses_activations):
        int8 = uniform_values(space, {**light, "weight_bits": STATIC_BITS}, blocks)
        for act in space.act_bits:  # dynamic and static activations, in the space's order
            label = f"uniform weight_bits {STATIC_BITS}" + (", static activations" if act else "")
            points.append((label, {**int8, **{space.name(i, "act_bits"): act for i in range(blocks)  # its 8-bit
                                              if int8.get(space.name(i, "weight_bits")) == STATIC_BITS}}))
    drops = _uniform_drops(sensitivity)
    measure = measure if "latency_ms" in limits else None
    mixes = _uniform_mixes_at_budget(space, heads_per_block, predictor, limits, light, allowed or {}, drops,
                                     measure=measure) if predictor is not None and limits else []
    how = ((", measured" if measure is not None else ", predicted")
           + (" within budget at the least sensitivity" if drops else " closest under the budget"))
    for mix in mixes[:1]:
        points.append(("all knobs alike: " + _described(mix, light) + how, uniform_values(space, mix, blocks)))
    quiet = {} if space.uniform else _quiet_choices(space, light, blocks, sensitivity, allowed or {})
    if any(len(choices) > 1 for choices in quiet.values()):
        sized = _sized(space, heads_per_block, light, sensitivity, quiet, predictor, limits, allowed or {}) \
            if predictor is not None and limits else None
        if sized is not None:
            points.append((f"the settings that alone cost <= {QUIET:g} point, as many as the budget needs", sized))
        else:
            points.append((f"each block at the strongest settings that alone cost <= {QUIET:g} point",
                           {name: min(quiet[name]) for name in uniform_values(space, light, blocks)}))
    fast = None if space.uniform else _fast_end(space, light, blocks, sensitivity, allowed or {})
    if fast is not None:
        points.append((f"the fast end: the strongest settings that alone cost <= {FAST:g} points added up", fast))
    if predictor is not None:
        for knob in light:
            value = _least_compression_that_fits(space, heads_per_block, predictor, limits, light, knob, allowed)
            if value is not None:
                points.append((f"uniform {knob} {value:g}, predicted within budget",
                               uniform_values(space, {**light, knob: value}, blocks)))
    for mix in mixes[1:]:  # after the others: it fills a slot the cap leaves
        points.append(("all knobs alike, other knobs: " + _described(mix, light) + how,
                       uniform_values(space, mix, blocks)))
    unique: list[tuple[str, dict[str, Any]]] = []
    for label, values in points:
        try:
            # the recipe queued is the one predicted (and measured): a quantized block's layers and activations at
            # the choices recipe_of gives them
            params = space.completed(space.params(values, allowed=allowed), blocks, allowed=allowed)
            if predictor is not None and limits and not feasible(violations(
                    predictor.predict(recipe_of(space, heads_per_block, values, allowed=allowed)), limits)):
                continue  # over budget it cannot be the answer
        except AutocompError:  # a choice the sensitivity pass removed from some block, or the operators refuse
            continue
        if all(params != seen for _, seen in unique):
            unique.append((label, params))
    return unique[:cap]


def as_built(space: SearchSpace, sensitivity: Sequence[Any], allowed: Mapping[str, Sequence[Any]]) -> list[Any]:
    """The sensitivity rows as recipes build their settings: in a block the passes before the search left static
    activations only, 8-bit weights come with them, so its ``weight_bits 8`` row costs what its ``STATIC`` row does
    (the starting points and the controller's moves rank settings by these)."""
    static = {s.block: s for s in sensitivity if (s.knob, s.value) == STATIC}
    return [dataclasses.replace(s, accuracy_drop=static[s.block].accuracy_drop,
                                predicted_latency_ratio=static[s.block].predicted_latency_ratio)
            if (s.knob, s.value) == ("weight_bits", STATIC_BITS) and s.block in static
            and space.first_act(s.block, allowed) == STATIC_BITS else s
            for s in sensitivity]


def held_by_all(space: SearchSpace) -> str:
    """The compression every candidate of ``space`` holds (a knob with one choice, not its "not compressed" one),
    e.g. ``weight_bits 8``; empty where there is none."""
    return ", ".join(f"{knob} {getattr(space, knob)[0]:g}" for knob, value in KNOBS.items()
                     if len(getattr(space, knob)) == 1 and getattr(space, knob)[0] != value)


def require_choices(space: SearchSpace, *, where: str, heads: Sequence[int] = ()) -> None:
    """Refuse a space whose only candidate is the uncompressed model (no knob has a choice that compresses, or the
    blocks' own choices leave none in any of ``heads`` blocks): its search would run that one model, drawn again for
    every other trial, and say the budget was not met."""
    if not lightest(space) and not held_by_all(space):
        raise AutocompError(f"{where} offers nothing to search: no knob has a choice that compresses, so its only "
                            "candidate is the uncompressed model; give a knob choices, e.g. heads_keep: [0.5, 0.75, "
                            "1.0] or weight_bits: [32, 8]")
    if heads and space.blocks and space.size(len(heads), allowed=space.distinct(heads)) <= 1:
        raise AutocompError(f"{where} offers nothing to search: its blocks: leaves every block at its least "
                            "compressing choices, the uncompressed model; give some block a choice that compresses")


def lightest(space: SearchSpace) -> dict[str, Any]:
    """Each searched per-block knob's least compressing choice."""
    return {knob: KNOBS[knob] if KNOBS[knob] in getattr(space, knob) else max(getattr(space, knob))
            for knob in KNOBS if len(getattr(space, knob)) > 1}


def alike_choices(space: SearchSpace, blocks: int, allowed: Mapping[str, Sequence[Any]]) -> dict[str, tuple]:
    """Per knob, the choices offered in every block (``allowed``: what the sensitivity pass left per parameter):
    what a recipe with every block alike may use; a block whose own choices (``blocks``) leave a choice out takes
    its own least compressing one there (:func:`uniform_values`)."""
    alike = {knob: tuple(v for v in getattr(space, knob)
                         if all(v in space.offered(i, knob, allowed) for i in range(blocks)
                                if space.fitted(i, knob, v) == v))
             for knob in KNOBS}
    # activations where a block can be 8-bit (a block kept in float by its own choices chooses none)
    alike["act_bits"] = tuple(v for v in space.act_bits if all(
        v in space.offered(i, "act_bits", allowed) for i in range(blocks)
        if STATIC_BITS in space.offered(i, "weight_bits", allowed)))
    if not alike["act_bits"]:  # blocks left different activations: no 8-bit blocks alike
        alike["weight_bits"] = tuple(v for v in alike["weight_bits"] if v != STATIC_BITS)
        alike["act_bits"] = (space.first_act(0),)
    return alike


def uniform_values(space: SearchSpace, values: Mapping[str, Any], blocks: int) -> dict[str, Any]:
    """Each knob of ``values`` set alike in every block, by Optuna parameter name; a block whose own choices
    (``blocks``) leave the value out at its least compressing one."""
    return {space.name(index, knob): space.fitted(index, knob, value) for index in range(blocks)
            for knob, value in values.items()}


MAX_MIXES = 4096  # uniform knob combinations predicted for the mixed starting point, at most
MEASURED_MIXES = 4  # of those predicted within budget, the best-ranked measured until one is within the limit
# Uniform mixes queued, each compressing a different set of knobs. The sensitivity pass ranks them by what each setting
# costs before distillation, which is not what distillation gives back: on the demo teacher in ONNX Runtime at 0.6x,
# token merging with int8 ranked first (86.2% after distillation), while uniform search found 3 heads of 6 with MLP
# 0.5 at 87.6% (BENCHMARKS.md, session 8; there the second mix did not measurably help).
MIXES = 2


def _uniform_drops(sensitivity: Sequence[Any]) -> dict[tuple[str, Any], float]:
    """Per (knob, setting): the accuracy points the sensitivity pass saw it cost, added up over the blocks (each
    block alone, before distillation): a rough estimate of what the setting costs in every block at once. A gain
    counts as 0: compression gives back no accuracy before distillation, so a gain is the subset's noise, and added
    up it would hide another block's loss (on the demo teacher, heads 0.67 "gained" 0.39 point over six blocks, each
    within one image of 512, and ranked the mix that pruned them first)."""
    drops: dict[tuple[str, Any], float] = {}
    for s in sensitivity:
        if s.accuracy_drop is not None:
            drops[(s.knob, s.value)] = drops.get((s.knob, s.value), 0.0) + max(s.accuracy_drop, 0.0)
    return drops


def _uniform_mixes_at_budget(space: SearchSpace, heads_per_block: Sequence[int], predictor: CostPredictor,
                             limits: Mapping[str, float], light: Mapping[str, Any],
                             allowed: Mapping[str, Sequence[Any]],
                             drops: Mapping[tuple[str, Any], float], *,
                             measure: Callable[[Recipe], float] | None = None) -> list[dict[str, Any]]:
    """The combination of knob settings, each alike in every block and offered in every block, predicted within
    budget that should lose the least accuracy: with a sensitivity pass (``drops``, see :func:`_uniform_drops`),
    the one whose settings cost least added up, then the closest under the budget; without one, the closest under
    the budget (the largest predicted fraction of the tightest limit: the least compression of all knobs together
    that fits). None (an empty list) when none is predicted to fit or none is needed, and, without a sensitivity
    pass, for one knob alone (a point of its own below). With ``measure`` (a recipe's latency in ms), the first of the
    best-ranked ``MEASURED_MIXES`` measured within the latency limit; none when none is.

    With a sensitivity pass, up to ``MIXES`` such combinations, best first, each compressing a different set of
    knobs from those before it, each chosen the same way.

    Closeness to the budget is not accuracy: on a wide 4-block model under a 0.65x budget, uniform rank 0.25 lost 0.1
    point at 0.60x, while the combination closest under the budget (3 heads of 4 and rank 0.4, at 0.65x) scored 1.1
    points lower after its short distillation (benchmarks/search_quality.py, examples/fashion_mnist/search_wide)."""
    blocks = len(heads_per_block)
    alike = alike_choices(space, blocks, allowed)
    choices = {knob: alike[knob] for knob in light}
    if math.prod(len(values) for values in choices.values()) > MAX_MIXES:
        return None
    ranked = []
    for combination in itertools.product(*choices.values()):
        values = dict(zip(choices, combination))
        try:
            predicted = predictor.predict(recipe_of(space, heads_per_block, uniform_values(space, values, blocks),
                                                    allowed=allowed))
        except AutocompError:  # a combination the operators refuse
            continue
        if not feasible(violations(predicted, limits)):
            continue
        tightest = max(predicted[key] / limit for key, limit in limits.items())
        cost = sum(drops.get((knob, value), 0.0) for knob, value in values.items() if value != light[knob])
        ranked.append(((-cost, tightest), values))
    ranked = [values for _, values in sorted(ranked, key=lambda item: item[0], reverse=True)]
    if not ranked or all(v == light[k] for k, v in ranked[0].items()):  # none fits, or none is needed
        return []
    if not drops:
        ranked = ranked[:1] if sum(v != light[k] for k, v in ranked[0].items()) >= 2 else []
    chosen: list[dict[str, Any]] = []
    for _ in range(MIXES if drops else 1):
        used = [_knobs(mix, light) for mix in chosen]
        left = [values for values in ranked if _knobs(values, light) not in used and _knobs(values, light)]
        if measure is not None:
            measured, left = left[:MEASURED_MIXES], []
            for values in measured:
                ranked.remove(values)  # measured once
                if measure(recipe_of(space, heads_per_block, uniform_values(space, values, blocks),
                                     allowed=allowed)) <= \
                        limits["latency_ms"]:
                    left = [values]
                    break
        if not left:
            break
        chosen.append(left[0])
    return chosen


def _knobs(values: Mapping[str, Any], light: Mapping[str, Any]) -> frozenset[str]:
    """The knobs a uniform combination compresses."""
    return frozenset(knob for knob, value in values.items() if value != light[knob])


def _described(values: Mapping[str, Any], light: Mapping[str, Any]) -> str:
    return ", ".join(f"{knob} {value:g}" for knob, value in values.items() if value != light[knob])


def _least_compression_that_fits(space: SearchSpace, heads_per_block: Sequence[int], predictor: CostPredictor,
                                 limits: Mapping[str, float], light: Mapping[str, Any], knob: str,
                                 allowed: Mapping[str, Sequence[Any]] | None = None) -> Any:
    """The least compressing choice of ``knob`` predicted within ``FILL`` of the budget when set alike in every block
    (the other knobs at their lightest); None when even the strongest does not fit, or the lightest already does.
    Not right at the limit: measurements vary by several %, and a point predicted 4% under a 0.6x limit (tokens
    alone in the session 16 benchmark) measured 2-4% over it in every seed, a trial spent on nothing."""
    within = {key: FILL * limit for key, limit in limits.items()}
    for value in sorted(getattr(space, knob), reverse=True):  # fractions and bit widths: larger compresses less
        values = uniform_values(space, {**light, knob: value}, len(heads_per_block))
        try:
            predicted = predictor.predict(recipe_of(space, heads_per_block, values, allowed=allowed))
        except AutocompError:  # a combination the operators refuse
            continue
        if feasible(violations(predicted, within)):
            return None if value == light[knob] else value
    return None


def _quiet_choices(space: SearchSpace, light: Mapping[str, Any], blocks: int, sensitivity: Sequence[Any],
                   allowed: Mapping[str, Sequence[Any]]) -> dict[str, tuple]:
    """Per block knob, the choices the quiet point may use: the lightest, and those offered that alone cost at most
    ``QUIET`` points."""
    quiet = {name: {value} for name, value in uniform_values(space, light, blocks).items()}
    for s in sensitivity:
        name = space.name(s.block, s.knob)
        if (name in quiet and s.accuracy_drop is not None and s.accuracy_drop <= QUIET
                and s.value in space.offered(s.block, s.knob, allowed)):
            quiet[name].add(s.value)
    return {name: tuple(sorted(values)) for name, values in quiet.items()}


def _sized(space: SearchSpace, heads_per_block: Sequence[int], light: Mapping[str, Any], sensitivity: Sequence[Any],
           quiet: Mapping[str, Sequence[Any]], predictor: CostPredictor, limits: Mapping[str, float],
           allowed: Mapping[str, Sequence[Any]]) -> dict[str, Any] | None:
    """The uncompressed model made heavier through the ``quiet`` choices only, a step at a time, the one that costs
    least per share of the budget saved first, until it is predicted under ``FILL`` of a latency limit and under a
    memory limit (:func:`~autocomp.search._local.repair`); its knob values, or None when the quiet settings cannot
    reach the budget. Every quiet setting at once sat far under a loose budget: on a 4-block model at 0.65x it
    measured 0.37-0.39x and 1.3-1.8 points under the teacher, a starting trial spent where the budget asked for
    nothing."""
    blocks = len(heads_per_block)
    # a quantized block at the space's first choice of layers and activations, as recipe_of predicts it
    quiet = {**{space.name(i, "quantize_layers"): space.quantize_layers[:1] for i in range(blocks)},
             **{space.name(i, "act_bits"): (space.first_act(i, allowed),) for i in range(blocks)}, **quiet}
    distill = {name: getattr(space, name)[0] for name in ("distill_steps", "distill_alpha")}
    fixed = optuna.trial.FixedTrial(space.params({**distill, **uniform_values(space, light, blocks)}, allowed=quiet))
    space.sample(fixed, heads_per_block, allowed=quiet)  # records each parameter's distribution
    base = optuna.trial.create_trial(params=fixed.params, distributions=fixed.distributions,
                                     state=optuna.trial.TrialState.WAITING)
    drops = {(s.block, s.knob, s.value): s.accuracy_drop for s in sensitivity if s.accuracy_drop is not None}
    move = repair(base, space=space, heads_per_block=heads_per_block, allowed=quiet, predictor=predictor,
                  limits=limits, seen=set(), fill_to=FILL, drops=drops)
    if move is None:
        return None
    return {name: sorted(quiet[name])[move.params[name + RANK]] if name + RANK in move.params else quiet[name][0]
            for name in uniform_values(space, light, blocks)}


def _fast_end(space: SearchSpace, light: Mapping[str, Any], blocks: int, sensitivity: Sequence[Any],
              allowed: Mapping[str, Sequence[Any]]) -> dict[str, Any] | None:
    """Per block and knob the strongest setting offered to the search, taking the settings that cost least alone
    first, while what the settings taken cost alone (gains as 0) adds up to at most ``FAST`` points; None when no
    setting fits."""
    values = uniform_values(space, light, blocks)
    spent: dict[str, float] = {}
    scored = [s for s in sensitivity if s.accuracy_drop is not None
              and s.value in space.offered(s.block, s.knob, allowed)]
    for s in sorted(scored, key=lambda s: (max(s.accuracy_drop, 0.0), s.value)):
        name, drop = space.name(s.block, s.knob), max(s.accuracy_drop, 0.0)
        if name not in values:  # static activations: the sampler's to choose, never the fast end's
            continue
        if s.value < values[name] and sum(spent.values()) - spent.get(name, 0.0) + drop <= FAST:
            values[name], spent[name] = s.value, drop
    return None if values == uniform_values(space, light, blocks) else values


def setting_values(space: SearchSpace, knob: str, value: Any) -> dict[str, Any]:
    """The knob values of one setting of the passes before the search: ``knob`` at ``value``; for ``STATIC`` 8-bit
    weights with static activations, and ``weight_bits 8`` with dynamic ones where ``space`` offers both."""
    if (knob, value) == STATIC:
        return {"weight_bits": STATIC_BITS, "act_bits": STATIC_BITS}
    if (knob, value) == ("weight_bits", STATIC_BITS) and space.chooses_activations:
        return {"weight_bits": STATIC_BITS, "act_bits": None}
    return {knob: value}


def recipe_of(space: SearchSpace, heads_per_block: Sequence[int], values: Mapping[str, Any], *,
              allowed: Mapping[str, Sequence[Any]] | None = None) -> Recipe:
    """The recipe of the knob ``values`` (distillation at its first choices: it changes no cost; an 8-bit block's
    activations at :meth:`~SearchSpace.first_act` given ``allowed``, unless given)."""
    blocks = range(len(heads_per_block))
    fixed = {**{name: getattr(space, name)[0] for name in ("distill_steps", "distill_alpha")},
             **{space.name(index, "quantize_layers"): space.quantize_layers[0] for index in blocks},
             **{space.name(index, "act_bits"): space.first_act(index, allowed) for index in blocks},
             **values}
    return space.sample(optuna.trial.FixedTrial(space.params(fixed)), heads_per_block)
