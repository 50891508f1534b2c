"""A search survives a SIGKILL of its driver: the rerun keeps every finished trial, reruns the interrupted ones with
the same recipes, and asks the sampler for new recipes instead of repeating the first run's."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from autocomp.cli import main
from autocomp.results import load_run_study, read_trials, trial_rows
from test_search_e2e import write_job

TRIALS = 4


def _trials(run):
    return load_run_study(run).get_trials(deepcopy=False)


def _states_while_running(run):
    """Trial states, read while the driver writes the study; a RUNNING trial counts once its recipe is set, i.e.
    once it is handed to Ray."""
    return [t.state.name for t in read_trials(run) if t.state.name != "RUNNING" or "recipe" in t.user_attrs]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGTERM to Python", "SIGTERM to the group"])
def test_a_killed_search_resumes_without_losing_or_recomputing_a_trial(tmp_path, tiny_teacher, monkeypatch, how):
    """SIGKILL to the search's processes (nothing cleans up), or SIGTERM to its driver (kill PID: stopped as on
    Ctrl-C, saying so; ray.init's own SIGTERM handler does not replace autocomp's): the command line's, or a Python
    script's calling run_search (it died at once, its lock file naming it, a trial RUNNING, Ray's agents left
    behind), which then ends by the SIGTERM as it would have; or to its process group (coreutils' timeout, a
    scheduler), its Ray's head included: the search waited a minute on that Ray, which ended the process first."""
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=TRIALS, workers=1)
    space = tmp_path / "space.yaml"  # a little distillation makes a trial last long enough to be killed in it
    space.write_text("heads_keep: [0.5, 0.75, 1.0]\nweight_bits: [32, 8]\ndistill_steps: [40]\n"
                     "distill_alpha: [0.5]\n")
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "search_space": str(space)}))
    run = tmp_path / "run"
    said, logged = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
    command = ["-m", "autocomp.cli", "search", str(job), "--out", str(run), "--quiet"] if how != "SIGTERM to Python" \
        else ["-c", "import sys\nfrom autocomp.search import run_search\nrun_search(sys.argv[1], sys.argv[2], "
                    "progress=False)\nprint('not reached')", str(job), str(run)]
    driver = subprocess.Popen([sys.executable, *command], start_new_session=True, stdout=logged.open("w"),
                              stderr=said.open("w"))
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # kill it while trial 1 or 2 runs, after one has finished
            states = _states_while_running(run)
            if states.count("COMPLETE") >= 1 and "RUNNING" in states:
                break
            assert driver.poll() is None, "the search ended before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError("no trial was running within 240 s")
        if how in ("SIGTERM", "SIGTERM to the group"):
            if how == "SIGTERM":
                driver.send_signal(signal.SIGTERM)
            else:
                os.killpg(driver.pid, signal.SIGTERM)
            assert driver.wait(timeout=120) == 143
            assert said.read_text().splitlines()[-1] == ("autocomp: terminated; results written so far are kept "
                                                         "(rerun the same command to resume)")
            # said as it began to stop, not only once it had (Tune and Ray take seconds)
            assert logged.read_text().splitlines()[-1] == ("stopping (a few seconds): any trial under way ends; every "
                                                           "finished trial is kept")
            # Tune's thread, still running as Ray shuts down, started no new Ray (Ray's auto-connect)
            assert "SIGTERM handler is not set" not in said.read_text()
        if how == "SIGTERM to Python":
            driver.send_signal(signal.SIGTERM)
            assert driver.wait(timeout=120) == -signal.SIGTERM  # ended by the signal, once the search had stopped
            assert logged.read_text().splitlines()[-2:] == [
                "stopping (a few seconds): any trial under way ends; every finished trial is kept",
                f"terminated; results written so far are kept in {run} (run the same search again to resume)"]
            assert "Traceback" not in said.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):  # SIGTERM: its Ray may be gone already
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = {t.number: t for t in _trials(run)}
    finished = {n: t for n, t in before.items() if t.state == optuna.trial.TrialState.COMPLETE}
    interrupted = {n: t for n, t in before.items() if t.state == optuna.trial.TrialState.RUNNING}
    assert finished and interrupted
    if how in ("SIGTERM", "SIGTERM to Python"):  # they leave the study as the others do: the resume of it is
        return  # tested after SIGKILL (nothing cleaned up) and after the group's (Ray gone with the driver)

    from autocomp.search import _runner

    seeds, sampler = [], _runner._sampler
    monkeypatch.setattr(_runner, "_sampler", lambda config, *, seed: seeds.append(seed) or sampler(config, seed=seed))
    assert main(["search", str(job), "--out", str(run), "--quiet"]) == 0
    after = {t.number: t for t in _trials(run)}
    complete = {n: t for n, t in after.items() if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(complete) == TRIALS  # the total asked for, no more
    for number, trial in finished.items():  # every finished trial survived unchanged and was not run again
        assert complete[number].values == trial.values and complete[number].datetime_complete == trial.datetime_complete
    for number, trial in interrupted.items():  # marked failed, explained, and run again with the same recipe
        assert after[number].state == optuna.trial.TrialState.FAIL
        reruns = [t for t in complete.values() if t.user_attrs.get("retry_of") == number]
        assert len(reruns) == 1 and trial.params.items() <= reruns[0].params.items()
        if "recipe" in trial.user_attrs:  # it was running (not still being sampled): the very same recipe
            assert reruns[0].params == trial.params and reruns[0].user_attrs["recipe"] == trial.user_attrs["recipe"]
    rows = {r.number: r for r in trial_rows(load_run_study(run),
                                             ["memory_mb"])}
    assert all(rows[n].error.startswith("interrupted") for n in interrupted)
    # counted as interrupted, not as failed: the recipe did not fail (a user counting failures counted the kill)
    counts = json.loads((run / "summary.json").read_text())["trials"]
    assert counts["interrupted"] == len(interrupted) and counts["failed"] == 0
    csv_rows = {int(r["number"]): r for r in csv.DictReader((run / "trials.csv").open())}  # the rerun is traceable
    assert {int(r["retry_of"]) for r in csv_rows.values() if r["retry_of"]} == set(interrupted)
    # the resumed sampler does not replay the first run's draws (seed 0 again): it is seeded past the trials so far
    assert seeds == [len(before)] and len(before) > 0


def test_a_stale_local_ray_cluster_does_not_stop_an_embedded_search(tmp_path, tiny_teacher):
    """`ray start` (or one that died) leaves /tmp/ray/ray_current_cluster; a plain search starts its own Ray."""
    from pathlib import Path

    from ray._common.utils import get_ray_address_file

    marker = Path(get_ray_address_file(None))  # where Ray looks: /tmp/ray, or under RAY_TMPDIR (see conftest.py)
    saved = marker.read_text() if marker.is_file() else None
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("127.0.0.1:1")  # a head that is not there
    try:
        job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=1, workers=1)
        assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    finally:
        if saved is None:
            marker.unlink(missing_ok=True)
        else:
            marker.write_text(saved)
    assert len(_trials(tmp_path / "run")) == 1


