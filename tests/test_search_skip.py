"""The cost model in the search: predictions recorded per trial, candidates far over budget skipped before they are
built, and the count and time saved reported."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import small_vit

import autocomp
from autocomp import AutocompError, Recipe, compress
from autocomp.cli import NOTHING_WITHIN_BUDGET, main
from autocomp.measure.profiling import load_profile
from autocomp.measure import measure
from autocomp.results import load_run_study
from autocomp.search._controller import RECORDED, SKIPS_PER_TRIAL
from autocomp.search._screen import CORRECT_AFTER, FLOOR, MEMORY_FLOOR, PROVEN, CostPredictor, Screen
from test_search_e2e import write_job

ROOT = Path(__file__).resolve().parents[1]
LOCAL = load_profile(ROOT / "hardware_profiles" / "local_cpu.yaml")
# fixed device numbers for the predictor, those of a quiet 2-core Xeon: the local profile is measured on first use,
# and under load its op overhead can dwarf the int8 GEMMs whose mistiming the fitted-correction test injects
FIXED = dataclasses.replace(LOCAL, batch_size=4, peak_gflops={"fp32": 100.0, "int8": 200.0},
                            fast_weight_bits={8: "int8"}, memory_bandwidth_gbs=10.0, op_overhead_us=8.0)
HALF_HEADS = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 3}}, {"prune_heads": {"keep": 3}}]})
INT8 = Recipe.from_dict({"blocks": [{"quantize": {"weight_bits": 8}}, {}]})


@pytest.fixture(scope="module")
def base():
    return small_vit(depth=2)


@pytest.fixture
def predictor(base):
    return CostPredictor(base=base, profile=FIXED, base_latency_ms=10.0)


def test_latency_is_anchored_on_the_measured_base_and_memory_is_counted(base, predictor):
    identity = predictor.predict(Recipe.identity(2))
    assert identity["latency_ms"] == pytest.approx(10.0)  # the roofline's ratio to itself, times the measured base
    assert predictor.predict(HALF_HEADS)["latency_ms"] < 10.0
    measured = measure(base, dataclasses.replace(LOCAL, batch_size=4, repeats=2, warmup=0),
                       example=torch.randn(4, 3, 16, 16))
    assert identity["memory_mb"] == pytest.approx(measured.memory_mb, rel=0.03)
    small = compress(base, HALF_HEADS, calibration=torch.randn(8, 3, 16, 16))
    measured = measure(small, dataclasses.replace(LOCAL, batch_size=4, repeats=2, warmup=0),
                       example=torch.randn(4, 3, 16, 16))
    assert predictor.predict(HALF_HEADS)["memory_mb"] == pytest.approx(measured.memory_mb, rel=0.03)


def _slow_int8_device(predictor, recipe):
    """A device where int8 GEMMs take 4x the roofline's time; everything else as predicted, in anchored ms."""
    prediction = predictor.prediction(recipe)
    units = sum((4 if op.group == "linear.int8" else 1) * max(op.compute_ms, op.memory_ms) + op.overhead_ms
                for op in prediction.ops)
    return units * predictor.predict(Recipe.identity(2))["latency_ms"] / predictor.prediction(
        Recipe.identity(2)).latency_ms


def test_the_fitted_correction_takes_over_after_enough_measured_trials(predictor):
    def block(keep, int8):
        return {**({"prune_heads": {"keep": keep}} if keep < 6 else {}),
                **({"quantize": {"weight_bits": 8}} if int8 else {})}

    recipes = [Recipe.from_dict({"blocks": [block(k0, q0), block(k1, q1)]})
               for k0 in (6, 3) for k1 in (6, 2) for q0 in (False, True) for q1 in (False, True)]
    held_out = Recipe.from_dict({"blocks": [block(4, True), block(5, True)]})
    truth = _slow_int8_device(predictor, held_out)
    anchored = predictor.predict(held_out)["latency_ms"]
    assert abs(anchored / truth - 1) > 0.2  # the roofline alone misses the slow int8 kernel
    for recipe in recipes[:CORRECT_AFTER - 1]:
        predictor.observe(recipe, _slow_int8_device(predictor, recipe))
    assert predictor.predict(held_out)["latency_ms"] == anchored  # too few trials: still the anchored ratio
    for recipe in recipes[CORRECT_AFTER - 1:]:
        predictor.observe(recipe, _slow_int8_device(predictor, recipe))
    assert predictor.predict(held_out)["latency_ms"] == pytest.approx(truth, rel=0.05)


