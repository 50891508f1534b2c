"""The end of a search: final results, the summary, and the best model (named after the best candidates are measured
again, :mod:`autocomp.search._confirm`) rebuilt, checked and saved."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
import torch
from torch import nn

from autocomp._compress import compress
from autocomp.config import JobConfig
from autocomp.costmodel import fidelity
from autocomp.data import Splits, preprocessing_source
from autocomp.distill import distill
from autocomp.hardware import HardwareProfile
from autocomp.measure.profiling import cap_note, cpu_description, profile_note
from autocomp.recipe import Distill, Recipe
from autocomp.results import TrialRow, closest_trial, pareto_front, trial_rows, write_results
from autocomp.saving import save_model
from autocomp.search._confirm import confirm_best, drop_timed_exports, measuring
from autocomp.search._local import REPAIRED
from autocomp.search._objective import build_candidate, distill_subset, kept_model
from autocomp.search._rundir import REMEASURED
from autocomp.train import evaluate, scoring_device

__all__ = ["finalize", "final_distillation", "skipped_summary", "prediction_fidelity", "time_split", "KEPT", "BEST",
           "prune_kept"]

KEPT = "trials"  # run_dir/trials/<number>/: the weights of trials within budget that are on the front
BEST = "best"  # run_dir/best/: the best model within budget, ready to load


def finalize(run_dir: Path, study: optuna.Study, *, config: JobConfig, splits: Splits, base: nn.Module,
             baseline: Mapping[str, Any], limits: Mapping[str, float], profile: HardwareProfile,
             log: Callable[[str], None] = print, loop_seconds: float | None = None,
             asking_seconds: float | None = None, measured_with: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write all results; save best/ (the most accurate trial within budget) and summary.json.

    ``loop_seconds``: the wall time of the trial loop(s), and ``asking_seconds`` the controller's time choosing
    trials in them, for the search's own overhead (None: not known); ``measured_with``: how the run measures
    (run.json's), which an earlier run's re-measurements must share to be reused (see :func:`confirm_best`)."""
    rows = trial_rows(study, list(limits))
    front = write_results(run_dir, rows, limits, baseline=baseline)
    best, remeasured = confirm_best(rows, base=base, profile=profile, example=splits.calib.x,
                                    baseline_latency_ms=baseline["latency_ms"], limits=limits, kept=run_dir / KEPT,
                                    record=run_dir / REMEASURED, measured_with=measuring(measured_with, profile),
                                    log=log)
    drop_timed_exports(run_dir / KEPT)
    summary: dict[str, Any] = {
        "budget": config.budget.describe(), "limits": dict(limits), "baseline": dict(baseline),
        "trials": {"total": len(rows), "complete": sum(r.complete for r in rows),
                   # a trial a stopped search left is no failure of its recipe (run again on resume): said apart
                   "failed": sum(r.state == "FAIL" and not r.interrupted for r in rows),
                   "interrupted": sum(r.interrupted for r in rows), "within_budget": sum(r.feasible for r in rows)},
        "errors": {str(r.number): r.error for r in rows if r.state == "FAIL" and not r.interrupted},
        **skipped_summary(rows), "proposals": proposals(rows, best), "cost_model": prediction_fidelity(rows),
        "time_split": time_split(rows),
        "early_stopped": early_stopped(rows), "measurements_reused": reused(rows),
        "overhead": overhead(rows, loop_seconds, config.workers, asking_seconds),
        "quiet_timing": paused(rows),
        "not_distilled": sum(r.distilled is False and r.recipe.get("distill") is not None for r in rows),
        "pareto_size": len(front), "pareto": [{**_trial_entry(r), "within_budget": r.feasible} for r in front],
        "met_budget": best is not None, "remeasured": remeasured,
        "preprocessing": splits.preprocessing.to_dict() if splits.preprocessing is not None else None,
        "preprocessing_source": preprocessing_source(base, config.data), "classes": list(splits.classes),
        "images": {name: len(getattr(splits, name)) for name in ("train", "calib", "val", "test")},
        "images_from": dict(splits.origins) if splits.origins else None,
        "hardware": {"profile": profile.name, "backend": profile.backend, "runtime": baseline.get("runtime"),
                     "measured_on": profile.measured_on,
                     "this_cpu": cpu_description(),
                     "note": "; ".join(filter(None, [profile_note(profile), cap_note(profile.backend)])) or None},
    }
    if summary["skipped"]:
        saved = summary["time_saved_s"]
        log(f"skipped {summary['skipped']} candidate{'s' if summary['skipped'] != 1 else ''} predicted over budget"
            + (f" (about {saved:.0f} s saved)" if saved is not None else ""))
    if summary["early_stopped"]["stopped"]:
        stopped = summary["early_stopped"]
        log(f"multi-fidelity: {stopped['stopped']} of {stopped['short_scored']} distilled candidates stopped after "
            f"their short score (about {stopped['saved_seconds']:.0f} s of distillation and validation saved)")
    if summary["measurements_reused"]["trials"]:
        again = summary["measurements_reused"]
        log(f"{again['trials']} trials compressed as an earlier trial did (another distillation): they reused its "
            f"measurement (about {again['saved_seconds']:.0f} s of export and timing saved)")
    if summary["quiet_timing"]:
        quiet = summary["quiet_timing"]
        log(f"quiet timing: trials waited {quiet['paused_seconds']:.0f} s in all ({100 * quiet['share']:.1f}% of "
            "their time) so that no candidate was timed beside another trial's compute")
    if best is not None:
        recipe = Recipe.from_dict(best.recipe)
        model = kept_model(base, recipe, run_dir / KEPT / str(best.number))  # the weights the trial scored
        entry = {**_trial_entry(best), "within_budget": best.feasible}  # as a trial's export says it, and the front
        again = next((m for m in remeasured if m["trial"] == best.number), None)
        entry["remeasured_latency_ms"] = again["remeasured_latency_ms"] if again else None
        entry["remeasured_memory_mb"] = again["remeasured_memory_mb"] if again else None
        entry["within_budget_again"] = again["within_budget_again"] if again else None
        earlier = sum(m["by_an_earlier_run"] for m in remeasured)
        shared = sum(m.get("measured_as_trial") is not None for m in remeasured)
        log(f"re-measured the {len(remeasured)} most accurate candidates within budget"
            + (f" ({len(remeasured) - shared} models: {shared} compress{'es' if shared == 1 else ''} as another of "
               f"them does, differing in distillation)" if shared else "")
            + (f" ({earlier} of them by an earlier run of {run_dir}, as it measures now)" if earlier else "")
            + f": {sum(m['within_budget_again'] for m in remeasured)} still within budget"
            + ("; over it measured again, so not best/: " + ", ".join(
                f"trial {m['trial']} ({m['remeasured_latency_ms']:.4g} ms, {m['remeasured_memory_mb']:.4g} MB)"
                for m in remeasured if not m["within_budget_again"]) if not all(
                m["within_budget_again"] for m in remeasured) else ""))
        if again is not None and not again["within_budget_again"]:
            log(f"warning: none held on re-measurement: best/ is the trials' own best, trial {best.number}, within "
                f"budget as its trial measured it, over it as measured again ({again['remeasured_latency_ms']:.4g} "
                f"ms, {again['remeasured_memory_mb']:.4g} MB); a busy machine slows one measurement, and a "
                "candidate at the budget's edge is within it by luck: search again on a quiet machine, or with a "
                "little room under the budget")
        entry["weights"] = "kept by the trial" if model is not None else "rebuilt (compressed and distilled again)"
        if model is None:  # the trial ran where the run folder is not (another node), or before weights were kept
            model = build_candidate(base, recipe, splits.calib.x, distill_subset(splits.train),
                                    threads=config.resources.cpu)
        # best/'s scores are the target's arithmetic (a trial's GPU ranks candidates; a CPU target's best on the CPU)
        device = scoring_device(config.resources.gpu) if profile.device == "gpu" else "cpu"
        entry.update(scored_on=device, val_accuracy=evaluate(model, splits.val, device=device),
                     test_accuracy=evaluate(model, splits.test, device=device),
                     # dynamic int8 activations take one scale per batch: another batch size scores a little apart
                     accuracy_batch={"val": splits.val.eval_batch_size(), "test": splits.test.eval_batch_size()},
                     path=str((run_dir / BEST).resolve()),
                     runtime=baseline.get("runtime"))  # what its latency means: runtime, threads, batch
        if config.final_distill_steps and any(recipe.blocks):  # the uncompressed model has nothing to recover
            model, recipe = final_distillation(model, base, recipe, splits, entry, steps=config.final_distill_steps,
                                               gpu=config.resources.gpu > 0, scored_on=device, log=log)
        save_model(run_dir / BEST, model, recipe, config.model, metrics=entry, preprocessing=splits.preprocessing,
                   classes=splits.classes)
        summary["best"] = entry
        log(f"best within budget{'' if entry['within_budget_again'] is not False else ' (by its trial)'}: "
            f"trial {best.number}  val {entry['val_accuracy']:.2f}%  "
            f"test {entry['test_accuracy']:.2f}%  latency {best.latency_ms:.2f} ms  memory {best.memory_mb:.2f} MB")
    else:
        closest = closest_trial(rows)
        summary["closest"] = _trial_entry(closest) if closest is not None else None
        failed = [r for r in rows if r.state == "FAIL"]
        if closest is None and failed:  # nothing was scored: the budget is not what stopped it
            reason, count = Counter(r.error or "no reason recorded" for r in failed).most_common(1)[0]
            summary["message"] = (f"no candidate met the budget: every trial that ran failed ({len(failed)}), "
                                  + ("each" if count == len(failed) else f"{count} of them") + f" with: {reason}; "
                                  "trials.csv lists each with its reason: fix that, and the same command "
                                  "resumes the run (a failed trial does not count towards trials)")
        else:
            message = "no candidate met the budget"
            if closest is not None:
                over = ", ".join(f"{k} over by {100 * v:.1f}%" if v >= 0.001 else f"{k} over by {100 * v:.2g}%"
                                 for k, v in closest.violations.items() if v > 0)  # 0.04%, not 0.0%
                short = " (stopped at its short score: not on the front)" if not closest.final else ""
                message += f"; closest was trial {closest.number}{short} ({over})"
            summary["message"] = message + ("; loosen the budget, widen the search space, or run more trials (the "
                                            "same command with a larger --trials resumes this run)")
        log(summary["message"])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def final_distillation(model: nn.Module, base: nn.Module, recipe: Recipe, splits: Splits, entry: dict[str, Any], *,
                       steps: int, gpu: bool = False, scored_on: str = "cpu",
                       log: Callable[[str], None] = print) -> tuple[nn.Module, Recipe]:
    """The best candidate distilled again from its compressed weights for ``steps`` steps on the whole training split
    (a trial distils briefly on a subset: enough to rank candidates, not to recover all it can), with the trial's
    distillation settings (weight, temperature, learning rate), or the defaults if the trial distilled nothing.

    Returns the model and recipe to save: the longer-distilled ones if they score higher on validation, else the
    trial's own. ``entry`` gets ``final_distillation`` (steps, seconds, both models' validation and test accuracy,
    which was kept) and, if kept, the new model's ``val_accuracy`` and ``test_accuracy``. ``gpu``: distil on the
    GPU (where this process sees one); ``scored_on``: where the new model is scored (where ``entry``'s were).
    """
    settings = recipe.distill if recipe.distill is not None else Distill(steps=0, alpha=0.5)  # a space's default
    longer = dataclasses.replace(recipe, distill=dataclasses.replace(settings, steps=steps))
    started = time.perf_counter()
    device = scoring_device(gpu)
    log(f"final distillation of the best: {steps} steps on {len(splits.train)} training images, on "
        + (device if device != "cpu" else f"{torch.get_num_threads()} CPU thread(s)"))
    with torch.no_grad():
        student = compress(base, longer, calibration=splits.calib.x)
    student = distill(student, base, splits.train, longer.distill, device=device,
                      log=lambda line: log(f"final distillation: {line}")).eval()
    seconds = time.perf_counter() - started
    val, test = evaluate(student, splits.val, device=scored_on), evaluate(student, splits.test, device=scored_on)
    kept = val > entry["val_accuracy"]
    entry["final_distillation"] = {
        "steps": steps, "images": len(splits.train), "seconds": round(seconds, 1), "kept": kept,
        "trial_val_accuracy": entry["val_accuracy"], "trial_test_accuracy": entry["test_accuracy"],
        "val_accuracy": val, "test_accuracy": test}
    log(f"final distillation of the best: {steps} steps in {seconds:.0f} s: val {entry['val_accuracy']:.2f}% -> "
        f"{val:.2f}%, test {entry['test_accuracy']:.2f}% -> {test:.2f}%"
        + ("" if kept else "; not better on validation: the trial's weights are kept"))
    if not kept:
        return model, recipe
    entry.update(val_accuracy=val, test_accuracy=test, recipe_summary=longer.summary(),
                 weights=f"final distillation ({steps} steps), from the trial's compressed weights")
    return student, longer


