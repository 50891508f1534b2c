"""A run folder's study: Optuna's journal file, repaired after a kill mid-append; older SQLite folders still read."""

from __future__ import annotations

import re

import optuna
import pytest

from autocomp.results import STUDY_NAME, load_run_study, read_trials, study_file, study_storage
from autocomp.search._controller import DIRECTIONS


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _add_trial(run, value: float) -> None:
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(run, writer=True), load_if_exists=True,
                                directions=list(DIRECTIONS))
    trial = study.ask()
    trial.suggest_int("b0.heads_keep#rank", 0, 3)
    trial.set_user_attr("recipe", {"blocks": [{}]})
    study.tell(trial, [value, 1.0, 2.0])


def test_a_new_run_keeps_its_study_in_a_journal(tmp_path):
    assert read_trials(tmp_path) == []  # before the study exists: nothing, and no file made
    assert not study_file(tmp_path).exists()
    _add_trial(tmp_path, 90.0)
    assert study_file(tmp_path) == tmp_path.resolve() / "study.journal"
    assert [t.values for t in read_trials(tmp_path)] == [[90.0, 1.0, 2.0]]


def test_a_partial_line_left_by_a_kill_is_dropped_before_the_search_writes_again(tmp_path):
    _add_trial(tmp_path, 90.0)
    path = study_file(tmp_path)
    with path.open("ab") as f:
        f.write(b'{"op_code": 6, "trial_id": 0, "key": "cut-sho')  # the kill came in the middle of an append
    assert len(read_trials(tmp_path)) == 1  # a reader skips the partial line
    _add_trial(tmp_path, 91.0)  # the resumed search: its appends must not join the partial line
    assert [t.values[0] for t in load_run_study(tmp_path).get_trials()] == [90.0, 91.0]
    assert path.read_bytes().endswith(b"\n") and b"cut-sho" not in path.read_bytes()


def test_a_folder_made_before_the_journal_is_read_and_resumed_in_sqlite(tmp_path):
    study = optuna.create_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'study.db'}",
                                directions=list(DIRECTIONS))
    study.add_trial(optuna.trial.create_trial(values=[88.0, 1.0, 2.0]))
    assert study_file(tmp_path).name == "study.db"
    _add_trial(tmp_path, 89.0)
    assert [t.values[0] for t in read_trials(tmp_path)] == [88.0, 89.0]
    assert not (tmp_path / "study.journal").exists()