def test_the_screen_skips_only_beyond_the_margin_and_only_after_a_measured_trial(predictor):
    predicted = predictor.predict(HALF_HEADS)["latency_ms"]
    tight = Screen(predictor=predictor, limits={"latency_ms": predicted / 1.3}, margin=0.25)  # 30 % over
    assert tight.judge(HALF_HEADS).skip_reason is None  # nothing measured yet: the first candidate always runs
    tight.observe(Recipe.identity(2), 10.0)
    verdict = tight.judge(HALF_HEADS)
    assert verdict.predicted["latency_ms"] == pytest.approx(predicted)
    assert verdict.skip_reason.startswith("predicted latency_ms") and "30% over the limit" in verdict.skip_reason
    assert Screen(predictor=predictor, limits={"latency_ms": predicted / 1.2}, margin=0.25).judge(
        HALF_HEADS).skip_reason is None  # 20 % over: within the margin
    assert Screen(predictor=predictor, limits={"latency_ms": 1e-9}, margin=None).judge(HALF_HEADS).skip_reason is None


def _recipes(n):
    """``n`` different two-block recipes (heads kept and int8 per block)."""
    blocks = [{**({"prune_heads": {"keep": keep}} if keep < 6 else {}),
               **({"quantize": {"weight_bits": 8}} if q else {})} for keep in (6, 5, 4, 3, 2) for q in (False, True)]
    return [Recipe.from_dict({"blocks": [a, b]}) for a in blocks for b in blocks][:n]


def test_a_recipe_that_compresses_nothing_costs_what_the_uncompressed_model_measured(predictor):
    """The uncompressed model is measured at the start of the run: a draw that compresses nothing (the sampler's, a
    coarse stage's) is skipped where that measurement is over a limit, from the first draw (it had run as a trial,
    predicted within the unproven margin); within every limit it runs (distilled, it may score more)."""
    from autocomp.recipe import Distill

    uncompressed = {"latency_ms": 10.0, "memory_mb": 2.0}
    screen = Screen(predictor=predictor, limits={"latency_ms": 7.0}, margin=0.5, uncompressed=uncompressed)
    for recipe in (Recipe.identity(2), Recipe(blocks=[{}, {}], distill=Distill(steps=10, alpha=0.5))):
        verdict = screen.judge(recipe)
        assert verdict.skip_reason == ("it compresses nothing: the uncompressed model measured latency_ms 10 at the "
                                       "start of the run, 43% over the limit 7")
        assert verdict.violations == {"latency_ms": pytest.approx(10 / 7 - 1)}
    assert screen.judge(HALF_HEADS).skip_reason is None  # predicted: nothing measured yet, it runs
    assert Screen(predictor=predictor, limits={"latency_ms": 12.0}, margin=0.5,
                  uncompressed=uncompressed).judge(Recipe.identity(2)).skip_reason is None  # within the limit
    assert Screen(predictor=predictor, limits={"latency_ms": 7.0}, margin=None,
                  uncompressed=uncompressed).judge(Recipe.identity(2)).skip_reason is None  # skip_margin null: none


