"""Known-good starting points: the recipes a new search evaluates before the sampler draws its own."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import optuna
import pytest

from autocomp.budget import feasible, violations
from autocomp.measure.profiling import load_profile
from autocomp.search._local import FILL
from autocomp.search._screen import CostPredictor
from autocomp.space import SearchSpace
from autocomp.search._start import recipe_of, start_points
from conftest import small_vit

ROOT = Path(__file__).resolve().parents[1]
PROFILE = dataclasses.replace(load_profile(ROOT / "hardware_profiles" / "local_cpu.yaml"), batch_size=4,
                              peak_gflops={"fp32": 100.0, "int8": 200.0}, fast_weight_bits={8: "int8"},
                              memory_bandwidth_gbs=10.0, op_overhead_us=8.0)  # fixed numbers: no load to vary
SPACE = SearchSpace(heads_keep=(0.5, 0.67, 0.83, 1.0), mlp_keep=(0.5, 0.75, 1.0), weight_bits=(32, 8),
                    distill_steps=(100,), distill_alpha=(0.3, 0.6))
HEADS = [6, 6]
UNCOMPRESSED = {f"b{i}.{k}": v for i in range(2) for k, v in (("heads_keep", 1.0), ("mlp_keep", 1.0),
                                                                ("weight_bits", 32))}


@pytest.fixture(scope="module")
def predictor():
    return CostPredictor(base=small_vit(), profile=PROFILE, base_latency_ms=10.0)


def _decoded(params):
    """The knob values of a starting point's Optuna parameters (every one an ordered knob's rank in ``SPACE``)."""
    return {name.removesuffix("#rank"): sorted(getattr(SPACE, name.split(".")[1].removesuffix("#rank")))[v]
            for name, v in params.items()}


def test_the_search_starts_from_uniform_int8_and_uniform_settings_that_fit_never_from_one_over_budget(predictor):
    limits = {"latency_ms": 0.96 * predictor.predict(recipe_of(SPACE, HEADS, UNCOMPRESSED))["latency_ms"]}
    points = dict(start_points(SPACE, HEADS, predictor=predictor, limits=limits, cap=10))
    labels = list(points)
    assert labels[0] == "uniform weight_bits 8" and "uncompressed" not in labels  # that one is over the budget
    for params in points.values():
        assert feasible(violations(predictor.predict(recipe_of(SPACE, HEADS, _decoded(params))), limits))
    fill = FILL * limits["latency_ms"]
    for knob in ("heads_keep", "mlp_keep"):  # each alone, at the lightest setting predicted within FILL of budget
        found = [label for label in labels if label.startswith(f"uniform {knob} ")]
        if not found:  # on this small model heads save little time: none of them fits
            assert knob == "heads_keep" and all(_alone(predictor, knob, v) > fill for v in SPACE.heads_keep)
            continue
        value = sorted(getattr(SPACE, knob))[points[found[0]][f"b0.{knob}#rank"]]
        lighter = [v for v in getattr(SPACE, knob) if v > value]
        assert _alone(predictor, knob, value) <= fill and not any(_alone(predictor, knob, v) <= fill for v in lighter)
    assert len(start_points(SPACE, HEADS, predictor=predictor, limits=limits, cap=2)) == 2


def _alone(predictor, knob, value):
    """Predicted latency of ``knob`` at ``value`` in every block, the other knobs uncompressed."""
    return predictor.predict(recipe_of(SPACE, HEADS, {**UNCOMPRESSED, **{f"b{i}.{knob}": value for i in range(2)}})
                             )["latency_ms"]


def test_a_knob_alone_is_not_started_right_at_the_limit(predictor):
    """MLP at 0.75 predicted 2% under the limit: measured, it is over about as often as under; 0.5 is taken."""
    limits = {"latency_ms": _alone(predictor, "mlp_keep", 0.75) / 0.98}
    labels = [label for label, _ in start_points(SPACE, HEADS, predictor=predictor, limits=limits, cap=10)]
    assert "uniform mlp_keep 0.5, predicted within budget" in labels
    assert not any(label.startswith("uniform mlp_keep 0.75") for label in labels)


def test_no_uniform_setting_is_proposed_where_none_fits_or_nothing_is_needed(predictor):
    base = predictor.predict(recipe_of(SPACE, HEADS, UNCOMPRESSED))["latency_ms"]
    assert start_points(SPACE, HEADS, predictor=predictor, limits={"latency_ms": 1e-6}, cap=10) == []
    points = start_points(SPACE, HEADS, predictor=predictor, limits={"latency_ms": 10 * base}, cap=10)
    assert [label for label, _ in points] == ["uncompressed", "uniform weight_bits 8"]  # the former covers it all
    assert points[0][1] == SPACE.params(UNCOMPRESSED)
    assert points[0][1]["b0.heads_keep#rank"] == 3  # the rank of 1.0 among the sorted choices


def test_ordered_knobs_are_sampled_by_rank_and_categories_by_name():
    from autocomp.space import SearchSpace

    space = SearchSpace(heads_keep=(1.0, 0.5, 0.75), quantize_layers=("all", "qkv,fc1"), weight_bits=(32, 8),
                        distill_steps=(0, 50), distill_alpha=(0.5,))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    recipe = space.sample(trial, [4, 4])
    assert isinstance(trial.distributions["b0.heads_keep#rank"], optuna.distributions.IntDistribution)
    assert isinstance(trial.distributions["distill_steps#rank"], optuna.distributions.IntDistribution)
    kept = sorted(space.heads_keep)[trial.params["b0.heads_keep#rank"]]
    assert recipe.blocks[0].get("prune_heads", None) is None if kept == 1.0 else \
        recipe.blocks[0]["prune_heads"].keep == round(kept * 4)
    fixed = space.params({"b0.heads_keep": 0.5, "b1.heads_keep": 1.0, "b0.weight_bits": 8, "b1.weight_bits": 32,
                          "b0.quantize_layers": "qkv,fc1", "distill_steps": 0})
    assert fixed == {"b0.heads_keep#rank": 0, "b1.heads_keep#rank": 2, "b0.weight_bits#rank": 0,
                     "b1.weight_bits#rank": 1, "b0.quantize_layers": "qkv,fc1", "distill_steps#rank": 0}
    again = space.sample(optuna.trial.FixedTrial(fixed), [4, 4])
    assert again.blocks[0]["prune_heads"].keep == 2 and again.blocks[0]["quantize"].layers == ("qkv", "fc1")
    assert "prune_heads" not in again.blocks[1] and again.distill is None
    with pytest.raises(Exception, match=r"b0.heads_keep = 0.6 is not among the space's choices \[1.0, 0.5, 0.75\]"):
        space.params({"b0.heads_keep": 0.6})


def test_a_new_search_runs_its_starting_points_first(tmp_path, tiny_teacher):
    import yaml

    from autocomp.cli import main
    from autocomp.results import load_run_study
    from test_search_e2e import write_job

    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=8, workers=1)
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "search_space": str(ROOT / "search_spaces" /
                                                                                           "heads_int8.yaml")}))
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    trials = load_run_study(tmp_path / "run").get_trials()
    # the uncompressed model is over the budget (0.99x its memory): not queued
    assert trials[0].user_attrs["start_point"] == "uniform weight_bits 8"
    assert trials[0].user_attrs["recipe_summary"] == "w8-sq | w8-sq"
    assert all(t.user_attrs.get("start_point") != "uncompressed" for t in trials)
    assert all("start_point" not in t.user_attrs for t in trials[2:])  # cap: a quarter of the 8 trials


def test_a_uniform_space_searches_one_setting_for_every_block():
    space = SearchSpace(heads_keep=(0.5, 1.0), weight_bits=(32, 8), uniform=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    recipes = [space.sample(study.ask(), [4, 4, 4]) for _ in range(8)]
    assert sorted(study.trials[0].params) == ["all.heads_keep#rank", "all.weight_bits#rank"]
    for recipe in recipes:
        assert recipe.blocks[0] == recipe.blocks[1] == recipe.blocks[2]
    assert len({recipe.summary() for recipe in recipes}) > 1
    points = dict(start_points(space, [4, 4, 4], predictor=None, limits={}, cap=5))
    assert points == {"uncompressed": {"all.heads_keep#rank": 1, "all.weight_bits#rank": 1},
                      "uniform weight_bits 8": {"all.heads_keep#rank": 1, "all.weight_bits#rank": 0}}


def test_the_uniform_mix_of_knobs_predicted_closest_under_the_budget_is_a_starting_point(predictor):
    import itertools

    def predicted(heads, mlp, bits):
        values = {f"b{i}.{k}": v for i in range(2) for k, v in (("heads_keep", heads), ("mlp_keep", mlp),
                                                                  ("weight_bits", bits))}
        return predictor.predict(recipe_of(SPACE, HEADS, values))["latency_ms"]

    limits = {"latency_ms": predicted(0.67, 0.75, 32) * 1.001}
    points = dict(start_points(SPACE, HEADS, predictor=predictor, limits=limits, cap=10))
    [label] = [label for label in points if label.startswith("all knobs alike: ")]
    params = points[label]
    chosen = tuple(sorted(getattr(SPACE, k))[params[f"b0.{k}#rank"]] for k in ("heads_keep", "mlp_keep",
                                                                               "weight_bits"))
    assert all(params[f"b1.{k}#rank"] == params[f"b0.{k}#rank"] for k in ("heads_keep", "mlp_keep", "weight_bits"))
    assert predicted(*chosen) <= limits["latency_ms"]
    fitting = [predicted(*c) for c in itertools.product(SPACE.heads_keep, SPACE.mlp_keep, SPACE.weight_bits)
               if predicted(*c) <= limits["latency_ms"]]
    assert predicted(*chosen) == max(fitting)  # the least compression of all knobs together that fits
    assert sum(v != light for v, light in zip(chosen, (1.0, 1.0, 32))) >= 2


def test_with_a_sensitivity_pass_the_uniform_mix_is_the_one_predicted_to_lose_least(predictor):
    from autocomp.search._sensitivity import Setting

    def values(heads, mlp, bits):
        return {f"b{i}.{k}": v for i in range(2) for k, v in (("heads_keep", heads), ("mlp_keep", mlp),
                                                                ("weight_bits", bits))}

    def predicted(*setting):
        return predictor.predict(recipe_of(SPACE, HEADS, values(*setting)))["latency_ms"]

    limits = {"latency_ms": predicted(0.67, 0.75, 32) * 1.001}
    # pruning heads costs a lot in every block, narrowing the MLP or int8 weights very little
    cost = {"heads_keep": 4.0, "mlp_keep": 0.2, "weight_bits": 0.1}
    sensitivity = [Setting(block=i, knob=knob, value=value, accuracy_drop=cost[knob], predicted_latency_ratio=None)
                   for i in range(2) for knob in cost for value in getattr(SPACE, knob)
                   if value not in (1.0, 32)]
    points = dict(start_points(SPACE, HEADS, predictor=predictor, limits=limits, cap=10, sensitivity=sensitivity))
    [label] = [label for label in points if label.startswith("all knobs alike: ")]
    assert label.endswith("predicted within budget at the least sensitivity")
    chosen = tuple(sorted(getattr(SPACE, k))[points[label][f"b0.{k}#rank"]]
                   for k in ("heads_keep", "mlp_keep", "weight_bits"))
    assert chosen[0] == 1.0  # no head pruned, although the closest fit under the budget prunes heads
    assert predicted(*chosen) <= limits["latency_ms"]
    closest = max((c for c in itertools.product(SPACE.heads_keep, SPACE.mlp_keep, SPACE.weight_bits)
                   if predicted(*c) <= limits["latency_ms"]), key=lambda c: predicted(*c))
    assert closest[0] < 1.0  # the test means something: without the sensitivity pass another point is chosen


def test_measured_the_uniform_mix_is_the_best_ranked_one_the_target_measures_within_budget(predictor):
    from autocomp.search._sensitivity import Setting

    def values(heads, mlp, bits):
        return {f"b{i}.{k}": v for i in range(2) for k, v in (("heads_keep", heads), ("mlp_keep", mlp),
                                                                ("weight_bits", bits))}

    def chosen(points):
        [label] = [label for label in points if label.startswith("all knobs alike: ")]
        return label, tuple(sorted(getattr(SPACE, k))[points[label][f"b0.{k}#rank"]]
                            for k in ("heads_keep", "mlp_keep", "weight_bits"))

    limits = {"latency_ms": predictor.predict(recipe_of(SPACE, HEADS, values(0.67, 0.75, 32)))["latency_ms"] * 1.001}
    cost = {"heads_keep": 4.0, "mlp_keep": 0.2, "weight_bits": 0.1}
    sensitivity = [Setting(block=i, knob=knob, value=value, accuracy_drop=cost[knob], predicted_latency_ratio=None)
                   for i in range(2) for knob in cost for value in getattr(SPACE, knob) if value not in (1.0, 32)]
    kwargs = dict(predictor=predictor, limits=limits, cap=10, sensitivity=sensitivity)
    _, predicted_best = chosen(dict(start_points(SPACE, HEADS, **kwargs)))
    measured: list = []

    def measure(recipe):  # the target finds the predicted best over the limit, everything else within it
        measured.append(recipe)
        return limits["latency_ms"] * (1.2 if len(measured) == 1 else 0.9)

    label, picked = chosen(dict(start_points(SPACE, HEADS, **kwargs, measure=measure)))
    assert label.endswith("measured within budget at the least sensitivity")
    assert len(measured) >= 2 and measured[0] == recipe_of(SPACE, HEADS, values(*predicted_best))
    assert picked != predicted_best and measured[1] == recipe_of(SPACE, HEADS, values(*picked))
    over = dict(start_points(SPACE, HEADS, **kwargs, measure=lambda recipe: 2 * limits["latency_ms"]))
    assert not any(label.startswith("all knobs alike") for label in over)  # none measured within: no such point
    memory = {"memory_mb": predictor.predict(recipe_of(SPACE, HEADS, values(0.67, 0.75, 32)))["memory_mb"]}
    start_points(SPACE, HEADS, **{**kwargs, "limits": memory}, measure=lambda recipe: 1 / 0)  # counted: not measured


def test_a_queued_point_is_the_recipe_predicted_with_the_quantized_layers_it_was_predicted_with(predictor):
    space = dataclasses.replace(SPACE, quantize_layers=("all", "qkv,fc1"))
    limits = {"latency_ms": 10 * predictor.predict(recipe_of(space, HEADS, UNCOMPRESSED))["latency_ms"]}
    points = dict(start_points(space, HEADS, predictor=predictor, limits=limits, cap=10))
    params = points["uniform weight_bits 8"]
    assert params["b0.quantize_layers"] == params["b1.quantize_layers"] == "all"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(params)
    queued = space.sample(study.ask(), HEADS)  # what the trial runs, whatever the sampler would have drawn
    assert queued.blocks == recipe_of(space, HEADS, {**UNCOMPRESSED, "b0.weight_bits": 8, "b1.weight_bits": 8}).blocks
    assert "b0.quantize_layers" not in points["uncompressed"]  # an fp32 block has no layers to choose


def test_uniform_int8_is_queued_with_each_choice_of_activations(predictor):
    """A space offering static activations starts from uniform int8 with dynamic and with static ones: on a
    runtime that fuses static int8 (OpenVINO) it is the faster by far, at about the same accuracy."""
    space = dataclasses.replace(SPACE, act_bits=(None, 8))
    points = dict(start_points(space, HEADS, predictor=None, limits={}, cap=10))
    dynamic, static = points["uniform weight_bits 8"], points["uniform weight_bits 8, static activations"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for params in (dynamic, static):
        study.enqueue_trial(params)
    int8 = {**UNCOMPRESSED, "b0.weight_bits": 8, "b1.weight_bits": 8}

    def blocks(recipe):  # the distillation is the sampler's
        return dataclasses.replace(recipe, distill=None).summary()

    assert blocks(space.sample(study.ask(), HEADS)) == blocks(recipe_of(space, HEADS, int8)) == "w8-sq | w8-sq"
    assert blocks(space.sample(study.ask(), HEADS)) == "w8a8-sq | w8a8-sq"
    # where nothing chooses them, 8-bit blocks have dynamic activations if the space offers them
    assert blocks(recipe_of(dataclasses.replace(space, act_bits=(8, None)), HEADS, int8)) == "w8-sq | w8-sq"
    assert blocks(recipe_of(dataclasses.replace(space, act_bits=(8,)), HEADS, int8)) == "w8a8-sq | w8a8-sq"
    assert "uniform weight_bits 8, static activations" not in dict(start_points(SPACE, HEADS, predictor=None,
                                                                                limits={}, cap=10))


def test_a_space_of_8_bit_blocks_only_starts_from_each_choice_of_activations():
    """weight_bits with one choice (8) is no parameter: the points still carry the blocks' activations, so that what
    is queued is what was predicted."""
    space = dataclasses.replace(SPACE, weight_bits=(8,), act_bits=(None, 8))
    points = dict(start_points(space, HEADS, predictor=None, limits={}, cap=10))
    least = points["the least compression the space offers (weight_bits 8)"]  # not "uncompressed": int8 weights
    assert least["b0.act_bits"] is None and least["b1.act_bits"] is None and "uncompressed" not in points
    static = points["uniform weight_bits 8, static activations"]
    assert static["b0.act_bits"] == static["b1.act_bits"] == 8


def test_where_only_static_activations_are_left_the_starting_points_use_them(predictor):
    """Where the latency pass found dynamic int8 too slow and left 8-bit blocks static activations only, a point
    with 8-bit blocks is queued (and predicted) with static ones, not dropped for a choice the search no longer
    offers."""
    space = dataclasses.replace(SPACE, act_bits=(None, 8))
    allowed = {f"b{i}.act_bits": (8,) for i in range(2)}
    limits = {"latency_ms": 10 * predictor.predict(recipe_of(space, HEADS, UNCOMPRESSED))["latency_ms"]}
    points = dict(start_points(space, HEADS, predictor=predictor, limits=limits, cap=10, allowed=allowed))
    assert "uniform weight_bits 8" not in points  # dynamic: not offered
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(points["uniform weight_bits 8, static activations"])
    assert space.sample(study.ask(), HEADS, allowed=allowed).summary().startswith("w8a8-sq | w8a8-sq")
    int8 = {**UNCOMPRESSED, "b0.weight_bits": 8, "b1.weight_bits": 8}
    assert recipe_of(space, HEADS, int8, allowed=allowed).summary().startswith("w8a8-sq | w8a8-sq")
    assert recipe_of(space, HEADS, int8).summary().startswith("w8-sq | w8-sq")


def test_a_second_uniform_mix_compresses_other_knobs_and_is_measured_too(predictor):
    """The sensitivity pass ranks settings by what they cost before distillation; a second mix of other knobs
    hedges against that ranking."""
    from autocomp.search._sensitivity import Setting
    from autocomp.search._start import MIXES

    assert MIXES == 2
    knobs = ("heads_keep", "mlp_keep", "weight_bits")

    def values(setting):
        return {f"b{i}.{k}": v for i in range(2) for k, v in zip(knobs, setting)}

    def decoded(params):
        return tuple(sorted(getattr(SPACE, k))[params[f"b0.{k}#rank"]] for k in knobs)

    limits = {"latency_ms": predictor.predict(recipe_of(SPACE, HEADS, values((0.67, 0.75, 32))))["latency_ms"] * 1.001}
    cost = {"heads_keep": 4.0, "mlp_keep": 0.2, "weight_bits": 0.1}
    sensitivity = [Setting(block=i, knob=knob, value=value, accuracy_drop=cost[knob], predicted_latency_ratio=None)
                   for i in range(2) for knob in cost for value in getattr(SPACE, knob) if value not in (1.0, 32)]
    kwargs = dict(predictor=predictor, limits=limits, cap=10, sensitivity=sensitivity)
    measured: list = []
    points = dict(start_points(SPACE, HEADS, **kwargs, measure=lambda r: measured.append(r) or limits["latency_ms"]))
    [first] = [decoded(p) for label, p in points.items() if label.startswith("all knobs alike: ")]
    [second] = [decoded(p) for label, p in points.items() if label.startswith("all knobs alike, other knobs: ")]
    compressed = [{k for k, v, light in zip(knobs, mix, (1.0, 1.0, 32)) if v != light} for mix in (first, second)]
    assert compressed[0] and compressed[1] and compressed[0] != compressed[1]
    assert [recipe_of(SPACE, HEADS, values(mix)) for mix in (first, second)] == measured  # each measured once
    assert list(points)[-1].startswith("all knobs alike, other knobs: ")  # it only fills a slot the cap leaves
    # every other set of knobs measured over the limit: no second point, and at most MEASURED_MIXES more measured
    over: list = []

    def measure(recipe):
        over.append(recipe)
        return limits["latency_ms"] * (1.0 if len(over) == 1 else 1.5)

    points = dict(start_points(SPACE, HEADS, **kwargs, measure=measure))
    assert not any(label.startswith("all knobs alike, other knobs") for label in points)
    assert 1 < len(over) <= 1 + 4


def test_the_fast_end_takes_the_strongest_settings_cheapest_first_until_their_costs_add_up_to_its_limit():
    from autocomp.search._sensitivity import Setting
    from autocomp.search._start import FAST, QUIET

    settings = [Setting(0, "heads_keep", 0.83, 0.1, 0.9), Setting(0, "heads_keep", 0.5, 3.0, 0.7),
                Setting(0, "mlp_keep", 0.5, 1.5, 0.8), Setting(1, "heads_keep", 0.5, -0.4, 0.7),
                Setting(1, "mlp_keep", 0.75, 0.3, 0.9), Setting(1, "mlp_keep", 0.5, FAST, 0.8),
                Setting(1, "weight_bits", 8, 0.0, 0.9)]
    points = dict(start_points(SPACE, HEADS, predictor=None, limits={}, cap=10, sensitivity=settings))
    [quiet] = [p for label, p in points.items() if label.startswith("each block")]
    [fast] = [p for label, p in points.items() if label.startswith("the fast end")]
    assert _decoded(quiet) == {**UNCOMPRESSED, "b0.heads_keep": 0.83, "b1.heads_keep": 0.5, "b1.mlp_keep": 0.75,
                               "b1.weight_bits": 8}  # each alone <= QUIET
    assert QUIET < 1.5
    # cheapest first: b1 heads 0.5 (a gain counts as 0), int8, b0 heads 0.83, b1 MLP 0.75, b0 MLP 0.5 (1.9 spent),
    # then b0 heads 0.5 in place of 0.83 (4.8); b1 MLP 0.5 would make 9.5 > FAST
    assert _decoded(fast) == {**UNCOMPRESSED, "b0.heads_keep": 0.5, "b0.mlp_keep": 0.5, "b1.heads_keep": 0.5,
                              "b1.mlp_keep": 0.75, "b1.weight_bits": 8}
    assert "the fast end" not in " ".join(label for label, _ in start_points(
        dataclasses.replace(SPACE, uniform=True), HEADS, predictor=None, limits={}, cap=10, sensitivity=settings))


def test_a_block_left_static_activations_only_is_ranked_by_what_int8_costs_there_with_them():
    """Where the latency pass left a block static activations only, 8-bit weights there are w8a8: the quiet point and
    the fast end count its static row, not the dynamic one (which the block no longer offers)."""
    from autocomp.search._sensitivity import Setting
    from autocomp.search._start import FAST

    space = dataclasses.replace(SPACE, act_bits=(None, 8))
    settings = [Setting(0, "weight_bits", 8, 0.0, 0.9), Setting(1, "weight_bits", 8, 0.0, 0.9),
                Setting(0, "act_bits", 8, FAST + 1.0, 0.8), Setting(1, "act_bits", 8, 0.1, 0.8),
                Setting(1, "heads_keep", 0.83, 0.2, 0.9), Setting(1, "mlp_keep", 0.5, 1.0, 0.8)]
    allowed = {"b0.act_bits": (8,), "b1.act_bits": (8,)}
    points = dict(start_points(space, HEADS, predictor=None, limits={}, cap=10, sensitivity=settings,
                               allowed=allowed))
    [quiet] = [p for label, p in points.items() if label.startswith("each block")]
    [fast] = [p for label, p in points.items() if label.startswith("the fast end")]
    # block 0's static int8 costs more than either allows; block 1's does not
    assert _decoded(quiet) == {**UNCOMPRESSED, "b1.weight_bits": 8, "b1.heads_keep": 0.83}
    assert _decoded(fast) == {**UNCOMPRESSED, "b1.weight_bits": 8, "b1.heads_keep": 0.83, "b1.mlp_keep": 0.5}
    # with dynamic activations still offered, 8 bits there means dynamic: its row counts
    points = dict(start_points(space, HEADS, predictor=None, limits={}, cap=10, sensitivity=settings))
    [quiet] = [p for label, p in points.items() if label.startswith("each block")]
    assert quiet["b0.act_bits"] is None and quiet["b1.act_bits"] is None
    assert {k: v for k, v in _decoded({k: v for k, v in quiet.items() if k.endswith("#rank")}).items()
            if "weight_bits" in k} == {"b0.weight_bits": 8, "b1.weight_bits": 8}


def test_the_quiet_point_takes_only_as_many_quiet_settings_as_the_budget_needs(predictor):
    from autocomp.search._sensitivity import Setting
    from autocomp.search._start import QUIET

    def latency(values):
        return predictor.predict(recipe_of(SPACE, HEADS, {**UNCOMPRESSED, **values}))["latency_ms"]

    # every setting quiet but half the heads in block 0 and int8 weights, which cost a lot
    loud = {(0, "heads_keep", 0.5), (0, "weight_bits", 8), (1, "weight_bits", 8)}
    settings = [Setting(i, knob, value, 3.0 if (i, knob, value) in loud else 0.0, None)
                for i in range(2) for knob in ("heads_keep", "mlp_keep", "weight_bits")
                for value in getattr(SPACE, knob) if value not in (1.0, 32)]
    limits = {"latency_ms": 0.97 * latency({})}
    points = dict(start_points(SPACE, HEADS, predictor=predictor, limits=limits, cap=10, sensitivity=settings))
    [sized] = [_decoded(p) for label, p in points.items()
               if label.startswith(f"the settings that alone cost <= {QUIET:g} point")]
    strongest = {"b0.heads_keep": 0.67, "b1.heads_keep": 0.5, "b0.mlp_keep": 0.5, "b1.mlp_keep": 0.5}
    assert latency(strongest) < 0.95 * FILL * limits["latency_ms"]  # every quiet setting at once: under the aim
    assert latency(strongest) < latency(sized) <= FILL * limits["latency_ms"]
    assert sized["b0.heads_keep"] != 0.5 and sized["b0.weight_bits"] == sized["b1.weight_bits"] == 32  # quiet only
    # without a cost model, every block at its strongest quiet settings, as before
    points = dict(start_points(SPACE, HEADS, predictor=None, limits={}, cap=10, sensitivity=settings))
    [every] = [_decoded(p) for label, p in points.items() if label.startswith("each block at the strongest")]
    assert every == {**UNCOMPRESSED, **strongest}


def test_a_gain_in_one_block_does_not_hide_a_loss_in_another_when_uniform_mixes_are_ranked(predictor):
    from autocomp.search._sensitivity import Setting

    def values(heads, mlp):
        return {**UNCOMPRESSED, **{f"b{i}.{k}": v for i in range(2) for k, v in (("heads_keep", heads),
                                                                                  ("mlp_keep", mlp))}}

    def latency(heads, mlp):
        return predictor.predict(recipe_of(SPACE, HEADS, values(heads, mlp)))["latency_ms"]

    limits = {"latency_ms": 1.001 * max(latency(0.67, 1.0), latency(1.0, 0.75))}
    drop = {(0, "heads_keep", 0.67): -2.0, (1, "heads_keep", 0.67): 1.9,  # added up -0.1: a "gain"
            (0, "mlp_keep", 0.75): 0.2, (1, "mlp_keep", 0.75): 0.2}
    settings = [Setting(i, knob, value, drop.get((i, knob, value), 5.0), None)
                for i in range(2) for knob in ("heads_keep", "mlp_keep", "weight_bits")
                for value in getattr(SPACE, knob) if value not in (1.0, 32)]
    points = dict(start_points(SPACE, HEADS, predictor=predictor, limits=limits, cap=10, sensitivity=settings))
    [mix] = [_decoded(p) for label, p in points.items() if label.startswith("all knobs alike: ")]
    assert mix["b0.heads_keep"] == mix["b1.heads_keep"] == 1.0 and mix["b0.mlp_keep"] == 0.75


def test_a_block_with_choices_of_its_own_keeps_them_in_every_trial_and_starting_point(tmp_path, tiny_teacher):
    """``blocks: {0: {weight_bits: [32]}}`` (the first block kept in float): the starting point "uniform int8" is
    int8 in the other block, no trial quantizes block 0, the sensitivity pass says why it is not offered there, and
    run.json records the space as the file gives it."""
    import csv
    import json

    import yaml

    from autocomp.cli import main
    from autocomp.results import load_run_study
    from test_search_e2e import write_job

    space = tmp_path / "space.yaml"
    space.write_text("heads_keep: [0.5, 1.0]\nweight_bits: [32, 8]\nblocks: {0: {weight_bits: [32]}}\n")
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=6, workers=1)
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "search_space": str(space),
                                   "sensitivity": {"images": 64}}))
    run = tmp_path / "run"
    assert main(["search", str(job), "--out", str(run), "--quiet"]) == 0
    trials = load_run_study(run).get_trials()
    assert trials[0].user_attrs["start_point"] == "uniform weight_bits 8"
    assert trials[0].user_attrs["recipe_summary"].split(" | ")[1].startswith("w8")
    summaries = [t.user_attrs["recipe_summary"] for t in trials if "recipe_summary" in t.user_attrs]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= 3  # of the 4 the passes leave
    assert not any("w8" in summary.split(" | ")[0] for summary in summaries)  # run, skipped or drawn again
    assert any("w8" in summary.split(" | ")[1] for summary in summaries)
    rows = {(r["block"], r["knob"], r["value"]): r for r in csv.DictReader((run / "sensitivity.csv").open())}
    assert rows["0", "weight_bits", "8"]["offered"] == "False"
    assert rows["0", "weight_bits", "8"]["left_out"] == "the search space's blocks: leaves it out of this block"
    assert json.loads((run / "run.json").read_text())["space"]["blocks"] == {"0": {"weight_bits": [32]}}