def _trial_entry(row: TrialRow) -> dict[str, Any]:
    return {"trial": row.number, "recipe_summary": row.recipe_summary, "val_accuracy": row.accuracy,
            "latency_ms": row.latency_ms, "latency_ratio": row.latency_ratio, "memory_mb": row.memory_mb,
            "weights_mb": row.weights_mb, "activations_mb": row.activations_mb,  # what memory_mb adds up
            "violations": dict(row.violations)}


def time_split(rows: Sequence[TrialRow]) -> dict[str, float] | None:
    """Mean seconds per measured trial in each phase (compress, measure, distill, evaluate, engine: Ray, data
    transfer, results writing) and ``engine_share``, the engine's share of the total; None before any."""
    timed = [r.seconds for r in rows if r.complete and r.seconds]
    if not timed:
        return None
    phases = sorted({key for seconds in timed for key in seconds})
    means = {phase: statistics.mean(s.get(phase, 0.0) for s in timed) for phase in phases}
    total = sum(means.values())
    return {**means, "engine_share": means.get("engine", 0.0) / total if total else 0.0}


def prune_kept(run_dir: Path, rows: Sequence[TrialRow]) -> None:
    """Delete the kept weights of finished trials that are not on the front (a later trial dominates them); a trial
    not yet told may have written its weights already and keeps them."""
    import shutil

    keep = {str(r.number) for r in pareto_front(rows) if r.feasible} | {str(r.number) for r in rows
                                                                        if r.state == "RUNNING"}
    folder = run_dir / KEPT
    if folder.is_dir():
        for child in folder.iterdir():
            if child.name not in keep and child.name.isdigit():
                shutil.rmtree(child, ignore_errors=True)


