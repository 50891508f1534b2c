"""Measurement on the target's node, in a real two-node Ray cluster on loopback: the head, and a node declaring the
device's resource."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import torch
import yaml

from autocomp import AutocompError
from autocomp.cli import main
from autocomp.hardware import HardwareProfile
from autocomp.measure.profiling import load_profile
from autocomp.results import load_run_study
from autocomp.measure.placement import measure_on_device, require_resource
from conftest import small_vit
from test_search_e2e import write_job

ROOT = Path(__file__).resolve().parents[1]
RESOURCE = "test_device"


def test_a_device_profile_on_an_embedded_ray(tiny_teacher, tmp_path, capsys, monkeypatch):
    """Without --ray-address the search runs on this machine alone: a GPU profile naming its node measures on this
    machine's GPU (here, without one, it is refused before Ray starts, naming --ray-address); a CPU profile naming a
    node (a Raspberry Pi's, another server's) is refused: this machine's CPU is not that device. (First in this
    module: the cluster fixture is not up yet.)"""
    import ray

    assert not ray.is_initialized()
    shipped = ROOT / "hardware_profiles" / "nvidia_h100.yaml"
    assert load_profile(shipped).ray_resource == "nvidia_h100"
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=1, workers=1)
    local = yaml.safe_load((ROOT / "hardware_profiles" / "local_cpu.yaml").read_text())
    (tmp_path / "there.yaml").write_text(yaml.safe_dump({**local, "ray_resource": "my_box"}))
    for profile, said in ((tmp_path / "there.yaml", f"hardware profile {tmp_path / 'there.yaml'} measures on the "
                           "Ray resource 'my_box', but no node of the Ray cluster has it"),
                          (shipped, f"hardware profile {shipped} measures on a CUDA GPU, on the Ray node declaring "
                           "'nvidia_h100' (its ray_resource), and this machine has none that torch ")):
        if profile == shipped and torch.cuda.is_available():
            continue  # the search would run on this machine's GPU
        if profile == shipped:  # said before the images load (a 224-px folder takes a while), as before its profile

            def loaded(*args, **kwargs):
                raise AssertionError("the images were loaded before the missing GPU was said")

            monkeypatch.setattr("autocomp.search._rundir.run_splits", loaded)
        job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "hardware": str(profile)}))
        assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
        out, err = capsys.readouterr()
        assert "measures on its GPU" not in out
        assert len(err.strip().splitlines()) == 1 and said in err, err
        assert not ray.is_initialized()  # the embedded Ray it may have started is shut down again
        assert profile != shipped or err.strip().endswith("pass --ray-address of the Ray cluster holding that node, "
                                                          "or search with a CPU profile")


@pytest.fixture(scope="module")
def cluster():
    """(cluster, id of the node holding the device); Ray is connected to it for the module's tests."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    try:
        device_node = cluster.add_node(num_cpus=1, resources={RESOURCE: 1}, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        yield cluster, device_node.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()


def profile_on(resource: str | None) -> HardwareProfile:
    return HardwareProfile(name="t", batch_size=2, warmup=1, repeats=5, ray_resource=resource)


def test_the_measurement_runs_on_the_node_that_holds_the_device(cluster):
    _, device_node = cluster
    import ray

    assert ray.get_runtime_context().get_node_id() != device_node  # the driver is on the head
    model = small_vit()
    placed = measure_on_device(model, profile_on(RESOURCE), example=torch.randn(2, 3, 16, 16), reference=model)
    assert placed.node_id == device_node
    assert placed.measurement.latency_ratio is not None and placed.measurement.memory_mb > 0
    local = measure_on_device(model, profile_on(None), example=torch.randn(2, 3, 16, 16))
    assert local.node_id is None  # no resource named: measured in this process


def _concurrently(count: int, repeats: int) -> list:
    model = small_vit()
    profile = dataclasses.replace(profile_on(RESOURCE), repeats=repeats)
    placed = []

    def run() -> None:
        placed.append(measure_on_device(model, profile, example=torch.randn(2, 3, 16, 16)))

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return placed


def test_one_measurement_at_a_time_per_device(cluster):
    _, device_node = cluster
    _concurrently(3, repeats=1)  # had the device allowed it, this would have started a worker per measurement
    placed = _concurrently(3, repeats=300)  # each long enough to overlap the others, if allowed to
    windows = sorted((p.started, p.finished) for p in placed)
    assert len(windows) == 3 and {p.node_id for p in placed} == {device_node}
    assert all(earlier[1] <= later[0] for earlier, later in zip(windows, windows[1:]))  # never overlapping


def test_a_resource_no_node_has_is_refused(cluster):
    require_resource(profile_on(RESOURCE), source="p.yaml")
    with pytest.raises(AutocompError, match=r"hardware profile p.yaml measures on the Ray resource 'no_such_device', "
                                            r"but no node of the Ray cluster has it \(custom resources there: "
                                            r"\['test_device'\]\); start the device's node with ray start"):
        require_resource(profile_on("no_such_device"), source="p.yaml")


def _job_on(tmp_path: Path, tiny_teacher, resource: str) -> Path:
    profile = yaml.safe_load((ROOT / "hardware_profiles" / "local_cpu.yaml").read_text())
    (tmp_path / "device.yaml").write_text(yaml.safe_dump({**profile, "ray_resource": resource}))
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=2, workers=1)
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "hardware": str(tmp_path / "device.yaml")}))
    return job


def test_a_search_measures_every_trial_on_the_device_node(cluster, tiny_teacher, tmp_path):
    _, device_node = cluster
    job = _job_on(tmp_path, tiny_teacher, RESOURCE)
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    trials = [t for t in load_run_study(tmp_path / "run").get_trials() if "duplicate_of" not in t.user_attrs]
    assert len(trials) == 2
    assert [t.user_attrs["measured_on"] for t in trials] == [device_node, device_node]


def test_a_search_on_a_cluster_without_the_resource_stops_before_any_trial(cluster, tiny_teacher, tmp_path, capsys):
    job = _job_on(tmp_path, tiny_teacher, "no_such_device")
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("autocomp: error: hardware profile ")
    assert "'no_such_device'" in err and str(tmp_path / "device.yaml") in err and "ray_resource: null" in err
    assert not (tmp_path / "run").exists()  # not even the baseline was measured: no folder left behind


@pytest.mark.timeout(300)  # Ray itself would keep the infeasible task pending for ever: the test would hang
def test_a_measurement_for_a_device_no_node_holds_ends_instead_of_waiting_for_ever(cluster):
    from autocomp.measure.placement import DeviceLost

    with pytest.raises(DeviceLost, match=r"the Ray node holding the device resource 'gone_device' left the cluster"):
        measure_on_device(small_vit(), profile_on("gone_device"), example=torch.randn(2, 3, 16, 16))


def test_a_measurement_past_its_timeout_fails_with_the_setting_named(cluster):
    from autocomp._timeout import TimedOut

    profile = dataclasses.replace(profile_on(RESOURCE), repeats=100_000)
    with pytest.raises(TimedOut, match=r"ran past measure_timeout_s = 2 s"):
        measure_on_device(small_vit(), profile, example=torch.randn(2, 3, 16, 16), timeout_s=2)
    placed = measure_on_device(small_vit(), profile_on(RESOURCE), example=torch.randn(2, 3, 16, 16), timeout_s=60)
    assert placed.measurement.latency_ms > 0  # the device is free again: the timed-out task was cancelled