@pytest.mark.parametrize("error", [0.0, 0.3])
def test_the_margin_narrows_once_the_cost_model_has_shown_it_does_not_over_predict(base, error):
    """Predicted 20 % over with a 50 % margin: run while the cost model is unproven; skipped once it has come within
    a few % of what was measured; run still when it over-predicted some by 30 %."""
    predictor = CostPredictor(base=base, profile=FIXED, base_latency_ms=10.0)
    predicted = predictor.predict(HALF_HEADS)["latency_ms"]
    screen = Screen(predictor=predictor, limits={"latency_ms": predicted / 1.2}, margin=0.5)
    recipes = _recipes(CORRECT_AFTER + PROVEN)
    for i, recipe in enumerate(recipes):
        truth = predictor.predict(recipe)["latency_ms"]  # the device as predicted, but for the error given
        screen.observe(recipe, truth / (1 + error) if i % 2 else truth)
        if i < CORRECT_AFTER + PROVEN - 1:
            assert screen.judge(HALF_HEADS).skip_reason is None  # unproven: the configured margin
    verdict = screen.judge(HALF_HEADS)
    if error:
        assert screen.margin_now()[0] > 0.25 and verdict.skip_reason is None  # it may be within: it runs
    else:
        assert screen.margin_now()[0] == pytest.approx(FLOOR)
        assert "20% over the limit" in verdict.skip_reason and "skip margin 5%" in verdict.skip_reason
        assert "over-predicted none of the last 3 measured" in verdict.skip_reason


def test_only_over_predictions_widen_the_margin(predictor):
    """A candidate predicted over a limit is within it only if the model over-predicts: measured slower than
    predicted (log(predicted / measured) < 0), however much, it is over all the more."""
    screen = Screen(predictor=predictor, limits={"latency_ms": 1.0}, margin=0.5)
    predictor.errors = [-0.4, -0.2, 0.0]
    assert screen.margin_now()[0] == pytest.approx(FLOOR)
    predictor.errors = [-0.4, 0.1, 0.0]  # over-predicted one by 10.5 %
    assert screen.margin_now()[0] == pytest.approx(math.exp(0.1) - 1)
    predictor.errors = [0.4, 0.1]  # too few to go by
    assert screen.margin_now()[0] == 0.5


def test_memory_has_a_margin_of_its_own_learnt_from_the_measured_memory(base):
    """Memory is counted, not timed: once the cost model has predicted it closely, a candidate predicted 5 % over a
    memory limit is skipped, however far the latency predictions were off; where it over-predicted memory, it runs."""
    predictor = CostPredictor(base=base, profile=FIXED, base_latency_ms=10.0)
    limit = predictor.predict(HALF_HEADS)["memory_mb"] / 1.05
    screen = Screen(predictor=predictor, limits={"memory_mb": limit}, margin=0.5)
    recipes = _recipes(PROVEN)
    for i, recipe in enumerate(recipes):
        predicted = predictor.predict(recipe)
        screen.observe(recipe, predicted["latency_ms"] * 3, predicted["memory_mb"])  # latency 3x off, memory exact
        if i < PROVEN - 1:
            assert screen.judge(HALF_HEADS).skip_reason is None  # unproven: the configured margin
    assert screen.margin_now("memory_mb")[0] == pytest.approx(MEMORY_FLOOR) and screen.margin_now()[0] == 0.5
    verdict = screen.judge(HALF_HEADS)
    assert "predicted memory_mb" in verdict.skip_reason and "5% over the limit" in verdict.skip_reason
    assert "skip margin 2%" in verdict.skip_reason
    loose = CostPredictor(base=base, profile=FIXED, base_latency_ms=10.0)
    screen = Screen(predictor=loose, limits={"memory_mb": limit}, margin=0.5)
    for recipe in recipes:  # measured 10 % under what was predicted: a candidate predicted 5 % over may be within
        screen.observe(recipe, 1.0, loose.predict(recipe)["memory_mb"] / 1.1)
    assert screen.judge(HALF_HEADS).skip_reason is None and screen.margin_now("memory_mb")[0] == pytest.approx(0.1)