def _fingerprint_before_2026_12_02(config, root_as_written: str) -> str:
    """What autocomp computed for a job's fingerprint until 2026-12-02 (ff48cbe): every data setting, unset ones
    too, and data.root as the YAML wrote it."""
    import hashlib
    import json
    from pathlib import Path

    model = config.model.to_dict()
    data = {**{k: v for k, v in vars(config.data).items() if k != "crop_mode"}, "root": root_as_written}
    job = {"model": model, "data": data, "search_space": str(config.search_space), "hardware": str(config.hardware),
           "budget": {k: v for k, v in vars(config.budget).items() if v is not None}}
    parts = [json.dumps(model, sort_keys=True), job, Path(config.search_space).read_text(),
             Path(config.hardware).read_text()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_a_run_folder_of_an_earlier_version_is_resumed_and_one_of_another_job_refused(tmp_path):
    import dataclasses
    import json
    from pathlib import Path

    import yaml

    from autocomp import AutocompError
    from autocomp.config import load_config
    from autocomp.models import create_model
    from autocomp.search._rundir import earlier_fingerprint, job_identity, previous_run

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "jobs" / "imgs").mkdir(parents=True)
    job_file = tmp_path / "jobs" / "job.yaml"
    job_file.write_text(yaml.safe_dump({
        "model": {"name": "deit_tiny_patch16_224", "kwargs": {"img_size": 16, "patch_size": 4, "depth": 1}},
        "data": {"dataset": "imagefolder", "root": "imgs"}, "budget": {"memory": 0.5},
        "search_space": str(root / "search_spaces" / "heads_int8.yaml"),
        "hardware": str(root / "hardware_profiles" / "local_cpu.yaml")}))
    config = load_config(job_file)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, mean=(0.5, 0.5, 0.5)))  # a tuple
    base = create_model(config.model)
    run = tmp_path / "run"
    run.mkdir()
    study_file(run).touch()
    job = job_identity(config, base)[0]  # config.yaml as those versions wrote it: the root as the job did
    (run / "config.yaml").write_text(yaml.safe_dump({**job, "data": {**job["data"], "root": "imgs"}}))
    (run / "run.json").write_text(json.dumps({"fingerprint": _fingerprint_before_2026_12_02(config, "imgs"),
                                              "baseline": {"val_accuracy": 50.0}, "limits": {}}))

    def previous(config):
        job, identity, fingerprint = job_identity(config, base)
        return previous_run(run, [fingerprint, earlier_fingerprint(config, identity, job, run)], job, config)

    assert previous(config)["baseline"] == {"val_accuracy": 50.0}
    squashed = dataclasses.replace(config, data=dataclasses.replace(config.data, crop_mode="squash"))
    # not what the earlier run scored; said as the one change (the root as written and the mean's tuple are none)
    with pytest.raises(AutocompError, match=r"holds a search of a different job \(data.crop_mode was None, now "
                                            r"'squash'\); rerun with the job as it was"):
        previous(squashed)


def test_a_checkpoint_left_out_is_named_not_taken_for_a_move(tmp_path):
    """A checkpoint path to another place is a move (checked by the weights' digest); one added or removed is another
    job, named as the setting it is."""
    import dataclasses
    import json
    from pathlib import Path

    import yaml
    from safetensors.torch import save_file

    from autocomp import AutocompError
    from autocomp.config import load_config
    from autocomp.models import ModelSpec, create_model, model_digest
    from autocomp.search._rundir import job_identity, moved, previous_run

    root = Path(__file__).resolve().parents[1]
    job_file = tmp_path / "job.yaml"
    kwargs = {"img_size": 16, "patch_size": 4, "depth": 1}
    weights = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=kwargs)).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "w.safetensors"))
    job_file.write_text(yaml.safe_dump({
        "model": {"name": "deit_tiny_patch16_224", "kwargs": kwargs, "checkpoint": "w.safetensors"},
        "data": {"dataset": "digits"}, "budget": {"memory": 0.5},
        "search_space": str(root / "search_spaces" / "heads_int8.yaml"),
        "hardware": str(root / "hardware_profiles" / "local_cpu.yaml")}))
    config = load_config(job_file)
    base = create_model(config.model)
    job, identity, fingerprint = job_identity(config, base)
    run = tmp_path / "run"
    run.mkdir()
    study_file(run).touch()
    (run / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(job, default=str))))
    (run / "run.json").write_text(json.dumps({"fingerprint": fingerprint, "model": model_digest(base)}))
    none = dataclasses.replace(config, model=dataclasses.replace(config.model, checkpoint=None))
    job, identity, fingerprint = job_identity(none, base)
    assert moved(none, identity, job, run) is None
    with pytest.raises(AutocompError, match=r"different job \(model.checkpoint was '.*w.safetensors', now None\)"):
        previous_run(run, [fingerprint, moved(none, identity, job, run)], job, none, model_digest(base))
    (tmp_path / "w.safetensors").rename(tmp_path / "v.safetensors")  # moved: the same job where its weights are
    there = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                  checkpoint=str(tmp_path / "v.safetensors")))
    job, identity, fingerprint = job_identity(there, base)
    assert previous_run(run, [fingerprint, moved(there, identity, job, run)], job, there,
                        model_digest(base)) is not None


