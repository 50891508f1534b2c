"""The trial loop starts the trials' Ray workers before the search is ready, and the trials then run on them."""

from __future__ import annotations

from typing import Any

import pytest
import ray
from ray.tune.search import Searcher

from autocomp.config import Resources
from autocomp.recipe import Recipe
from autocomp.search._loop import TrialLoop
from autocomp.search._objective import MEASURED
from autocomp.search._ray import trial_room
from test_search_objective import _inputs

UNCOMPRESSED, INT8 = Recipe.from_dict({"blocks": [{}, {}]}), Recipe.from_dict({"blocks": [{"quantize": {}}, {}]})


class _Controller:
    """Stands for the Optuna controller: hands out the given recipes, then finishes; keeps the results."""

    def __init__(self, recipes: list[Recipe], measured: dict[int, dict] | None = None) -> None:
        self._recipes, self.results, self.asked, self.told = list(recipes), [], [], {}
        self._measured = measured or {}  # the n-th recipe handed out reuses this measurement

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if not self._recipes:
            return Searcher.FINISHED
        self.asked.append(trial_id)
        config = {"trial_number": len(self.results), "recipe": self._recipes.pop(0).to_dict()}
        if len(self.asked) - 1 in self._measured:
            config["measured"] = self._measured[len(self.asked) - 1]
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.results.append(result)
        self.told[trial_id] = result


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


def test_the_workers_start_before_the_search_is_ready_and_its_trials_run_on_them(local_ray, tiny_teacher,
                                                                                digits_splits, tmp_path):
    inputs = _inputs(tiny_teacher[1], digits_splits)
    hooks = len(ray._private.worker._post_init_hooks)
    with TrialLoop(inputs, tmp_path, trials=4, workers=2, resources=Resources(cpu=1)) as loop:
        assert [name for name in ray.util.list_named_actors() if name.startswith("autocomp-gate-")]
        loop.wait_for_workers(timeout_s=300)
        started = loop.workers()
        assert len(set(started)) == 2 and not loop.done  # two workers up, and no trial asked for yet
        placeholders = set(loop._searcher._waiting)
        reused = {**dict.fromkeys(MEASURED, None), "trial": 1, "latency_ms": 123.0, "memory_mb": 45.0,
                  "runtime": "an earlier trial's"}
        controller = _Controller([UNCOMPRESSED, INT8, UNCOMPRESSED, INT8], measured={3: reused})
        loop.run(controller)
    assert loop.done and len(controller.results) == 4
    # the Ray (the caller's: it stays up) holds nothing of the loop: its gate ended, and the inputs the gate held
    # with it; tune.with_parameters, which the trials got them from before, had Ray keep its objects (an idle gate
    # process, and the model and data in the object store: on a caller's Ray, every search's) for the life of the
    # process, and registered a hook to keep them by (its hooks grew by one each search)
    assert not [name for name in ray.util.list_named_actors() if name.startswith("autocomp-gate-")]
    assert len(ray._private.worker._post_init_hooks) == hooks
    # the trial handed an earlier one's measurement reports it instead of measuring (no export or timing)
    again = [result for result in controller.results if result["measurement_of"] is not None]
    assert len(again) == 1 and again[0]["measurement_of"] == 1 and again[0]["seconds_measure"] == 0.0
    assert (again[0]["latency_ms"], again[0]["memory_mb"], again[0]["runtime"]) == (123.0, 45.0, "an earlier trial's")
    assert all("accuracy" in result for result in controller.results)  # real trials, the placeholders left out
    assert {result["pid"] for result in controller.results} <= set(started)  # no worker started for them
    # the placeholders ran the first two trials, one in each worker they started (a placeholder that ended instead
    # left its worker to Tune's cache, which may stop it: then no trial ran on a second Ray node, see _loop)
    assert set(controller.asked[:2]) == placeholders
    assert {controller.told[trial_id]["pid"] for trial_id in placeholders} == set(started)


