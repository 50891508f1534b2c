"""One trial run in-process: what it records about how its quantized layers ran."""

from __future__ import annotations

import pytest

from autocomp.hardware import HardwareProfile
from autocomp.ops import _qlayers
from autocomp.recipe import Recipe
from autocomp.search._controller import RECORDED
from autocomp.search._objective import TrialInputs, distill_subset, run_trial

PROFILE = HardwareProfile(name="t", threads=1, batch_size=4, warmup=1, repeats=3)


def _inputs(model, splits):
    return TrialInputs(base=model, val=splits.val, calib=splits.calib.x, train=distill_subset(splits.train),
                       profile=PROFILE, limits={"memory_mb": 100.0}, base_latency_ms=1.0)


@pytest.mark.parametrize("top, recorded, simulated", [(255, "onednn-u8", 0), (127, "onednn-u7", 0),
                                                       (None, "simulated", 8)])
def test_a_trial_records_how_its_static_int8_activations_ran(tiny_teacher, digits_splits, monkeypatch, top,
                                                            recorded, simulated):
    monkeypatch.setattr(_qlayers, "int8_static_range", lambda: top)  # VNNI, a CPU without it, no oneDNN kernel
    recipe = Recipe.from_dict({"blocks": [{"quantize": {"weight_bits": 8, "act_bits": 8}}, {}]})
    result = run_trial(recipe.to_dict(), _inputs(tiny_teacher[1], digits_splits))
    assert result["int8_activations"] == recorded and result["simulated_layers"] == simulated // 2
    plain = run_trial(Recipe.from_dict({"blocks": [{"quantize": {}}, {}]}).to_dict(),
                      _inputs(tiny_teacher[1], digits_splits))
    assert plain["int8_activations"] is None and plain["simulated_layers"] == 0


def _distilled(steps=20):
    return Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 2}}, {"prune_heads": {"keep": 2}}],
                             "distill": {"steps": steps, "alpha": 0.5}})


def test_a_candidate_measured_far_over_budget_is_not_distilled(tiny_teacher, digits_splits):
    import dataclasses

    inputs = dataclasses.replace(_inputs(tiny_teacher[1], digits_splits), limits={"memory_mb": 1e-4},
                                 skip_margin=0.5)
    over = run_trial(_distilled().to_dict(), inputs)
    assert over["distilled"] is False and over["seconds_distill"] == 0.0
    assert over["violation:memory_mb"] > 0.5 and over["memory_mb"] > 0  # infeasible, with its measured figures
    within = run_trial(_distilled().to_dict(), dataclasses.replace(inputs, limits={"memory_mb": 100.0}))
    assert within["distilled"] is True and within["seconds_distill"] > 0
    assert within["memory_mb"] == pytest.approx(over["memory_mb"])  # distillation changes weights, not cost
    assert within["accuracy"] != over["accuracy"]
    for phase in ("compress", "measure", "evaluate"):
        assert within[f"seconds_{phase}"] > 0
    assert within["trial_seconds"] >= sum(within[f"seconds_{p}"] for p in ("compress", "measure", "distill",
                                                                            "evaluate"))


def test_a_trial_within_budget_keeps_the_weights_it_scored(tiny_teacher, digits_splits, tmp_path):
    import dataclasses

    from autocomp.search._objective import kept_model
    from autocomp.train import evaluate

    inputs = dataclasses.replace(_inputs(tiny_teacher[1], digits_splits), weights_dir=str(tmp_path))
    result = run_trial(_distilled().to_dict(), inputs, number=3)
    kept = kept_model(tiny_teacher[1], _distilled(), tmp_path / "3")
    assert kept is not None and evaluate(kept, digits_splits.val) == result["accuracy"]
    run_trial(_distilled().to_dict(), dataclasses.replace(inputs, limits={"memory_mb": 1e-4}), number=4)
    assert not (tmp_path / "4").exists()  # over budget: nothing kept
    assert kept_model(tiny_teacher[1], _distilled(), tmp_path / "5") is None


