"""Run a search job: measure the uncompressed model, then let Ray Tune execute the trials that Optuna asks for,
writing results after every trial."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
import yaml
from torch import nn

from autocomp.config import JobConfig
from autocomp.data import load_splits
from autocomp.errors import AutocompError
from autocomp.hardware import load_profile
from autocomp.measure import measure
from autocomp.models import create_model, vit_blocks
from autocomp.results import STUDY_NAME, study_storage, trial_rows, write_results
from autocomp.search.controller import DIRECTIONS, OptunaController
from autocomp.search.objective import TrialInputs, distill_subset, metrics_of, run_trial
from autocomp.search.space import load_space
from autocomp.search import finish
from autocomp.train import evaluate

__all__ = ["run_search"]


def run_search(config: JobConfig, run_dir: str | Path, *, ray_address: str | None = None,
               log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Search compressed variants of ``config.model`` within ``config.budget``; returns the summary.

    Results land in ``run_dir`` as trials finish. Running again on the same ``run_dir`` resumes the study: only the
    trials still missing are run.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    profile = load_profile(config.hardware)
    space = load_space(config.search_space)
    splits = load_splits(config.data)
    base = config.model.eval() if isinstance(config.model, nn.Module) else create_model(config.model)
    heads = [block.attn.num_heads for block in vit_blocks(base)]
    log(f"base model {getattr(config.model, 'name', type(base).__name__)}: {len(heads)} blocks, heads {heads}")

    job, fingerprint = _job_identity(config, base)
    previous = _previous_run(run_dir, fingerprint)
    if previous is not None:  # resuming: keep the limits the earlier trials were judged by
        baseline, limits = previous["baseline"], previous["limits"]
    else:
        baseline_measurement = measure(base, profile, example=splits.calib.x)
        baseline = {"val_accuracy": evaluate(base, splits.val), "test_accuracy": evaluate(base, splits.test),
                    **metrics_of(baseline_measurement, baseline_measurement.latency_ms)}
        limits = config.budget.limits(baseline["latency_ms"], baseline["memory_mb"])
        _write_run_info(run_dir, config, base, job, fingerprint, baseline, limits)
    log(f"uncompressed: val {baseline['val_accuracy']:.2f}%  latency {baseline['latency_ms']:.2f} ms  "
        f"memory {baseline['memory_mb']:.2f} MB;  budget: {config.budget.describe()} -> "
        + ", ".join(f"{k} <= {v:.3g}" for k, v in limits.items()))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(run_dir), load_if_exists=True,
                                directions=list(DIRECTIONS),
                                sampler=optuna.samplers.TPESampler(seed=config.seed, multivariate=True,
                                                                   n_startup_trials=min(10, config.trials)))
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    remaining = max(0, config.trials - done)
    if done:
        log(f"resuming: {done} trials already in {run_dir / 'study.db'}, {remaining} to run")

    inputs = TrialInputs(base=base, val=splits.val, calib=splits.calib.x, train=distill_subset(splits.train),
                         profile=profile, limits=limits, base_latency_ms=baseline["latency_ms"])
    display = _Progress(total=config.trials, done=done, enabled=progress)

    def on_told(_trial: optuna.trial.FrozenTrial) -> None:
        rows = trial_rows(study, list(limits))
        write_results(run_dir, rows, limits)
        display.update(rows)

    if remaining:
        controller = OptunaController(study=study, space=space, heads_per_block=heads, n_trials=remaining,
                                      on_told=on_told)
        started = time.perf_counter()
        with display:
            _run_with_ray(controller, inputs, run_dir, trials=remaining, workers=config.workers,
                          ray_address=ray_address)
        log(f"{remaining} trials in {time.perf_counter() - started:.0f} s")
    return finish.finalize(run_dir, study, config=config, splits=splits, base=base, baseline=baseline,
                           limits=limits, log=log)


def _run_with_ray(controller: OptunaController, inputs: TrialInputs, run_dir: Path, *, trials: int, workers: int,
                  ray_address: str | None) -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep an embedded Ray on loopback
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    started_here = not ray.is_initialized()
    if started_here:
        try:
            if ray_address:
                ray.init(address=ray_address, log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR")
        except ConnectionError as exc:
            raise AutocompError(f"cannot join the Ray cluster at {ray_address!r}: {exc}; check the address "
                                "(ray status shows it) or omit --ray-address for an embedded local Ray") from None

    def trainable(config: dict[str, Any], inputs: TrialInputs) -> None:
        import torch

        torch.set_num_threads(1)
        tune.report(run_trial(config["recipe"], inputs))

    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, inputs=inputs), {"cpu": 1}),
            tune_config=tune.TuneConfig(search_alg=controller, num_samples=trials, max_concurrent_trials=workers,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name="tune", storage_path=str((run_dir / "ray").resolve()), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        tuner.fit()
    finally:
        if started_here:
            ray.shutdown()


def _job_identity(config: JobConfig, base: nn.Module) -> tuple[dict[str, Any], str]:
    """The job as written to config.yaml, and a fingerprint of everything that decides a trial's result."""
    if isinstance(config.model, nn.Module):
        model: dict[str, Any] = {"module": "base.pt"}
        identity = hashlib.sha256(b"".join(v.numpy().tobytes() for v in base.state_dict().values())).hexdigest()
    else:
        model = config.model.to_dict()
        identity = json.dumps(model, sort_keys=True)
    job = {"model": model, "data": vars(config.data).copy(), "search_space": str(config.search_space),
           "hardware": str(config.hardware), "budget": {k: v for k, v in vars(config.budget).items() if v is not None}}
    parts = [identity, job, Path(config.search_space).read_text(), Path(config.hardware).read_text()]
    return job, hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _previous_run(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The run.json of an earlier search of the same job in ``run_dir``; a different job there is refused."""
    info, study = run_dir / "run.json", run_dir / "study.db"
    if not (info.is_file() and study.is_file()):
        return None
    previous = json.loads(info.read_text())
    if previous.get("fingerprint") != fingerprint:
        raise AutocompError(f"{run_dir} holds a search of a different job (model, data, search space, hardware "
                            "or budget changed); use a new --out folder or delete this one")
    return previous


def _write_run_info(run_dir: Path, config: JobConfig, base: nn.Module, job: dict[str, Any], fingerprint: str,
                    baseline: dict, limits: dict) -> None:
    """run.json (fingerprint, baseline, limits), config.yaml (the job with resolved paths) and, for a model given
    as an nn.Module, base.pt: what export and resume need."""
    if isinstance(config.model, nn.Module):
        torch.save(base, run_dir / "base.pt")
    (run_dir / "run.json").write_text(json.dumps({"fingerprint": fingerprint, "baseline": baseline,
                                                  "limits": limits}, indent=2))
    data = {**job, "trials": config.trials, "workers": config.workers, "seed": config.seed}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    if config.source and config.source.resolve() != (run_dir / "config.yaml").resolve():
        shutil.copyfile(config.source, run_dir / "config.source.yaml")


class _Progress:
    """A live line: trials done of total, how many within budget, best accuracy within budget."""

    def __init__(self, *, total: int, done: int, enabled: bool) -> None:
        import sys

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._total = total
        self._lines = enabled and not sys.stdout.isatty()  # plain lines in logs and CI, a live bar in a terminal
        enabled = enabled and not self._lines
        self._progress = Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), disable=not enabled)
        self._task = self._progress.add_task("search", total=total, completed=done, status="")

    def __enter__(self) -> _Progress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def update(self, rows: list) -> None:
        finished = [r for r in rows if r.state in ("COMPLETE", "FAIL")]
        feasible = [r for r in rows if r.feasible]
        best = max((r.accuracy for r in feasible), default=None)
        status = f"within budget {len(feasible)}" + (f", best {best:.2f}%" if best is not None else "")
        self._progress.update(self._task, completed=len(finished), status=status)
        if self._lines:
            print(f"search {len(finished)}/{self._total}  {status}", flush=True)
