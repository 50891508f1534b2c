"""``autocomp profile`` writes a profile that loads; ``autocomp check-costmodel`` writes the fidelity report and
its plot; their mistakes end in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

from autocomp.cli import main
from autocomp.measure.profiling import load_profile
from test_cli_errors import run_cli
from test_search_e2e import write_job

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "hardware_profiles" / "local_cpu.yaml"
STATS = {"n", "spearman", "mape", "within_10pct", "median_ratio", "max_ratio"}


def test_profile_writes_a_profile_that_loads(tmp_path, capsys):
    out = tmp_path / "measured.yaml"
    assert main(["profile", "--out", str(out), "--quick", "--name", "here"]) == 0
    profile = load_profile(out)
    assert profile.name == "here" and profile.threads == 1 and profile.device == "cpu"
    assert profile.batch_size == 1 and "--batch-size sets the batch you serve" in profile.sources["batch_size"]
    assert {"fp32", "int8"} <= set(profile.peak_gflops) and profile.memory_bandwidth_gbs > 0
    assert profile.memory_gb > 0 and profile.op_overhead_us > 0
    for field in ("peak_gflops.fp32", "memory_bandwidth_gbs", "op_overhead_us", "memory_gb"):
        assert profile.sources[field].startswith("measured by autocomp profile on "), field
    assert out.read_text().startswith("# Measured by autocomp profile on ")
    assert "written to" in capsys.readouterr().out


def test_profile_on_a_base_keeps_its_other_fields(tmp_path, capsys):
    out = tmp_path / "measured.yaml"
    assert main(["profile", "--out", str(out), "--quick", "--base", str(LOCAL)]) == 0
    # the base's name stays, over this CPU's figures: said (a board's profile re-measured here read as the board's)
    assert "note: the profile keeps the name 'local-cpu' of --base" in capsys.readouterr().out
    profile, base = load_profile(out), load_profile(LOCAL)
    assert (profile.name, profile.batch_size, profile.memory_gb, profile.ray_resource) == \
        (base.name, base.batch_size, base.memory_gb, base.ray_resource)
    # kept, with its own source (local_cpu.yaml has none: both say physical memory, measured each on its own day, the
    # base's when its calibration was cached, which a run across midnight saw on the day before)
    assert profile.sources["memory_gb"].split(": ", 1)[1] == base.sources["memory_gb"].split(": ", 1)[1]
    assert profile.sources["peak_gflops.fp32"].startswith("measured by autocomp profile on ")
    assert set(profile.fast_weight_bits.values()) <= set(profile.peak_gflops)
    assert main(["profile", "--out", str(out), "--quick", "--base", str(LOCAL), "--batch-size", "4"]) == 0
    profile = load_profile(out)
    assert profile.batch_size == 4 and profile.sources["batch_size"] == "autocomp profile --batch-size 4"
    assert profile.name == base.name


def test_profile_mistakes_are_one_line(tmp_path, capsys):
    assert "--threads must be a whole number >= 1, got 0" in run_cli(
        ["profile", "--out", str(tmp_path / "p.yaml"), "--threads", "0"], capsys)
    assert "--batch-size must be a whole number >= 1, got 0" in run_cli(
        ["profile", "--out", str(tmp_path / "p.yaml"), "--batch-size", "0"], capsys)
    assert "hardware profile not found" in run_cli(
        ["profile", "--out", str(tmp_path / "p.yaml"), "--base", str(tmp_path / "none.yaml")], capsys)
    # a shipped profile by its name, or by its path from elsewhere than the clone: the one meant is named
    assert f"hardware profile not found: onnxruntime_cpu; autocomp's own is {ROOT / 'hardware_profiles'}/" \
           "onnxruntime_cpu.yaml" in run_cli(["profile", "--out", str(tmp_path / "p.yaml"), "--base",
                                               "onnxruntime_cpu"], capsys)
    assert f"autocomp's own are in {ROOT / 'hardware_profiles'} (jetson_orin_nano, local_cpu, " in run_cli(
        ["profile", "--out", str(tmp_path / "p.yaml"), "--base", str(tmp_path / "none.yaml")], capsys)
    jetson = ROOT / "hardware_profiles" / "jetson_orin_nano.yaml"
    assert f"autocomp profile measures this machine's CPU, but --base {jetson} is a pytorch-cuda profile" in run_cli(
        ["profile", "--out", str(tmp_path / "p.yaml"), "--base", str(jetson)], capsys)
    assert not (tmp_path / "p.yaml").exists()


def test_measure_says_what_the_uncompressed_model_costs_as_a_search_measures_it(tmp_path, tiny_teacher, capsys):
    """A user choosing a budget in ms or MB had only the Python measure() (and a search's first line) to learn what
    the model costs, and one reading at another load was 6x another: each reading is printed, with the median."""
    import re

    job = write_job(tmp_path, tiny_teacher[0], {"latency": 0.5}, trials=2)
    assert main(["measure", str(job), "--repeats", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    readings = [float(re.search(r"latency ([\d.e+-]+) ms", line).group(1)) for line in lines
                if re.match(r"[12] of 2: latency ", line)]
    assert len(readings) == 2 and all(r > 0 for r in readings)
    summary = next(line for line in lines if line.startswith("the uncompressed model on "))
    low, high = sorted(readings)
    assert f"(median of 2, {low:.4g} to {high:.4g})" in summary and " MB" in summary
    assert "--repeats must be a whole number >= 1, got 0" in run_cli(["measure", str(job), "--repeats", "0"], capsys)


def test_check_costmodel_writes_the_fidelity_report_and_plot(tmp_path, tiny_teacher, capsys):
    job = write_job(tmp_path, tiny_teacher[0], {"latency": 0.5}, trials=2)
    out = tmp_path / "fidelity" / "report.json"
    assert main(["check-costmodel", str(job), "--samples", "6", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (tmp_path / "fidelity" / "report.png").stat().st_size > 0 and report["plot"].endswith("report.png")
    assert report["samples"] == 6 and len(report["rows"]) == 6
    for key in ("latency", "memory"):
        for stage in ("before", "after"):
            assert set(report[key][stage]) == STATS and report[key][stage]["n"] == 6
    assert set(report["latency"]) == {"before", "anchored", "after", "repeat"}  # repeat: the measurement's ceiling
    for row in report["rows"]:
        assert row["measured_latency_ms"] > 0 and row["corrected_latency_ms"] > 0 and row["recipe_summary"]
        assert row["repeat_latency_ms"] > 0 and row["repeat_latency_ms"] != row["measured_latency_ms"]
    assert report["memory"]["after"]["mape"] < 0.05  # memory is counted, not guessed
    out_text = capsys.readouterr().out
    assert "latency  after " in out_text and "Spearman" in out_text
    assert "measuring the 6 samples a second time" in out_text  # minutes on a large model: said as it starts
    assert "  repeat    a second measurement of each sample against its first: the noise floor" in out_text
    over = max(report["latency"][stage]["max_ratio"] for stage in ("anchored", "after"))
    assert report["verdict"][0].startswith("6 samples are too few to judge the cost model")
    said = [line for line in report["verdict"] if line.startswith("the worst over-prediction")]
    assert said[0].startswith(f"the worst over-prediction was {100 * max(over - 1, 0):.0f}% over the measured "
                              "latency, ")
    far = {group for group, scale in report["correction"]["scales_fitted_on_all"].items()
           if group not in ("overhead", "fixed_ms") and abs(math.log(scale)) > math.log(1.2)}
    named = [line for line in report["verdict"] if line.startswith("the correction fitted on every sample")]
    assert bool(named) == bool(far) and all(f"{group} by " in named[0] for group in far)  # misjudged here, named
    assert all(f"verdict: {line}" in out_text for line in report["verdict"])


def test_the_verdict_says_whether_a_search_would_skip_a_candidate_within_budget():
    from autocomp.costmodel.check import verdict

    def report(after, repeat, over, samples=20):
        stats = {"mape": after, "max_ratio": over}
        return {"samples": samples, "latency": {"anchored": {"mape": 0.3, "max_ratio": 1.0}, "after": stats,
                                                "repeat": {"mape": repeat, "max_ratio": 1.02}}}

    close = verdict(report(0.05, 0.03, 1.2), skip_margin=0.5)
    assert close == ["corrected latency predictions are off by 5.0% on average, the machine's own repeat by 3.0%: "
                     "within twice the noise floor: as good as this machine's measurements allow",
                     "the worst over-prediction was 20% over the measured latency, within the job's skip_margin "
                     "(50%): no sample within budget would have been skipped"]
    coarse = verdict(report(0.3, 0.03, 1.8), skip_margin=0.5)
    assert coarse[0].endswith("by 3.0%: 10.0x the noise floor: a search's predictions are coarse here, its "
                              "measurements decide")
    assert coarse[1] == ("the worst over-prediction was 80% over the measured latency, more than the job's "
                         "skip_margin (50%): a search could skip a candidate within budget as predicted over it; "
                         "raise skip_margin above 0.80")
    assert len(verdict(report(0.05, 0.03, 1.8), skip_margin=None)) == 1  # never skips: nothing to say of the margin
    assert verdict(report(0.05, 0.03, 1.2, samples=5), skip_margin=0.5)[0].startswith("5 samples are too few")
    # the groups the correction scales most are named, furthest first; the overhead and fixed terms are not groups
    scaled = {**report(0.05, 0.03, 1.2), "correction": {"scales_fitted_on_all": {
        "linear.fp32": 0.83, "linear.int8": 1.36, "tokens": 1.23, "norm": 1.1, "overhead": 3.0, "fixed_ms": 0.5}}}
    assert verdict(scaled, skip_margin=0.5)[-1].startswith(
        "the correction fitted on every sample scales the roofline's time of linear.int8 by 1.36, tokens by 1.23, "
        "linear.fp32 by 0.83 (over 1: slower here than the roofline predicts")


def test_check_costmodel_draws_again_where_the_target_cannot_run_a_sample(tmp_path, tiny_teacher, capsys,
                                                                          monkeypatch):
    """OpenVINO with oneDNN capped to AVX2 cannot compile int8 weights: the check died on its first int8 sample,
    writing nothing; the search offers such settings in no block, and the check draws another sample."""
    import autocomp.costmodel.check
    from autocomp.measure.backends import ExportFailed

    measured = autocomp.costmodel.check.measure

    def no_int8(model, profile, **kwargs):
        if any(type(m).__name__ == "Int8Linear" for m in model.modules()):
            raise ExportFailed("openvino-cpu: OpenVINO cannot compile the export: could not create a primitive")
        return measured(model, profile, **kwargs)

    monkeypatch.setattr(autocomp.costmodel.check, "measure", no_int8)
    job = write_job(tmp_path, tiny_teacher[0], {"latency": 0.5}, trials=2)
    assert main(["check-costmodel", str(job), "--samples", "3", "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["rows"]) == 3 and not any("w8" in row["recipe_summary"] for row in report["rows"])
    assert report["not_run"] > 0  # the report says it covers the samples the target runs
    assert "not measured: the target cannot run " in capsys.readouterr().out


def test_check_costmodel_needs_three_samples(tmp_path, tiny_teacher, capsys):
    job = write_job(tmp_path, tiny_teacher[0], {"latency": 0.5}, trials=2)
    err = run_cli(["check-costmodel", str(job), "--samples", "2", "--out", str(tmp_path / "r.json")], capsys)
    assert "--samples must be a whole number >= 3" in err


def test_check_costmodel_refuses_a_space_the_model_cannot_take_as_a_search_does(tmp_path, tiny_teacher, capsys):
    """rank 0.6 saves nothing in any block (the square proj): every sample with it was refused and drawn again, so
    the samples leaned towards rank 1.0, unsaid."""
    import yaml

    space = tmp_path / "space.yaml"
    space.write_text("rank: [0.6, 1.0]\nheads_keep: [0.5, 1.0]\n")
    job = write_job(tmp_path, tiny_teacher[0], {"latency": 0.5}, trials=2)
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "search_space": str(space)}))
    err = run_cli(["check-costmodel", str(job), "--samples", "3", "--out", str(tmp_path / "r.json")], capsys)
    assert err.startswith(f"autocomp: error: search space {space}: the operator refuses rank 0.6 in every block "
                          "of the model")
    assert not (tmp_path / "r.json").exists()
    space.write_text("heads_keep: [0.5, 1.0]\nblocks: {5: {heads_keep: [1.0]}}\n")  # the model has 2 blocks
    err = run_cli(["check-costmodel", str(job), "--samples", "3", "--out", str(tmp_path / "r.json")], capsys)
    assert err.startswith(f"autocomp: error: search space {space}: blocks: 5 names blocks the model does not have")


def test_an_out_path_no_file_can_be_written_to_is_refused_before_anything_is_measured(tmp_path, capsys, monkeypatch):
    import autocomp.costmodel.check
    import autocomp.measure.profiling

    def measured(*args, **kwargs):
        raise AssertionError("measured before --out was checked")
    monkeypatch.setattr(autocomp.measure.profiling, "calibrate", measured)
    monkeypatch.setattr(autocomp.costmodel.check, "check_costmodel", measured)
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    err = run_cli(["profile", "--out", str(tmp_path / "folder"), "--quick"], capsys)
    assert err == (f"autocomp: error: --out {tmp_path / 'folder'} is a folder; give the file to write, e.g. "
                   f"{tmp_path / 'folder' / 'my_cpu.yaml'}")
    err = run_cli(["check-costmodel", "job.yaml", "--out", str(tmp_path / "a_file" / "r.json")], capsys)
    assert err == (f"autocomp: error: --out {tmp_path / 'a_file' / 'r.json'}: {tmp_path / 'a_file'} is a file, not "
                   "a folder; give a path in a folder")
    err = run_cli(["check-costmodel", "job.yaml", "--out", str(tmp_path / "folder")], capsys)
    assert "is a folder; give the file to write, e.g. " in err and err.endswith("costmodel.json")
    assert not list((tmp_path / "folder").iterdir())  # nothing left behind