def test_a_diverged_distillation_is_a_failed_trial_with_its_reason(tiny_teacher, digits_splits):
    recipe = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 2}}, {}],
                               "distill": {"steps": 5, "alpha": 0.5, "lr": 1e12}})
    result = run_trial(recipe.to_dict(), _inputs(tiny_teacher[1], digits_splits))
    assert set(result) == {"error", "retry"} and "logits are not finite after distillation" in result["error"]
    assert result["retry"] is False  # it would diverge again


def _controller(study, n_trials=1, **kwargs):
    from autocomp.search._controller import OptunaController
    from autocomp.space import SearchSpace

    return OptunaController(study=study, space=SearchSpace(heads_keep=(0.25, 0.5, 0.75, 1.0)),
                            heads_per_block=[4, 4], n_trials=n_trials, **kwargs)


def _study():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "minimize", "minimize"],
                               sampler=optuna.samplers.RandomSampler(seed=0))


def test_a_crashed_trial_is_failed_with_its_reason_retried_once_then_replaced():
    import optuna

    study, told = _study(), []
    controller = _controller(study, on_told=told.append, retries=1)
    first = controller.suggest("a")
    controller.on_trial_complete("a", result={"error": "RuntimeError: out of memory"})
    again = controller.suggest("b")  # the same recipe, asked on top of the one trial
    assert again["recipe"] == first["recipe"] and again["trial_number"] == first["trial_number"] + 1
    controller.on_trial_complete("b", result={"error": "RuntimeError: out of memory"})
    assert [t.state for t in told] == [optuna.trial.TrialState.FAIL] * 2
    assert told[0].user_attrs["error"] == "RuntimeError: out of memory" and told[1].user_attrs["retry_of"] == 0
    replaced = controller.suggest("c")  # retries spent: a new recipe takes the failed one's place
    assert replaced is not controller.FINISHED and "retry_of" not in study.trials[-1].user_attrs
    controller.on_trial_complete("c", result={"error": "RuntimeError: out of memory"})
    again = controller.suggest("d")
    assert again["recipe"] == replaced["recipe"]  # the replacement's own retry
    controller.on_trial_complete("d", result={"error": "RuntimeError: out of memory"})
    assert controller.suggest("e") == controller.FINISHED  # one replacement per asked trial: the cap is reached


@pytest.mark.parametrize("result", [{"refused": "block 0: rank saves nothing"},
                                    {"error": "timed out: ran past trial_timeout_s = 1 s", "retry": False}])
def test_a_failure_a_rerun_would_repeat_is_replaced_by_a_new_recipe(result):
    study = _study()
    controller = _controller(study, retries=1)
    controller.suggest("a")
    controller.on_trial_complete("a", result=result)
    assert study.trials[-1].user_attrs["error"] in (f"refused: {result.get('refused')}", result.get("error"))
    controller.suggest("b")
    assert "retry_of" not in study.trials[-1].user_attrs  # not retried: a new draw in its place
    controller.on_trial_complete("b", result={"accuracy": 1.0, "latency_ms": 1.0, "memory_mb": 1.0,
                                              **dict.fromkeys(RECORDED, 0.0)})
    assert controller.suggest("c") == controller.FINISHED
    ran = [t for t in study.trials if "duplicate_of" not in t.user_attrs]  # a refused recipe drawn again is not run
    assert [t.state.name for t in ran] == ["FAIL", "COMPLETE"]