def overhead(rows: Sequence[TrialRow], loop_seconds: float | None, workers: int,
             asking_seconds: float | None = None) -> dict[str, Any] | None:
    """The search's own share of the trial loop's wall time: what the workers did not spend inside trials; None when
    the loop's time is not known. It is split three ways (seconds of worker time):

    - ``per_trial_seconds``: the engine's usual time around one trial (the median over trials of the time from
      handing a recipe to Ray until its result is stored, less the trial's own work): the sampler, Ray, results
      writing;
    - ``worker_start_seconds``: what trials took beyond that median, mostly each Ray worker's start (a fresh process
      importing torch and receiving the data) before its first trial;
    - ``idle_seconds``: the rest: slots with no trial, e.g. one worker waiting while the last trial finishes
      (``idle_share``: as a share of the workers' time, as ``share`` is). Of it, ``asking_seconds`` (given: the
      controller's time choosing trials, the sampler's asks for candidates skipped too, while a slot waits for one)
      is the search's; the rest (``tail_seconds``) is slots left without a trial, mostly at the end of the loop.
      ``engine_share``: the search's own part of ``share`` (the per-trial time, workers' starts and the asking).
    """
    if not loop_seconds:
        return None
    ran = [r for r in rows if r.trial_seconds is not None]
    busy = sum(r.trial_seconds for r in ran)
    engine = [r.seconds["engine"] for r in ran if r.seconds.get("engine") is not None]
    usual = statistics.median(engine) if engine else 0.0
    start = sum(max(0.0, e - usual) for e in engine)
    idle = max(0.0, workers * loop_seconds - busy - sum(engine))
    asking = min(idle, asking_seconds or 0.0)
    return {"loop_seconds": round(loop_seconds, 1), "trial_seconds": round(busy, 1), "workers": workers,
            "share": round(max(0.0, 1 - busy / (workers * loop_seconds)), 4),
            "per_trial_seconds": round(usual, 2), "worker_start_seconds": round(start, 1),
            "idle_seconds": round(idle, 1), "idle_share": round(idle / (workers * loop_seconds), 4),
            "asking_seconds": round(asking, 1), "tail_seconds": round(idle - asking, 1),
            "engine_share": round((sum(engine) + asking) / (workers * loop_seconds), 4)}


