"""The trial loop: Ray Tune runs the trials the controller asks for, on Ray workers started ahead of time.

A fresh Ray worker takes seconds before its first trial: a new process imports torch, timm and autocomp, then
receives the model and the data. Started with the first trial, that time is lost to every worker of every search
(most of a short search's overhead). So the loop starts before the sensitivity pass: Tune runs in a thread of the
driver, and its first trials are placeholders, one per worker, that start the workers and wait at a gate. When the
search is ready (:meth:`TrialLoop.run`), the gate opens and hands each placeholder the controller's next trial,
which it runs in the worker it started. Later trials reuse the workers (Tune's ``reuse_actors``).

A placeholder that ended at the gate instead would leave its worker to Tune's actor cache, which stops a worker no
trial is waiting for at that moment; the next trial then starts a fresh one, and gives it up again when a busy worker
frees first (Tune prefers a started worker). Trials shorter than a worker's start then never ran on a second Ray node
(seen in the cluster test: 16 trials of 2 s, all on the head node). For the same reason the gate opens only once
every worker has started (at most :meth:`TrialLoop.wait_for_workers`' wait).

While the loop runs, Ray Tune logs nothing below CRITICAL, on the embedded Ray and on one the caller initialized:
its warnings concern what autocomp turned off or does itself (it found no result files, it does not save the
searcher: the Optuna journal is what resumes), and its errors are trials that failed (a traceback for a worker lost
with its node, "Trials did not complete"), which the search says itself, one line each, with the reason in
trials.csv; Tune keeps each trial's error in the run folder's ``ray/``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from ray.tune import Stopper
from ray.tune.search import Searcher

from autocomp._signals import raise_pending
from autocomp.config import Resources
from autocomp.search._controller import OptunaController
from autocomp.search._fidelity import FrontRule, FrontScheduler
from autocomp.search._objective import ERROR, STOP, TrialInputs, run_trial
from autocomp.search._ray import no_new_ray, ray_gone, search_ending, trial_room

__all__ = ["TrialLoop"]

PLACEHOLDER = "placeholder"  # config key of the trials that start a worker and wait at the gate
STOP_WAIT_S = 60  # a search that fails or is interrupted waits this long at most for Tune to stop its trials


def _gate_class() -> type:
    """The class of the gate: a Ray actor the placeholder trials wait at (and count themselves in) until the search
    is ready; it then hands each its first real trial (by Tune trial id), if there is one. It holds the reference to
    the trials' inputs too, which the trials fetch from it (:func:`_open`).

    The trials find it by its name (:func:`_trainable`), and nothing of Ray's travels inside Tune's trainable: an
    object reference or actor handle given to ``tune.with_parameters`` (or captured by the trainable) is pickled
    into Tune's registry of trainables, and Ray then keeps that object for the life of the driver's process. On a
    Ray the caller initialized, which stays up after the search, each search left its inputs (the model and the
    data) in the object store and an idle gate process of 126 MB.

    It is made in a function so that Ray sends the class itself to the actor's process (a class it cannot import by
    name is pickled by value) instead of this module's name: importing this module there (torch, timm, Ray Tune,
    Optuna) cost the gate's process 6 s of CPU in every search, beside the trial workers' start on two cores."""

    class Gate:
        def __init__(self, inputs: list[Any]) -> None:
            import asyncio

            self._open, self._parked, self._first = asyncio.Event(), [], {}
            self._inputs = inputs  # [reference]: in a list, Ray hands it over as it is, unfetched

        async def inputs(self) -> list[Any]:
            return self._inputs

        async def park(self, pid: int, trial_id: str) -> dict[str, Any] | None:
            self._parked.append(pid)
            await self._open.wait()
            return self._first.get(trial_id)

        async def parked(self) -> list[int]:
            return self._parked

        async def open(self, first: dict[str, dict[str, Any]]) -> None:
            self._first = first
            self._open.set()

    return Gate


class _Gated(Searcher):
    """Hands Tune the placeholder trials first, then nothing until the controller is set, then the controller's
    trials. Placeholders handed a real trial (:meth:`hand_over`) are the controller's; the ends of the others are
    not its business. Tune calls from its own thread: the lock keeps the controller to one caller at a time."""

    def __init__(self, placeholders: int) -> None:
        super().__init__()
        self._placeholders, self._waiting = placeholders, set()
        self._lock = threading.Lock()
        self.controller: OptunaController | None = None
        self.finished = False

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its searcher into its checkpoint: not the lock
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        with self._lock:
            if self.finished:
                return Searcher.FINISHED
            if self._placeholders > 0:
                self._placeholders -= 1
                self._waiting.add(trial_id)
                return {PLACEHOLDER: True}
            return None if self.controller is None else self.controller.suggest(trial_id)

    def hand_over(self, controller: OptunaController) -> dict[str, dict[str, Any]]:
        """Set the controller, and ask it for a trial for each placeholder still waiting: {Tune trial id: config}."""
        with self._lock:
            self.controller, first = controller, {}
            for trial_id in sorted(self._waiting):
                config = controller.suggest(trial_id)
                if not isinstance(config, dict):  # nothing more to run
                    break
                first[trial_id] = config
                self._waiting.discard(trial_id)
            return first

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        with self._lock:
            if trial_id in self._waiting:
                self._waiting.discard(trial_id)
            elif self.controller is not None:
                self.controller.on_trial_complete(trial_id, result, error)


class _StopAll(Stopper):
    """Tune's experiment-wide stop: once ``stopping`` is set, Tune stops every running trial at its next step (a
    tenth of a second), so that a search that fails or is interrupted ends its trials before Ray is shut down (a Tune
    thread still running then would start a Ray of its own in the driver)."""

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stopping


_OPENED: dict[str, TrialInputs] = {}  # per worker process: the inputs of the search it runs trials of


def _open(gate: Any, name: str) -> TrialInputs:
    """The trials' inputs, which travel to the workers as a reference the trial fetches itself from the gate (once
    per worker process), so that a worker that cannot import a class of the model's (a module found on the driver
    only) fails as the trial's error, which stops the search saying so, not as a worker that died without a word."""
    import ray

    if name not in _OPENED:
        _OPENED.clear()  # a worker process kept from an earlier search holds no other's inputs
        [reference] = ray.get(gate.inputs.remote())
        _OPENED[name] = ray.get(reference)
    return _OPENED[name]


