"""Multi-fidelity: a short distillation and score first, the rest only for candidates that could enter the front."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from autocomp.config import FidelityConfig
from autocomp.distill import distill
from autocomp.errors import AutocompError
from autocomp.hardware import HardwareProfile
from autocomp.recipe import Distill, Recipe
from autocomp.results import TrialRow, pareto_front, ranked_feasible
from autocomp.search._fidelity import FrontRule
from autocomp.search._objective import TrialInputs, distill_subset, run_trial
from autocomp.train import evaluate

PROFILE = HardwareProfile(name="t", threads=1, batch_size=4, warmup=1, repeats=3)
RECIPE = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 2}}, {"prune_heads": {"keep": 2}}],
                           "distill": {"steps": 20, "alpha": 0.5}})


def _inputs(model, splits, **kwargs):
    return TrialInputs(base=model, val=splits.val, calib=splits.calib.x, train=distill_subset(splits.train),
                       profile=PROFILE, limits={"memory_mb": 100.0}, base_latency_ms=1.0,
                       fidelity=FidelityConfig(steps=0.25, images=64), **kwargs)


def _student(teacher, splits):
    from autocomp._compress import compress

    with torch.no_grad():
        return compress(teacher, Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 2}}, {}]}),
                        calibration=splits.calib.x)


def test_a_pause_that_goes_on_leaves_the_distilled_student_unchanged(tiny_teacher, digits_splits):
    teacher = tiny_teacher[1]
    config = Distill(steps=12, alpha=0.5)
    plain = distill(_student(teacher, digits_splits), teacher, digits_splits.train, config)
    seen = []
    paused = distill(_student(teacher, digits_splits), teacher, digits_splits.train, config,
                     pause=(3, lambda probe: seen.append(copy.deepcopy(probe)) or True))
    for (name, a), b in zip(plain.state_dict().items(), paused.state_dict().values()):
        assert torch.equal(a, b), name
    assert len(seen) == 1 and not seen[0].training  # an eval-mode copy, after step 3
    stopped = distill(_student(teacher, digits_splits), teacher, digits_splits.train, config,
                      pause=(3, lambda probe: False))
    for a, b in zip(seen[0].state_dict().values(), stopped.state_dict().values()):
        assert torch.equal(a, b)  # stopping keeps the student at the step it paused after
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), stopped.state_dict().values()))


def test_a_trial_stopped_at_its_short_score_reports_it_and_what_finishing_would_have_cost(tiny_teacher,
                                                                                        digits_splits):
    teacher = tiny_teacher[1]
    reports = []
    stopped = run_trial(RECIPE.to_dict(), _inputs(teacher, digits_splits),
                        short=lambda result: reports.append(result) or False)
    assert len(reports) == 1 and reports[0]["fidelity"] == "short"
    assert stopped["fidelity"] == "short" and stopped["accuracy"] == stopped["short_accuracy"]
    assert stopped["short_accuracy"] == reports[0]["short_accuracy"]
    assert stopped["saved_seconds"] > stopped["seconds_distill"] * 2  # three quarters of the steps were left
    assert stopped["distilled"] is True and "violation:memory_mb" in stopped

    finished = run_trial(RECIPE.to_dict(), _inputs(teacher, digits_splits), short=lambda result: True)
    plain = run_trial(RECIPE.to_dict(), dataclasses.replace(_inputs(teacher, digits_splits), fidelity=None))
    assert finished["fidelity"] == "full" and finished["saved_seconds"] == 0.0
    assert finished["accuracy"] == plain["accuracy"]  # going on is the full distillation, scored on all of val
    assert finished["short_accuracy"] == stopped["short_accuracy"] and plain["short_accuracy"] is None
    subset = digits_splits.val.subset(64)
    assert stopped["short_accuracy"] * len(subset) / 100 == pytest.approx(
        round(stopped["short_accuracy"] * len(subset) / 100))  # a score on the 64-image subset


def test_an_undistilled_candidate_has_no_short_score(tiny_teacher, digits_splits):
    recipe = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 2}}, {}]})
    result = run_trial(recipe.to_dict(), _inputs(tiny_teacher[1], digits_splits),
                       short=lambda result: pytest.fail("asked about an undistilled candidate"))
    assert result["fidelity"] == "full" and result["short_accuracy"] is None
    assert result["accuracy"] == evaluate(_student(tiny_teacher[1], digits_splits), digits_splits.val)


def _short(accuracy, latency, memory=1.0, over=0.0):
    return {"fidelity": "short", "short_accuracy": accuracy, "latency_ms": latency, "memory_mb": memory,
            "violation:latency_ms": over}


def test_the_front_rule_stops_the_dominated_and_the_over_budget():
    rule = FrontRule(slack=0.5)
    assert rule.goes_on(_short(80.0, 5.0))
    assert rule.goes_on(_short(70.0, 3.0))  # faster: it could enter the front
    assert not rule.goes_on(_short(75.0, 6.0))  # slower and 5 points worse than the first
    assert rule.goes_on(_short(79.8, 6.0))  # within the slack of the first
    assert rule.goes_on(_short(75.0, 6.0, memory=0.5))  # smaller: not dominated
    assert not rule.goes_on(_short(99.0, 1.0, over=0.1))  # over budget
    assert (rule.promoted, rule.stopped) == (4, 2)
    resumed = FrontRule(slack=0.5, seen=[(80.0, 5.0, 1.0)])  # a resumed search knows the earlier short scores
    assert not resumed.goes_on(_short(75.0, 6.0))


def test_a_short_score_within_the_subsets_noise_goes_on():
    rule = FrontRule(slack=0.5, images=1000)
    assert abs(rule.margin(87.0, 87.0) - 1.504) < 1e-3  # one sd of the difference of two scores on 1000 images
    assert rule.goes_on(_short(87.0, 5.0))
    assert rule.goes_on(_short(86.0, 6.0))  # 1 point behind, slower: inside the noise, so it goes on
    assert not rule.goes_on(_short(85.0, 6.0))  # 2 points behind: beyond it
    assert FrontRule(slack=0.5, images=100_000).margin(87.0, 87.0) == 0.5  # large subsets: the slack is the floor
    assert not FrontRule(slack=0.5, seen=[(87.0, 5.0, 1.0)]).goes_on(_short(86.0, 6.0))  # the slack alone


def _row(number, accuracy, latency, fidelity):
    return TrialRow(number=number, state="COMPLETE", recipe_summary="", recipe={}, accuracy=accuracy,
                    latency_ms=latency, memory_mb=1.0, latency_ratio=None, weights_mb=None, activations_mb=None,
                    simulated_layers=0, violations={"latency_ms": -0.1}, fidelity=fidelity)


def test_short_scores_never_name_the_best_or_the_front():
    rows = [_row(0, 80.0, 5.0, "full"), _row(1, 85.0, 4.0, "short"), _row(2, 70.0, 3.0, "full")]
    assert [r.number for r in ranked_feasible(rows)] == [0, 2]
    assert [r.number for r in pareto_front(rows)] == [2, 0]


def test_a_run_with_no_full_score_prints_why_it_has_no_front_and_still_plots(tmp_path, capsys):
    from autocomp.cli import main
    from autocomp.results import write_results

    over = {"latency_ms": 0.2}  # every candidate over budget: each stopped at its short score
    rows = [dataclasses.replace(_row(0, 85.0, 4.0, "short"), violations=over),
            dataclasses.replace(_row(1, 80.0, 5.0, "short"), violations=over),
            dataclasses.replace(_row(2, 0.0, 0.0, None), state="FAIL", accuracy=None, error="boom")]
    assert write_results(tmp_path, rows, {"latency_ms": 3.0}) == []
    assert (tmp_path / "pareto.png").is_file()  # where the candidates fell against the budget
    assert main(["pareto", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "no front" in printed and "2 stopped at their short score, 1 failed" in printed, printed
    (tmp_path / "trials.csv").write_text("number,state\n0,COMPLETE\n1,FAIL\n")  # an older run's columns
    assert main(["pareto", str(tmp_path)]) == 0
    assert "1 scored in full, 1 failed" in capsys.readouterr().out


def test_the_printed_front_shows_each_recipe_as_written(tmp_path, capsys):
    """A recipe quantizing some layers reads w8[qkv,fc1]: the printed table took the brackets for markup and showed
    w8, as if every layer were int8."""
    from autocomp.cli import main
    from autocomp.results import write_results

    row = dataclasses.replace(_row(0, 85.0, 4.0, "full"), recipe_summary="m0.5:w8[qkv,fc1] | h2:w8[fc1]")
    assert [r.number for r in write_results(tmp_path, [row], {"latency_ms": 5.0})] == [0]
    assert main(["pareto", str(tmp_path)]) == 0
    assert "m0.5:w8[qkv,fc1] | h2:w8[fc1]" in capsys.readouterr().out


@pytest.mark.parametrize("values, key", [({"steps": 1.0}, "fidelity.steps"), ({"steps": 0}, "fidelity.steps"),
                                         ({"images": 0}, "fidelity.images"), ({"slack": -1}, "fidelity.slack")])
def test_bad_fidelity_settings_are_named(values, key):
    with pytest.raises(AutocompError, match=key):
        FidelityConfig(**values)


def test_a_search_stops_the_trials_the_rule_stops_and_names_the_best_among_the_finished(tmp_path, tiny_teacher,
                                                                                        digits_splits, monkeypatch):
    """Through Ray Tune: the scheduler (on the driver) stops every other short result; those trials end there. An
    export of a stopped trial is distilled in full, a model the search never scored: scored and said so; one scored
    undistilled is rebuilt undistilled."""
    import csv
    import json

    import yaml

    from autocomp.cli import main
    from test_search_e2e import write_job

    calls = []

    def every_other(self, result):
        calls.append(result["short_accuracy"])
        return len(calls) % 2 == 1

    monkeypatch.setattr(FrontRule, "goes_on", every_other)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"heads_keep": [0.5, 0.75], "head_importance": "weight_norm",
                                     "distill_steps": [16], "distill_alpha": [0.5]}))
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=4, workers=2)
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "search_space": str(space),
                                   "start_points": False, "fidelity": {"steps": 0.25, "images": 64}}))
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run = tmp_path / "run"
    rows = [r for r in csv.DictReader((run / "trials.csv").open()) if not r["duplicate_of"]]  # drawn again: not run
    assert len(rows) == 4 and {r["state"] for r in rows} == {"COMPLETE"} and len(calls) == 4
    short = [r for r in rows if r["fidelity"] == "short"]
    full = [r for r in rows if r["fidelity"] == "full"]
    assert len(short) == 2 and len(full) == 2
    for row in short:  # stopped at the short score: that is its accuracy, and it kept no weights
        assert row["accuracy"] == row["short_accuracy"] and float(row["saved_seconds"]) > 0
        assert not (run / "trials" / row["number"]).exists()
    assert all(r["short_accuracy"] != "" and float(r["seconds_distill"]) > 0 for r in full)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["early_stopped"]["stopped"] == 2 and summary["early_stopped"]["short_scored"] == 4
    assert str(summary["best"]["trial"]) in {r["number"] for r in full}
    assert summary["best"]["weights"] == "kept by the trial"

    import autocomp
    from autocomp.search import export_trial

    said = []
    out = export_trial(run, int(short[0]["number"]), tmp_path / "short", log=said.append)
    rebuilt = json.loads((out / "metrics.json").read_text())["rebuilt"]
    assert said == [rebuilt["note"], f"trial {short[0]['number']} written to {out}"]  # export_trial's log as the CLI's
    assert "never scored" in rebuilt["note"] and "on 64 validation images" in said[0]
    assert rebuilt["short_accuracy"] == pytest.approx(float(short[0]["short_accuracy"]))
    assert rebuilt["images"] == len(digits_splits.val)
    metrics = json.loads((out / "metrics.json").read_text())  # its accuracy is the rebuild's, the trial's beside it
    assert metrics["accuracy"] == rebuilt["val_accuracy"] and metrics["trial_accuracy"] == rebuilt["short_accuracy"]
    assert evaluate(autocomp.load(out), digits_splits.val) == pytest.approx(rebuilt["val_accuracy"])
    out = export_trial(run, int(full[0]["number"]), tmp_path / "full", log=said.append)
    metrics = json.loads((out / "metrics.json").read_text())
    assert said[2:] == [f"trial {full[0]['number']} written to {out}"] and "rebuilt" not in metrics  # a finished
    # trial is the model it scored
    assert metrics["accuracy"] == pytest.approx(float(full[0]["accuracy"]))
    assert evaluate(autocomp.load(out), digits_splits.val) == pytest.approx(metrics["accuracy"])

    import shutil

    from autocomp._compress import compress
    from autocomp.search import _export

    found = _export._complete_trial  # a trial scored undistilled (measured far over budget) is rebuilt so
    undistilled = copy.deepcopy(found(run, int(full[0]["number"]))[0])
    undistilled.user_attrs = {**undistilled.user_attrs, "distilled": False}
    monkeypatch.setattr(_export, "_complete_trial", lambda *args: (undistilled, None))
    shutil.rmtree(run / "trials" / full[0]["number"], ignore_errors=True)  # no kept weights: rebuilt
    out = export_trial(run, undistilled.number, tmp_path / "undistilled", log=said.append)
    recipe = autocomp.Recipe.load(out / "recipe.yaml")
    assert recipe.distill is None and said[3:] == [f"trial {undistilled.number} written to {out}"]
    with torch.no_grad():
        plain = compress(tiny_teacher[1], recipe, calibration=digits_splits.calib.x)
    assert torch.equal(autocomp.load(out)(digits_splits.val.x[:64]), plain.eval()(digits_splits.val.x[:64]))


def test_the_front_plot_marks_the_uncompressed_model_and_gives_the_budget_its_unit():
    import matplotlib.pyplot as plt

    from autocomp.results import front_figure

    rows = [_row(0, 85.0, 4.0, "full"), _row(1, 80.0, 2.0, "full")]
    baseline = {"val_accuracy": 88.78, "latency_ms": 7.5, "memory_mb": 12.0}
    fig = front_figure(rows, pareto_front(rows), {"latency_ms": 5.0}, baseline=baseline)
    latency, memory = ([text.get_text() for text in axis.get_legend().get_texts()] for axis in fig.axes)
    plt.close(fig)
    assert "budget 5 ms" in latency and "uncompressed (88.78%, 7.5 ms)" in latency
    assert "uncompressed (88.78%, 12 MB)" in memory and not any(label.startswith("budget") for label in memory)
    assert "over budget" not in latency  # every trial is within it: no empty series in the legend
    weighed = [dataclasses.replace(row, weights_mb=row.latency_ms / 2) for row in rows]  # under a weights limit,
    fig = front_figure(weighed, pareto_front(weighed), {"weights_mb": 3.0}, baseline={**baseline, "weights_mb": 4.0})
    assert len(fig.axes) == 3  # a panel of the weights, with its limit and the uncompressed model's weights
    weights = [text.get_text() for text in fig.axes[2].get_legend().get_texts()]
    plt.close(fig)
    assert "budget 3 MB" in weights and "uncompressed (88.78%, 4 MB)" in weights
