"""Where measurements run: in the calling process, or on the Ray node that holds the target device.

A profile with ``ray_resource: NAME`` says that the device sits on the Ray node declaring the custom resource NAME.
Every measurement of the run (the uncompressed baseline and each trial's candidate) is then a Ray task that asks for
one whole unit of NAME, so it runs on that node and, the node declaring one unit, one at a time: trials compress and
evaluate wherever Ray puts them, but never time on the device while another measurement is running there. The task
asks for no CPU; start the device's node with ``--num-cpus=0`` so that no trial is scheduled beside it.

A measurement waits for its task in short polls: if the node holding the device leaves the cluster, it raises
:class:`DeviceLost` (the search stops, keeps everything, and resumes when the node is back) instead of waiting for
ever on a task no node can run; and it gives up past ``timeout_s``.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from autocomp._timeout import check_time, time_limit
from autocomp.errors import AutocompError
from autocomp.hardware import HardwareProfile
from autocomp.measure._measure import Measurement, measure
from autocomp.measure.backends import require_backend

__all__ = ["Placed", "DeviceLost", "import_ray", "require_resource", "require_device", "measure_on_device"]

POLL_S = 1.0  # how often a wait for a remote measurement checks that the device is still there


class Placed(NamedTuple):
    """A measurement and where and when it ran.

    Attributes:
        measurement: what :func:`autocomp.measure.measure` returned.
        node_id: the Ray node id it ran on, or None when measured in the calling process.
        started: ``time.time()`` when the timing began.
        finished: ``time.time()`` when it ended.
    """

    measurement: Measurement
    node_id: str | None
    started: float
    finished: float


class DeviceLost(AutocompError):
    """The Ray node holding the profile's device left the cluster."""


def import_ray() -> Any:
    # an embedded Ray on loopback; read when Ray is first imported (the command line sets it before autocomp.search
    # imports Ray), so from Python it holds where Ray is imported here first
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    return ray


def require_resource(profile: HardwareProfile, *, source: str | Path) -> None:
    """Check, before any trial starts, that some node of the connected Ray cluster holds the profile's device.

    Raises:
        AutocompError: no node declares a whole unit of ``profile.ray_resource``; names the resource, the profile
            file and how to fix it.
    """
    if profile.ray_resource is None:
        return
    ray = import_ray()
    available = ray.cluster_resources()
    name = profile.ray_resource
    if available.get(name, 0) >= 1:
        return
    declared = sorted(k for k in available if k not in ("CPU", "GPU", "memory", "object_store_memory")
                      and not k.startswith("node:") and not k.startswith("accelerator_type:"))
    raise AutocompError(
        f"hardware profile {source} measures on the Ray resource {name!r}, but no node of the Ray cluster has it "
        f"(custom resources there: {declared or 'none'}); start the device's node with "
        f"ray start --address=HEAD --num-cpus=0 --resources='{{\"{name}\": 1}}' and pass --ray-address, "
        "or set ray_resource: null in the profile to measure where each trial runs")


def require_device(profile: HardwareProfile, *, source: str | Path) -> str:
    """Check, before any trial starts, that the profile's backend can run where its measurements are placed: here,
    or on the Ray node holding ``ray_resource`` (Ray initialized); returns the backend's description there.

    Raises:
        AutocompError: no node holds the resource, or the backend's runtime or device is missing where it must run
            (names the profile file and the fix).
    """
    if profile.ray_resource is None:
        return require_backend(profile, source=source)
    require_resource(profile, source=source)
    ray = import_ray()
    task = ray.remote(max_retries=0)(require_backend).options(num_cpus=0, resources={profile.ray_resource: 1},
                                                              scheduling_strategy="DEFAULT")
    try:
        return ray.get(task.remote(profile, source=str(source)))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, AutocompError):
            raise AutocompError(f"{cause} (on the Ray node holding {profile.ray_resource!r})") from None
        raise


def measure_on_device(model: nn.Module, profile: HardwareProfile, *, example: torch.Tensor,
                      reference: nn.Module | None = None, timeout_s: float | None = None,
                      check: torch.Tensor | None = None, keep: Path | None = None, cached: bool = False) -> Placed:
    """:func:`autocomp.measure.measure`, run where the profile's device is.

    Without ``profile.ray_resource`` it runs in the calling process; with it, as a Ray task holding one unit of the
    resource (Ray must be initialized), which the caller waits for (the time it queues behind other measurements
    for the device included).

    Raises:
        autocomp._timeout.TimedOut: past ``timeout_s`` (``measure_timeout_s``), or past an outer time limit.
        DeviceLost: the node holding ``profile.ray_resource`` left the cluster.
    """
    with time_limit(timeout_s, setting="measure_timeout_s"):
        if profile.ray_resource is None:
            return _measure(model, profile, example, reference, check, keep, cached, node_id=None)
        # "DEFAULT" leaves the trial's placement group (Tune captures child tasks into it, and its bundles hold no
        # device) for the cluster's own scheduler, which finds the node with the resource
        task = _remote_measure().options(num_cpus=0, resources={profile.ray_resource: 1},
                                         scheduling_strategy="DEFAULT")
        return _wait(task.remote(model, profile, example, reference, check, keep, cached), profile.ray_resource)


def _wait(ref: Any, resource: str) -> Placed:
    """The result of a remote measurement, polled so that a lost device or a time limit ends the wait."""
    ray = import_ray()
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=POLL_S)
            if ready:
                try:
                    return ray.get(ref)
                except ray.exceptions.RayError:
                    _check_device(resource)  # the node died under the task: say so
                    raise
            _check_device(resource)
            check_time()
    except BaseException:
        ray.cancel(ref, force=True)
        raise


def _check_device(resource: str) -> None:
    if import_ray().cluster_resources().get(resource, 0) < 1:
        raise DeviceLost(f"the Ray node holding the device resource {resource!r} left the cluster")


def _measure(model: nn.Module, profile: HardwareProfile, example: torch.Tensor, reference: nn.Module | None,
             check: torch.Tensor | None, keep: Path | None, cached: bool, *, node_id: str | None) -> Placed:
    started = time.time()
    measurement = measure(model, profile, example=example, reference=reference, check=check, keep=keep,
                          cached=cached)
    return Placed(measurement=measurement, node_id=node_id, started=started, finished=time.time())


@functools.cache
def _remote_measure() -> Any:
    """The Ray task, created once per process (each creation would export the function again)."""
    ray = import_ray()

    @ray.remote(max_retries=0)
    def measure_task(model: nn.Module, profile: HardwareProfile, example: torch.Tensor,
                     reference: nn.Module | None, check: torch.Tensor | None, keep: Path | None,
                     cached: bool) -> Placed:
        return _measure(model, profile, example, reference, check, keep, cached,
                        node_id=ray.get_runtime_context().get_node_id())

    return measure_task