def test_the_weights_have_a_margin_learnt_from_their_own_measurements(base):
    """The memory predicted exactly does not narrow the weights' margin: a runtime's file can hold weights the cost
    model does not count (a few % on a tiny model), and a candidate within a weights limit is then not skipped."""
    predictor = CostPredictor(base=base, profile=FIXED, base_latency_ms=10.0)
    limit = predictor.predict(HALF_HEADS)["weights_mb"] / 1.05
    screen = Screen(predictor=predictor, limits={"weights_mb": limit}, margin=0.5)
    for recipe in _recipes(PROVEN):  # memory exact, the weights measured 10 % under their prediction
        predicted = predictor.predict(recipe)
        screen.observe(recipe, predicted["latency_ms"], predicted["memory_mb"], predicted["weights_mb"] / 1.1)
    assert screen.margin_now("memory_mb")[0] == pytest.approx(MEMORY_FLOOR)
    assert screen.margin_now("weights_mb")[0] == pytest.approx(0.1) and screen.judge(HALF_HEADS).skip_reason is None
    again = Screen(predictor=CostPredictor(base=base, profile=FIXED, base_latency_ms=10.0), limits=screen.limits,
                   margin=0.5)
    again.learn_again(screen.observed)  # a resumed run learns the weights' errors again
    assert again.margin_now("weights_mb")[0] == pytest.approx(0.1)
    again.learn_again([observed[:3] for observed in screen.observed])  # a run folder from before they were kept


def test_the_controller_teaches_the_screen_each_trials_measured_memory(base):
    from autocomp.search._controller import DIRECTIONS, RECORDED, OptunaController
    from autocomp.space import SearchSpace

    def controller(predictor, study):
        return OptunaController(study=study, space=SearchSpace(heads_keep=(0.5, 1.0)), heads_per_block=[6, 6],
                                n_trials=1, screen=Screen(predictor=predictor, limits={"memory_mb": 100.0}, margin=0.5))

    predictor = CostPredictor(base=base, profile=FIXED, base_latency_ms=10.0)
    study = optuna.create_study(directions=list(DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=0))
    running = controller(predictor, study)
    asked = running.suggest("a")
    memory = predictor.predict(Recipe.from_dict(asked["recipe"]))["memory_mb"]
    running.on_trial_complete("a", result={**dict.fromkeys(RECORDED, None), "accuracy": 1.0, "latency_ms": 1.0,
                                           "memory_mb": memory / 2, "trial_seconds": 1.0,
                                           "violation:memory_mb": -0.5})
    assert predictor.memory_errors == [pytest.approx(math.log(2))]  # over-predicted twice over
    resumed = CostPredictor(base=base, profile=FIXED, base_latency_ms=10.0)
    controller(resumed, study)  # a resumed search learns it from the study
    assert resumed.memory_errors == [pytest.approx(math.log(2))]


class _EveryOther:
    """A screen that skips every other candidate it judges (the first one runs), or all of them."""

    limits = {"latency_ms": 1.0}

    class predictor:  # every recipe predicted twice the limit: no repair reaches it
        @staticmethod
        def predict(recipe):
            return {"latency_ms": 2.0, "memory_mb": 1.0}

    def __init__(self, *, skip_all: bool = False) -> None:
        self.judged, self._skip_all = 0, skip_all

    def judge(self, recipe):
        from autocomp.search._screen import Verdict

        self.judged += 1
        if self._skip_all or self.judged % 2 == 0:
            return Verdict(predicted={"latency_ms": 2.0}, skip_reason="predicted 100% over",
                           violations={"latency_ms": 1.0})
        return Verdict(predicted={"latency_ms": 0.5})

    def observe(self, *args) -> None:
        pass


