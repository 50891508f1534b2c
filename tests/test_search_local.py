"""Local moves from the best trial within budget, and proposals of a recipe already run (duplicates)."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import optuna
import pytest

from autocomp.budget import feasible
from autocomp.measure.profiling import load_profile
from autocomp.recipe import Recipe
from autocomp.search._controller import DUPLICATE, LOCAL, RECORDED, OptunaController, counted
from autocomp.search._local import FILL, _moves, local_move, recipe_key
from autocomp.search._screen import CostPredictor, Screen
from autocomp.space import RANK, SearchSpace
from autocomp.search._start import recipe_of
from conftest import small_vit

ROOT = Path(__file__).resolve().parents[1]
PROFILE = dataclasses.replace(load_profile(ROOT / "hardware_profiles" / "local_cpu.yaml"), batch_size=4,
                              peak_gflops={"fp32": 100.0, "int8": 200.0}, fast_weight_bits={8: "int8"},
                              memory_bandwidth_gbs=10.0, op_overhead_us=8.0)  # fixed numbers: no load to vary
SPACE = SearchSpace(heads_keep=(0.5, 0.67, 0.83, 1.0), mlp_keep=(0.5, 0.75, 1.0), distill_steps=(100,),
                    distill_alpha=(0.3, 0.6))
HEADS = [6, 6]
HALF = {f"b{i}.{k}": 0.5 for i in range(2) for k in ("heads_keep", "mlp_keep")}  # the lightest recipe


@pytest.fixture(scope="module")
def predictor():
    return CostPredictor(base=small_vit(), profile=PROFILE, base_latency_ms=10.0)


def _study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "minimize", "minimize"],
                               sampler=optuna.samplers.RandomSampler(seed=0))


def _latency(predictor, values):
    return predictor.predict(recipe_of(SPACE, HEADS, values))["latency_ms"]


def _tell(controller, trial_id, asked, predictor, limit, accuracy=80.0):
    """Complete a trial with its predicted latency as the measured one."""
    latency = predictor.predict(Recipe.from_dict(asked["recipe"]))["latency_ms"]
    controller.on_trial_complete(trial_id, result={**dict.fromkeys(RECORDED, None), "accuracy": accuracy,
                                                   "latency_ms": latency, "memory_mb": 1.0, "trial_seconds": 1.0,
                                                   "violation:latency_ms": latency / limit - 1.0})


def _knobs(recipe):
    return [dict(sorted(block.items())) for block in recipe["blocks"]]


def test_after_the_coarse_stage_a_share_of_draws_are_moves_from_the_best_trial_within_budget(predictor):
    limit = 1.15 * _latency(predictor, HALF)  # the lightest recipe fits, with a little of the budget to spend
    study = _study()
    study.enqueue_trial(SPACE.params({**HALF, "distill_alpha": 0.3}))
    controller = OptunaController(study=study, space=SPACE, heads_per_block=HEADS, n_trials=5, local=0.5, seed=0,
                                  screen=Screen(predictor=predictor, limits={"latency_ms": limit}, margin=None))
    first = controller.suggest("a")
    _tell(controller, "a", first, predictor, limit)
    proposed = [controller.suggest(t) for t in "bcde"]  # b: a move, c: the sampler's, d: a move, e: the sampler's
    moves = [study.trials[p["trial_number"]].user_attrs.get(LOCAL) for p in proposed]
    assert [m is not None for m in moves] == [True, False, True, False]
    assert moves[0].startswith("from trial 0: ")
    for asked in (proposed[0], proposed[2]):
        assert asked["recipe"] != first["recipe"] and asked["recipe"]["distill"] == first["recipe"]["distill"]
        predicted = predictor.predict(Recipe.from_dict(asked["recipe"]))["latency_ms"]
        assert predicted <= limit
        assert predicted >= predictor.predict(Recipe.from_dict(first["recipe"]))["latency_ms"]
        trial = study.trials[asked["trial_number"]]  # filled: no knob a step lighter stays under FILL of the limit
        for params, _ in _moves(trial.params, trial.distributions, lighter_only=True):
            after = predictor.predict(SPACE.sample(optuna.trial.FixedTrial(params), HEADS))["latency_ms"]
            assert after > FILL * limit
    assert proposed[0]["recipe"] != proposed[2]["recipe"]  # a move already queued is not drawn again


def test_a_move_is_one_knob_a_step_away_or_one_lighter_and_another_heavier(predictor):
    limit = 1.15 * _latency(predictor, HALF)
    study = _study()
    study.enqueue_trial(SPACE.params({**HALF, "distill_alpha": 0.3}))
    trial = study.ask()
    base = SPACE.sample(trial, HEADS)
    trial.set_user_attr("recipe", base.to_dict())
    base_trial = study.tell(trial, [80.0, 1.0, 1.0])
    for seed in range(10):
        params, label, _ = local_move(base_trial, space=SPACE, heads_per_block=HEADS, allowed=None,
                                      predictor=predictor, limits={"latency_ms": limit}, seen=set(),
                                      rng=random.Random(seed))
        changed = {name: (base_trial.params[name], value) for name, value in params.items()
                   if value != base_trial.params[name]}
        ups = [name for name, (a, b) in changed.items() if b == a + 1]
        downs = [name for name, (a, b) in changed.items() if b == a - 1]
        assert (len(changed), len(ups)) in ((1, 1), (1, 0), (2, 1)) and len(ups) + len(downs) == len(changed)
        assert label.count(" up") == len(ups) and label.count(" down") == len(downs)
        recipe = SPACE.sample(optuna.trial.FixedTrial(params), HEADS)
        assert predictor.predict(recipe)["latency_ms"] <= limit


def test_no_move_is_drawn_before_a_trial_is_within_budget_nor_one_predicted_over_it(predictor):
    limit = 0.5 * _latency(predictor, HALF)  # nothing fits
    study = _study()
    controller = OptunaController(study=study, space=SPACE, heads_per_block=HEADS, n_trials=3, local=1.0, seed=0,
                                  screen=Screen(predictor=predictor, limits={"latency_ms": limit}, margin=None))
    for trial_id in "abc":
        _tell(controller, trial_id, controller.suggest(trial_id), predictor, limit)
    assert not any(LOCAL in t.user_attrs for t in study.trials)  # no trial within budget to move from
    base = study.trials[0]
    assert base.state.name == "COMPLETE" and not feasible(base.constraints)
    kwargs = dict(space=SPACE, heads_per_block=HEADS, allowed=None, predictor=predictor,
                  limits={"latency_ms": limit}, seen=set(), rng=random.Random(0))
    assert local_move(base, **kwargs) is None  # every move is predicted over the budget
    params, _, _ = local_move(base, **kwargs, must_fit=False)  # a duplicate's replacement need not fit
    assert params != base.params


def test_a_proposal_already_run_is_not_run_again_nor_counted_and_a_move_takes_its_place(predictor):
    limit = 10 * _latency(predictor, HALF)
    study = _study()
    controller = OptunaController(study=study, space=SPACE, heads_per_block=HEADS, n_trials=2, seed=0,
                                  screen=Screen(predictor=predictor, limits={"latency_ms": limit}, margin=None))
    first = controller.suggest("a")
    _tell(controller, "a", first, predictor, limit)
    study.enqueue_trial(study.trials[0].params)  # the sampler proposes the same recipe again
    second = controller.suggest("b")
    duplicate, move = study.trials[1], study.trials[2]
    assert duplicate.state.name == "PRUNED" and duplicate.user_attrs[DUPLICATE] == 0 and not counted(duplicate)
    # the move names the trial that ran the recipe, not the draw of it that never ran (it named trial 1)
    assert second["trial_number"] == move.number and move.user_attrs[LOCAL].startswith("from trial 0: ")
    assert recipe_key(second["recipe"]) != recipe_key(first["recipe"])
    _tell(controller, "b", second, predictor, limit)
    assert controller.suggest("c") == controller.FINISHED  # two trials run: the duplicate took none of them
    retry = OptunaController(study=study, space=SPACE, heads_per_block=HEADS, n_trials=1, seed=0)
    study.enqueue_trial(study.trials[0].params, user_attrs={"retry_of": 0})
    assert retry.suggest("d")["recipe"] == first["recipe"]  # a retry runs a recipe again on purpose


def test_local_moves_are_off_at_zero_and_the_config_checks_the_share(predictor):
    limit = 1.15 * _latency(predictor, HALF)
    study = _study()
    controller = OptunaController(study=study, space=SPACE, heads_per_block=HEADS, n_trials=4, local=0.0, seed=0,
                                  screen=Screen(predictor=predictor, limits={"latency_ms": limit}, margin=None))
    for trial_id in "abcd":
        _tell(controller, trial_id, controller.suggest(trial_id), predictor, limit)
    assert not any(LOCAL in t.user_attrs for t in study.trials)
    from autocomp.config import JobConfig
    from autocomp.errors import AutocompError

    fields = {f.name for f in dataclasses.fields(JobConfig)}
    assert "local" in fields
    with pytest.raises(AutocompError, match="local must be a share of the draws in"):
        JobConfig(model=None, data=None, search_space=Path("x"), hardware=Path("x"), budget=None, local=1.5)


def test_the_summary_counts_the_moves_those_within_budget_and_the_duplicates():
    from autocomp.results import TrialRow
    from autocomp.search._finish import proposals

    def row(number, latency_ms, **kwargs):
        return TrialRow(number=number, state="COMPLETE", recipe_summary="", recipe={"blocks": [{}, {}]},
                        accuracy=80.0 + number, latency_ms=latency_ms, memory_mb=1.0, latency_ratio=None,
                        weights_mb=1.0, activations_mb=0.0, simulated_layers=0,
                        violations={"latency_ms": latency_ms / 10.0 - 1}, **kwargs)

    rows = [row(0, 9.0), row(1, 9.5, local_move="from trial 0: b1.heads_keep up"),
            row(2, 11.0, local_move="from trial 0: b0.mlp_keep up"),
            dataclasses.replace(row(3, 9.0, duplicate_of=0), state="PRUNED", accuracy=None),
            row(4, 9.9, local_move="from trial 5: repaired: b0.mlp_keep down")]
    assert proposals(rows, rows[1]) == {"local_moves": 2, "local_within_budget": 1, "best_is_local_move": True,
                                        "repairs": 1, "repairs_within_budget": 1, "best_is_repair": False,
                                        "duplicates": 1}
    assert proposals(rows, rows[0])["best_is_local_move"] is False
    assert proposals(rows, rows[4])["best_is_repair"] and not proposals(rows, rows[4])["best_is_local_move"]


def test_moves_are_predicted_relative_to_the_base_as_measured(predictor):
    middle = {f"b{i}.{k}": v for i in range(2) for k, v in (("heads_keep", 0.67), ("mlp_keep", 0.75))}
    predicted = _latency(predictor, middle)
    limit = 0.85 * predicted  # predicted well over the limit, measured under it
    study = _study()
    study.enqueue_trial(SPACE.params({**middle, "distill_alpha": 0.3}))
    trial = study.ask()
    trial.set_user_attr("recipe", SPACE.sample(trial, HEADS).to_dict())
    base = study.tell(trial, [80.0, 0.95 * limit, 1.0])
    kwargs = dict(space=SPACE, heads_per_block=HEADS, allowed=None, predictor=predictor,
                  limits={"latency_ms": limit}, seen=set(), rng=random.Random(0))
    assert local_move(base, **kwargs) is None  # taken as predicted, no move from it fits
    params, _, _ = local_move(base, **kwargs, measured={"latency_ms": 0.95 * limit, "memory_mb": 1.0})
    moved = predictor.predict(SPACE.sample(optuna.trial.FixedTrial(params), HEADS))["latency_ms"]
    assert moved * (0.95 * limit / predicted) <= limit  # within budget, scaled as the base measured


def test_a_move_is_filled_with_the_steps_the_sensitivity_pass_says_give_back_most_per_cost(predictor):
    from autocomp.search._local import _given_back

    drops = {(b, "heads_keep", v): d for b in range(2) for v, d in ((0.5, 6.0), (0.67, 3.0), (0.83, 1.0))}
    drops[(1, "mlp_keep", 0.5)] = 2.0
    before = {"b0.heads_keep#rank": 0, "b1.mlp_keep#rank": 0, "all.heads_keep#rank": 1}
    after = {"b0.heads_keep#rank": 1, "b1.mlp_keep#rank": 1, "all.heads_keep#rank": 2}
    assert _given_back(before, after, SPACE, HEADS, None, drops) == pytest.approx((6 - 3) + (2 - 0) + 2 * (3 - 1))
    # a named choice (static activations, null or 8): its own value, no rank to look up
    static = dataclasses.replace(SPACE, weight_bits=(32, 8), act_bits=(None, 8))
    assert _given_back({"b1.act_bits": 8}, {"b1.act_bits": None}, static, HEADS, None,
                       {(1, "act_bits", 8): 1.5}) == pytest.approx(1.5)

    limit = 1.12 * _latency(predictor, HALF)  # room for a few steps, not all
    study = _study()
    study.enqueue_trial(SPACE.params({**HALF, "distill_alpha": 0.3}))
    trial = study.ask()
    trial.set_user_attr("recipe", SPACE.sample(trial, HEADS).to_dict())
    base = study.tell(trial, [80.0, 1.0, 1.0])
    steps = {}
    for costly in ("heads_keep", "mlp_keep"):
        weights = {(b, costly, v): 10.0 * (1 - v) for b in range(2) for v in (0.5, 0.67, 0.75, 0.83)}
        moves = [local_move(base, space=SPACE, heads_per_block=HEADS, allowed=None, predictor=predictor,
                            limits={"latency_ms": limit}, seen=set(), rng=random.Random(seed), fill_to=FILL,
                            drops=weights) for seed in range(8)]
        labels = [move.label for move in moves]
        steps[costly] = [sum(int(n or 1) for label in labels for n in re.findall(rf"{knob} up(?: (\d+))?", label))
                         for knob in ("heads_keep", "mlp_keep")]
        for move in moves:  # the net change of each knob, once: no step named that a later one undoes
            named = re.findall(r"(b\d\.\w+) (?:up|down)", move.label)
            changed = {name.removesuffix(RANK) for name, value in move.params.items() if value != base.params[name]}
            assert len(named) == len(set(named)) and set(named) == changed, move.label
    assert steps["heads_keep"][0] > steps["mlp_keep"][0] and steps["mlp_keep"][1] > steps["heads_keep"][1]


def test_moves_that_measured_over_their_prediction_lower_the_fill_of_the_next(predictor):
    from autocomp.search._controller import LOCAL_LOAD

    middle = {f"b{i}.{k}": v for i in range(2) for k, v in (("heads_keep", 0.67), ("mlp_keep", 0.75))}
    limit = _latency(predictor, middle) / 0.9
    study = _study()
    study.enqueue_trial(SPACE.params({**middle, "distill_alpha": 0.3}))
    controller = OptunaController(study=study, space=SPACE, heads_per_block=HEADS, n_trials=3, local=1.0, seed=0,
                                  screen=Screen(predictor=predictor, limits={"latency_ms": limit}, margin=None))
    _tell(controller, "a", controller.suggest("a"), predictor, limit)
    assert controller._fill_target() == FILL
    move = controller.suggest("b")
    load = study.trials[move["trial_number"]].user_attrs[LOCAL_LOAD]
    assert 0 < load <= FILL
    latency = 1.2 * load * limit  # measured 20% over its prediction (and over the budget)
    controller.on_trial_complete("b", result={**dict.fromkeys(RECORDED, None), "accuracy": 81.0,
                                              "latency_ms": latency, "memory_mb": 1.0, "trial_seconds": 1.0,
                                              "violation:latency_ms": latency / limit - 1.0})
    assert controller._fill_target() == pytest.approx(FILL / 1.2)
    number = controller.suggest("c")["trial_number"]
    again = study.trials[number]  # a move no dearer than the base (0.9 of the limit) or the new fill (0.79)
    assert again.user_attrs[LOCAL].startswith("from trial 0") and again.user_attrs[LOCAL_LOAD] <= 0.9 + 1e-9


def test_coarse_draws_the_screen_would_skip_are_drawn_again_at_no_trials_cost():
    predictor = CostPredictor(base=small_vit(), profile=PROFILE, base_latency_ms=10.0)
    predictor.observe(Recipe.identity(2), 10.0)  # one measured: the screen may skip
    alike = sorted(_latency(predictor, {f"b{i}.{k}": v for i in range(2) for k, v in (("heads_keep", h),
                                                                                       ("mlp_keep", m))})
                   for h in SPACE.heads_keep for m in SPACE.mlp_keep)
    limit = alike[5]  # 6 of the 12 alike recipes fit; half the coarse study's random draws do not
    study = _study()
    controller = OptunaController(study=study, space=SPACE, heads_per_block=HEADS, n_trials=4, coarse=4, seed=0,
                                  screen=Screen(predictor=predictor, limits={"latency_ms": limit}, margin=0.0))
    asked = [controller.suggest(t) for t in "abcd"]
    assert all(isinstance(a, dict) for a in asked)  # four trials run: none of them spent on a skip
    for a in asked:
        assert predictor.predict(Recipe.from_dict(a["recipe"]))["latency_ms"] <= limit
    assert all("coarse" in t.user_attrs and "skipped_reason" not in t.user_attrs for t in study.trials)
    redrawn = controller.coarse.study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert redrawn and all(t.system_attrs["constraints:latency_ms"] > 0 for t in redrawn)  # it learns the budget


FULL = {f"b{i}.{k}": 1.0 for i in range(2) for k in ("heads_keep", "mlp_keep")}  # the uncompressed recipe


def _predicted_latency(predictor, params):
    return predictor.predict(SPACE.sample(optuna.trial.FixedTrial(params), HEADS))["latency_ms"]


def _skipped(study, values):
    study.enqueue_trial(SPACE.params({**values, "distill_alpha": 0.3}))
    trial = study.ask()
    trial.set_user_attr("recipe", SPACE.sample(trial, HEADS).to_dict())
    return study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def test_a_recipe_over_budget_is_repaired_by_the_steps_that_cost_least_accuracy(predictor):
    from autocomp.search._local import repair

    limit, fill = 0.995 * _latency(predictor, FULL), 0.97  # a few steps of either knob alone reach the target
    skipped = _skipped(_study(), FULL)
    moves = {}
    for cheap in ("heads_keep", "mlp_keep"):  # the other knob costs 10 points per step, this one nothing
        drops = {(b, knob, v): 0.0 if knob == cheap else 10.0 * (1 - v)
                 for b in range(2) for knob in ("heads_keep", "mlp_keep") for v in (0.5, 0.67, 0.75, 0.83)}
        moves[cheap] = repair(skipped, space=SPACE, heads_per_block=HEADS, allowed=None, predictor=predictor,
                              limits={"latency_ms": limit}, seen=set(), fill_to=fill, drops=drops)
    for cheap, move in moves.items():
        assert move is not None and move.load <= fill
        assert _predicted_latency(predictor, move.params) <= fill * limit  # predicted under the target
        assert move.label.startswith("repaired: ") and f"{cheap} down" in move.label
        costly = "mlp_keep" if cheap == "heads_keep" else "heads_keep"
        assert all(move.params[f"b{i}.{costly}#rank"] == skipped.params[f"b{i}.{costly}#rank"] for i in range(2))
        assert all(move.params[k] <= skipped.params[k] for k in move.params)  # only ever heavier


def test_a_repair_that_cannot_fit_or_was_run_already_is_none(predictor):
    from autocomp.search._local import repair

    skipped = _skipped(_study(), FULL)
    kwargs = dict(space=SPACE, heads_per_block=HEADS, allowed=None, predictor=predictor, fill_to=FILL, drops={})
    lightest = _latency(predictor, HALF)
    assert repair(skipped, limits={"latency_ms": 0.9 * lightest}, seen=set(), **kwargs) is None
    move = repair(skipped, limits={"latency_ms": 1.1 * lightest}, seen=set(), **kwargs)
    assert move is not None
    recipe = SPACE.sample(optuna.trial.FixedTrial(move.params), HEADS)
    assert repair(skipped, limits={"latency_ms": 1.1 * lightest}, seen={recipe_key(recipe.to_dict())}, **kwargs) is None


def test_the_controller_runs_the_repair_of_a_skipped_proposal_next(predictor):
    from autocomp.search._controller import SKIPPED

    memory = {name: predictor.predict(recipe_of(SPACE, HEADS, values))["memory_mb"]
              for name, values in (("half", HALF), ("full", FULL))}
    limit = 0.9 * memory["full"]  # the uncompressed recipe is 11% over it
    study = _study()
    study.enqueue_trial(SPACE.params({**HALF, "distill_alpha": 0.3}))  # measured first: the screen may skip
    study.enqueue_trial(SPACE.params({**FULL, "distill_alpha": 0.3}))  # then skipped
    controller = OptunaController(study=study, space=SPACE, heads_per_block=HEADS, n_trials=2, seed=0,
                                  screen=Screen(predictor=predictor, limits={"memory_mb": limit}, margin=0.05))
    controller.suggest("a")
    controller.on_trial_complete("a", result={**dict.fromkeys(RECORDED, None), "accuracy": 80.0, "latency_ms": 1.0,
                                              "memory_mb": memory["half"], "trial_seconds": 1.0,
                                              "violation:memory_mb": memory["half"] / limit - 1.0})
    asked = controller.suggest("b")
    skipped, repaired = study.trials[1], study.trials[asked["trial_number"]]
    assert SKIPPED in skipped.user_attrs and repaired.number == 2
    assert repaired.user_attrs[LOCAL].startswith("from trial 1: repaired: ")
    recipe = SPACE.sample(optuna.trial.FixedTrial(repaired.params), HEADS)
    assert predictor.predict(recipe)["memory_mb"] <= limit  # memory is counted: no room left for noise


def test_a_repair_leaves_room_for_timing_noise_under_a_latency_limit_and_none_under_memory(predictor):
    """Latency is timed (a repair aims at ``FILL`` of the limit); memory is counted, so the limit itself will do."""
    from autocomp.search._local import repair

    skipped = _skipped(_study(), FULL)
    kwargs = dict(space=SPACE, heads_per_block=HEADS, allowed=None, predictor=predictor, fill_to=FILL, drops={},
                  seen=set())
    lightest = predictor.predict(recipe_of(SPACE, HEADS, HALF))
    assert repair(skipped, limits={"latency_ms": lightest["latency_ms"] / 0.97}, **kwargs) is None  # over FILL
    limit = lightest["memory_mb"] / 0.97
    move = repair(skipped, limits={"memory_mb": limit}, **kwargs)
    assert move is not None and FILL < move.load <= 1.0
    assert predictor.predict(SPACE.sample(optuna.trial.FixedTrial(move.params), HEADS))["memory_mb"] <= limit


def test_a_move_is_filled_up_to_a_memory_limit_itself_and_to_fill_of_a_latency_limit(predictor):
    """Memory is counted, not timed (``budget.TIMED``): a move leaves room for timing noise under a latency limit
    only."""
    study = _study()
    study.enqueue_trial(SPACE.params({**HALF, "distill_alpha": 0.3}))
    trial = study.ask()
    trial.set_user_attr("recipe", SPACE.sample(trial, HEADS).to_dict())
    base = study.tell(trial, [80.0, 1.0, 1.0])
    lightest, full = (predictor.predict(recipe_of(SPACE, HEADS, values))
                      for values in (HALF, {name: 1.0 for name in HALF}))
    loads = {}
    for key in ("latency_ms", "memory_mb"):
        limit = (lightest[key] + full[key]) / 2  # room for several steps, not all
        moves = [local_move(base, space=SPACE, heads_per_block=HEADS, allowed=None, predictor=predictor,
                            limits={key: limit}, seen=set(), rng=random.Random(seed), fill_to=FILL, drops={})
                 for seed in range(8)]
        loads[key] = [move.load for move in moves]
        assert all(predictor.predict(SPACE.sample(optuna.trial.FixedTrial(move.params), HEADS))[key] <= limit
                   for move in moves)
    assert max(loads["latency_ms"]) <= FILL and max(loads["memory_mb"]) > FILL


def test_a_moves_label_names_each_knobs_net_change_once(predictor):
    """A pair move (one knob a step up, another down) filled up with steps up may undo its own step down: the label
    names what the recipe changes, not the steps that cancelled."""
    middle = {f"b{i}.{k}": v for i in range(2) for k, v in (("heads_keep", 0.67), ("mlp_keep", 0.75))}
    limit = 1.1 * _latency(predictor, middle)
    study = _study()
    study.enqueue_trial(SPACE.params({**middle, "distill_alpha": 0.3}))
    trial = study.ask()
    trial.set_user_attr("recipe", SPACE.sample(trial, HEADS).to_dict())
    base = study.tell(trial, [80.0, 1.0, 1.0])
    for seed in range(30):
        move = local_move(base, space=SPACE, heads_per_block=HEADS, allowed=None, predictor=predictor,
                          limits={"latency_ms": limit}, seen=set(), rng=random.Random(seed), fill_to=FILL)
        named = re.findall(r"(b\d\.\w+) (?:up|down)", move.label)
        changed = {name.removesuffix(RANK) for name, value in move.params.items() if value != base.params[name]}
        assert len(named) == len(set(named)) and set(named) == changed, (seed, move.label)


def test_a_trial_scored_undistilled_is_shown_without_its_distillation():
    """Measured far over budget, a candidate is scored undistilled (``distilled`` False): its summary says so, its
    recipe keeps what it asked for."""
    study = _study()
    study.enqueue_trial(SPACE.params({**HALF, "distill_alpha": 0.3}))
    controller = OptunaController(study=study, space=SPACE, heads_per_block=HEADS, n_trials=1, seed=0)
    asked = controller.suggest("a")
    controller.on_trial_complete("a", result={**dict.fromkeys(RECORDED, None), "accuracy": 40.0, "latency_ms": 9.0,
                                              "memory_mb": 1.0, "trial_seconds": 1.0, "distilled": False,
                                              "violation:latency_ms": 2.0})
    trial = study.trials[asked["trial_number"]]
    assert trial.user_attrs["recipe_summary"].endswith(" (not distilled: far over budget)")
    assert " + kd" not in trial.user_attrs["recipe_summary"] and trial.user_attrs["recipe"]["distill"] is not None
    full = {f"b{i}.{k}": 1.0 for i in range(2) for k in ("heads_keep", "mlp_keep")}  # nothing to distil: as it was
    study.enqueue_trial(SPACE.params({**full, "distill_alpha": 0.3}))
    controller = OptunaController(study=study, space=SPACE, heads_per_block=HEADS, n_trials=1, seed=0)
    asked = controller.suggest("b")
    controller.on_trial_complete("b", result={**dict.fromkeys(RECORDED, None), "accuracy": 90.0, "latency_ms": 1.0,
                                              "memory_mb": 1.0, "trial_seconds": 1.0, "distilled": False,
                                              "violation:latency_ms": -0.5})
    assert study.trials[asked["trial_number"]].user_attrs["recipe_summary"] == "- | -"  # no distillation it never had


def test_coarse_draws_keep_the_blocks_own_choices():
    """A coarse draw sets every block alike; a block with choices of its own (``blocks``: the first at half its MLP
    or more) takes its own least compressing choice where they leave the draw's value out, in the recipe queued and
    in the recipe the screen judged."""
    space = dataclasses.replace(SPACE, blocks={0: {"mlp_keep": [0.75, 1.0]}}).for_depth(2, where="space")
    study = _study()
    controller = OptunaController(study=study, space=space, heads_per_block=HEADS, n_trials=8, coarse=8, seed=0,
                                  allowed=space.distinct(HEADS))
    asked = [controller.suggest(t) for t in "abcdefgh"]
    recipes = [Recipe.from_dict(a["recipe"]) for a in asked if isinstance(a, dict)]
    assert len(recipes) == 8 and all("coarse" in t.user_attrs for t in study.trials)
    assert all(block.get("prune_mlp") is None or block["prune_mlp"].keep >= 0.75 for block in
               (recipe.blocks[0] for recipe in recipes))
    assert any(recipe.blocks[1].get("prune_mlp") is not None and recipe.blocks[1]["prune_mlp"].keep == 0.5
               for recipe in recipes)  # the other block draws the space's own
    assert all(t.user_attrs["coarse"] == Recipe.from_dict(a["recipe"]).summary() for t, a in zip(study.trials, asked))