def test_a_search_that_fails_before_its_trials_ends_the_loop(local_ray, tiny_teacher, digits_splits, tmp_path):
    inputs = _inputs(tiny_teacher[1], digits_splits)
    with pytest.raises(RuntimeError, match="the sensitivity pass failed"):
        with TrialLoop(inputs, tmp_path, trials=4, workers=2, resources=Resources(cpu=1)) as loop:
            raise RuntimeError("the sensitivity pass failed")
    assert loop.done  # Tune's thread has ended: no worker is left waiting at the gate


def test_a_loop_left_with_its_trials_unrun_and_no_error_ends_tunes_thread_too(local_ray, tiny_teacher, digits_splits,
                                                                              tmp_path):
    """A block that leaves the loop without running its trials, and without an error (the search returned early):
    Tune was left running, its thread outlived the search's Ray, and a Ray call of it started a new Ray (below)."""
    inputs = _inputs(tiny_teacher[1], digits_splits)
    with TrialLoop(inputs, tmp_path, trials=4, workers=2, resources=Resources(cpu=1)) as loop:
        pass
    assert loop.done


def test_no_ray_is_started_by_a_thread_that_calls_ray_once_the_searchs_ray_is_down():
    """Ray ties the processes of a Ray started by a thread to that thread (PR_SET_PDEATHSIG): Tune's thread, calling
    Ray as the search's Ray shut down, started one that died with the thread, and the next search in the process
    took that dead Ray for the caller's (Ray ended the process a minute later). In the block, Ray's calls raise."""
    import threading

    from autocomp.search._ray import no_new_ray

    assert not ray.is_initialized()
    caught: list[BaseException] = []

    def tune_after_shutdown() -> None:
        with no_new_ray():
            try:
                ray.put(1)
            except Exception as exc:  # noqa: BLE001 - what Ray raises is its own
                caught.append(exc)
    thread = threading.Thread(target=tune_after_shutdown)
    thread.start()
    thread.join()
    assert caught and not ray.is_initialized()
    from ray._private import auto_init_hook
    assert auto_init_hook.enable_auto_connect  # as it was before the block (the test's process leaves it on)


def test_the_loop_awaits_only_the_workers_the_cluster_has_room_for(local_ray):
    # two CPUs and no GPU: a placeholder the cluster cannot hold would keep the latency pass waiting for nothing
    assert [trial_room(Resources(cpu=cpu)) for cpu in (1, 2, 3)] == [2, 1, 0]
    assert trial_room(Resources(cpu=1, gpu=1)) == 0


def test_the_gate_reaches_its_actor_by_value_without_autocomps_imports():
    """Ray sends the gate's class itself, not the name of its module: importing autocomp.search._loop (torch, timm,
    Ray Tune, Optuna) in the gate's process cost seconds of CPU in every search."""
    import subprocess
    import sys

    from ray import cloudpickle

    from autocomp.search._loop import _gate_class

    code = ("import pickle, sys; gate = pickle.loads(sys.stdin.buffer.read())([]); "
            "print(sorted(m for m in ('torch', 'timm', 'autocomp', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], input=cloudpickle.dumps(_gate_class()), capture_output=True,
                         check=True)
    assert out.stdout.decode().strip() == "[]"


def test_a_trial_engine_that_ends_before_the_trials_did_is_a_stopped_search_not_a_finished_one(
        tmp_path, tiny_teacher, monkeypatch, capsys):
    """Ray Tune returning with trials still to run and no error (its processes interrupted, the driver not) was
    reported as a finished search of fewer trials; it is a stopped one, to resume."""
    from autocomp.cli import main
    from test_search_e2e import write_job

    monkeypatch.setattr(TrialLoop, "run", lambda self, controller: None)  # Tune ran nothing and returned
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=2, workers=1)
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "search stopped: Ray Tune ended with 2 trial(s) not run or not finished, without an error" in err
    assert "run the same command again to resume" in err and not (tmp_path / "run" / "summary.json").exists()