def _controller_with(screen, n_trials):
    from autocomp.search._controller import DIRECTIONS, OptunaController
    from autocomp.space import SearchSpace

    study = optuna.create_study(directions=list(DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=0))
    space = SearchSpace(heads_keep=(0.25, 0.5, 0.75, 1.0), mlp_keep=(0.5, 1.0))
    return study, OptunaController(study=study, space=space, heads_per_block=[4, 4, 4], n_trials=n_trials,
                                   screen=screen)


def test_a_skipped_candidate_does_not_use_up_a_trial_of_the_job():
    """Trials asked for are candidates measured: one the screen skips is drawn again in its place."""
    from ray.tune.search import Searcher

    from autocomp.search._controller import counted

    study, controller = _controller_with(_EveryOther(), n_trials=3)
    handed = [controller.suggest(f"t{i}") for i in range(4)]
    assert all(isinstance(h, dict) for h in handed[:3]) and handed[3] is None  # 3 run, 2 skipped between; the 3
    assert controller.unfinished == 3  # still run (one may fail and be retried): Tune is to ask again, not finish
    for i in range(3):
        controller.on_trial_complete(f"t{i}", result={"accuracy": 1.0, "latency_ms": 1.0, "memory_mb": 1.0,
                                                      **dict.fromkeys(RECORDED, 0.0)})
    assert controller.suggest("t4") == Searcher.FINISHED
    skipped = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.PRUNED]
    assert len(skipped) == 2 and all("skipped_reason" in t.user_attrs for t in skipped)
    assert not any(counted(t) for t in skipped)  # a resumed search asks for them again


def test_skipped_candidates_stop_being_free_after_the_cap():
    """A budget the screen judges nothing to meet still ends the search: beyond ``SKIPS_PER_TRIAL`` per trial, each
    skipped candidate takes a trial's place."""
    from ray.tune.search import Searcher

    from autocomp.search._controller import SKIPS_PER_TRIAL

    study, controller = _controller_with(_EveryOther(skip_all=True), n_trials=2)
    assert controller.suggest("a") == Searcher.FINISHED
    assert len(study.get_trials()) == 2 + SKIPS_PER_TRIAL * 2
    assert controller.places_taken == {"skipped": 2, "drawn again": 0}  # what the run's log says of its 2 trials


def test_the_time_spent_choosing_trials_counts_the_candidates_skipped_too(monkeypatch):
    """The controller's asking time (the search's overhead while a slot waits) covers every candidate it judged."""
    import types

    from autocomp.search import _controller

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(_controller, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))

    class Slow(_EveryOther):
        def judge(self, recipe):
            clock.now += 1.0  # each judgement takes a second on the controller's clock; nothing else moves it
            return super().judge(recipe)

    screen = Slow()
    _, controller = _controller_with(screen, n_trials=2)
    controller.suggest("a")
    controller.suggest("b")
    assert screen.judged == 3 and controller.asking_seconds == 3.0