def test_a_run_of_a_module_whose_weights_changed_is_refused_saying_so(tmp_path):
    """A model given as an nn.Module: its weights are part of the job. Refused as another job, naming the weights
    (not a list of what might have changed); where the weights are the same, the files whose contents count."""
    import dataclasses
    import json
    import shutil
    from pathlib import Path

    import torch
    import yaml

    from autocomp import AutocompError
    from autocomp.config import load_config
    from autocomp.models import create_model, model_digest
    from autocomp.search._rundir import job_identity, previous_run

    root = Path(__file__).resolve().parents[1]
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({
        "model": {"name": "deit_tiny_patch16_224", "kwargs": {"img_size": 16, "patch_size": 4, "depth": 1}},
        "data": {"dataset": "digits"}, "budget": {"memory": 0.5},
        "search_space": str(root / "search_spaces" / "heads_int8.yaml"),
        "hardware": str(root / "hardware_profiles" / "local_cpu.yaml")}))
    spec = load_config(job_file)
    module = create_model(spec.model)
    config = dataclasses.replace(spec, model=module)
    job, _, fingerprint = job_identity(config, module)
    run = tmp_path / "run"
    run.mkdir()
    study_file(run).touch()
    (run / "config.yaml").write_text(yaml.safe_dump(job))
    (run / "run.json").write_text(json.dumps({"fingerprint": fingerprint, "model": model_digest(module)}))
    assert previous_run(run, [fingerprint], job, config, model_digest(module)) is not None
    weights = module.head.weight.detach().clone()
    with torch.no_grad():
        module.head.weight.add_(1.0)
    job, _, changed = job_identity(config, module)
    with pytest.raises(AutocompError, match=r"holds a search of a different job \(the weights of the model given as "
                                            r"an nn.Module changed\); rerun with the job as it was"):
        previous_run(run, [changed], job, config, model_digest(module))
    with torch.no_grad():
        module.head.weight.copy_(weights)
    with pytest.raises(AutocompError, match=r"different job \(the contents of the search space or hardware profile "
                                            r"file changed\)"):  # as a file's other contents would make it
        previous_run(run, ["another fingerprint"], job, config, model_digest(module))
    # a run that recorded its files' digests (since 2026-12-03) names the one whose text changed
    from autocomp.search._rundir import _file_digests

    space = tmp_path / "space.yaml"
    shutil.copyfile(root / "search_spaces" / "heads_int8.yaml", space)
    config = dataclasses.replace(config, search_space=space)
    (run / "run.json").write_text(json.dumps({"fingerprint": fingerprint, "model": model_digest(module),
                                              "files": _file_digests(config)}))
    space.write_text(space.read_text() + "# a comment\n")
    with pytest.raises(AutocompError, match=rf"different job \(the contents of the search space file {space} changed "
                                            r"\(its text: a comment or a blank line counts\)\)"):
        previous_run(run, ["another fingerprint"], job, config, model_digest(module))


def test_the_progress_line_forgets_a_failure_its_retry_completed(capsys):
    """An interrupted trial is marked failed and run again: once its recipe completes, the live line no longer says
    'failed 1 (last: interrupted)' for the rest of the run; a failure not made good still shows. The plain lines go
    where the search's log goes (a caller's ``log=``), not around it to standard output."""
    from autocomp.results import TrialRow
    from autocomp.search._progress import Progress

    def row(number, state, blocks, error=None):
        return TrialRow(number=number, state=state, recipe_summary="", recipe={"blocks": blocks},
                        accuracy=90.0 if state == "COMPLETE" else None, latency_ms=1.0, memory_mb=1.0,
                        latency_ratio=None, weights_mb=None, activations_mb=None, simulated_layers=None,
                        violations={}, error=error)

    said: list[str] = []
    progress = Progress(total=4, done=0, enabled=True, log=said.append)  # pytest's stdout is no terminal: lines
    interrupted = row(0, "FAIL", [{"quantize": {"weight_bits": 8}}], "interrupted")
    progress.update([interrupted])
    progress.update([interrupted, row(1, "COMPLETE", [{"quantize": {"weight_bits": 8}}])])
    progress.update([interrupted, row(1, "COMPLETE", [{"quantize": {"weight_bits": 8}}]),
                     row(2, "FAIL", [{}], "non-finite logits")])
    assert not capsys.readouterr().out
    lines = said
    assert lines[0].endswith("failed 1 (last: interrupted)")
    assert re.fullmatch(r"search 1/4 \(\d+\.\d min; about \d+ s left\)  within budget 1, best 90\.00%", lines[1])
    assert lines[2].endswith("failed 1 (last: non-finite logits)")
    progress.update([interrupted, row(1, "COMPLETE", [{"quantize": {"weight_bits": 8}}]),
                     row(2, "FAIL", [{}], "non-finite logits")])  # told again, nothing changed: not said again
    assert len(said) == 3


