"""Quiet timing: a trial's timing and the other trials' steps on the same machine take turns."""

from __future__ import annotations

import multiprocessing
import tempfile
import threading
import time
import uuid

import pytest
import torch
from torch import nn

from autocomp import _quiet
from autocomp._timeout import TimedOut, time_limit
from autocomp.hardware import HardwareProfile
from autocomp.measure import measure

HOLD_S = 0.4  # how long one side holds its lock while the test checks that the other waits


@pytest.fixture(autouse=True)
def lock_files_in_tmp_path(tmp_path, monkeypatch):
    """The lock folders go under the test's tmp_path (this process's and spawned children's temporary folder)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _key() -> str:
    return uuid.uuid4().hex[:16]  # each test its own lock files: tests running at once do not wait for each other


def _in_thread(key: str, body) -> tuple[threading.Thread, threading.Event, dict]:
    """Run ``body`` under quiet_machine(key) in a thread; the event is set once ``body`` got past its lock."""
    entered, out = threading.Event(), {}

    def run() -> None:
        with _quiet.quiet_machine(key):
            out["result"] = body(entered)
            out["paused"] = _quiet.paused_seconds()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, entered, out


def _step_once(entered: threading.Event) -> None:
    with _quiet.step():
        entered.set()


def _time_once(entered: threading.Event) -> None:
    with _quiet.timing():
        entered.set()


def _hold(context, release: threading.Event):
    def body(entered: threading.Event) -> None:
        with context():
            entered.set()
            release.wait(10)
    return body


def test_a_step_waits_while_another_trial_times_and_reports_the_pause():
    key, release = _key(), threading.Event()
    timer, timing, _ = _in_thread(key, _hold(_quiet.timing, release))
    assert timing.wait(5)
    stepper, stepping, out = _in_thread(key, _step_once)
    assert not stepping.wait(HOLD_S)  # the timing holds the machine: the step has not started
    release.set()
    assert stepping.wait(5)
    timer.join(5)
    stepper.join(5)
    assert out["paused"] >= 0.5 * HOLD_S  # it says how long it waited


def test_a_timing_waits_for_the_step_under_way():
    key, release = _key(), threading.Event()
    stepper, stepping, _ = _in_thread(key, _hold(_quiet.step, release))
    assert stepping.wait(5)
    timer, timing, _ = _in_thread(key, _time_once)
    assert not timing.wait(HOLD_S)
    release.set()
    assert timing.wait(5)
    for thread in (stepper, timer):
        thread.join(5)


def test_other_runs_and_contexts_without_quiet_timing_do_not_wait():
    release = threading.Event()
    timer, timing, _ = _in_thread(_key(), _hold(_quiet.timing, release))
    assert timing.wait(5)
    other, other_stepping, _ = _in_thread(_key(), _step_once)  # another run's trial
    free, free_stepping, free_out = _in_thread(None, _step_once)  # quiet timing off
    try:
        assert other_stepping.wait(5) and free_stepping.wait(5)
    finally:
        release.set()
    for thread in (timer, other, free):
        thread.join(5)
    assert free_out["paused"] is None  # off: no pause recorded, not a pause of 0 s


def test_a_waiting_step_still_obeys_the_trials_time_limit():
    key, release = _key(), threading.Event()
    timer, timing, _ = _in_thread(key, _hold(_quiet.timing, release))
    assert timing.wait(5)
    try:
        with _quiet.quiet_machine(key), pytest.raises(TimedOut):
            with time_limit(0.2, setting="trial_timeout_s"), _quiet.step():
                pass
    finally:
        release.set()
        timer.join(5)


def test_a_timing_inside_a_step_of_the_same_trial_is_refused():
    with _quiet.quiet_machine(_key()), _quiet.step():
        with pytest.raises(RuntimeError, match="wait for itself"):
            with _quiet.timing():
                pass


def _time_for_ever(key: str, ready) -> None:
    with _quiet.quiet_machine(key), _quiet.timing():
        ready.set()
        time.sleep(60)


def test_a_killed_trial_does_not_leave_the_others_waiting():
    key = _key()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=_time_for_ever, args=(key, ready))
    process.start()
    try:
        assert ready.wait(60)
        stepper, stepping, _ = _in_thread(key, _step_once)
        assert not stepping.wait(HOLD_S)  # the other process times
        process.kill()
        assert stepping.wait(10)  # the kernel released its locks with it
        stepper.join(5)
    finally:
        process.kill()
        process.join(10)


def test_measure_times_only_when_no_step_of_the_run_is_under_way():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    profile = HardwareProfile(name="t", batch_size=2, repeats=3, warmup=1)
    key, release = _key(), threading.Event()
    stepper, stepping, _ = _in_thread(key, _hold(_quiet.step, release))
    assert stepping.wait(5)
    measured, done, out = _in_thread(key, lambda entered: (measure(model, profile, example=torch.randn(2, 32)),
                                                           entered.set()))
    assert not done.wait(HOLD_S)  # the model's timing waits for the step
    release.set()
    assert done.wait(30) and out["result"][0].latency_ms > 0
    for thread in (stepper, measured):
        thread.join(5)


def test_a_run_times_quietly_only_where_its_trials_share_a_machine(tmp_path):
    from types import SimpleNamespace

    from autocomp.search._runner import _quiet_key

    local, device_node = HardwareProfile(name="cpu"), HardwareProfile(name="gpu", ray_resource="gpu_box")
    job = SimpleNamespace(workers=2, quiet_timing=True)  # the fields of JobConfig the rule reads
    assert _quiet_key(job, local, tmp_path) == _quiet.run_key(tmp_path)  # the same for every trial of the run
    assert _quiet_key(job, local, tmp_path / "other") != _quiet.run_key(tmp_path)
    assert _quiet_key(job, device_node, tmp_path) is None  # timed on a node where no trial computes
    assert _quiet_key(SimpleNamespace(workers=2, quiet_timing=False), local, tmp_path) is None
    assert _quiet_key(SimpleNamespace(workers=1, quiet_timing=True), local, tmp_path) is None


def test_quiet_timing_takes_true_or_false_only():
    from pathlib import Path

    from autocomp.config import JobConfig
    from autocomp.errors import AutocompError

    with pytest.raises(AutocompError, match="quiet_timing must be true or false, got 'no'"):
        JobConfig(model=None, data=None, search_space=Path("x"), hardware=Path("x"), budget=None, quiet_timing="no")


def test_the_runs_lock_files_are_removed_when_its_trial_loop_ends(tmp_path):
    key = _key()
    with _quiet.removed_after(key):
        with _quiet.quiet_machine(key), _quiet.step():
            folders = [p for p in tmp_path.rglob(key)]
            assert folders and (folders[0] / "gate").is_file()  # where the trials of the run meet
    assert not list(tmp_path.rglob(key))


def test_a_temporary_folder_that_cannot_be_locked_turns_quiet_timing_off_with_a_warning(monkeypatch):
    import errno

    def no_locks(file, mode):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(_quiet.fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="quiet timing is off in this trial: cannot lock files in .*TMPDIR") as said:
        with _quiet.quiet_machine(_key()):
            with _quiet.step(), _quiet.timing():  # neither waits nor fails
                pass
            assert _quiet.paused_seconds() is None  # recorded as off, not as a pause of 0 s
    assert said[0].filename == __file__  # the with statement's line: not contextlib's, nor autocomp's


def _while_another_times(key: str, body) -> dict:
    """Run ``body`` in a thread while another context of ``key`` times; check that it waits for the timing to end.
    Returns what the thread recorded."""
    release = threading.Event()
    timer, timing, _ = _in_thread(key, _hold(_quiet.timing, release))
    assert timing.wait(5)
    worker, done, out = _in_thread(key, lambda entered: (body(), entered.set())[0])
    try:
        assert not done.wait(HOLD_S)  # held before its first step
    finally:
        release.set()
    assert done.wait(60)
    for thread in (timer, worker):
        thread.join(5)
    return out


@pytest.mark.parametrize("work", ["evaluate", "distill"])
def test_evaluation_and_distillation_wait_while_another_trial_of_the_run_times(work, tiny_teacher, digits_splits):
    import copy

    from autocomp.distill import distill
    from autocomp.recipe import Distill
    from autocomp.train import evaluate

    teacher = tiny_teacher[1]
    body = {"evaluate": lambda: evaluate(teacher, digits_splits.val),
            "distill": lambda: distill(copy.deepcopy(teacher), teacher, digits_splits.calib,
                                       Distill(steps=2, alpha=0.5, batch_size=16))}[work]
    assert _while_another_times(_key(), body)["paused"] >= 0.5 * HOLD_S


def test_a_trial_of_the_run_waits_while_another_times_and_reports_the_wait(tiny_teacher, digits_splits):
    from autocomp import Recipe
    from autocomp.search._objective import TrialInputs, run_trial

    key = _key()
    inputs = TrialInputs(base=tiny_teacher[1], val=digits_splits.val, calib=digits_splits.calib.x,
                         train=digits_splits.calib, profile=HardwareProfile(name="t", repeats=3, warmup=1),
                         limits={"memory_mb": 100.0}, base_latency_ms=1.0, quiet_key=key)
    recipe = Recipe.from_dict({"blocks": [{"quantize": {}}, {}]}).to_dict()
    out = _while_another_times(key, lambda: run_trial(recipe, inputs))  # run_trial sets up quiet timing itself
    assert out["result"]["paused_seconds"] >= 0.5 * HOLD_S  # its first step waited, and the trial says so


def test_a_step_inside_a_timing_of_the_same_trial_keeps_the_machine_held():
    key, release = _key(), threading.Event()

    def time_with_a_step_inside(entered: threading.Event) -> None:
        with _quiet.timing(), _quiet.step():  # e.g. a backend whose timed run evaluates something
            entered.set()
            release.wait(10)

    timer, timing, _ = _in_thread(key, time_with_a_step_inside)
    assert timing.wait(5)
    stepper, stepping, _ = _in_thread(key, _step_once)
    try:
        assert not stepping.wait(HOLD_S)  # the inner step did not turn the timing's exclusive lock into a shared one
    finally:
        release.set()
    assert stepping.wait(5)
    for thread in (timer, stepper):
        thread.join(5)
