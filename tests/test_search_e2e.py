"""End to end on digits: a real Optuna study executed by Ray Tune on an embedded local Ray."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import autocomp
from autocomp.cli import NOTHING_WITHIN_BUDGET, main
from autocomp.data import load_splits
from autocomp.measure import COUNTING
from autocomp.models import create_model, model_digest
from autocomp.results import load_run_study
from autocomp.train import evaluate
from conftest import DIGITS, TINY_KWARGS

pytestmark = pytest.mark.usefixtures("shared_ray")  # one Ray for the file's searches (conftest.py)

ROOT = Path(__file__).resolve().parents[1]


class _Records(logging.Handler):
    """Keeps the log records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def write_job(tmp_path: Path, spec, budget: dict, trials: int, workers: int = 2) -> Path:
    job = {
        "model": {"name": spec.name, "kwargs": TINY_KWARGS, "checkpoint": spec.checkpoint},
        "data": {"dataset": "digits", "val_size": DIGITS.val_size, "calib_size": DIGITS.calib_size,
                 "test_size": DIGITS.test_size, "seed": DIGITS.seed},
        "search_space": str(ROOT / "search_spaces" / "heads_int8.yaml"),
        "hardware": str(ROOT / "hardware_profiles" / "local_cpu.yaml"),
        "budget": budget, "trials": trials, "workers": workers, "seed": 0,
        "sensitivity": {"images": 0},  # tests of other features keep the space (test_search_sensitivity.py)
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_teacher):
    tmp = tmp_path_factory.mktemp("search")
    job = write_job(tmp, tiny_teacher[0], {"memory": 0.99}, trials=4)
    assert main(["search", str(job), "--out", str(tmp / "run")]) == 0
    return tmp, tmp / "run"


def test_two_workers_time_quietly_and_the_summary_says_what_it_cost(finished_run):
    _, run = finished_run
    rows = [r for r in csv.DictReader((run / "trials.csv").open()) if r["state"] == "COMPLETE"]
    paused = [float(r["paused_seconds"]) for r in rows]  # empty (not 0) when quiet timing is off
    assert rows and all(p >= 0 for p in paused)
    quiet = json.loads((run / "summary.json").read_text())["quiet_timing"]
    assert quiet["trials"] == len(rows) and quiet["paused_seconds"] == pytest.approx(sum(paused), abs=0.1)