def paused(rows: Sequence[TrialRow]) -> dict[str, Any] | None:
    """Quiet timing's cost: the seconds trials waited for it (``paused_seconds``, summed: steps for other trials'
    timings, timings for other trials' steps) and their share of those trials' time; None when no trial ran with
    quiet timing (off, one worker, a device node)."""
    quiet = [r for r in rows if r.paused_seconds is not None and r.trial_seconds]
    if not quiet:
        return None
    waited = sum(r.paused_seconds for r in quiet)
    return {"trials": len(quiet), "paused_seconds": round(waited, 1),
            "share": round(waited / sum(r.trial_seconds for r in quiet), 4)}


def reused(rows: Sequence[TrialRow]) -> dict[str, Any]:
    """Trials that reused the measurement of an earlier trial of the same compression (``trials``), and the time
    that saved (``saved_seconds``: their count times the mean measurement of the trials that measured)."""
    complete = [r for r in rows if r.complete]
    again = [r for r in complete if r.measurement_of is not None]
    own = [r.seconds["measure"] for r in complete if r.measurement_of is None and "measure" in r.seconds]
    return {"trials": len(again), "saved_seconds": round(len(again) * statistics.mean(own), 1) if own else 0.0}


def early_stopped(rows: Sequence[TrialRow]) -> dict[str, Any]:
    """Multi-fidelity's figures: trials that had a short score, how many stopped there, and the time that saved
    (each stopped trial's remaining distillation and full validation, estimated from its own pace)."""
    scored = [r for r in rows if r.complete and r.short_accuracy is not None]
    stopped = [r for r in scored if not r.final]
    return {"short_scored": len(scored), "stopped": len(stopped),
            "saved_seconds": round(sum(r.saved_seconds or 0.0 for r in stopped), 1)}