def test_the_progress_line_says_the_time_left_at_the_pace_of_this_runs_trials(monkeypatch):
    """A 224-px trial takes minutes, and a log said nothing for four: each line says the minutes so far and, at the
    pace of the trials finished in this run (not those a resumed run found done), about how long the rest take."""
    import types

    from autocomp.results import TrialRow
    from autocomp.search import _progress

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(_progress, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))

    def rows(count):
        return [TrialRow(number=n, state="COMPLETE", recipe_summary="", recipe={"blocks": [n]}, accuracy=90.0,
                         latency_ms=1.0, memory_mb=1.0, latency_ratio=None, weights_mb=None, activations_mb=None,
                         simulated_layers=None, violations={}) for n in range(count)]

    said: list[str] = []
    progress = _progress.Progress(total=5, done=1, enabled=True, log=said.append)  # one done before the resume
    clock.now = 600.0  # the passes before the trials: not the trials' pace
    progress.__enter__()
    clock.now = 720.0
    progress.update(rows(2))  # one trial in 2 min, three to go
    clock.now = 960.0
    progress.update(rows(4))
    progress.update(rows(5))
    progress.__exit__(None, None, None)
    assert [line.split("  ")[0] for line in said] == ["search 2/5 (2.0 min; about 6 min left)",
                                                      "search 4/5 (6.0 min; about 2 min left)", "search 5/5 (6.0 min)"]


def test_a_resumed_space_is_compared_with_the_earlier_trials_setting_by_setting():
    """run.json's resolved space against the one the trials to come sample: a changed default named with both
    values, one a later version added named as absent before, one added at what the versions before it did not
    named at all; a run that recorded no space said so."""
    from pathlib import Path

    from autocomp.search._rundir import resolved_space, space_otherwise
    from autocomp.space import load_space

    now = resolved_space(load_space(Path(__file__).parents[1] / "search_spaces" / "heads_int8.yaml"))
    assert now["smooth"] == 0.5
    assert space_otherwise(dict(now), now) is None
    before = {key: value for key, value in now.items() if key != "smooth"}
    assert space_otherwise(before, now) == ("the search space's defaults differ from the earlier trials': smooth "
                                            "none in that version, now 0.5")
    assert space_otherwise({**now, "smooth": 0.8}, now).endswith("smooth 0.8, now 0.5")
    older = {key: value for key, value in now.items() if key not in ("lowrank_layers", "group_size")}
    assert space_otherwise(older, now) is None  # added later at the value that did what the versions before did
    assert space_otherwise({**now, "lowrank_layers": ["qkv", "fc1"]}, now).endswith(
        "lowrank_layers ['qkv', 'fc1'], now ['qkv', 'proj', 'fc1', 'fc2']")
    both = space_otherwise({**now, "smooth": 0.8, "group_size": 32}, now)
    assert "smooth 0.8, now 0.5" in both and "group_size 32, now 64" in both
    assert "did not record its search space's defaults" in space_otherwise(None, now)