def test_search_writes_every_result(finished_run):
    _, run = finished_run
    for name in ("trials.csv", "pareto.json", "pareto.png", "summary.json", "study.journal", "best/recipe.yaml",
                 "best/weights.safetensors", "best/model.yaml"):
        assert (run / name).is_file(), name
    rows = [r for r in csv.DictReader((run / "trials.csv").open()) if not r["duplicate_of"]]  # drawn again: not run
    assert len(rows) == 4 and {r["state"] for r in rows} == {"COMPLETE"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["met_budget"] and summary["trials"]["complete"] == 4
    limit = summary["limits"]["memory_mb"]
    assert abs(limit - 0.99 * summary["baseline"]["memory_mb"]) < 1e-9
    feasible = [r for r in rows if r["feasible"] == "True"]
    assert all(float(r["memory_mb"]) <= limit for r in feasible)
    # the best model is the weights its trial kept: it scores what its trial scored (csv rounds to 4 decimals)
    assert summary["best"]["weights"] == "kept by the trial"
    again = next(m for m in summary["remeasured"] if m["trial"] == summary["best"]["trial"])
    assert summary["best"]["within_budget_again"] is again["within_budget_again"] is True  # memory is counted
    assert abs(summary["best"]["val_accuracy"] - max(float(r["accuracy"]) for r in feasible)) < 1e-3
    best = summary["best"]  # its memory with what it adds up, as best/metrics.json holds them
    assert best["weights_mb"] + best["activations_mb"] == pytest.approx(best["memory_mb"], rel=1e-6)
    assert json.loads((run / "best" / "metrics.json").read_text())["weights_mb"] == best["weights_mb"]
    assert best["accuracy_batch"]["val"] > 1  # the batch its accuracies were scored in (dynamic int8 depends on it)
    assert best["scored_on"] == "cpu"  # a CPU target's arithmetic, wherever the trials scored
    kept = {p.name for p in (run / "trials").iterdir()}
    front = {str(t["number"]) for t in json.loads((run / "pareto.json").read_text())["trials"] if t["feasible"]}
    assert str(summary["best"]["trial"]) in kept and kept <= front  # weights only of the front within budget
    split = summary["time_split"]
    assert {"compress", "measure", "distill", "evaluate", "engine", "engine_share"} <= set(split)
    assert split["measure"] > 0 and 0 <= split["engine_share"] < 1
    # of 4 heads, 0.67 and 0.83 both keep 3: the search offers the count once, and no trial drew the other name
    assert json.loads((run / "sensitivity.json").read_text()) == {f"b{i}.heads_keep": [0.5, 0.83, 1.0] for i in (0, 1)}
    assert all(t.params[f"b{i}.heads_keep#rank"] <= 2 for t in load_run_study(run).trials for i in (0, 1))


def test_pareto_json_holds_only_non_dominated_trials(finished_run):
    _, run = finished_run
    front = json.loads((run / "pareto.json").read_text())["trials"]
    rows = [r for r in csv.DictReader((run / "trials.csv").open())]
    assert front
    for member in front:
        for other in rows:
            acc, lat, mem = float(other["accuracy"]), float(other["latency_ms"]), float(other["memory_mb"])
            dominates = (acc >= member["accuracy"] and lat <= member["latency_ms"] and mem <= member["memory_mb"]
                         and (acc > member["accuracy"] + 1e-4 or lat < member["latency_ms"] - 1e-4
                              or mem < member["memory_mb"] - 1e-4))
            assert not dominates
    # the summary run_search returns holds it too (a caller in Python had only pareto.json)
    summary = json.loads((run / "summary.json").read_text())
    assert [(t["trial"], t["val_accuracy"], t["latency_ms"], t["within_budget"]) for t in summary["pareto"]] == [
        (t["number"], t["accuracy"], t["latency_ms"], t["feasible"]) for t in front]


def test_loaded_best_model_reproduces_the_recorded_accuracy(finished_run):
    _, run = finished_run
    summary = json.loads((run / "summary.json").read_text())
    model = autocomp.load(run / "best")
    splits = load_splits(DIGITS)
    assert abs(evaluate(model, splits.val) - summary["best"]["val_accuracy"]) < 0.1
    assert abs(evaluate(model, splits.test) - summary["best"]["test_accuracy"]) < 0.1


def test_a_run_folder_copied_to_another_machine_exports_best_and_kept_trials(finished_run, tmp_path, tiny_teacher):
    """best/ and a trial's kept weights need the model's structure alone: exported where the checkpoint, search
    space and hardware profile the run's config.yaml names are not (another machine), naming where best/ is now."""
    _, run = finished_run
    moved = shutil.copytree(run, tmp_path / "moved")
    job = yaml.safe_load((moved / "config.yaml").read_text())
    job["model"]["checkpoint"] = job["search_space"] = job["hardware"] = "/on/the/search/machine/file"
    (moved / "config.yaml").write_text(yaml.safe_dump(job))
    assert main(["export", str(moved), "--out", str(tmp_path / "exported")]) == 0
    exported = json.loads((tmp_path / "exported" / "metrics.json").read_text())
    assert exported["exported_from"] == str((moved / "best").resolve())  # where best/ is now
    assert exported["path"] == str((tmp_path / "exported").resolve())  # this copy's folder, as best/'s names best/
    runtime = json.loads((moved / "summary.json").read_text())["hardware"]["runtime"]  # what its latency means
    assert exported["runtime"] == runtime and "batch " in runtime and "thread" in runtime
    kept = json.loads((moved / "summary.json").read_text())["best"]["trial"]
    assert main(["export", str(moved), "--trial", str(kept), "--out", str(tmp_path / "trial")]) == 0
    assert json.loads((tmp_path / "trial" / "preprocessing.json").read_text()) == json.loads(
        (moved / "best" / "preprocessing.json").read_text())
    assert evaluate(autocomp.load(tmp_path / "trial"), load_splits(DIGITS).val) == pytest.approx(
        json.loads((tmp_path / "trial" / "metrics.json").read_text())["accuracy"], abs=0.1)
    digits = [str(d) for d in range(10)]  # each output's class comes with the model, read from the run, not the data
    assert autocomp.load_classes(tmp_path / "exported") == autocomp.load_classes(tmp_path / "trial") == digits
    assert autocomp.load(tmp_path / "trial").pretrained_cfg["label_names"] == digits
    from autocomp.search import export_trial

    with pytest.raises(autocomp.AutocompError, match=r"moved searched deit_tiny_patch16_224, the model its "
                                                     r"config.yaml names, not one given as an nn.Module: leave base "
                                                     r"out"):
        export_trial(moved, kept, tmp_path / "wrong", base=tiny_teacher[1])  # base= is for a module's run
    assert not (tmp_path / "wrong").exists()


def test_export_any_trial_and_print_the_front(finished_run, capsys):
    tmp, run = finished_run
    assert main(["export", str(run), "--trial", "1", "--out", str(tmp / "t1")]) == 0
    metrics = json.loads((tmp / "t1" / "metrics.json").read_text())
    assert metrics["val_accuracy"] == metrics["accuracy"] is not None  # best/metrics.json's name, in every export
    row = next(r for r in csv.DictReader((run / "trials.csv").open()) if r["number"] == "1")
    assert metrics["within_budget"] == (row["feasible"] == "True")  # an export over budget says so
    assert float(row["seconds_engine"]) == pytest.approx(metrics["seconds_engine"], abs=0.01)  # named as trials.csv
    best = json.loads((run / "best" / "metrics.json").read_text())  # what best/ says of itself, a trial says too
    assert {"violations", "runtime", "path", "within_budget"} <= set(best) & set(metrics), set(best) - set(metrics)
    assert best["within_budget"] is True
    assert metrics["violations"].keys() == best["violations"].keys()
    assert "engine_seconds" not in metrics
    model = autocomp.load(tmp / "t1")
    recipe = autocomp.Recipe.load(tmp / "t1" / "recipe.yaml")
    assert [b.attn.num_heads for b in model.blocks] == [
        block["prune_heads"].keep if "prune_heads" in block else 4 for block in recipe.blocks]
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    capsys.readouterr()
    assert main(["pareto", str(run / "best")]) == 2  # a model folder: its run is named (not 'search into best/')
    assert capsys.readouterr().err.strip() == (f"autocomp: error: {run / 'best'} is a model folder, not a run folder; "
                                               f"give its run: autocomp pareto {run}")
    assert main(["pareto", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front" in printed
    front = json.loads((run / "pareto.json").read_text())["trials"]
    lines = printed.splitlines()
    for row in front:  # every member, on the line that opens its row: its number and accuracy
        assert any(line.startswith(f"│ {row['number']} ") and f" {row['accuracy']:.2f} " in line for line in lines), \
            (row, printed)


def test_rerun_resumes_and_runs_only_the_missing_trials(finished_run):
    tmp, run = finished_run
    first = {m["trial"] for m in json.loads((run / "summary.json").read_text())["remeasured"]}
    assert main(["search", str(tmp / "job.yaml"), "--out", str(run), "--trials", "5", "--quiet"]) == 0
    rows = [r for r in csv.DictReader((run / "trials.csv").open()) if not r["duplicate_of"]]  # drawn again: not run
    assert len(rows) == 5 and {r["state"] for r in rows} == {"COMPLETE"}
    # the candidates the first run measured again are not measured a third time
    again = json.loads((run / "summary.json").read_text())["remeasured"]
    assert first and all(m["by_an_earlier_run"] for m in again if m["trial"] in first)


def test_a_budget_the_uncompressed_model_meets_already_is_said(tmp_path, tiny_teacher, capsys):
    job = write_job(tmp_path, tiny_teacher[0], {"latency": 1.0}, trials=1, workers=1)  # int8 may be slower here
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) in (0, NOTHING_WITHIN_BUDGET)
    assert "note: the uncompressed model meets this budget already" in capsys.readouterr().out
    # one limit met already, the other not: a new user's 80 ms, set from a reading at another load, was 2x the
    # uncompressed model's as the run measured it, and nothing said that memory alone constrained the search
    measured = json.loads((tmp_path / "run" / "run.json").read_text())["baseline"]["latency_ms"]
    loose = write_job(tmp_path, tiny_teacher[0], {"latency_ms": 3 * measured, "memory": 0.99}, trials=1, workers=1)
    assert main(["search", str(loose), "--out", str(tmp_path / "loose"), "--quiet"]) in (0, NOTHING_WITHIN_BUDGET)
    assert re.search(r"note: the uncompressed model meets latency_ms <= [\d.e+-]+ already \([\d.e+-]+ ms\): only "
                     r"memory_mb constrains the search", capsys.readouterr().out)
    # one in another unit (bytes for MB) constrains nothing: refused before a search is spent on it, no folder left
    bytes_given = write_job(tmp_path, tiny_teacher[0], {"memory_mb": 6.5e6}, trials=1, workers=1)
    assert main(["search", str(bytes_given), "--out", str(tmp_path / "bytes"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"autocomp: error: budget.memory_mb is 6.5e\+06 MB, [\d,]+x the uncompressed model's "
                        r"[\d.]+ MB, so it constrains nothing: budget.memory_mb is in MB \(was it given in bytes or "
                        r"KB\?\); give the limit in MB, or a fraction \(budget.memory: 0.5 for half the uncompressed "
                        r"model's\)", err), err  # the only limit: leaving it out would leave no budget
    assert not (tmp_path / "bytes").exists()
    beside = write_job(tmp_path, tiny_teacher[0], {"memory_mb": 6.5e6, "latency": 0.9}, trials=1, workers=1)
    assert main(["search", str(beside), "--out", str(tmp_path / "beside"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith("leave it out to search without that limit")
    tight = write_job(tmp_path, tiny_teacher[0], {"latency": 0.99}, trials=1, workers=1)
    assert main(["search", str(tight), "--out", str(tmp_path / "run2"), "--quiet"]) in (0, NOTHING_WITHIN_BUDGET)
    assert "meets this budget already" not in capsys.readouterr().out


def test_search_through_the_python_api_with_an_nn_module(tmp_path, tiny_teacher):
    """A model given as an nn.Module (no timm spec): the run keeps its weights (never a pickle); best/ and export need
    the module given back."""
    from autocomp.config import load_config
    from autocomp.search import run_search

    spec, model = tiny_teacher
    job = write_job(tmp_path, spec, {"memory": 0.99}, trials=2, workers=1)
    with pytest.raises(autocomp.AutocompError, match="names its model .* and an nn.Module was given too: leave model: "
                                                     "out of the job to search the module"):
        load_config(job, model=model)  # which of the two to search is not guessed
    with pytest.raises(autocomp.AutocompTypeError, match=r"^the model given in Python \(load_config's model=, "
                                                         r"export_trial's base=\) must be the nn.Module, got str"):
        load_config(job, model="vit_tiny_patch16_224")  # not taken for a module given beside the job's model
    job.write_text(yaml.safe_dump({k: v for k, v in yaml.safe_load(job.read_text()).items() if k != "model"}))
    with pytest.raises(autocomp.AutocompError, match="Linear has no 'blocks' sequence; autocomp needs a timm"):
        load_config(job, model=torch.nn.Linear(64, 10))  # refused when the job is made, not when the search starts
    config = load_config(job, model=model)  # a job that names no model, given one
    given = model_digest(model)
    said: list[str] = []
    tune_said, tune_log = _Records(), logging.getLogger("ray.tune")  # what Ray Tune logs, at the level a caller's
    tune_log.addHandler(tune_said)  # ray.init() leaves (INFO; the shared Ray's is ERROR)
    tune_log.setLevel(logging.INFO)
    try:
        summary = run_search(config, tmp_path / "run", log=said.append, progress=False)
    finally:
        tune_log.removeHandler(tune_said)
        tune_log.setLevel(logging.NOTSET)
    # Tune's result files are off in a search: its warning that it found none in them would only alarm the caller
    assert not [r for r in tune_said.records if r.levelno >= logging.WARNING], tune_said.records
    assert any(line.startswith("Ray: the one already initialized in this process") for line in said)  # shared_ray
    assert model_digest(model) == given  # the caller's module: its weights and heads as they were
    assert (tmp_path / "run" / "base.safetensors").is_file() and not list((tmp_path / "run").rglob("*.pt"))
    assert summary["met_budget"]
    with pytest.raises(autocomp.AutocompError, match=r"given as an nn.Module \(a search given a module, .*\); pass "
                                                     r"that module: autocomp.load\(path, base="):
        autocomp.load(tmp_path / "run" / "best")
    loaded = autocomp.load(tmp_path / "run" / "best", base=model)
    assert abs(evaluate(loaded, load_splits(DIGITS).val) - summary["best"]["val_accuracy"]) < 1e-9
    assert main(["export", str(tmp_path / "run"), "--trial", "0", "--out", str(tmp_path / "t0")]) == 2  # no module
    from autocomp.search import export_trial

    export_trial(tmp_path / "run", 0, tmp_path / "t0", base=model)
    assert autocomp.load(tmp_path / "t0", base=model)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    # a module of the same shapes with other heads: every trial's weights would load onto it, computing otherwise
    other = create_model(dataclasses.replace(spec, kwargs={**TINY_KWARGS, "num_heads": 2}, checkpoint=None))
    for number in (0, 1):
        with pytest.raises(autocomp.AutocompError, match=r"^the base given is not the module \S+ was searched on: "
                                                         r"its blocks have \[2, 2\] heads, the searched module's "
                                                         r"\[4, 4\]"):
            export_trial(tmp_path / "run", number, tmp_path / "other", base=other)


def _as_torchvision(model: torch.nn.Module) -> torch.nn.Module:
    """timm's tiny teacher as torchvision's VisionTransformer with the same weights (a 1-channel patch convolution)."""
    from torchvision.models import VisionTransformer

    blocks, dim = model.blocks, model.embed_dim
    out = VisionTransformer(image_size=8, patch_size=2, num_layers=len(blocks), num_heads=blocks[0].attn.num_heads,
                            hidden_dim=dim, mlp_dim=blocks[0].mlp.fc1.out_features, num_classes=10)
    out.conv_proj = torch.nn.Conv2d(1, dim, 2, 2)
    parts = {"conv_proj": model.patch_embed.proj, "encoder.ln": model.norm, "heads.head": model.head}
    for index, block in enumerate(blocks):
        layer = f"encoder.layers.encoder_layer_{index}"
        parts.update({f"{layer}.ln_1": block.norm1, f"{layer}.self_attention.out_proj": block.attn.proj,
                      f"{layer}.ln_2": block.norm2, f"{layer}.mlp.0": block.mlp.fc1, f"{layer}.mlp.3": block.mlp.fc2})
    state = {f"{name}.{kind}": getattr(module, kind) for name, module in parts.items() for kind in ("weight", "bias")}
    for index, block in enumerate(blocks):
        attention = f"encoder.layers.encoder_layer_{index}.self_attention"
        state.update({f"{attention}.in_proj_weight": block.attn.qkv.weight,
                      f"{attention}.in_proj_bias": block.attn.qkv.bias})
    out.load_state_dict({"class_token": model.cls_token, "encoder.pos_embedding": model.pos_embed, **state})
    return out.eval()


def test_search_of_a_torchvision_vit_given_in_python(tmp_path, tiny_teacher):
    """torchvision's VisionTransformer is searched as timm's, with its weights: the uncompressed model scores as the
    same weights in timm's layout do; best/ and an export load onto the torchvision module given back."""
    from torchvision.models import VisionTransformer

    from autocomp.config import load_config
    from autocomp.search import export_trial, run_search

    spec, model = tiny_teacher
    source = _as_torchvision(model)
    val = load_splits(DIGITS).val
    assert evaluate(source, val) == evaluate(model, val)  # the same model in torchvision's layout
    job = write_job(tmp_path, spec, {"memory": 0.99}, trials=2, workers=1)
    job.write_text(yaml.safe_dump({k: v for k, v in yaml.safe_load(job.read_text()).items() if k != "model"}))
    said: list[str] = []
    summary = run_search(load_config(job, model=source), tmp_path / "run", log=said.append, progress=False)
    assert any(line.startswith("model: torchvision's VisionTransformer, rebuilt as timm's VisionTransformer with "
                               "the same weights") for line in said), said
    assert summary["baseline"]["val_accuracy"] == pytest.approx(evaluate(model, val), abs=1e-9)
    assert summary["met_budget"] and type(source) is VisionTransformer
    loaded = autocomp.load(tmp_path / "run" / "best", base=source)
    assert abs(evaluate(loaded, val) - summary["best"]["val_accuracy"]) < 1e-9
    export_trial(tmp_path / "run", 0, tmp_path / "t0", base=source)
    assert autocomp.load(tmp_path / "t0", base=source)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_a_modules_identity_is_its_weights_values_in_any_dtype(tmp_path, tiny_teacher):
    """A module's job identity hashes its weights' values as earlier versions did (their runs still resume), and a
    bfloat16 module, which has no NumPy form, is hashed too: it crashed the search before."""
    import copy
    import dataclasses
    import hashlib

    from autocomp.config import load_config
    from autocomp.search._rundir import job_identity

    spec, model = tiny_teacher
    config = dataclasses.replace(load_config(write_job(tmp_path, spec, {"memory": 0.99}, trials=2)), model=model)
    _, identity, _ = job_identity(config, model)
    earlier = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()
    assert identity == earlier
    half = copy.deepcopy(model).to(torch.bfloat16)
    _, other, _ = job_identity(dataclasses.replace(config, model=half), half)
    assert other != identity


def test_another_ray_address_than_the_initialized_ray_is_refused_before_anything_runs(tmp_path, tiny_teacher,
                                                                                      capsys):
    """Ray is initialized in this process (the file's shared one): a search given another cluster's address says so
    and stops before it loads anything, instead of running on the initialized Ray; that Ray's own address is taken."""
    import ray

    from autocomp.search._ray import check_ray_address

    running = ray.get_runtime_context().gcs_address
    for same in (running, "auto", None):  # addresses of the Ray it would run on: taken
        check_ray_address(same)
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=1, workers=1)
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--ray-address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert f"the Ray address 127.0.0.1:1 is not that of the Ray already initialized in this process ({running}); " \
           "call ray.shutdown() before the search" in err
    assert not (tmp_path / "run").exists() and ray.is_initialized()  # nothing computed; the caller's Ray kept


def test_a_model_built_by_the_users_own_factory(tmp_path, tiny_teacher, monkeypatch, own_ray, capsys):
    """model: {factory: module:function}, the module beside the job file (no PYTHONPATH, the search run from another
    folder), its model of a class of its own, which the Ray workers unpickle: no timm name, nothing pickled from a
    file, and best/ loads on its own in a fresh process."""
    import subprocess
    import sys

    (tmp_path / "my_models.py").write_text(
        "import timm\n"
        "from timm.models.vision_transformer import VisionTransformer\n\n"
        "class MyViT(VisionTransformer):\n"
        "    pass\n\n"
        "def tiny(**kwargs):\n"
        "    model = timm.create_model('deit_tiny_patch16_224', pretrained=False, **kwargs)\n"
        "    model.__class__ = MyViT\n"
        "    return model\n")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the search adds the module's folder to this process's
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=1, workers=1)
    data = yaml.safe_load(job.read_text())
    data["model"] = {"factory": "my_models:tiny", "kwargs": data["model"]["kwargs"],
                     "checkpoint": data["model"]["checkpoint"]}
    job.write_text(yaml.safe_dump(data))
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trials"]["complete"] == 1  # the worker imported my_models to unpickle the model
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "run" / "trials.csv").open()))  # one trial: the best-placed start point
    assert [row["start_point"] for row in rows] == ["uniform weight_bits 8"], rows
    assert "\n1 trial in " in printed
    loaded = subprocess.run([sys.executable, "-c", "import autocomp, sys; "
                             "print(type(autocomp.load(sys.argv[1])).__name__)", str(tmp_path / "run" / "best")],
                            capture_output=True, text=True, cwd=elsewhere)
    assert loaded.stdout.strip() == "MyViT", loaded.stderr
    from autocomp.config import load_config

    # the job read again in this process, which imported my_models: the same folder (no other fingerprint, and the
    # workers of a second search get it too)
    assert load_config(job).model.path == str(tmp_path.resolve())
    (tmp_path / "my_models.py").rename(elsewhere / "my_models.py")  # the folder best/ recorded no longer holds it
    loaded = subprocess.run([sys.executable, "-c", "import autocomp, sys; "
                             "print(type(autocomp.load(sys.argv[1])).__name__)", str(tmp_path / "run" / "best")],
                            capture_output=True, text=True, cwd=elsewhere)
    assert loaded.stdout.strip() == "MyViT", loaded.stderr  # found in the current folder
    assert evaluate(autocomp.load(tmp_path / "run" / "best"), load_splits(DIGITS).val) == \
        summary["best"]["val_accuracy"]


def test_a_model_class_the_ray_workers_cannot_import_stops_the_search_saying_so(tmp_path, tiny_teacher,
                                                                                 monkeypatch, own_ray):
    """A module given in Python whose class only the driver imports (its folder on this process's sys.path alone):
    the first trial stops the search with the worker's import error, not a retry after retry of 'worker died'."""

    from autocomp import AutocompError
    from autocomp.config import load_config
    from autocomp.search import run_search

    (tmp_path / "here_only").mkdir()
    (tmp_path / "here_only" / "driver_models.py").write_text(
        "from timm.models.vision_transformer import VisionTransformer\n\n"
        "class DriverViT(VisionTransformer):\n"
        "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "here_only"))
    from driver_models import DriverViT

    model = create_model(tiny_teacher[0])
    model.__class__ = DriverViT
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=3, workers=1)
    data = yaml.safe_load(job.read_text())
    del data["model"]
    job.write_text(yaml.safe_dump(data))
    with pytest.raises(AutocompError) as stopped:
        run_search(load_config(job, model=model), tmp_path / "run", log=lambda line: None)
    assert str(stopped.value).startswith("search stopped: a trial's Ray worker cannot load the model and data "
                                         "(RaySystemError: System error: No module named 'driver_models'): every "
                                         "module a class of the model comes from must be importable on every Ray "
                                         "node")
    trials = load_run_study(tmp_path / "run").get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # one try; its recipe queued for the resume


def test_a_saved_model_with_damaged_weights_is_refused_with_the_fix(finished_run, tmp_path):
    import shutil

    _, run = finished_run
    saved = Path(shutil.copytree(run / "best", tmp_path / "best"))
    weights = saved / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(autocomp.AutocompError, match=r"^cannot read saved weights .*weights.safetensors: .*; the "
                                                      r"folder is damaged; export the trial again"):
        autocomp.load(saved)


def test_a_pickled_model_is_never_loaded(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.pt").write_bytes(b"not read")
    with pytest.raises(autocomp.AutocompError, match="is a pickle, which can run code when loaded"):
        autocomp.load(tmp_path / "best")
    config = tmp_path / "job.yaml"
    config.write_text("model: {module: base.pt}\n")
    from autocomp.config import load_config

    with pytest.raises(autocomp.AutocompError, match=r"model.module \(a pickled model\) is not read"):
        load_config(config)


def test_resuming_a_folder_of_another_job_is_refused(finished_run, tiny_teacher, tmp_path, capsys, monkeypatch):
    """Refused saying what changed, and before the hardware profile loads (one measured on first use takes half a
    minute: it was measured before the refusal)."""
    _, run = finished_run

    def measured(*_, **__):
        raise AssertionError("the profile was loaded (measured on first use) before the refusal")

    monkeypatch.setattr("autocomp.search._runner.load_profile", measured)
    other = write_job(tmp_path, tiny_teacher[0], {"memory": 0.5}, trials=4)
    assert main(["search", str(other), "--out", str(run), "--quiet"]) == 2
    assert "holds a search of a different job (budget.memory was 0.99, now 0.5); rerun with the job as it was" in \
        capsys.readouterr().err  # what changed, not a list of what might have


def test_a_resumed_run_says_when_its_trials_were_measured_otherwise(finished_run, tmp_path, capsys):
    tmp, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    assert info["measured_with"]["backend"].startswith("pytorch-cpu (torch ")
    assert info["measured_with"]["counting"] == COUNTING

    def resumed(measured_with) -> str:
        (copy / "run.json").write_text(json.dumps({**info, "measured_with": measured_with}))
        assert main(["search", str(tmp / "job.yaml"), "--out", str(copy), "--trials", "1"]) == 0
        return capsys.readouterr().out

    assert "were measured" not in resumed(info["measured_with"])
    earlier = {**info["measured_with"], "counting": COUNTING - 1}
    assert f"measured by autocomp's counting {COUNTING - 1}, now {COUNTING}" in resumed(earlier)
    assert "measured by an earlier autocomp, which did not record how" in resumed(None)
    # a backend that exports times a form of the model (its int8 weights): one timed in another form is said so; a
    # run from before the forms were recorded, on a backend that exports nothing, is alike
    assert info["measured_with"]["forms"] == ""  # PyTorch eager: nothing exported
    assert "were measured" not in resumed({k: v for k, v in info["measured_with"].items() if k != "forms"})
    other = {**info["measured_with"], "forms": "int8 weights matmul_integer"}
    assert "measured with the export's 'int8 weights matmul_integer', now ''" in resumed(other)
    # int8 layers scored with other input codes (a run from another CPU, or from before the codes followed the CPU):
    # their accuracies do not compare either
    from autocomp.ops.quantize import int8_linear_top_code

    top = int8_linear_top_code()
    assert info["measured_with"]["int8_codes"] == top
    other = {**info["measured_with"], "int8_codes": 382 - top}  # 127 <-> 255
    assert f"with int8 input codes 0..{382 - top}, now 0..{top} (accuracy too)" in resumed(other)
    # a runtime backend's activations counted without PyTorch's unpacked 2-6 bit weights: a run counted with them
    from autocomp.search._rundir import PACKED, measured_otherwise

    runtime = {**info["measured_with"], "activations": PACKED}
    assert "2-6 bit layers unpack to in PyTorch counted in their activations, now not" in \
        measured_otherwise(info["measured_with"], runtime)
    assert measured_otherwise(runtime, runtime) is None


def _counted(run: Path) -> int:
    """The trials of a run that count towards ``trials`` (not those drawn again, nor skipped in place of another)."""
    from autocomp.search._controller import counted

    return sum(counted(t) for t in load_run_study(run).get_trials())


def test_a_resumed_run_says_when_its_search_space_resolves_otherwise(finished_run, tmp_path, capsys):
    """The space file's text is the same (else another job), but a default a later version added or changed
    (``smooth``) makes its trials to come differ from the earlier ones: the resume says which, and resumes. A run
    from before run.json recorded its space says so once, and records the space. (How two spaces compare, setting by
    setting, is tested without a search in test_study_storage.py.)"""
    tmp, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    assert info["space"]["smooth"] == 0.5 and info["space"]["weight_bits"] == [32, 8]  # heads_int8.yaml, resolved
    done = _counted(copy)

    def resumed(space) -> str:
        (copy / "run.json").write_text(json.dumps({**info, "space": space}))
        trials = _counted(copy) + 1
        assert main(["search", str(tmp / "job.yaml"), "--out", str(copy), "--trials", str(trials)]) == 0
        return capsys.readouterr().out

    assert "the search space's defaults differ from the earlier trials': smooth 0.8, now 0.5" \
        in resumed({**info["space"], "smooth": 0.8})
    assert "did not record its search space's defaults" in resumed(None)
    # said once: the space is recorded then, and a later resume compares with it (space_otherwise, alike: None)
    recorded = json.loads((copy / "run.json").read_text())
    assert recorded["space"] == info["space"] and recorded["space_recorded"] == "late"
    assert _counted(copy) == done + 2  # a note, not a refusal


def test_a_resume_with_another_seed_says_that_it_draws_only_the_trials_left(finished_run, tmp_path, capsys):
    """The seed is a search setting, not the job: a rerun with another one resumes the run. With every trial done it
    ran nothing and said nothing; now it says why, and what would search with the new seed."""
    tmp, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**yaml.safe_load((tmp / "job.yaml").read_text()), "seed": 7}))
    done = _counted(copy)
    assert main(["search", str(job), "--out", str(copy), "--trials", str(done)]) == 0
    assert (f"note: seed 7 is not this run's (0), but no trial is left to run ({done} of trials {done} done): for a "
            "search with seed 7, give another run folder (--out), or raise --trials") in capsys.readouterr().out
    assert _counted(copy) == done
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "seed": 8}))
    assert main(["search", str(job), "--out", str(copy), "--trials", str(done + 1)]) == 0
    # config.yaml now holds seed 7, the run's last
    assert (f"note: seed 8 is not this run's (7): it draws the 1 trial still to run; the {done} already run stay as "
            "they are") in capsys.readouterr().out
    # the run's seed is now 8 (config.yaml): a rerun with it resumes without a note
    assert yaml.safe_load((copy / "config.yaml").read_text())["seed"] == 8


