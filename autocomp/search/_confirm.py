"""The best candidates measured again before the best is named: a single measurement at the budget's edge can be
luck. The second measurements are kept in the run folder (``remeasured.json``) for a rerun of it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from autocomp._compress import compress
from autocomp._io import write_json
from autocomp.budget import feasible as feasible_metrics
from autocomp.budget import violations
from autocomp.hardware import HardwareProfile
from autocomp.measure.backends import holds_export
from autocomp.measure.placement import measure_on_device
from autocomp.measure.profiling import cpu_description
from autocomp.recipe import Recipe
from autocomp.results import TrialRow, ranked_feasible
from autocomp.search._local import compression_key
from autocomp.search._objective import EXPORT_FOLDER, metrics_of

__all__ = ["confirm_best", "measuring", "drop_timed_exports", "CONFIRM", "CONFIRM_REPEATS"]

CONFIRM = 5  # the most accurate candidates within budget measured again before the best is named
CONFIRM_REPEATS = 3  # each measured again with this many times the profile's timed repeats


def confirm_best(rows: Sequence[TrialRow], *, base: nn.Module, profile: HardwareProfile, example: torch.Tensor,
                 baseline_latency_ms: float, limits: Mapping[str, float], kept: Path | None = None,
                 record: Path | None = None, measured_with: Mapping[str, Any] | None = None,
                 log: Callable[[str], None] | None = None) -> tuple[TrialRow | None, list[dict]]:
    """The best trial, named after measuring the ``CONFIRM`` most accurate candidates within budget again, one
    after the other on the device the trials no longer load: the most accurate whose second measurement is still
    within budget (a single measurement at the budget's edge can be luck). Latency does not depend on the weights,
    so each candidate is compressed again (not distilled) and measured, interleaved with the uncompressed model, as
    in its trial, over ``CONFIRM_REPEATS`` times as many timed runs (on a shared machine the ratio of one
    measurement moves by several percent from one minute to the next; the longer one averages over more of it).
    Candidates that compress alike (they differ in their distillation) are one model to measure: measured once.
    A runtime backend times the file the trial exported where the trial kept it (``kept``: the run's
    ``trials/`` folder; ``<trial>/timed_export/``), and exports the candidate again where it did not. ``log`` is
    told of each measurement as it starts (on a 224-px model on a runtime backend each takes a minute or more).
    ``record`` (the run's ``REMEASURED`` file) keeps each measurement as it ends, with ``measured_with`` (how the
    run measures: backend, runtime versions): a rerun of the folder, to resume or to add trials, measures again only
    candidates the record lacks, and all of them where it was measured otherwise.

    Returns:
        the best (None when no trial met the budget; the trials' own best when none held on re-measurement),
        and per candidate both measurements.
    """
    feasible = ranked_feasible(rows)
    remeasured, best = [], None
    longer = dataclasses.replace(profile, repeats=profile.repeats * CONFIRM_REPEATS)
    earlier = _earlier_remeasurements(record, measured_with)
    measured: dict[str, dict[str, Any]] = {}  # compression -> its measurement
    alike: dict[str, list[int]] = {}  # compression -> the trials of it among the candidates
    for row in feasible[:CONFIRM]:
        alike.setdefault(compression_key(row.recipe), []).append(row.number)
    to_measure = [key for key in alike if key not in earlier]
    for row in feasible[:CONFIRM]:
        key = compression_key(row.recipe)
        if key not in measured and key in earlier:
            measured[key] = earlier[key]
        elif key not in measured:
            if log is not None:
                others = [number for number in alike[key] if number != row.number]
                log(f"re-measuring candidate {to_measure.index(key) + 1} of {len(to_measure)} within budget (trial "
                    f"{row.number}" + (f"; trial{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} "
                                       f"compress{'' if len(others) > 1 else 'es'} alike, differing in distillation"
                                       if others else "")
                    + f") on {profile.name}")
            # the compressed weights themselves (undistilled): a structure-only model holds uninitialized memory,
            # whose NaNs make an int8 layer's dynamic quantization fail, and a runtime backend exports what it holds
            with torch.no_grad():
                model = compress(base, Recipe.from_dict(row.recipe), calibration=example).eval()
            placed = measure_on_device(model, longer, example=example, reference=base, keep=_kept_export(kept, row))
            measured[key] = metrics_of(placed.measurement, baseline_latency_ms)
            if record is not None:
                write_json(record, {"measured_with": measured_with, "measurements": {**earlier, **measured}})
        again = measured[key]
        holds = feasible_metrics(violations(again, limits))
        remeasured.append({"trial": row.number, "accuracy": row.accuracy, "latency_ms": row.latency_ms,
                           "remeasured_latency_ms": again["latency_ms"], "memory_mb": row.memory_mb,
                           "remeasured_memory_mb": again["memory_mb"], "within_budget_again": holds,
                           "by_an_earlier_run": key in earlier,
                           # the candidate measured for it (it compresses alike), where that is another trial
                           "measured_as_trial": alike[key][0] if alike[key][0] != row.number else None})
        if holds and best is None:
            best = row
    return (best or (feasible[0] if feasible else None)), remeasured


def measuring(measured_with: Mapping[str, Any] | None, profile: HardwareProfile) -> dict[str, Any] | None:
    """What an earlier run's re-measurements must share to be reused: how the run measures (run.json's), the export
    forms this CPU chooses (an ONNX file's int8 form), and the machine (a run folder copied to another one)."""
    if measured_with is None:
        return None
    import socket

    from autocomp.measure.backends import backend_of

    return {**measured_with, "forms": backend_of(profile).export_forms(),
            "machine": f"{socket.gethostname()}: {cpu_description()}"}


def _earlier_remeasurements(record: Path | None, measured_with: Mapping[str, Any] | None) -> dict[str, Any]:
    """The re-measurements an earlier run of the folder recorded, by compression; none where it measured otherwise
    (another runtime version, say) or its record is unreadable (a crash as it was written)."""
    if record is None or not record.is_file():
        return {}
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("measured_with") != measured_with:
        return {}
    return dict(data.get("measurements") or {})


def drop_timed_exports(kept: Path) -> None:
    """Delete the files the trials timed, once the best is named: their weights are undistilled (see
    ``EXPORT_FOLDER``), and the disk they take is the size of the models."""
    import shutil

    for folder in kept.glob(f"*/{EXPORT_FOLDER}"):
        shutil.rmtree(folder, ignore_errors=True)


def _kept_export(kept: Path | None, row: TrialRow) -> Path | None:
    """The export a trial kept of ``row``'s candidate (its own, or that of the trial whose measurement it reused), or
    None."""
    if kept is None:
        return None
    folder = kept / str(row.measurement_of if row.measurement_of is not None else row.number) / EXPORT_FOLDER
    return folder if holds_export(folder) else None