def test_the_last_trials_failure_is_retried_while_another_worker_asks_for_more():
    """Two workers, two trials: when the first ends, the second still runs and may fail; the controller must not
    tell Tune it is finished (Tune would never ask for the retry, and the search end with a trial missing)."""
    study = _study()
    controller = _controller(study, n_trials=2, retries=1)
    done = {"accuracy": 1.0, "latency_ms": 1.0, "memory_mb": 1.0, **dict.fromkeys(RECORDED, 0.0)}
    controller.suggest("a")
    second = controller.suggest("b")
    controller.on_trial_complete("a", result=done)
    assert controller.suggest("c") is None and controller.unfinished == 1  # not yet: "b" runs
    controller.on_trial_complete("b", result={"error": "RuntimeError: worker died"})
    retried = controller.suggest("d")
    assert retried["recipe"] == second["recipe"] and controller.unfinished == 1
    controller.on_trial_complete("d", result=done)
    assert controller.suggest("e") == controller.FINISHED and controller.unfinished == 0


def test_a_trial_run_again_keeps_where_its_recipe_came_from():
    """A retried (or interrupted and requeued) local move or starting point is still labelled so in trials.csv."""
    import optuna

    from autocomp.search._runner import _requeue_interrupted

    study = _study()
    controller = _controller(study, retries=1)
    study.enqueue_trial({}, user_attrs={"local_move": "from trial 3: heads 0.5 in block 1", "local_load": 0.9})
    controller.suggest("a")
    controller.on_trial_complete("a", result={"error": "RuntimeError: worker died"})
    controller.suggest("b")
    retried = study.trials[-1].user_attrs
    assert (retried["retry_of"], retried["local_move"], retried["local_load"]) == (
        0, "from trial 3: heads 0.5 in block 1", 0.9)
    stale = _study()  # a driver killed while a starting point ran
    stale.enqueue_trial({}, user_attrs={"start_point": "uniform weight_bits 8"})
    stale.ask()
    assert _requeue_interrupted(stale) == [0]
    assert stale.get_trials(states=(optuna.trial.TrialState.WAITING,))[0].user_attrs == {
        "retry_of": 0, "start_point": "uniform weight_bits 8"}


def test_a_lost_device_stops_the_search_and_queues_the_recipe_for_the_resume():
    import optuna

    study = _study()
    controller = _controller(study, n_trials=3, retries=1)
    first, second = controller.suggest("a"), controller.suggest("b")
    lost = "the Ray node holding the device resource 'gpu0' left the cluster"
    controller.on_trial_complete("a", result={"error": lost, "stop_search": True})
    controller.on_trial_complete("b", result={"error": "RuntimeError: worker died"})  # finishing after the stop
    assert controller.stopped == lost and controller.suggest("c") == controller.FINISHED
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 2
    resumed = _controller(study, n_trials=2)  # the resumed search runs both recipes first
    assert [resumed.suggest(t)["recipe"] for t in "de"] == [first["recipe"], second["recipe"]]


def test_an_uncompressed_candidate_is_not_distilled(tiny_teacher, digits_splits):
    recipe = Recipe.from_dict({"blocks": [{}, {}], "distill": {"steps": 20, "alpha": 0.5}})
    result = run_trial(recipe.to_dict(), _inputs(tiny_teacher[1], digits_splits))
    assert result["distilled"] is False and result["seconds_distill"] == 0.0  # nothing to recover


def test_a_trial_past_its_time_limit_fails_with_the_reason(tiny_teacher, digits_splits):
    import dataclasses

    inputs = dataclasses.replace(_inputs(tiny_teacher[1], digits_splits), trial_timeout_s=1e-3)
    result = run_trial(_distilled(steps=1000).to_dict(), inputs)
    assert result == {"error": "timed out: ran past trial_timeout_s = 0.001 s", "retry": False}


def test_time_limits_nest_and_the_earliest_deadline_holds():
    import time

    from autocomp._timeout import TimedOut, check_time, time_limit

    check_time()  # no limit: nothing to raise
    with time_limit(100.0, setting="trial_timeout_s"):
        with time_limit(None, setting="measure_timeout_s"):
            check_time()
        with time_limit(1e-3, setting="measure_timeout_s"):
            time.sleep(0.01)
            with pytest.raises(TimedOut, match=r"ran past measure_timeout_s = 0.001 s"):
                check_time()
        with time_limit(1000.0, setting="measure_timeout_s"):  # the outer, earlier deadline still holds
            time.sleep(0.01)
            check_time()
    with time_limit(1e-3, setting="trial_timeout_s"):
        time.sleep(0.01)
        with time_limit(1000.0, setting="measure_timeout_s"):
            with pytest.raises(TimedOut, match="trial_timeout_s"):
                check_time()