def test_a_resume_refused_for_its_search_space_says_what_changed(finished_run, tmp_path, capsys):
    """A value added to the space's file is refused, saying which (run.json's resolved space against the file's);
    a comment alone, which resolves to the same space, resumes, saying so, and records the file's new text."""
    tmp, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    job = yaml.safe_load((tmp / "job.yaml").read_text())
    space = tmp_path / "space.yaml"
    original = Path(job["search_space"]).read_text()
    done = _counted(copy)

    def resumed(text: str, path: Path = space) -> tuple[int, str]:
        path.write_text(text)
        other = tmp_path / "job.yaml"
        other.write_text(yaml.safe_dump({**job, "search_space": str(path)}))
        code = main(["search", str(other), "--out", str(copy), "--trials", str(done)])
        return code, capsys.readouterr()

    code, said = resumed(original.replace("heads_keep: [0.5, 0.67, 0.83, 1.0]", "heads_keep: [0.5, 0.75, 1.0]"))
    assert code == 2 and f"(the contents of the search space file {space} differ from the run's (search_space was " \
        f"{job['search_space']!r}, now {str(space)!r}) (heads_keep [0.5, 0.67, 0.83, 1.0], now [0.5, 0.75, 1.0]))" \
        in said.err, said
    # a run recorded before a key was added (lowrank_layers) sampled what it does at its default: the same space
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "space": {k: v for k, v in info["space"].items()
                                                                  if k != "lowrank_layers"}}))
    code, said = resumed(original + "# a note\n")
    assert code == 0, said
    assert (f"note: the search space file {space} changed since the trials in {copy} ran, but only in its text (a "
            "comment or a blank line): it resolves to the same space; resuming, with its new text recorded") \
        in said.out, said
    assert _counted(copy) == done
    code, said = resumed(original + "# a note\n")  # recorded: said once
    assert code == 0 and "changed since the trials" not in said.out, said
    code, said = resumed(original + "# a note\nseed: 3\n")  # a key the space file does not take: still refused
    assert code == 2 and "seed" in said.err, said


