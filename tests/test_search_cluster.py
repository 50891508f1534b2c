"""Searches on real Ray clusters on loopback, joined by address: a head started with ``ray start --head``, a
two-node cluster that loses its worker node mid-search, and one that loses the node holding the device."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from autocomp.results import load_run_study, read_trials
from test_search_e2e import write_job

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "ray start --head exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"no Ray head listening on 127.0.0.1:{port} after {seconds} s")


def _slow_job(tmp_path: Path, tiny_teacher, *, trials: int, workers: int, hardware: Path | None = None) -> Path:
    """A job whose trials distil a little, so that each lasts long enough for a node to die under it."""
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=trials, workers=workers)
    space = tmp_path / "space.yaml"
    space.write_text("heads_keep: [0.5, 0.75, 1.0]\nweight_bits: [32, 8]\ndistill_steps: [60]\n"
                     "distill_alpha: [0.5]\n")
    # fidelity off: a candidate stopped after a quarter of its steps would end before the node dies under it
    values = {**yaml.safe_load(job.read_text()), "search_space": str(space), "resources": {"cpu": 1},
              "fidelity": None}
    if hardware is not None:
        values["hardware"] = str(hardware)
    job.write_text(yaml.safe_dump(values))
    return job


def _trials_read_only(run: Path) -> list[tuple[int, str, str | None]]:
    """(number, state, node) of each trial, read while another process writes the study."""
    return [(t.number, t.state.name, t.user_attrs.get("node")) for t in read_trials(run)]


def _search(job: Path, run: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autocomp.cli", "search", str(job), "--out", str(run),
                             "--ray-address", address, "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_until(condition, process: subprocess.Popen, run: Path, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the search ended (exit {process.returncode}) before {what}; trials (number, "
                                 f"state, node): {_trials_read_only(run)}; stderr: {process.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


def _complete(run: Path) -> list[optuna.trial.FrozenTrial]:
    study = load_run_study(run)
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


@pytest.mark.skipif(not shutil.which(RAY), reason="the ray command is not installed beside this Python")
def test_a_search_joins_a_head_started_with_ray_start(tmp_path, tiny_teacher, monkeypatch):
    """As a new user would: `ray start --head` in a terminal, then `autocomp search ... --ray-address HOST:PORT`
    (on loopback, Ray's command line wants token authentication, and so does every process that joins)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    # the token the head and the search share (a fresh machine has no ~/.ray/auth_token: `ray start` then refuses)
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port, temp = _free_port(), tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are limited
    head = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"], start_new_session=True,
                            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                            stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, head)
        job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=2, workers=2)
        run = tmp_path / "run"
        search = _search(job, run, f"127.0.0.1:{port}")  # a process of its own, as from the user's shell
        _, err = search.communicate(timeout=600)
        assert search.returncode == 0, err
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
    trials = _complete(run)
    assert len(trials) == 2 and len({t.user_attrs["node"] for t in trials}) == 1  # the head is the only node
    assert (run / "summary.json").is_file()


def _wait_for_other_rays_to_end(seconds: float = 60) -> None:
    """Wait (at most ``seconds``) until no raylet or GCS server of an earlier Ray session is still shutting down:
    its processes compete for the two CPUs with the new cluster, whose worker node then starts its first trial so
    late that the head has run every trial (seen in CI, right after the Ray sessions of other test files)."""
    def others() -> list[str]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if cmdline.stat().st_uid != os.getuid():
                    continue
                words = cmdline.read_bytes().split(b"\0")
            except OSError:  # the process ended meanwhile
                continue
            if words and Path(words[0].decode(errors="replace")).name in {"raylet", "gcs_server"}:
                found.append(cmdline.parent.name)
        return found
    deadline = time.monotonic() + seconds
    while others() and time.monotonic() < deadline:
        time.sleep(1)


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    _wait_for_other_rays_to_end()
    # a killed node is declared dead after 3 failed health checks a second apart (Ray's default: 5, 3 s apart)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1",
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    try:
        yield cluster
    finally:
        cluster.shutdown()