def _result(accuracy, latency):
    from autocomp.search._controller import RECORDED

    return {**dict.fromkeys(RECORDED, None), "accuracy": accuracy, "latency_ms": latency, "memory_mb": 1.0,
            "trial_seconds": 1.0, "violation:latency_ms": latency - 5.0}


def test_the_coarse_stage_draws_every_block_alike_then_hands_over_to_the_per_block_sampler():
    import optuna

    from autocomp.search._controller import OptunaController
    from autocomp.space import SearchSpace

    study = _study()
    space = SearchSpace(heads_keep=(0.25, 0.5, 0.75, 1.0), mlp_keep=(0.5, 1.0))
    controller = OptunaController(study=study, space=space, heads_per_block=[4, 4, 4], n_trials=8, coarse=3,
                                  allowed={"b1.mlp_keep": (1.0,)}, seed=0)
    blocks = []
    for index in range(8):
        asked = controller.suggest(str(index))
        blocks.append(asked["recipe"]["blocks"])
        controller.on_trial_complete(str(index), result=_result(80.0 + index, 4.0 + index % 3))
    for recipe in blocks[:3]:  # alike in every block, and only what every block is offered (no MLP pruning)
        assert recipe[0] == recipe[1] == recipe[2] and not any("prune_mlp" in b for b in recipe)
    assert len({str(recipe) for recipe in blocks[:3]}) == 3  # of 4 alike recipes, none drawn twice
    assert [("coarse" in t.user_attrs) for t in study.trials] == [True] * 3 + [False] * 5
    coarse = controller.coarse.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))  # not the redraws
    assert len(coarse) == 3 and [t.values[0] for t in coarse] == [80.0, 81.0, 82.0]
    assert [t.system_attrs["constraints:latency_ms"] for t in coarse] == [-1.0, 0.0, 1.0]
    assert all(t.state.name == "COMPLETE" for t in study.trials)


def test_the_gp_sampler_refines_per_block_after_the_coarse_stage_as_tpe_does():
    """``sampler: gp`` puts Optuna's Gaussian-process sampler in the per-block TPE's place: the coarse stage still
    runs first (not with NSGA-II or random search), and the GP itself, not its random fallback, draws after it."""
    from pathlib import Path

    from autocomp.budget import Budget
    from autocomp.config import JobConfig
    from autocomp.data import DataConfig
    from autocomp.models import ModelSpec
    from autocomp.search._controller import OptunaController
    from autocomp.search._runner import _coarse_draws, _sampler
    from autocomp.space import SearchSpace

    space = SearchSpace(heads_keep=(0.25, 0.5, 0.75, 1.0), mlp_keep=(0.5, 1.0))

    def config(sampler):
        return JobConfig(model=ModelSpec(name="vit_tiny_patch16_224"), data=DataConfig(dataset="digits"),
                         search_space=Path("x"), hardware=Path("x"), budget=Budget(latency=0.5), sampler=sampler,
                         trials=16)

    assert [_coarse_draws(_study(), space, config(s)) for s in ("tpe", "gp", "nsga2", "random")] == [8, 8, 0, 0]
    study = _study()
    study.sampler = _sampler(config("gp"), seed=0)  # a random start-up of 4 trials (a fifth of 16, at least 4)
    controller = OptunaController(study=study, space=space, heads_per_block=[4, 4, 4], n_trials=8, coarse=3, seed=0)
    for index in range(8):
        controller.suggest(str(index))
        controller.on_trial_complete(str(index), result=_result(80.0 + index, 4.0 + index % 3))
    assert [("coarse" in t.user_attrs) for t in study.trials[:4]] == [True] * 3 + [False]
    drawn_by_the_gp = [any(key.startswith("gp:relative_params") for key in t.system_attrs) for t in study.trials]
    assert drawn_by_the_gp[:4] == [False] * 4 and all(drawn_by_the_gp[4:8])