def proposals(rows: Sequence[TrialRow], best: TrialRow | None) -> dict[str, Any]:
    """Where the per-block stage's recipes came from: ``local_moves`` (queued from the best trial within budget),
    how many of them ended within budget, and whether ``best`` is one; the same of ``repairs`` (proposals the screen
    skipped, made heavier until predicted within budget); ``duplicates``: proposals of a recipe already run, replaced
    at no trial's cost."""
    moved = [r for r in rows if r.local_move is not None and r.complete]
    repairs = [r for r in moved if REPAIRED in r.local_move]
    local = [r for r in moved if REPAIRED not in r.local_move]
    return {"local_moves": len(local), "local_within_budget": sum(r.feasible for r in local),
            "best_is_local_move": best is not None and best.local_move is not None and REPAIRED not in best.local_move,
            "repairs": len(repairs), "repairs_within_budget": sum(r.feasible for r in repairs),
            "best_is_repair": best is not None and best.local_move is not None and REPAIRED in best.local_move,
            "duplicates": sum(r.duplicate_of is not None for r in rows)}


def skipped_summary(rows: Sequence[TrialRow]) -> dict[str, Any]:
    """``skipped``: trials the cost model skipped; ``time_saved_s``: their count times the mean time of the trials
    that ran (compression, distillation, measurement, evaluation), or None when none ran. It is trial time: with
    ``workers`` trials at once the run ends about ``time_saved_s / workers`` sooner."""
    skipped = sum(r.skipped_reason is not None for r in rows)
    ran = [r.trial_seconds for r in rows if r.trial_seconds is not None]
    return {"skipped": skipped, "time_saved_s": skipped * statistics.mean(ran) if ran else None}


def prediction_fidelity(rows: Sequence[TrialRow]) -> dict[str, Any] | None:
    """How the predictions made before each trial compare with its measurement (see
    :func:`autocomp.costmodel.fidelity`), for latency and memory; None before any trial with a prediction ran."""
    # a reused measurement is the earlier trial's: counted once
    done = [r for r in rows if r.complete and r.predicted_latency_ms is not None and r.measurement_of is None]
    if not done:
        return None
    report = {}
    for key, predicted in (("latency_ms", "predicted_latency_ms"), ("memory_mb", "predicted_memory_mb")):
        stats = fidelity([getattr(r, predicted) for r in done], [getattr(r, key) for r in done])
        report[key] = {k: None if math.isnan(v) else v for k, v in stats.items()}
    return report