def test_trials_run_on_both_nodes_and_the_search_survives_losing_one(cluster, tmp_path, tiny_teacher):
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    head = cluster.head_node.node_id
    # enough trials that some are left when the worker node has finished its first (its worker starts while the
    # search gets ready; trials of about 2 s, shorter than a worker's start, once all ran on the head: see _loop)
    trials, run = 16, tmp_path / "run"
    search = _search(_slow_job(tmp_path, tiny_teacher, trials=trials, workers=2), run, cluster.address)
    try:
        def worker_busy_after_a_trial() -> bool:  # with trials left to start after the loss (the test of them
            # below found none once the workers, which keep the inputs they fetched, ran faster than before)
            rows = _trials_read_only(run)
            on_worker = [state for _, state, node in rows if node == worker.node_id]
            return "COMPLETE" in on_worker and sum(state == "RUNNING" for _, state, _ in rows) == 2 and \
                len(rows) <= trials - 4
        _wait_until(worker_busy_after_a_trial, search, run, 900, "a trial finished on the worker node")
        cluster.remove_node(worker, allow_graceful=False)  # as if the machine died
        removed = time.monotonic()
        out, err = search.communicate(timeout=600)
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
    assert search.returncode == 0, err
    assert f"Ray: joined the cluster at {cluster.address}: 2 nodes (2 CPUs)" in out  # what the trials run on
    assert "tune_controller" not in err  # the worker lost with its node: the search's to say, not Tune's traceback
    complete = _complete(run)
    assert len(complete) == trials  # every trial asked for, despite the loss
    nodes = {t.user_attrs["node"] for t in complete}
    assert nodes == {head, worker.node_id}  # the trial records say where each ran
    # trials started after the loss ran on the head (one that ended on the worker just before the loss may be told
    # after it: its completion time says nothing about where later trials went)
    late = [t for t in complete if t.datetime_start.timestamp() > time.time() - (time.monotonic() - removed)]
    assert late and all(t.user_attrs["node"] == head for t in late)
    study = load_run_study(run)
    for failed in study.get_trials(states=(optuna.trial.TrialState.FAIL,)):  # those the loss killed: run again
        assert failed.user_attrs["error"]
        assert any(t.user_attrs.get("retry_of") == failed.number for t in complete)


def test_losing_the_device_node_stops_the_search_which_resumes_when_it_is_back(cluster, tmp_path, tiny_teacher):
    profile = yaml.safe_load((ROOT / "hardware_profiles" / "local_cpu.yaml").read_text())
    (tmp_path / "device.yaml").write_text(yaml.safe_dump({**profile, "ray_resource": "test_device"}))
    device = cluster.add_node(num_cpus=0, resources={"test_device": 1}, node_ip_address="127.0.0.1")
    trials, run = 4, tmp_path / "run"
    job = _slow_job(tmp_path, tiny_teacher, trials=trials, workers=1, hardware=tmp_path / "device.yaml")
    search = _search(job, run, cluster.address)
    try:
        _wait_until(lambda: [s for _, s, _ in _trials_read_only(run)].count("COMPLETE") >= 1, search, run, 900,
                    "a trial finished")
        cluster.remove_node(device, allow_graceful=False)
        _, err = search.communicate(timeout=600)
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
    assert search.returncode == 2
    line = err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("autocomp: error: search stopped: the Ray node holding "
                                                           "the device resource 'test_device' left the cluster")
    assert "run the same command again to resume once that is put right" in line
    kept = {t.number: t.values for t in _complete(run)}
    assert 1 <= len(kept) < trials and (run / "trials.csv").is_file()

    cluster.add_node(num_cpus=0, resources={"test_device": 1}, node_ip_address="127.0.0.1")  # the device is back
    rerun = _search(job, run, cluster.address)
    _, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err
    complete = {t.number: t for t in _complete(run)}
    assert len(complete) == trials and all(complete[n].values == v for n, v in kept.items())