def _trainable(config: dict[str, Any], gate_name: str, stops_early: bool) -> None:
    """One Tune trial: a placeholder waits at the gate, then runs the trial the gate hands it, if any; a real one
    runs its recipe. Each reports its result (first the short one, under multi-fidelity: a scheduler that stops the
    trial ends this thread in that report)."""
    import ray
    from ray import tune

    gate = ray.get_actor(gate_name)
    if config.get(PLACEHOLDER):
        config = ray.get(gate.park.remote(os.getpid(), tune.get_context().get_trial_id()))
        if config is None:
            tune.report({PLACEHOLDER: 1})
            return
    node = ray.get_runtime_context().get_node_id()
    try:
        inputs = _open(gate, gate_name)
    except Exception as exc:  # noqa: BLE001 - every trial on this worker would fail alike: the search stops
        said = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        fix = (": every module a class of the model comes from must be importable on every Ray node (installed "
               "there, or on its PYTHONPATH)" if "No module named" in said or "Can't get attribute" in said else "")
        tune.report({ERROR: f"a trial's Ray worker cannot load the model and data ({said}){fix}", STOP: True,
                     "node": node, "pid": os.getpid()})
        return
    torch.set_num_threads(inputs.threads)

    def short(result: dict[str, Any]) -> bool:
        tune.report({**result, "node": node, "pid": os.getpid()})
        return True

    try:
        result = run_trial(config["recipe"], inputs, number=config["trial_number"],
                           short=short if stops_early else None, measured=config.get("measured"))
    except Exception as exc:  # noqa: BLE001 - any crash becomes a failed trial with its reason, the search goes on
        result = {ERROR: f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")}
    tune.report({**result, "node": node, "pid": os.getpid()})


class TrialLoop:
    """Ray Tune's run of a search, started early on the Ray that is initialized (see
    :func:`autocomp.search._ray.ray_session`); use as a context manager.

    Args:
        inputs: what every trial needs (sent to the workers once, while they start).
        run_dir: the run folder (Tune's own records go to ``ray/`` in it).
        trials: room for this many real trials (retries and replacements included).
        workers: trials at once; as many placeholders start the workers.
        resources: CPUs and GPUs per trial.
        rule: the multi-fidelity rule, or None.
        log: hears that an interrupted search is stopping (it takes seconds: said at once, not at the end).
    """

    def __init__(self, inputs: TrialInputs, run_dir: Path, *, trials: int, workers: int, resources: Resources,
                 rule: FrontRule | None = None, log: Callable[[str], None] = print) -> None:
        self._log = log
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        self._tune_log, self._tune_level = logging.getLogger("ray.tune"), logging.getLogger("ray.tune").level
        self._tune_log.setLevel(max(logging.CRITICAL, self._tune_log.getEffectiveLevel()))  # the process's: Tune's
        try:  # warnings on the Tuner's making and run are silenced; restored on exit, or if the loop cannot start
            self._start(inputs, run_dir, trials=trials, workers=workers, resources=resources, rule=rule)
        except BaseException:
            self._tune_log.setLevel(self._tune_level)
            raise

    def _start(self, inputs: TrialInputs, run_dir: Path, *, trials: int, workers: int, resources: Resources,
               rule: FrontRule | None) -> None:
        import ray
        from ray import tune

        self._room = min(workers, trial_room(resources))  # the placeholders that can run at once
        # the trials fetch the inputs from the gate, found by its name: see _gate_class
        name, stops_early = f"autocomp-gate-{uuid.uuid4().hex}", rule is not None
        self._gate = ray.remote(num_cpus=0)(_gate_class()).options(name=name).remote([ray.put(inputs)])
        self._searcher, self._stopper = _Gated(workers), _StopAll()
        self._error: BaseException | None = None
        asked = {"cpu": resources.cpu, **({"gpu": resources.gpu} if resources.gpu else {})}

        def trainable(config: dict[str, Any]) -> None:
            _trainable(config, name, stops_early)
        tuner = tune.Tuner(
            tune.with_resources(trainable, asked),
            tune_config=tune.TuneConfig(search_alg=self._searcher, num_samples=trials + workers,
                                        max_concurrent_trials=workers, reuse_actors=True,
                                        scheduler=FrontScheduler(rule) if rule is not None else None),
            run_config=tune.RunConfig(name="tune", storage_path=str((Path(run_dir) / "ray").resolve()), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0), stop=self._stopper),
        )
        # Tune's end is an event, not the thread's join: on Python 3.11 a join interrupted by Ctrl-C marks the
        # thread as ended while it still runs (the bpo-45274 fix releases the lock the running thread holds)
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._fit, args=(tuner,), name="autocomp-tune", daemon=True)
        self._thread.start()

    def _fit(self, tuner: Any) -> None:
        try:
            with no_new_ray():  # Tune's calls once the search's Ray is shut down: see no_new_ray
                tuner.fit()
        except BaseException as exc:  # noqa: BLE001 - raised again in the driver's thread by run()
            self._error = exc
        finally:
            self._ended.set()

    def __enter__(self) -> TrialLoop:
        return self

    def __exit__(self, kind: type | None, *_: object) -> None:
        if not self.done:  # the search failed before or while running its trials, or left them unrun: Tune is
            # stopped before the search's Ray is shut down under it
            if kind is not None and issubclass(kind, KeyboardInterrupt):  # Ctrl-C or SIGTERM: the user waits for
                # the prompt
                self._log("stopping (a few seconds): any trial under way ends; every finished trial is kept")
            search_ending()  # a SIGTERM to the process group takes Ray down as well: not a `ray stop` to warn of
            self._searcher.finished = True
            self._stopper.stopping = True  # the running trials stop: an interrupted one runs again on resume
            try:
                self._open_gate()
            except Exception:  # noqa: BLE001 - Ray itself may be what failed: the search's own error is raised
                pass  # the stopper needs no gate: Tune still stops what runs
            deadline = time.monotonic() + STOP_WAIT_S
            # not where Ray went down (a SIGTERM to the search's process group): Tune would wait on it for a minute,
            # and Ray end this process first, before the search says what it kept
            while not self._ended.wait(timeout=0.5) and time.monotonic() < deadline and not ray_gone():
                pass
        self._release()
        self._tune_log.setLevel(self._tune_level)

    def _release(self) -> None:
        """End the gate, and with it the inputs it holds: a Ray the caller initialized stays up after the search."""
        import ray

        if ray.is_initialized() and not ray_gone():  # a Ray that went down would be waited on for a minute
            try:
                ray.kill(self._gate)
            except Exception:  # noqa: BLE001 - gone already, or Ray failing: nothing more to give back
                pass

    @property
    def done(self) -> bool:
        """Whether Tune's run has ended."""
        return self._ended.is_set()

    def workers(self) -> list[int]:
        """The process ids of the workers started so far (their placeholders wait at the gate)."""
        import ray

        return ray.get(self._gate.parked.remote())

    def wait_for_workers(self, timeout_s: float = 120.0) -> None:
        """Return once every placeholder the cluster has room for waits at the gate (its worker has started), or
        after ``timeout_s``: a worker that starts later would disturb latency measurements made on the driver
        meanwhile."""
        deadline = time.monotonic() + timeout_s
        while not self.done and time.monotonic() < deadline and len(self.workers()) < self._room:
            raise_pending()
            time.sleep(0.2)

    def run(self, controller: OptunaController) -> None:
        """Hand Tune the controller's trials (the first ones to the waiting placeholders, once every worker the
        cluster has room for has started: a placeholder still starting would lose its trial to the first worker
        free, as above) and wait until they are done."""
        self.wait_for_workers()
        self._open_gate(self._searcher.hand_over(controller))
        while not self._ended.wait(timeout=1.0):  # in steps: an interrupt sent to this thread is taken within a second
            raise_pending()  # and one Python dropped (it landed in a finalizer) is raised here
        if self._error is not None:
            raise self._error

    def _open_gate(self, first: dict[str, dict[str, Any]] | None = None) -> None:
        import ray

        ray.get(self._gate.open.remote(first or {}))