def test_a_resumed_run_records_its_settings_and_keeps_its_sensitivity_pass(finished_run, tmp_path, capsys):
    """A rerun with other search settings resumes: config.yaml then holds them (it kept the first run's), save the
    sensitivity section, which the run's pass, kept, did not run with: the log says so."""
    tmp, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    job = yaml.safe_load((tmp / "job.yaml").read_text())
    other = tmp_path / "job.yaml"
    other.write_text(yaml.safe_dump({**job, "seed": 7, "sensitivity": {"images": 64, "drop_above": 50.0}}))
    first = yaml.safe_load((copy / "config.yaml").read_text())  # other tests resume the run: as it is now
    assert main(["search", str(other), "--out", str(copy), "--trials", "3"]) == 0
    said = capsys.readouterr().out
    assert "note: the sensitivity settings changed since this run's sensitivity pass (images 0 -> 64, drop_above " \
           "5.0 -> 50.0); the choices it left are kept" in said, said
    assert re.search(r", 0 to run \(more than the 3 asked for: all \d+ are kept, on the front and for best/\)", said)
    recorded = yaml.safe_load((copy / "config.yaml").read_text())
    assert first["seed"] == 0 and first["trials"] != 3
    assert recorded == {**first, "seed": 7, "trials": 3}  # the job as it was, the pass's section too


