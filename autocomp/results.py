"""Results of a search, always on disk: trials.csv, pareto.json, pareto.png (summary.json is written by the search's
end, models by :mod:`autocomp.saving`).

A trial the cost model skipped (predicted far over budget) is a row with state PRUNED and its ``skipped_reason``;
every trial carries its predicted latency and memory next to the measured ones.

Every file is derived from the Optuna study in RUN_DIR/study.journal, so they can be rewritten at any time (after
each trial, at the end, or after a crash) and agree with each other.

The study is kept in Optuna's journal storage: each change (a parameter drawn, a user attr, a result told) is one line
appended to the file, where SQLite took a transaction; a trial makes some 80 changes, and the driver spent 27 ms per
trial on them against 177 ms in SQLite (``benchmarks/study_storage.py``). Run folders from before the journal hold
``study.db`` (SQLite), and are read and resumed in that format.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna

from autocomp._io import write_json
from autocomp.budget import feasible

__all__ = ["TrialRow", "trial_rows", "pareto_front", "write_results", "closest_trial", "best_feasible",
           "ranked_feasible", "STUDY_NAME", "study_file", "study_storage", "load_run_study", "read_trials"]

STUDY_NAME = "autocomp"
SECONDS = tuple(f"seconds_{p}" for p in ("compress", "measure", "distill", "evaluate", "engine"))


@dataclass(frozen=True)
class TrialRow:
    """One trial as the results report it."""

    number: int
    state: str
    recipe_summary: str
    recipe: Mapping[str, Any]
    accuracy: float | None
    latency_ms: float | None
    memory_mb: float | None
    latency_ratio: float | None
    weights_mb: float | None
    activations_mb: float | None
    simulated_layers: int | None
    violations: Mapping[str, float]
    predicted_latency_ms: float | None = None
    predicted_memory_mb: float | None = None
    skipped_reason: str | None = None
    trial_seconds: float | None = None
    int8_activations: str | None = None
    distilled: bool | None = None
    error: str | None = None
    node: str | None = None  # the Ray node id the trial ran on
    start_point: str | None = None  # a known-good recipe the search started from: which
    local_move: str | None = None  # a local move from the best trial within budget: from which, what it changes
    duplicate_of: int | None = None  # a proposal not run (PRUNED): the trial that has its recipe
    retry_of: int | None = None  # a recipe run again: the trial that failed or was interrupted with it
    runtime: str | None = None  # the backend that measured it, its version, device and options
    export_top1: float | None = None  # a runtime backend's export against PyTorch: top-1 agreement on validation
    export_max_logit_diff: float | None = None  # ... and the largest logit difference
    seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)  # compress, measure, ..., engine
    fidelity: str | None = None  # "short": stopped after a short distillation, scored on a validation subset
    short_accuracy: float | None = None  # the short score of a trial that had one (stopped or not)
    saved_seconds: float | None = None  # a stopped trial: what finishing it would have cost (estimated)
    paused_seconds: float | None = None  # of its phases' time: waiting for quiet timing (None: off)
    measurement_of: int | None = None  # the earlier trial of the same compression whose measurement it reused

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE"

    @property
    def final(self) -> bool:
        """Complete, with its accuracy after its full distillation on all of validation (not stopped early)."""
        return self.complete and self.fidelity != "short"

    @property
    def feasible(self) -> bool:
        return self.complete and feasible(self.violations)

    @property
    def interrupted(self) -> bool:
        """Failed only as the search stopped (Ctrl-C, a kill) while it ran: not the recipe's failure, and run again."""
        return self.state == "FAIL" and self.error == INTERRUPTED

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, "recipe_summary": self.recipe_summary,
                "accuracy": self.accuracy, "latency_ms": self.latency_ms, "memory_mb": self.memory_mb,
                "latency_ratio": self.latency_ratio, "weights_mb": self.weights_mb,
                "activations_mb": self.activations_mb, "simulated_layers": self.simulated_layers,
                "int8_activations": self.int8_activations, "distilled": self.distilled, "error": self.error,
                "node": self.node, "start_point": self.start_point, "local_move": self.local_move,
                "duplicate_of": self.duplicate_of, "retry_of": self.retry_of, "runtime": self.runtime,
                "export_top1": self.export_top1, "export_max_logit_diff": self.export_max_logit_diff,
                "fidelity": self.fidelity, "short_accuracy": self.short_accuracy,
                "saved_seconds": self.saved_seconds, "paused_seconds": self.paused_seconds,
                "measurement_of": self.measurement_of,
                **{f"seconds_{k}": v for k, v in self.seconds.items()}, "feasible": self.feasible,
                "predicted_latency_ms": self.predicted_latency_ms,
                "predicted_memory_mb": self.predicted_memory_mb, "skipped_reason": self.skipped_reason,
                "trial_seconds": self.trial_seconds,
                "violations": dict(self.violations), "recipe": dict(self.recipe)}


JOURNAL, SQLITE = "study.journal", "study.db"