def test_ctrl_c_while_a_trial_runs_stops_it_and_ray_and_the_same_process_searches_again(tmp_path, tiny_teacher):
    """An interrupt in a notebook cell while a trial distils: it is taken at once (not after the trials), the running
    trial is stopped, Tune's thread has ended and Ray is shut down (a Tune thread left running started a Ray of its
    own, and the next search in the process died joining it); the next search in the same process runs."""
    import _thread
    import threading

    import ray

    from autocomp.config import load_config
    from autocomp.search import run_search

    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=2, workers=1)
    (tmp_path / "space.yaml").write_text("heads_keep: [0.5, 0.75]\ndistill_steps: [600]\n")
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "search_space": str(tmp_path / "space.yaml"),
                                   "start_points": False, "fidelity": None}))
    again = tmp_path / "again.yaml"  # the next search: one short trial (the resume of a stopped one: above, and
    (tmp_path / "short.yaml").write_text("heads_keep: [0.5]\n")  # test_a_search_stopped_before_its_first_trial...)
    again.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "search_space": str(tmp_path / "short.yaml"),
                                     "trials": 1}))
    run = tmp_path / "run"
    lock, searching, at_interrupt = threading.Lock(), [True], []

    def interrupt_once_a_trial_runs():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "RUNNING" not in _states_while_running(run):
            time.sleep(0.2)
        with lock:  # never once the search has returned: the interrupt would land in pytest itself
            if searching[0] and time.monotonic() < deadline:
                at_interrupt.extend(_states_while_running(run))
                _thread.interrupt_main()  # what a notebook's interrupt does, with no signal to wake a waiting thread
    watcher = threading.Thread(target=interrupt_once_a_trial_runs, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        try:
            run_search(load_config(job), run, log=lambda line: None, progress=False)
        finally:
            with lock:
                searching[0] = False
                after = _states_while_running(run)
    watcher.join()
    assert "RUNNING" in at_interrupt and after.count("COMPLETE") == at_interrupt.count("COMPLETE") < 2  # taken at
    # once, while a trial distilled: not after the trials
    assert not ray.is_initialized()
    for thread in threading.enumerate():
        if thread.name == "autocomp-tune":
            thread.join(timeout=10)  # Tune has ended: its thread is leaving
            assert not thread.is_alive()
    summary = run_search(load_config(again), tmp_path / "again", log=lambda line: None, progress=False)
    assert summary["trials"]["complete"] == 1 and not ray.is_initialized()


def test_ctrl_c_while_ray_starts_stops_what_it_started_and_the_default_sigterm_comes_back(monkeypatch):
    """The caller's SIGTERM handler comes back after ray.init, the default one too: a process forked later (OpenVINO's
    telemetry forks one per event and terminates it) would inherit Ray's, which can deadlock there."""
    import ray

    from autocomp.search._ray import ray_session

    started = ray.init
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with ray_session(workers=1, ray_address=None, log=print):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert not ray.is_initialized()

        def interrupted(*args, **kwargs):
            started(*args, **kwargs)
            raise KeyboardInterrupt  # as if it came a moment before ray.init returned
        monkeypatch.setattr(ray, "init", interrupted)
        with pytest.raises(KeyboardInterrupt), ray_session(workers=1, ray_address=None, log=print):
            pass
        assert not ray.is_initialized() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_while_ray_starts_is_held_until_it_has_then_raised_and_ray_starts_again(monkeypatch):
    """A KeyboardInterrupt inside ray.init left Ray's core worker made but not marked as started: ray.shutdown() did
    not stop it, and the process's next ray.init aborted the process (a notebook's kernel died). Ctrl-C is held until
    Ray is up, said, then raised, and Ray is shut down whole; a second Ctrl-C is raised at once."""
    import ray

    from autocomp.search._ray import ray_session

    started, said = ray.init, []

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # its handler runs here, in the main thread
        said.append("ray.init goes on")
        return started(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(ray, "init", interrupted)
        with pytest.raises(KeyboardInterrupt), ray_session(workers=1, ray_address=None, log=said.append):
            said.append("the block ran")
    assert said[0].startswith("interrupted while Ray starts: stopping once it has") and said[1:] == [
        "ray.init goes on"]
    assert not ray.is_initialized() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with ray_session(workers=1, ray_address=None, log=print):  # the same process starts Ray again
        assert ray.is_initialized()

    def twice(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        said.append("not reached")
    said.clear()
    with monkeypatch.context() as patched:
        patched.setattr(ray, "init", twice)
        with pytest.raises(KeyboardInterrupt), ray_session(workers=1, ray_address=None, log=said.append):
            pass
    assert len(said) == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_search_stopped_before_its_first_trial_says_what_its_rerun_keeps(tmp_path, tiny_teacher, monkeypatch,
                                                                          capsys):
    """Stopped after its passes, before a trial finished: the rerun says it resumes, and what it keeps (it said
    nothing of the run it went on with)."""
    from autocomp.search import _runner

    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=1, workers=1)
    run = tmp_path / "run"

    def stopped(**kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as patched:
        patched.setattr(_runner, "OptunaController", stopped)
        assert main(["search", str(job), "--out", str(run)]) == 130
    assert (run / "run.json").is_file() and (run / "sensitivity.json").is_file()
    capsys.readouterr()
    assert main(["search", str(job), "--out", str(run)]) == 0
    assert (f"resuming {run}: no trial had finished; its measurement of the uncompressed model is kept, and the "
            "passes before the trials") in capsys.readouterr().out


def test_an_interrupt_landing_inside_a_librarys_handler_is_still_an_interrupt(tmp_path, tiny_teacher, monkeypatch,
                                                                                capsys):
    """Ctrl-C landing while Optuna releases its journal lock came out as that handler's FileNotFoundError (a
    traceback, in CI): it is the user's interrupt, said as one, with the work kept."""
    from autocomp.search import _runner

    def interrupted(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise FileNotFoundError(2, "No such file or directory", "study.journal.lock.rename")  # Optuna's cleanup
    monkeypatch.setattr(_runner, "_search", interrupted)
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=1, workers=1)
    with pytest.raises(KeyboardInterrupt):
        _runner.run_search(job, tmp_path / "run", log=lambda line: None, progress=False)
    assert main(["search", str(job), "--out", str(tmp_path / "run")]) == 130
    assert "interrupted; results written so far are kept" in capsys.readouterr().err

    def failed(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "x")  # no interrupt behind it: its own error
    monkeypatch.setattr(_runner, "_search", failed)
    with pytest.raises(FileNotFoundError):
        _runner.run_search(job, tmp_path / "run", log=lambda line: None, progress=False)