def test_a_trial_handed_an_earlier_measurement_distils_and_scores_without_measuring(tiny_teacher, digits_splits,
                                                                                    monkeypatch):
    from autocomp.search import _objective
    from autocomp.search._objective import MEASURED, build_candidate
    from autocomp.train import evaluate

    own = run_trial(_distilled().to_dict(), _inputs(tiny_teacher[1], digits_splits), number=0)
    assert own["measurement_of"] is None and own["seconds_measure"] > 0

    def refuse(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(_objective, "measure_on_device", refuse)
    alpha = Recipe.from_dict({**_distilled().to_dict(), "distill": {"steps": 20, "alpha": 0.9}})
    again = run_trial(alpha.to_dict(), _inputs(tiny_teacher[1], digits_splits), number=1,
                      measured={"trial": 0, **{key: own[key] for key in MEASURED}})
    assert again["measurement_of"] == 0 and again["seconds_measure"] == 0.0
    assert {key: again[key] for key in MEASURED} == {key: own[key] for key in MEASURED}
    assert again["distilled"] is True and again["seconds_distill"] > 0
    rebuilt = build_candidate(tiny_teacher[1], alpha, digits_splits.calib.x, distill_subset(digits_splits.train))
    assert again["accuracy"] == evaluate(rebuilt, digits_splits.val)  # its own distillation, scored
    assert again["violation:memory_mb"] == own["violation:memory_mb"]  # judged by the measurement it reused


def test_a_recipe_that_compresses_as_a_measured_trial_reuses_its_measurement():
    from autocomp.search._controller import OptunaController
    from autocomp.space import SearchSpace

    study = _study()
    space = SearchSpace(heads_keep=(0.5, 1.0), distill_steps=(10,), distill_alpha=(0.3, 0.7))
    halved, mixed = {"b0.heads_keep": 0.5, "b1.heads_keep": 0.5}, {"b0.heads_keep": 1.0, "b1.heads_keep": 0.5}
    for values in ({**halved, "distill_alpha": 0.3}, {**halved, "distill_alpha": 0.7},
                   {**mixed, "distill_alpha": 0.3}, {**mixed, "distill_alpha": 0.7}):
        study.enqueue_trial(space.params(values))
    controller = OptunaController(study=study, space=space, heads_per_block=[4, 4], n_trials=4)
    first = controller.suggest("a")
    assert "measured" not in first
    controller.on_trial_complete("a", result={**_result(90.0, 3.0), "runtime": "onnxruntime", "export_top1": 0.99,
                                              "measured_on": "node-1", "latency_ratio": 0.6})
    alpha = controller.suggest("b")  # the same compression, another distillation weight
    assert alpha["recipe"]["blocks"] == first["recipe"]["blocks"]
    assert alpha["recipe"]["distill"] != first["recipe"]["distill"]
    assert alpha["measured"] == {"trial": 0, "latency_ms": 3.0, "latency_ratio": 0.6, "raw_latency_ms": None,
                                 "latency_iqr_ms": None, "memory_mb": 1.0, "weights_mb": None,
                                 "activations_mb": None, "runtime": "onnxruntime", "export_top1": 0.99,
                                 "export_max_logit_diff": None, "measured_on": "node-1"}
    other = controller.suggest("c")  # another compression
    assert other["recipe"]["blocks"] != first["recipe"]["blocks"] and "measured" not in other
    while_running = controller.suggest("d")  # c's compression, not measured yet: measured by its own trial
    assert while_running["recipe"]["blocks"] == other["recipe"]["blocks"] and "measured" not in while_running