def test_a_resumed_run_whose_model_changed_is_refused(finished_run, tiny_teacher, tmp_path, capsys):
    tmp, run = finished_run
    digest = model_digest(create_model(tiny_teacher[0]))
    assert json.loads((run / "run.json").read_text())["model"] == digest  # what the search read, recorded
    nudged = create_model(tiny_teacher[0])
    with torch.no_grad():
        nudged.head.bias[0] += 1e-3
    regrouped = create_model(tiny_teacher[0])  # the same weights, split into other heads
    for block in regrouped.blocks:
        block.attn.num_heads *= 2
    assert len({digest, model_digest(nudged), model_digest(regrouped)}) == 3
    copy = tmp_path / "run"  # the checkpoint at the job's path held other weights when its trials ran
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "model": model_digest(nudged)}))
    assert main(["search", str(tmp / "job.yaml"), "--out", str(copy), "--trials", "1", "--quiet"]) == 2
    assert "the model's weights or heads changed since the trials" in capsys.readouterr().err
    # an export: a trial that kept its weights needs only the model's structure; rebuilt from its recipe on the
    # changed model, the same trial is refused, with the checkpoint to put back
    kept = min(int(p.name) for p in (copy / "trials").iterdir())
    assert main(["export", str(copy), "--trial", str(kept), "--out", str(tmp_path / "kept")]) == 0
    shutil.rmtree(copy / "trials" / str(kept))
    assert main(["export", str(copy), "--trial", str(kept), "--out", str(tmp_path / "rebuilt")]) == 2
    err = capsys.readouterr().err
    assert f"trial {kept}, rebuilt from its recipe, would not be the model it scored; put the checkpoint back as " \
           f"it was ({tiny_teacher[0].checkpoint})" in err and not (tmp_path / "rebuilt").exists()