def study_file(run_dir: Path) -> Path:
    """The file that holds a run folder's study: ``study.journal``, or ``study.db`` in a folder made before the
    journal (SQLite). It may not exist yet."""
    run_dir = Path(run_dir).resolve()
    return run_dir / SQLITE if (run_dir / SQLITE).is_file() else run_dir / JOURNAL


def study_storage(run_dir: Path, *, writer: bool = False) -> optuna.storages.BaseStorage | str:
    """The Optuna storage of a run folder's study (the journal file is created if missing).

    ``writer``: the caller is the search that will append to it (one at a time per folder). A search killed while
    it appended leaves a partial last line, which the next append would join into one unreadable line; the writer
    drops it first. Readers (export, a dashboard, another process watching a running search) skip it.
    """
    path = study_file(run_dir)
    if path.name == SQLITE:
        return f"sqlite:///{path}"
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if writer and path.is_file():
        _drop_partial_line(path)
    return JournalStorage(JournalFileBackend(str(path)))


def _drop_partial_line(path: Path) -> None:
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)


def load_run_study(run_dir: Path) -> optuna.Study:
    """The study of a run folder (which must hold one)."""
    return optuna.load_study(study_name=STUDY_NAME, storage=study_storage(run_dir))


def read_trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials of a run folder's study, read while a search may be writing it; [] before the study exists."""
    if not study_file(run_dir).is_file():
        return []
    try:
        return load_run_study(run_dir).get_trials(deepcopy=False)
    except KeyError:  # the file exists, the study is not created in it yet
        return []


def trial_rows(study: optuna.Study, limit_keys: Sequence[str]) -> list[TrialRow]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        values = trial.values if trial.state == optuna.trial.TrialState.COMPLETE else None
        violations = {key: trial.system_attrs.get(f"constraints:{key}") for key in limit_keys}  # set_constraint
        rows.append(TrialRow(
            number=trial.number, state=trial.state.name, recipe_summary=trial.user_attrs.get("recipe_summary", ""),
            recipe=trial.user_attrs.get("recipe", {}), accuracy=values[0] if values else None,
            latency_ms=values[1] if values else None, memory_mb=values[2] if values else None,
            latency_ratio=trial.user_attrs.get("latency_ratio"), weights_mb=trial.user_attrs.get("weights_mb"),
            activations_mb=trial.user_attrs.get("activations_mb"),
            simulated_layers=trial.user_attrs.get("simulated_layers"),
            int8_activations=trial.user_attrs.get("int8_activations"), distilled=trial.user_attrs.get("distilled"),
            error=trial_error(trial), node=trial.user_attrs.get("node"),
            start_point=trial.user_attrs.get("start_point"),
            local_move=trial.user_attrs.get("local_move"), duplicate_of=trial.user_attrs.get("duplicate_of"),
            retry_of=trial.user_attrs.get("retry_of"),
            runtime=trial.user_attrs.get("runtime"), export_top1=trial.user_attrs.get("export_top1"),
            export_max_logit_diff=trial.user_attrs.get("export_max_logit_diff"),
            seconds={key[len("seconds_"):] if key.startswith("seconds_") else "engine": value
                     for key, value in trial.user_attrs.items()
                     if key.startswith("seconds_") or key == "engine_seconds"},
            violations={k: v for k, v in violations.items() if v is not None},
            predicted_latency_ms=trial.user_attrs.get("predicted_latency_ms"),
            predicted_memory_mb=trial.user_attrs.get("predicted_memory_mb"),
            skipped_reason=trial.user_attrs.get("skipped_reason"), trial_seconds=trial.user_attrs.get("trial_seconds"),
            fidelity=trial.user_attrs.get("fidelity"), short_accuracy=trial.user_attrs.get("short_accuracy"),
            saved_seconds=trial.user_attrs.get("saved_seconds"), paused_seconds=trial.user_attrs.get("paused_seconds"),
            measurement_of=trial.user_attrs.get("measurement_of")))
    return rows


def trial_error(trial: optuna.trial.FrozenTrial) -> str | None:
    """Why a trial failed: its reported error, or, for one that a stopped search left behind, that it was
    interrupted."""
    if "error" in trial.user_attrs:
        return trial.user_attrs["error"]
    if trial.state == optuna.trial.TrialState.FAIL:
        return INTERRUPTED
    return None


INTERRUPTED = "interrupted: the search stopped while it ran (its recipe runs again on resume)"


def _dominates(a: TrialRow, b: TrialRow) -> bool:
    no_worse = a.accuracy >= b.accuracy and a.latency_ms <= b.latency_ms and a.memory_mb <= b.memory_mb
    better = a.accuracy > b.accuracy or a.latency_ms < b.latency_ms or a.memory_mb < b.memory_mb
    return no_worse and better


