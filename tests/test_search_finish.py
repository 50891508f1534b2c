"""Naming the best model: the most accurate candidates within budget are measured again first."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autocomp.hardware import HardwareProfile
from autocomp.measure import Measurement
from autocomp.measure.backends import NBYTES_FILE
from autocomp.measure.placement import Placed
from autocomp.results import TrialRow
from autocomp.search import _confirm, _finish
from autocomp.search._rundir import REMEASURED
from conftest import small_vit

LIMITS = {"latency_ms": 10.0}


def _row(number: int, accuracy: float, latency_ms: float, *, distill: float | None = None) -> TrialRow:
    # one compression per trial number below 6 (block 0 keeps 6 - number of its 6 heads)
    blocks = [{"prune_heads": {"keep": 6 - number}} if 0 < number < 6 else {}, {}]
    recipe = {"blocks": blocks, **({"distill": {"steps": 10, "alpha": distill}} if distill is not None else {})}
    return TrialRow(number=number, state="COMPLETE", recipe_summary="", recipe=recipe,
                    accuracy=accuracy, latency_ms=latency_ms, memory_mb=1.0, latency_ratio=latency_ms / 12.0,
                    weights_mb=1.0, activations_mb=0.0, simulated_layers=0,
                    violations={"latency_ms": latency_ms / LIMITS["latency_ms"] - 1})


@pytest.fixture
def remeasure_as(monkeypatch):
    """Make the re-measurement of the n-th candidate give the latency ratios listed, in order."""
    def install(ratios):
        queue = list(ratios)

        def fake(model, profile, *, example, reference=None, timeout_s=None, keep=None):
            assert profile.repeats == 3 * HardwareProfile(name="t").repeats  # longer than a trial's measurement
            measurement = Measurement(latency_ms=1.0, latency_iqr_ms=0.0, latency_ratio=queue.pop(0),
                                      weights_mb=1.0, activations_mb=0.0)
            return Placed(measurement=measurement, node_id=None, started=0.0, finished=0.0)
        monkeypatch.setattr(_confirm, "measure_on_device", fake)
    return install


def test_a_candidate_that_was_within_budget_by_luck_is_not_named_best(remeasure_as):
    rows = [_row(0, 91.0, 9.9), _row(1, 90.0, 8.0), _row(2, 95.0, 11.0)]  # trial 2 is over budget
    remeasure_as([10.5 / 12, 8.1 / 12])  # trial 0, at the edge, measures over the limit the second time
    said = []
    best, remeasured = _confirm.confirm_best(rows, base=small_vit(), profile=HardwareProfile(name="t"),
                                            example=torch.randn(2, 3, 16, 16), baseline_latency_ms=12.0,
                                            limits=LIMITS, log=said.append)
    assert said == ["re-measuring candidate 1 of 2 within budget (trial 0) on t",  # minutes each on a big model
                    "re-measuring candidate 2 of 2 within budget (trial 1) on t"]
    assert best.number == 1
    assert [(m["trial"], m["within_budget_again"]) for m in remeasured] == [(0, False), (1, True)]
    assert remeasured[0]["latency_ms"] == 9.9 and remeasured[0]["remeasured_latency_ms"] == pytest.approx(10.5)


def test_when_no_candidate_holds_the_trials_own_best_is_kept_and_nothing_feasible_means_none(remeasure_as):
    rows = [_row(0, 91.0, 9.9), _row(1, 90.0, 9.8)]
    remeasure_as([1.0, 1.0])
    best, remeasured = _confirm.confirm_best(rows, base=small_vit(), profile=HardwareProfile(name="t"),
                                            example=torch.randn(2, 3, 16, 16), baseline_latency_ms=12.0,
                                            limits=LIMITS)
    assert best.number == 0 and not any(m["within_budget_again"] for m in remeasured)
    best, remeasured = _confirm.confirm_best([_row(0, 91.0, 11.0)], base=small_vit(),
                                            profile=HardwareProfile(name="t"), example=torch.randn(2, 3, 16, 16),
                                            baseline_latency_ms=12.0, limits=LIMITS)
    assert best is None and remeasured == []


def test_candidates_that_differ_only_in_their_distillation_are_measured_once(remeasure_as):
    alike = [_row(1, 91.0, 9.0, distill=0.3), TrialRow(**{**_row(1, 90.5, 9.2, distill=0.7).__dict__, "number": 5}),
             _row(2, 90.0, 8.0)]
    remeasure_as([9.5 / 12, 8.1 / 12])  # two measurements for three candidates: a third would find the queue empty
    said = []
    best, remeasured = _confirm.confirm_best(alike, base=small_vit(), profile=HardwareProfile(name="t"),
                                            example=torch.randn(2, 3, 16, 16), baseline_latency_ms=12.0,
                                            limits=LIMITS, log=said.append)
    # counted by the models measured (it said 1 of 3, then 3 of 3, as if one had been skipped)
    assert said == ["re-measuring candidate 1 of 2 within budget (trial 1; trial 5 compresses alike, differing in "
                    "distillation) on t", "re-measuring candidate 2 of 2 within budget (trial 2) on t"]
    assert [(m["trial"], m["remeasured_latency_ms"]) for m in remeasured] == [
        (1, pytest.approx(9.5)), (5, pytest.approx(9.5)), (2, pytest.approx(8.1))]
    # the summary names the measurement each one shares (the search's last line counted 3 models re-measured)
    assert [m["measured_as_trial"] for m in remeasured] == [None, 1, None]
    assert best.number == 1


def test_a_rerun_of_the_folder_reuses_the_second_measurements_taken_as_it_measures_now(remeasure_as, tmp_path):
    rows, record = [_row(0, 91.0, 9.9), _row(1, 90.0, 8.0)], tmp_path / REMEASURED
    onnx = {"backend": "onnxruntime 1.32", "counting": 3}

    def confirm(more_rows=(), measured_with=onnx):
        said = []
        best, remeasured = _confirm.confirm_best([*rows, *more_rows], base=small_vit(),
                                                profile=HardwareProfile(name="t"), example=torch.randn(2, 3, 16, 16),
                                                baseline_latency_ms=12.0, limits=LIMITS, record=record,
                                                measured_with=measured_with, log=said.append)
        return best, [(m["trial"], m["by_an_earlier_run"]) for m in remeasured], len(said)

    remeasure_as([10.5 / 12, 8.1 / 12])
    assert confirm() == (rows[1], [(0, False), (1, False)], 2)
    remeasure_as([])  # nothing left to measure: a call would find the queue empty
    assert confirm() == (rows[1], [(0, True), (1, True)], 0)  # the same verdict, from the record
    remeasure_as([7.0 / 12])  # a trial added by the rerun is measured, the others are not
    assert confirm([_row(2, 95.0, 7.5)]) == (_row(2, 95.0, 7.5), [(2, False), (0, True), (1, True)], 1)
    remeasure_as([9.0 / 12, 9.0 / 12, 9.0 / 12])  # another runtime version: all measured anew
    best, trials, said = confirm([_row(2, 95.0, 7.5)], {**onnx, "backend": "onnxruntime 1.33"})
    assert best.number == 2 and trials == [(2, False), (0, False), (1, False)] and said == 3
    record.write_text("{")  # a record cut short by a crash is ignored
    remeasure_as([9.0 / 12, 9.0 / 12])
    assert confirm()[1] == [(0, False), (1, False)]


def test_a_runtime_backend_times_again_the_file_the_trial_kept(monkeypatch, tmp_path):
    seen = {}

    def fake(model, profile, *, example, reference=None, timeout_s=None, keep=None):
        seen[len(seen)] = keep
        measurement = Measurement(latency_ms=1.0, latency_iqr_ms=0.0, latency_ratio=0.5, weights_mb=1.0,
                                  activations_mb=0.0)
        return Placed(measurement=measurement, node_id=None, started=0.0, finished=0.0)

    monkeypatch.setattr(_confirm, "measure_on_device", fake)
    for trial in (1, 2):  # trials 1 and 2 kept their exports; trial 3's was not kept (another node, or pruned)
        (tmp_path / str(trial) / "timed_export").mkdir(parents=True)
        (tmp_path / str(trial) / "timed_export" / NBYTES_FILE).write_text("100")
    (tmp_path / "3" / "timed_export").mkdir(parents=True)  # an export that never finished
    reused = TrialRow(**{**_row(4, 89.0, 8.0).__dict__, "measurement_of": 2})  # measured as trial 2 was
    rows = [_row(1, 91.0, 9.0), _row(3, 90.0, 9.0), reused]
    _confirm.confirm_best(rows, base=small_vit(), profile=HardwareProfile(name="t"), example=torch.randn(2, 3, 16, 16),
                         baseline_latency_ms=12.0, limits=LIMITS, kept=tmp_path)
    assert seen == {0: tmp_path / "1" / "timed_export", 1: None, 2: tmp_path / "2" / "timed_export"}


def test_the_remeasured_candidate_holds_its_compressed_weights_not_uninitialized_memory(monkeypatch):
    """A structure-only rebuild holds whatever memory it got (NaNs made an int8 low-rank layer's dynamic
    quantization fail in a search on ONNX Runtime); the re-measured model is the recipe compressed again."""
    from autocomp import Recipe, compress

    recipe = {"blocks": [{"low_rank": {"rank": 0.25}, "quantize": {"weight_bits": 8}}] * 2}
    row = TrialRow(**{**_row(0, 91.0, 9.0).__dict__, "recipe": recipe})
    base, example, seen = small_vit(), torch.randn(4, 3, 16, 16), []

    def fake(model, profile, *, example, reference=None, timeout_s=None, keep=None):
        seen.append(model)
        measurement = Measurement(latency_ms=1.0, latency_iqr_ms=0.0, latency_ratio=0.75, weights_mb=1.0,
                                  activations_mb=0.0)
        return Placed(measurement=measurement, node_id=None, started=0.0, finished=0.0)

    monkeypatch.setattr(_confirm, "measure_on_device", fake)
    _confirm.confirm_best([row], base=base, profile=HardwareProfile(name="t"), example=example,
                         baseline_latency_ms=12.0, limits=LIMITS)
    expected = compress(base, Recipe.from_dict(recipe), calibration=example).eval()
    with torch.no_grad():
        assert torch.equal(seen[0](example), expected(example))


def test_the_overhead_is_split_into_per_trial_engine_time_worker_start_and_idle_slots():
    # two workers, a 30 s loop: six 8 s trials, whose engine time (Ray, sampler, writing) was 0.5 s each except the
    # first trial on each worker, which also waited 3 s for its worker to start
    rows = [dataclasses.replace(_row(n, 90.0, 5.0), trial_seconds=8.0, seconds={"engine": engine})
            for n, engine in enumerate([3.5, 3.5, 0.5, 0.5, 0.5, 0.5])]
    rows.append(dataclasses.replace(_row(6, 0.0, 0.0), state="PRUNED", accuracy=None))  # skipped: never ran
    split = _finish.overhead(rows, 30.0, workers=2)
    assert split["share"] == pytest.approx(1 - 48 / 60)
    assert split["per_trial_seconds"] == pytest.approx(0.5)
    assert split["worker_start_seconds"] == pytest.approx(6.0)
    assert split["idle_seconds"] == pytest.approx(60 - 48 - 9)  # the slots no trial held
    assert split["idle_share"] == pytest.approx((60 - 48 - 9) / 60)
    asked = _finish.overhead(rows, 30.0, workers=2, asking_seconds=2.0)  # the controller chose trials for 2 s of it
    assert asked["asking_seconds"] == pytest.approx(2.0) and asked["tail_seconds"] == pytest.approx(60 - 48 - 9 - 2)
    assert asked["engine_share"] == pytest.approx((9 + 2) / 60, abs=1e-4)
    assert split["engine_share"] == pytest.approx(9 / 60, abs=1e-4)
    assert _finish.overhead(rows, None, workers=2) is None


def test_quiet_timings_cost_is_the_seconds_trials_paused_against_their_time():
    rows = [dataclasses.replace(_row(n, 90.0, 5.0), trial_seconds=10.0, paused_seconds=paused)
            for n, paused in enumerate([0.0, 0.5, 1.5])]
    assert _finish.paused(rows) == {"trials": 3, "paused_seconds": 2.0, "share": pytest.approx(2.0 / 30, abs=1e-4)}
    off = [dataclasses.replace(r, paused_seconds=None) for r in rows]  # quiet timing off: no figure, not 0 s
    assert _finish.paused(off) is None


def _trial_entry(model, splits):
    from autocomp.train import evaluate

    return {"val_accuracy": evaluate(model, splits.val), "test_accuracy": evaluate(model, splits.test)}


def test_the_final_distillation_recovers_what_the_trial_left_and_says_so_in_the_recipe(tiny_teacher, digits_splits):
    from autocomp import Recipe, compress
    from autocomp.train import evaluate

    _, teacher = tiny_teacher
    recipe = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 2}, "prune_mlp": {"keep": 0.5}}] * 2,
                               "distill": {"steps": 0, "alpha": 0.7, "temperature": 2.0}})
    with torch.no_grad():
        trial_model = compress(teacher, recipe, calibration=digits_splits.calib.x)
    entry = _trial_entry(trial_model, digits_splits)
    said: list[str] = []
    model, saved = _finish.final_distillation(trial_model, teacher, recipe, digits_splits, entry, steps=150,
                                              log=said.append)
    final = entry["final_distillation"]
    assert final["kept"] and model is not trial_model
    # said as it starts and as it goes (it takes minutes on a real training split), not only once it ends
    assert said[0].startswith("final distillation of the best: 150 steps on ") and "CPU thread(s)" in said[0]
    assert [line.split(":")[1] for line in said[1:-1]] == [f" distill step {k}/150" for k in range(30, 151, 30)]
    assert final["val_accuracy"] > final["trial_val_accuracy"]
    assert entry["val_accuracy"] == final["val_accuracy"] == evaluate(model, digits_splits.val)
    # the saved recipe says how the saved weights were made: the trial's settings with the longer distillation
    assert saved.distill == dataclasses.replace(recipe.distill, steps=150) and saved.blocks == recipe.blocks
    assert final["images"] == len(digits_splits.train)
    # ... and so does metrics.json: not the trial's weights nor its distillation
    assert entry["recipe_summary"] == saved.summary() and entry["weights"].startswith("final distillation (150 steps)")


def test_a_final_distillation_that_scores_lower_keeps_the_trials_weights(tiny_teacher, digits_splits):
    from autocomp import Recipe

    _, teacher = tiny_teacher
    recipe = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 2}}] * 2})  # a trial that distilled nothing
    entry = {"val_accuracy": 100.0, "test_accuracy": 100.0}  # nothing can score higher
    trial_model = small_vit()
    model, saved = _finish.final_distillation(trial_model, teacher, recipe, digits_splits, entry, steps=5,
                                              log=lambda _: None)
    assert model is trial_model and saved is recipe
    assert not entry["final_distillation"]["kept"] and entry["val_accuracy"] == 100.0
    assert entry["final_distillation"]["val_accuracy"] < 100.0
    assert "weights" not in entry and "recipe_summary" not in entry  # the trial's, as finalize set them


def test_final_distill_steps_must_be_a_whole_number():
    from autocomp.config import JobConfig
    from autocomp.errors import AutocompError

    with pytest.raises(AutocompError, match="final_distill_steps must be a whole number >= 0"):
        JobConfig(model=small_vit(), data=None, search_space="s.yaml", hardware="h.yaml", budget=None,
                  final_distill_steps=-1)


def test_the_summary_counts_reused_measurements_and_the_time_they_saved():
    measured = [TrialRow(**{**_row(n, 90.0, 9.0).__dict__, "seconds": {"measure": s}}) for n, s in ((1, 4.0), (2, 6.0))]
    reused = TrialRow(**{**_row(1, 91.0, 9.0, distill=0.7).__dict__, "number": 3, "measurement_of": 1,
                         "seconds": {"measure": 0.0}})
    assert _finish.reused(measured + [reused]) == {"trials": 1, "saved_seconds": 5.0}  # the mean of those measured
    assert _finish.reused(measured) == {"trials": 0, "saved_seconds": 0.0}