def test_a_search_whose_every_trial_failed_says_why_rather_than_blaming_the_budget(tmp_path, tiny_teacher, capsys):
    """Every trial timed out: the outcome named the budget (loosen it, widen the space, run more trials), none of
    which helps; it names the failure, the most common reason first."""
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=2, workers=1)
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "trial_timeout_s": 0.001}))
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == NOTHING_WITHIN_BUDGET
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trials"]["complete"] == 0 and summary["trials"]["failed"] >= 2
    assert summary["message"] == (f"no candidate met the budget: every trial that ran failed "
                                  f"({summary['trials']['failed']}), each with: timed out: ran past trial_timeout_s "
                                  "= 0.001 s; trials.csv lists each with its reason: fix that, and the same command "
                                  "resumes the run (a failed trial does not count towards trials)")
    assert "loosen the budget" not in capsys.readouterr().out


def test_an_absolute_budget_is_said_as_a_share_of_the_uncompressed_model_as_measured(tmp_path, tiny_teacher):
    """A budget in ms or MB asks for as much compression as the uncompressed model's figure on this machine, now,
    makes it (a user's 10.5 ms, picked as 0.6x on a busy machine, was 0.85x when the search measured it)."""
    from autocomp.config import load_config
    from autocomp.search import _runner

    config = load_config(write_job(tmp_path, tiny_teacher[0], {"latency_ms": 5.0, "memory": 0.5}, trials=1))
    measured = {"latency_ms": 8.0, "memory_mb": 2.0}
    assert _runner._share("latency_ms", 5.0, measured, config) == " (0.62x the uncompressed)"
    assert _runner._share("memory_mb", 1.0, measured, config) == ""  # given as a share already