def pareto_front(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """Non-dominated complete trials (accuracy up, latency down, memory down), by latency; trials stopped early
    (short scores, not comparable) are left out."""
    done = [r for r in rows if r.final]
    front = [r for r in done if not any(_dominates(o, r) for o in done)]
    return sorted(front, key=lambda r: (r.latency_ms, -r.accuracy))


def ranked_feasible(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """The trials within budget scored in full (not stopped early), most accurate first (ties: the faster, then the
    smaller)."""
    return sorted((r for r in rows if r.feasible and r.final), key=lambda r: (-r.accuracy, r.latency_ms, r.memory_mb))


def best_feasible(rows: Sequence[TrialRow]) -> TrialRow | None:
    """The most accurate trial within budget (ties: the faster, then the smaller)."""
    ranked = ranked_feasible(rows)
    return ranked[0] if ranked else None


def closest_trial(rows: Sequence[TrialRow]) -> TrialRow | None:
    """The complete trial whose worst budget violation is smallest."""
    done = [r for r in rows if r.complete]
    return min(done, key=lambda r: max(r.violations.values(), default=0.0)) if done else None


def write_results(run_dir: Path, rows: Sequence[TrialRow], limits: Mapping[str, float], *,
                  plot: bool = True, baseline: Mapping[str, Any] | None = None) -> list[TrialRow]:
    """Write trials.csv, pareto.json and (``plot``) pareto.png, with the uncompressed model (``baseline``: its
    ``val_accuracy``, ``latency_ms``, ``memory_mb``) marked where given; returns the front."""
    run_dir = Path(run_dir)
    columns = ["number", "state", "recipe_summary", "accuracy", "latency_ms", "memory_mb", "feasible",
               "predicted_latency_ms", "predicted_memory_mb", "latency_ratio", "weights_mb", "activations_mb",
               "simulated_layers", "int8_activations", "distilled", "trial_seconds", *SECONDS, "paused_seconds",
               "skipped_reason",
               "fidelity", "short_accuracy", "saved_seconds", "export_top1", "export_max_logit_diff", "error", "node",
               "start_point", "local_move", "duplicate_of", "retry_of", "measurement_of", "runtime"]
    tmp = run_dir / "trials.csv.tmp"
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.as_dict().items()})
    tmp.replace(run_dir / "trials.csv")
    front = pareto_front(rows)
    write_json(run_dir / "pareto.json", {"limits": dict(limits), "trials": [r.as_dict() for r in front]})
    if plot and any(r.complete for r in rows):  # with no front too: where the candidates fell against the budget
        plot_front(run_dir / "pareto.png", rows, front, limits, baseline=baseline)
    return front


UNITS = {"latency_ms": "ms", "memory_mb": "MB", "weights_mb": "MB"}  # each limit's unit


def plot_front(path: Path, rows: Sequence[TrialRow], front: Sequence[TrialRow], limits: Mapping[str, float], *,
               baseline: Mapping[str, Any] | None = None) -> None:
    """pareto.png: :func:`front_figure`, saved."""
    import matplotlib.pyplot as plt

    fig = front_figure(rows, front, limits, baseline=baseline)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def front_figure(rows: Sequence[TrialRow], front: Sequence[TrialRow], limits: Mapping[str, float], *,
                 baseline: Mapping[str, Any] | None = None) -> Any:
    """Every complete trial's validation accuracy against its latency and its memory (and, under a limit on them,
    its weights), the front circled, each limit a dashed line and the uncompressed model (``baseline``) a star;
    returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.complete]
    panels = [("latency_ms", "latency (ms)"), ("memory_mb", "memory (MB)")]
    panels += [("weights_mb", "weights (MB)")] if "weights_mb" in limits else []
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for axis, (key, label) in zip(axes, panels):
        feasible = [r for r in done if r.feasible and r.final]
        short = [r for r in done if r.feasible and not r.final]
        other = [r for r in done if not r.feasible]
        if other:
            axis.scatter([getattr(r, key) for r in other], [r.accuracy for r in other], c="0.7", s=18,
                         label="over budget")
        if short:
            axis.scatter([getattr(r, key) for r in short], [r.accuracy for r in short], c="lightsteelblue", s=18,
                         label="within budget, stopped early (short score)")
        if feasible:
            axis.scatter([getattr(r, key) for r in feasible], [r.accuracy for r in feasible], c="tab:blue", s=18,
                         label="within budget")
        if front:
            ordered = sorted(front, key=lambda r: getattr(r, key))
            axis.plot([getattr(r, key) for r in ordered], [r.accuracy for r in ordered], "o", mfc="none",
                      mec="tab:red", ms=9, label="Pareto front (3 objectives)")
        if key in limits:
            axis.axvline(limits[key], color="tab:red", ls="--", lw=1,
                         label=f"budget {limits[key]:.3g} {UNITS[key]}")
        if baseline is not None and baseline.get(key) is not None and baseline.get("val_accuracy") is not None:
            axis.plot([baseline[key]], [baseline["val_accuracy"]], "*", color="black", ms=11,
                      label=f"uncompressed ({baseline['val_accuracy']:.2f}%, {baseline[key]:.3g} {UNITS[key]})")
        axis.set_ylim(top=min(axis.get_ylim()[1], 101.0))  # no room above 100%
        axis.set_xlabel(label)
        axis.set_ylabel("validation accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="best")  # where it hides the fewest points; each axis its own figures
    fig.tight_layout()
    return fig


def _fmt(value: Any) -> Any:
    return f"{value:.4f}" if isinstance(value, float) else value