def test_a_tight_budget_skips_candidates_before_they_are_built(tmp_path, tiny_teacher, capsys):
    job = write_job(tmp_path, tiny_teacher[0], {"latency_ms": 1e-3}, trials=2, workers=1)  # met by nothing
    data = yaml.safe_load(job.read_text())
    job.write_text(yaml.safe_dump({**data, "skip_margin": 0}))
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == NOTHING_WITHIN_BUDGET

    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    # nothing met the budget: the results are still written, and the closest trial is named
    assert summary["met_budget"] is False and not (run / "best").exists()
    # by how much, to a tenth of a percent (0.43% over read "over by 0%")
    assert re.search(r"no candidate met the budget; closest was trial \d+ \(latency_ms over by \d+\.\d%\)",
                     summary["message"]), summary["message"]
    printed = capsys.readouterr().out
    assert "no candidate met the budget" in printed
    # the trial that built nothing is said so (the log counted it with those measured)
    assert "2 trials in " in printed and ("note: 1 of the 2 trials built no model: taken 1 by candidates the cost "
                                          "model skipped (predicted over budget)") in printed
    trials = [t for t in load_run_study(run).get_trials() if "duplicate_of" not in t.user_attrs]  # drawn again: not run
    ran = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    skipped = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    # the first trial runs (nothing is measured yet); then every candidate is skipped, 3 per trial asked for drawn
    # again in its place, and the one trial left is spent by the next skipped one
    assert len(ran) == 1 and len(skipped) == 2 * SKIPS_PER_TRIAL + 1 and len(trials) == len(ran) + len(skipped)
    assert summary["closest"]["trial"] == ran[0].number
    with pytest.raises(AutocompError, match=r"run/best does not exist: the search in .* saved no best/ model \(no "
                                            r"candidate met the budget"):
        autocomp.load(run / "best")
    assert summary["skipped"] == len(skipped)
    assert summary["time_saved_s"] == pytest.approx(len(skipped) * ran[0].user_attrs["trial_seconds"])
    for trial in trials:
        assert trial.user_attrs["predicted_latency_ms"] > 1e-3 and trial.user_attrs["predicted_memory_mb"] > 0
    for trial in skipped:
        assert "predicted latency_ms" in trial.user_attrs["skipped_reason"]
        # never compressed, distilled, measured or evaluated
        assert not {"trial_seconds", "latency_ratio", "accuracy"} & set(trial.user_attrs) and trial.values is None
        # the predicted violation is the trial's constraint: the sampler ranks it as infeasible by that much
        predicted = trial.user_attrs["predicted_latency_ms"] / 1e-3 - 1
        assert trial.constraints == {"latency_ms": pytest.approx(predicted)} and predicted > 0
    rows = [r for r in csv.DictReader((run / "trials.csv").open()) if not r["duplicate_of"]]
    assert [r["state"] for r in rows] == ["COMPLETE"] + ["PRUNED"] * len(skipped)
    assert rows[1]["skipped_reason"] and float(rows[0]["predicted_memory_mb"]) > 0
    assert summary["cost_model"]["memory_mb"]["mape"] < 0.05  # memory is counted, so its prediction is close


BASE = {"latency_ms": 5.0, "memory_mb": 8.0, "weights_mb": 2.0}  # an uncompressed model's measured figures


def test_an_absolute_limit_in_another_unit_is_refused_and_one_near_the_model_is_not():
    """A limit 100x the uncompressed model's figure constrains nothing: given in microseconds, or bytes, by mistake."""
    from autocomp import AutocompError
    from autocomp.budget import Budget

    with pytest.raises(AutocompError, match=r"^budget.latency_ms is 5000 ms, 1,000x the uncompressed model's 5 ms, so "
                                            r"it constrains nothing: budget.latency_ms is in ms \(was it given in "
                                            r"microseconds\?\); give the limit in ms, or a fraction \(budget.latency: "
                                            r"0.5 for half the uncompressed model's\)$"):  # alone: no budget left
        Budget(latency_ms=5000).check_plausible(BASE)
    with pytest.raises(AutocompError, match=r"budget.memory_mb is 8e\+06 MB, 1,000,000x .* \(was it given in bytes "
                                            r"or KB\?\); leave it out to search without that limit$"):
        Budget(latency=0.5, memory_mb=8e6).check_plausible(BASE)
    Budget(latency_ms=400, memory_mb=799).check_plausible(BASE)  # under 100x: met already, not a mistake
    Budget(latency=1.0, memory=1.0).check_plausible(BASE)  # fractions are never in another unit
    with pytest.raises(AutocompError, match=r"budget.weights_mb is 2e\+06 MB, 1,000,000x the uncompressed model's 2 "
                                            r"MB, .* \(was it given in bytes or KB\?\)"):
        Budget(weights_mb=2e6).check_plausible(BASE)
    Budget(weights_mb=150).check_plausible(BASE)