def test_a_budget_on_the_weights_alone_judges_each_trial_by_its_weights(tmp_path, tiny_teacher, capsys):
    """"At most 8 MB" of a model is often its weights, not the activations it allocates at the profile's batch:
    budget.weights (a fraction) and weights_mb (absolute) limit them alone."""
    job = write_job(tmp_path, tiny_teacher[0], {"weights": 0.6}, trials=3, workers=1)
    assert main(["search", str(job), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    limits = json.loads((run / "run.json").read_text())["limits"]
    baseline = json.loads((run / "run.json").read_text())["baseline"]
    assert list(limits) == ["weights_mb"] and limits["weights_mb"] == pytest.approx(0.6 * baseline["weights_mb"])
    assert f"(weights {baseline['weights_mb']:.2f} MB);  budget: weights <= 0.6 x uncompressed -> weights_mb <= " in out
    rows = [r for r in csv.DictReader((run / "trials.csv").open()) if r["state"] == "COMPLETE"]
    assert rows and all((r["feasible"] == "True") == (float(r["weights_mb"]) <= limits["weights_mb"]) for r in rows)
    assert any(r["feasible"] == "True" for r in rows)  # int8 weights hold a quarter of the bytes: within reach
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["weights_mb"] <= limits["weights_mb"] and set(best["violations"]) == {"weights_mb"}
    assert best["memory_mb"] > best["weights_mb"]  # the activations, which this budget leaves out
    assert main(["pareto", str(run)]) == 0
    assert "weights MB" in capsys.readouterr().out  # the limited figure, in the front's table
    # a weights limit the uncompressed model meets already, beside one it does not: said, and searched
    job = write_job(tmp_path, tiny_teacher[0], {"weights": 1.0, "latency": 0.9}, trials=1, workers=1)
    assert main(["search", str(job), "--out", str(tmp_path / "met"), "--quiet"]) in (0, 3)
    limit = json.loads((tmp_path / "met" / "run.json").read_text())["limits"]["weights_mb"]
    assert (f"note: the uncompressed model meets weights_mb <= {limit:.3g} already ({limit:.3g} MB): only latency_ms "
            "constrains the search") in capsys.readouterr().out


def test_a_job_made_in_python_takes_its_search_space_and_profile_as_objects(tmp_path, tiny_teacher):
    """A job built in code, with no YAML at all: a SearchSpace and a HardwareProfile (or the mappings their files
    would hold) are checked as their files are and searched as given; the same space given again, as its mapping
    this time, is the same job, so the run resumes."""
    from autocomp.budget import Budget
    from autocomp.config import JobConfig, SensitivityConfig
    from autocomp.data import DataConfig
    from autocomp.hardware import read_profile
    from autocomp.search import SearchSpace, load_space, run_search

    space = SearchSpace(heads_keep=(0.5, 1.0), weight_bits=(32,), distill_steps=(5,))
    profile = read_profile(ROOT / "hardware_profiles" / "local_cpu.yaml")
    data = DataConfig(dataset="digits", val_size=DIGITS.val_size, calib_size=DIGITS.calib_size,
                      test_size=DIGITS.test_size, seed=DIGITS.seed)
    config = JobConfig(model=tiny_teacher[1], data=data, search_space=space, hardware=profile,
                       budget=Budget(memory=0.99), trials=2, sensitivity=SensitivityConfig(images=0))
    assert load_space(config.search_space) == space and read_profile(config.hardware) == profile  # as files
    with pytest.raises(autocomp.AutocompError, match=r"^search space given in Python: unknown key\(s\) "
                                                     r"\['heads_kep'\].*did you mean 'heads_keep'"):
        dataclasses.replace(config, search_space={"heads_kep": [0.5]})
    with pytest.raises(autocomp.AutocompTypeError, match="^hardware must be the path of a hardware profile YAML "
                                                         "file, the HardwareProfile or the mapping its file would "
                                                         "hold"):
        dataclasses.replace(config, hardware=3)
    said: list[str] = []
    summary = run_search(config, tmp_path / "run", log=said.append, progress=False)
    assert summary["trials"]["complete"] == 2
    # what a budget in ms limits: a forward pass of the profile's batch (16 images), said beside the figure
    assert any(line.startswith("uncompressed: ") and " ms per batch of 16  memory " in line for line in said)
    searched = json.loads((tmp_path / "run" / "run.json").read_text())["space"]
    assert searched["heads_keep"] == [0.5, 1.0] and searched["weight_bits"] == [32]  # the space given, not a default
    as_mapping = {"heads_keep": [0.5, 1.0], "weight_bits": [32], "distill_steps": [5]}
    again = dataclasses.replace(config, search_space=as_mapping, trials=3)
    assert again.search_space == config.search_space  # one file: the same job, said nowhere to have moved
    summary = run_search(again, tmp_path / "run", log=said.append, progress=False)
    assert summary["trials"]["complete"] == 3  # the two trials kept, one more run
