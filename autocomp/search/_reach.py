"""Whether a budget can be met at all, checked before the first trial: a memory limit against the search space's
smallest candidate (counted, so refused outright), a latency limit against its fastest (measured on the target)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from autocomp._compress import compress
from autocomp.budget import COUNTED, UNIT_MISTAKE
from autocomp.config import JobConfig, named
from autocomp.data import Splits
from autocomp.errors import AutocompError
from autocomp.hardware import HardwareProfile
from autocomp.measure import num_threads
from autocomp.measure.placement import measure_on_device
from autocomp.recipe import Recipe
from autocomp.search._screen import CostPredictor, Screen
from autocomp.search._sensitivity import (offered_settings, passes_run, too_slow, uniform_latencies,
                                          write_uniform_latencies)
from autocomp.space import STATIC, STATIC_BITS, SearchSpace, setting_label
from autocomp.measure.placement import DeviceLost
from autocomp.search._start import (MAX_MIXES, alike_choices, held_by_all, lightest, recipe_of, setting_values,
                                    uniform_values)

__all__ = ["check_reachable", "check_memory_first", "check_latency_reachable", "check_latency_early",
           "warn_jointly_unreachable", "ratio_of",
           "BudgetUnreachable", "LatencyUnreachable", "REACH_TOLERANCE", "saves_too_little"]

def check_reachable(space: SearchSpace, heads: list[int], screen: Screen, config: JobConfig,
                    log: Callable[[str], None], *, allowed: Mapping[str, tuple] | None = None,
                    left_out: str = "") -> bool:
    """Refuse, before any trial, a memory or weights limit that even the space's smallest candidate (every knob at
    its strongest in every block; with ``allowed``, the strongest choice each block is offered) exceeds: bytes are
    counted, so the prediction is the candidate's own. A latency limit beyond the fastest candidate's prediction is
    only warned about (without ``allowed``): the cost model can be off.

    ``left_out``: what the passes before the search left out of ``allowed``, said in the refusal.

    Returns whether the fastest candidate is predicted more than ``REACH_TOLERANCE`` over the latency limit (where
    :func:`check_latency_early` measures it before the passes).

    Raises:
        BudgetUnreachable: the memory or weights limit, with the smallest candidate's bytes and the budget that
            admits it.
    """
    offered = allowed if allowed is not None else space.distinct(heads)  # one heads_keep per head count
    choices = {space.name(i, knob): space.offered(i, knob, offered)
               for i in range(len(heads)) for knob in lightest(space)}
    strongest = {name: min(values) for name, values in choices.items()}
    try:
        predicted = screen.predictor.predict(recipe_of(space, heads, strongest))
    except AutocompError:  # a combination the operators refuse: nothing to conclude
        return False
    over = [key for key in COUNTED if key in screen.limits and predicted[key] > screen.limits[key]]
    bytes_refused = bool(over)  # the memory, or the weights alone
    if bytes_refused:
        key, limit = over[0], screen.limits[over[0]]
        strongest = _no_wider_than_needed(space, heads, screen, choices, strongest, key, predicted[key])
    limit_ms = screen.limits.get("latency_ms")
    if not bytes_refused and allowed is None and limit_ms is not None and predicted["latency_ms"] > limit_ms:
        # settings fast alone can be slow together (int8 on thin low-rank layers): the fastest of the candidate and
        # of it without each knob in turn is the one warned about
        for knob, light in lightest(space).items():
            without = {**strongest, **{space.name(i, knob): light for i in range(len(heads))}}
            try:
                faster = screen.predictor.predict(recipe_of(space, heads, without))
            except AutocompError:
                continue
            if faster["latency_ms"] < predicted["latency_ms"]:
                strongest, predicted = without, faster
        if space.chooses_activations:  # its 8-bit blocks with static activations, where predicted faster
            static = {**strongest, **{space.name(i, "act_bits"): STATIC_BITS for i in range(len(heads))}}
            try:
                faster = screen.predictor.predict(recipe_of(space, heads, static))
            except AutocompError:
                faster = predicted
            if faster["latency_ms"] < predicted["latency_ms"]:
                strongest, predicted = static, faster

    def static(i: int) -> bool:
        return (strongest.get(space.name(i, "act_bits")) == STATIC_BITS
                and strongest.get(space.name(i, "weight_bits"), STATIC_BITS) == STATIC_BITS)

    def said(i: int, knob: str) -> bool:  # after the last block no block reads fewer tokens: never reduced there
        return not (knob == "tokens_keep" and i == len(heads) - 1)

    per_block = [(", ".join(setting_label(knob, strongest[space.name(i, knob)], heads[i:i + 1])
                            for knob in lightest(space) if said(i, knob)) or held_by_all(space)
                  or "nothing compressed")
                 + (" with static activations" if static(i) else "") for i in range(len(heads))]
    what = (f"every block at {per_block[0]}" if len(set(per_block)) == 1
            else "; ".join(f"block {i} at {values}" for i, values in enumerate(per_block)))
    if bytes_refused:
        offered = " offered to the search" if allowed else ""
        needed = f"{_rounded_up(predicted[key])} MB"
        if (fraction := config.budget.given_as_fraction(key)) is not None:  # given as a fraction: as one
            needed = f"{key.split('_')[0]}: {_rounded_up(fraction * predicted[key] / limit)} ({needed})"
        whole = (screen.uncompressed or {}).get(key)
        held = "weights" if key == "weights_mb" else "weights and activations"
        weights = (f", {predicted['weights_mb']:.4g} MB of them weights (budget.weights_mb limits the weights alone)"
                   if key == "memory_mb" and predicted["weights_mb"] <= limit and "weights_mb" not in screen.limits
                   else "")  # a limit on the model's size
        also = "".join(f"; budget: {other} <= {screen.limits[other]:.4g} cannot be met either ({predicted[other]:.4g} "
                       f"MB of weights: at least {_rounded_up(predicted[other])} MB)" for other in over[1:])
        raise BudgetUnreachable(f"budget: {key} <= {limit:.4g} cannot be met in {named(config, 'search_space')}: its "
                                f"smallest candidate{offered} ({what}) holds {predicted[key]:.4g} MB of "
                                f"{held}" + (f" (the uncompressed model: {whole:.4g} MB)" if whole else "") + weights
                                + f"; loosen the budget to at least {needed} or widen the "
                                "search space" + (f" ({left_out})" if left_out else "") + also)
    if allowed is None and limit_ms is not None and predicted["latency_ms"] > limit_ms:
        log(f"warning: the cost model predicts even the fastest candidate ({what}) at "
            f"{predicted['latency_ms']:.4g} ms, over the limit {limit_ms:.4g} ms; the search may find nothing within "
            "budget")
        return predicted["latency_ms"] > limit_ms * (1 + REACH_TOLERANCE)
    return False


def check_memory_first(space: SearchSpace, heads: list[int], base: nn.Module, profile: HardwareProfile,
                       config: JobConfig, log: Callable[[str], None]) -> None:
    """:func:`check_reachable`'s memory half for absolute limits (``budget.memory_mb``, ``budget.weights_mb``),
    before the uncompressed model is measured (up to a minute on a runtime backend): bytes are counted, and the cost
    model's count does not depend on the measured latency, so the refusal is the one the check after the
    measurement would make."""
    limits = {key: getattr(config.budget, key) for key in COUNTED if getattr(config.budget, key) is not None}
    if not limits or config.trials <= 0:
        return
    try:
        predictor = CostPredictor(base=base, profile=profile, base_latency_ms=1.0)  # no latency is asked of it
    except AutocompError:  # a model the cost model cannot describe: nothing predicted
        return
    try:  # said beside the smallest candidate's: memory counts the activations too, not the weights alone
        whole = predictor.predict(Recipe.identity(len(heads)))
    except AutocompError:
        whole = None
    check_reachable(space, heads, Screen(predictor=predictor, limits=limits,
                                         margin=config.skip_margin, uncompressed=whole), config, log)


def warn_jointly_unreachable(space: SearchSpace, heads: list[int], screen: Screen, log: Callable[[str], None], *,
                             allowed: Mapping[str, tuple] | None = None,
                             measure: Callable[[Recipe], float] | None = None) -> None:
    """Under a latency and a memory or weights limit, each within reach alone: warn where the candidate with every
    block alike predicted fastest within the byte limits (counted: exact) is over the latency limit, predicted or,
    with ``measure`` (a recipe's latency in ms on the target), measured: the cost model's latency of a combination
    can be well under what it measures (int8 slower than float on a small model). Not a refusal: blocks set
    differently may meet both where no uniform setting does."""
    limits = screen.limits
    counted = [key for key in COUNTED if key in limits]
    if "latency_ms" not in limits or not counted:
        return
    blocks, light = len(heads), lightest(space)
    alike = alike_choices(space, blocks, allowed or {})
    choices = {knob: alike[knob] for knob in [*light, *(["act_bits"] if space.chooses_activations else [])]}
    if not choices or math.prod(len(values) for values in choices.values()) > MAX_MIXES:
        return
    small: list[tuple[float, Recipe, dict[str, Any]]] = []  # predicted latency, recipe, values: within memory
    for combination in itertools.product(*choices.values()):
        values = dict(zip(choices, combination))
        try:
            recipe = recipe_of(space, heads, uniform_values(space, values, blocks), allowed=allowed)
            predicted = screen.predictor.predict(recipe)
        except AutocompError:  # a combination the operators refuse
            continue
        if all(predicted[key] <= limits[key] for key in counted):
            small.append((predicted["latency_ms"], recipe, values))
    if not small:  # none alike is within the memory limit: blocks set differently are (the memory check passed)
        return
    latency, recipe, values = min(small, key=lambda item: item[0])
    figure = f"predicted at {latency:.4g} ms"
    if latency <= limits["latency_ms"]:
        if measure is None:
            return
        try:
            measured = measure(recipe)
        except DeviceLost:
            raise
        except AutocompError:  # the target does not run it: nothing to warn about from it
            return
        if measured <= limits["latency_ms"]:
            return
        figure = f"measured {measured:.4g} ms (predicted {latency:.4g})"
    static = values.get("act_bits") == STATIC_BITS and values.get("weight_bits", STATIC_BITS) == STATIC_BITS
    named = [setting_label(knob, value, heads[:1]) for knob, value in values.items()
             if knob in light and value != light[knob] and not (static and knob == "weight_bits")]
    if static:  # named once, as 8-bit weights with static activations
        named.append(f"weight_bits {STATIC_BITS} with static activations")
    named = ", ".join(named) or held_by_all(space)
    what = f"every block at {named}" if named else "nothing compressed"
    within = " and ".join(f"{key} <= {limits[key]:.4g}" for key in counted)
    log(f"warning: each limit is within reach alone, but the candidate with every block alike predicted fastest "
        f"within {within} ({what}) {figure}, over latency_ms <= {limits['latency_ms']:.4g}; blocks set differently "
        "may meet both, but the search may find nothing within budget: loosen one limit")


def _no_wider_than_needed(space: SearchSpace, heads: list[int], screen: Screen, choices: Mapping[str, tuple],
                          strongest: dict[str, Any], key: str, nbytes: float) -> dict[str, Any]:
    """``strongest`` with each block's bit width as wide as holds no more of ``key`` (``memory_mb``, ``weights_mb``)
    than ``nbytes``: where a runtime holds 16-bit weights as fp32, the smallest candidate's blocks are at 32 bits,
    not at a setting that saves nothing."""
    if "weight_bits" not in lightest(space):
        return strongest
    for index in range(len(heads)):
        name = space.name(index, "weight_bits")
        for bits in sorted((b for b in choices[name] if b > strongest[name]), reverse=True):
            wider = {**strongest, name: bits}
            try:
                held = screen.predictor.predict(recipe_of(space, heads, wider))[key]
            except AutocompError:
                continue
            if held <= nbytes:
                strongest = wider
                break
    return strongest


def _rounded_up(value: float, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits, rounded up: a budget set to it admits what it was computed from."""
    if value <= 0:
        return f"{value:.{digits}g}"
    scale = 10 ** (digits - 1 - math.floor(math.log10(value)))
    return f"{math.ceil(value * scale - 1e-9) / scale:.{digits}g}"


REACH_TOLERANCE = 0.1  # a latency limit is refused when the space's fastest candidate measures >10% over it
LESS_IS_FASTER = ("heads_keep", "mlp_keep", "rank", "tokens_keep")  # knobs whose smaller value does less work


class BudgetUnreachable(AutocompError):
    """No candidate of the search space can meet the budget (found before any trial)."""


class LatencyUnreachable(BudgetUnreachable):
    """No candidate of the search space can meet the latency limit (measured before any trial); ``ratio``: the
    fastest candidate's latency as a fraction of the uncompressed model's."""

    def __init__(self, message: str, ratio: float = math.inf) -> None:
        super().__init__(message)
        self.ratio = ratio


def check_latency_reachable(ratios: Mapping[tuple[str, Any], float], base: nn.Module, space: SearchSpace,
                            heads: list[int], splits: Splits, config: JobConfig, profile: HardwareProfile,
                            limit: float, base_latency_ms: float, allowed: Mapping[str, tuple] | None = None,
                            dropped: Sequence[tuple[str, Any]] = (), floor: float = 1.0) -> None:
    """Refuse a latency limit that the space's fastest candidate misses: each block at each knob's fastest setting
    among those the search offers there (``allowed``, see :func:`~autocomp.search._sensitivity.allowed_choices`;
    one that saves less than ``sensitivity.min_saving`` as the latency pass measured it is no part of it, offered or
    not (under a memory limit too it stays offered, for the bytes it saves);
    fastest: the strongest of a structural knob, ``LESS_IS_FASTER``; the bit width measured fastest alone),
    measured on the target more than ``REACH_TOLERANCE`` over the limit, twice (the faster counts: a busy machine
    slows a run), and then that candidate without each of its knobs in turn, each removal kept where it measures
    faster (settings fast alone can be slow together); the fastest is named. Nothing is measured when one setting
    offered in every block already meets the limit alone. The tolerance leaves room for timing noise and for
    per-block recipes a little faster than these. A memory limit beside the latency one is not checked here: a
    candidate without int8 may be faster and too large (the search then finds nothing within both). ``dropped``:
    the settings the sensitivity pass offers in no block (not in ``ratios``), named in the refusal with the option
    that would let the search try them.

    Raises:
        LatencyUnreachable: with the fastest candidate's latency and the budget that would admit it.
    """
    allowed, blocks = allowed or {}, len(heads)
    everywhere = alike_choices(space, blocks, allowed)

    if any(r * base_latency_ms <= limit for (knob, value), r in ratios.items()
           if all(v in everywhere[k] for k, v in setting_values(space, knob, value).items())):
        return
    over = limit * (1 + REACH_TOLERANCE) / base_latency_ms  # the ratio a candidate must measure over to refuse
    if not ratios and (held_by_all(space) or over >= 1):  # nothing timed: the fastest candidate is the least
        return  # compression, the uncompressed model (within reach) or what every candidate holds (unmeasured)
    light, offered = lightest(space), 1 - config.sensitivity.min_saving  # a slower setting is offered in no block
    judged = {setting: ratio / floor for setting, ratio in ratios.items()}  # against what every candidate holds
    values = {}  # the candidate's Optuna parameters
    for index in range(blocks):
        for knob in light:
            name = space.name(index, knob)
            fast = [v for v in space.offered(index, knob, allowed) if judged.get((knob, v), math.inf) <= offered]
            # less kept is less work: the strongest, not the one a single noisy timing put first (0.944x for MLP
            # 0.75 against 0.949x for 0.5 was seen); a bit width by its timing (int8 can be slower than float)
            values[name] = min(fast, key=(lambda v: v) if knob in LESS_IS_FASTER else (lambda v: ratios[(knob, v)]),
                               default=light[knob])
        bits = space.name(index, "weight_bits")  # 8-bit weights with static activations, where measured faster
        if (judged.get(STATIC, math.inf) < min(offered, judged.get(("weight_bits", values.get(bits)), 1.0))
                and all(v in space.offered(index, k, allowed) for k, v in setting_values(space, *STATIC).items())):
            values[bits] = values[space.name(index, "act_bits")] = STATIC_BITS
    if space.chooses_activations:  # each block's activations as the search may choose them, dynamic where unsaid
        light = {**light, "act_bits": None}
        values = {**{space.name(i, "act_bits"): space.first_act(i, allowed) for i in range(blocks)}, **values}

    def build(values: Mapping[str, Any]) -> nn.Module | None:
        try:
            with torch.no_grad(), num_threads(config.resources.cpu):
                return compress(base, recipe_of(space, heads, values), calibration=splits.calib.x)
        except AutocompError:  # a combination the operators refuse
            return None

    ratio = 1.0  # nothing timed (the passes offer no setting in any block): the uncompressed model, measured
    if ratios:
        model = build(values)
        if model is None:  # nothing to conclude
            return
        measure = ratio_of(base, profile, splits, config)
        ratio = measure(model)
        if ratio > over:  # measured again: a busy machine slows one run
            ratio = min(ratio, measure(model))
        # settings fast alone can be slow together (int8 on thin low-rank layers measured 0.86x with, 0.68x
        # without): the candidate without each knob in turn (each block at its lightest choice; activations: those
        # where nothing chooses them), before the budget is refused
        unset = {space.name(i, knob): space.first_act(i, allowed) if knob == "act_bits" else light[knob]
                 for i in range(blocks) for knob in light}
        for knob in [knob for knob in light if any(values[space.name(i, knob)] != unset[space.name(i, knob)]
                                                   for i in range(blocks))]:
            if ratio <= over:
                return
            without = {**values, **{space.name(i, knob): unset[space.name(i, knob)] for i in range(blocks)}}
            if (model := build(without)) is not None and (fewer := measure(model)) < ratio:
                ratio, values = fewer, without

    def label(knob: str, value: Any) -> str:
        return setting_label(knob, value, heads, dynamic=space.chooses_activations)

    used: dict[tuple[str, Any], int] = {}  # how many blocks each setting of the candidate named is in
    for index in range(blocks):
        block = {knob: values[space.name(index, knob)] for knob in light}
        if block.get("weight_bits", STATIC_BITS) != STATIC_BITS:
            block.pop("act_bits", None)  # no activations to choose
        elif block.get("act_bits") == STATIC_BITS:
            block.pop("weight_bits", None)  # named once, as 8-bit weights with static activations
        for knob, value in block.items():
            if value != light[knob]:
                used[(knob, value)] = used.get((knob, value), 0) + 1
    if ratio > over:
        if not ratios:
            what = "nothing compressed: the sensitivity pass offers none of its settings in any block"
        elif set(ratios.values()) == {math.inf}:
            what = "nothing compressed: the target runs none of its settings"
        elif not used:
            what = (f"every block at {held_by_all(space)}, what every candidate holds" if held_by_all(space)
                    else "nothing compressed") + ": none of its settings saves time on the target"
        elif set(used.values()) == {blocks}:
            what = "every block at " + ", ".join(label(knob, value) for knob, value in used)
        else:  # the sensitivity pass left some settings in some blocks only
            what = ", ".join(f"{label(knob, value)} in " + (
                "every block" if count == blocks else f"{count} of {blocks} blocks")
                for (knob, value), count in used.items())
        slow = [f"{label(knob, value)} ({r:.2f}x)"
                for (knob, value), r in too_slow(judged, min_saving=config.sensitivity.min_saving).items()]
        # in the form the budget was given (a fraction, or ms), with room for timing noise: a limit right at the
        # one measurement is met by the candidate in some runs only (a new user's: 4.33-5.05 ms at 4.6)
        wanted = ratio * (1 + REACH_TOLERANCE)
        needed, given = f"{math.ceil(wanted * 100 - 1e-9) / 100:.2f}x", f"latency_ms <= {limit:.4g}"
        if config.budget.latency_ms is not None and config.budget.latency is None:
            needed = f"latency_ms: {_rounded_up(wanted * base_latency_ms, 3)} ({needed})"
            batch = profile.batch_size  # what a limit in ms holds: one forward pass of the profile's batch
            per = f" per forward pass of {batch} images (the profile's batch_size)" if batch > 1 else ""
            if limit * UNIT_MISTAKE <= ratio * base_latency_ms:  # 5 ms given as 0.005
                needed += f" (budget.latency_ms is in ms{per}: was it given in seconds?)"
            elif per and limit * batch >= ratio * base_latency_ms:  # 16 images in 80 ms given as 5 ms an image
                needed += (f" (budget.latency_ms is{per}: was it given per image? {batch} images at "
                           f"{limit:.4g} ms each is latency_ms: {limit * batch:.4g})")
        elif config.budget.latency is not None:  # the fraction as given, and the ms it came to in this run
            given = (f"latency <= {config.budget.latency:g}x ({limit:.4g} ms, the uncompressed model measuring "
                     f"{base_latency_ms:.4g} ms now)")
        raise LatencyUnreachable(
            f"budget: {given} cannot be met in {named(config, 'search_space')} on {profile.name}: its fastest "
            f"candidate ({what}) measured {ratio * base_latency_ms:.4g} ms, {ratio:.2f}x the "
            f"uncompressed model; loosen the budget to at least about {needed} (its measurement and "
            f"{REACH_TOLERANCE:.0%} for timing noise) or widen the search space"
            + (f" (the sensitivity pass offers {', '.join(label(knob, value) for knob, value in dropped)} in no "
               f"block: alone they cost a block more than {config.sensitivity.drop_above:g} points, or the "
               "operators refuse them, see sensitivity.csv; a higher sensitivity.drop_above lets the search try the "
               "former)" if dropped else "")
            + (f" (it holds none of {', '.join(slow)}: in every block at once each "
               f"{saves_too_little(config.sensitivity.min_saving)} here"
               + (f" against {held_by_all(space)} in every block" if floor != 1.0 else "")
               + ", see uniform_latency.csv)" if slow else ""), ratio=ratio)


def check_latency_early(run_dir: Path, base: nn.Module, space: SearchSpace, heads: list[int], splits: Splits,
                        config: JobConfig, profile: HardwareProfile, limits: Mapping[str, float],
                        base_latency_ms: float, log: Callable[[str], None]) -> None:
    """:func:`check_latency_reachable` before the passes instead of after them (minutes on a 224-px ViT), for a
    latency limit the cost model places out of reach (:func:`check_reachable`): each block's strongest setting of
    each knob that does less work (``LESS_IS_FASTER``) and each bit width, each in every block at once, measured on
    the target; then the check once for each bit width (and for none), since the passes may leave any of them
    (4-bit weights fastest alone may be dropped for accuracy, 8-bit then fastest with a low rank). The limit is
    refused where every one of them refuses it, with the fastest they measured: the passes only take settings away.
    Nothing is refused where a strongest setting does not run on the target (a weaker one may), nor in a space
    whose every candidate holds some compression (settings are judged against that there). The timings are
    ``uniform_latency.csv`` in ``run_dir`` (the latency pass writes it anew, and the cost model learns from its
    own: nothing is learnt twice).

    Raises:
        LatencyUnreachable: as :func:`check_latency_reachable`.
    """
    if not passes_run(space, config.sensitivity.images) or held_by_all(space):  # no check after the passes, or one
        return  # against a floor not timed here
    offered, blocks = space.distinct(heads), len(heads)  # one heads_keep per head count
    # each block's own strongest: a block offered 0.75 at best is timed at 0.75, not left uncompressed
    strongest = {(knob, min(space.offered(i, knob, offered))) for i in range(blocks) for knob in LESS_IS_FASTER
                 if knob in lightest(space)}
    settings = [setting for setting in offered_settings(offered, space, blocks)
                if setting[0] not in LESS_IS_FASTER or setting in strongest]
    if not settings:
        return
    log(f"latency: the cost model places the limit out of reach; the fastest settings first ({len(settings)}, each "
        "in every block at once), to refuse it before the passes if it is")
    minimum = None if any(key in limits for key in COUNTED) else config.sensitivity.min_saving  # as the latency
    # pass judges
    with num_threads(config.resources.cpu):
        ratios = uniform_latencies(base, space, heads, calib=splits.calib.x,
                                   measure=ratio_of(base, profile, splits, config), log=log, settings=settings,
                                   min_saving=minimum)
    write_uniform_latencies(run_dir, ratios, min_saving=minimum)  # before a refusal: it explains it
    if any(ratio == math.inf for (knob, _), ratio in ratios.items() if knob in LESS_IS_FASTER):
        return  # a weaker setting of that knob may run: the passes time it
    bits = [setting for setting in ratios if setting[0] not in LESS_IS_FASTER]
    refusals = []
    for chosen in [None, *sorted(bits, key=ratios.get)]:  # each bit width the passes may leave, and none
        alone = {setting: ratio for setting, ratio in ratios.items() if setting not in bits or setting == chosen}
        try:
            check_latency_reachable(alone, base, space, heads, splits, config, profile, limits["latency_ms"],
                                    base_latency_ms, allowed=offered)
        except LatencyUnreachable as refused:
            refusals.append(refused)
            continue
        log("latency: the fastest settings may reach the limit as measured; the passes go on")
        return
    raise min(refusals, key=lambda refused: refused.ratio)


def saves_too_little(min_saving: float, *, plural: bool = False) -> str:
    """What a setting :func:`~autocomp.search._sensitivity.too_slow` does: ``saves less than 3%``, or, with no
    saving asked for, ``saves no time`` (it is slower than the uncompressed model)."""
    verb = "save" if plural else "saves"
    return f"{verb} no time" if min_saving == 0 else f"{verb} less than {100 * min_saving:g}%"


def ratio_of(base: nn.Module, profile: HardwareProfile, splits: Splits,
             config: JobConfig) -> Callable[[nn.Module], float]:
    """A model's latency as a fraction of ``base``'s, measured on the target interleaved with it."""
    def ratio(model: nn.Module) -> float:
        placed = measure_on_device(model, profile, example=splits.calib.x, reference=base,
                                   timeout_s=config.measure_timeout_s)
        return placed.measurement.latency_ratio
    return ratio
