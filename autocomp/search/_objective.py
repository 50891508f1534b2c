"""One trial: build the candidate from a recipe, score it on validation, measure it (on the device's node when the
profile names one, see :mod:`autocomp.measure.placement`). The same function runs inside a Ray Tune trial or
in-process."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from autocomp import _quiet
from autocomp._compress import compress
from autocomp._io import read_safetensors, write_safetensors
from autocomp._timeout import TimedOut, time_limit
from autocomp.budget import feasible, violations
from autocomp.config import FidelityConfig
from autocomp.data import Split
from autocomp.distill import TeacherCache, distill
from autocomp.errors import AutocompError
from autocomp.hardware import HardwareProfile
from autocomp.measure import Measurement, num_threads
from autocomp.measure.backends import ExportFailed, backend_of
from autocomp.measure.placement import DeviceLost, measure_on_device
from autocomp.ops.quantize import activation_kernels, simulated_layers
from autocomp.recipe import Recipe
from autocomp.saving import mismatch
from autocomp.train import evaluate, scoring_device

__all__ = ["TrialInputs", "build_candidate", "distill_subset", "run_trial", "metrics_of", "kept_model", "PHASES",
           "MEASURED", "MEASUREMENT_OF", "EXPORT_FOLDER", "ERROR", "STOP"]


@dataclass(frozen=True)
class TrialInputs:
    """Everything a trial needs, shipped once to every Ray node (the object store keeps one copy per node).

    Attributes:
        base: the uncompressed model (eval mode).
        val: the validation split candidates are scored on.
        calib: calibration images (importance scores; the timing input).
        train: training images for distillation recovery (a fixed subset of the training split).
        profile: how to measure.
        limits: absolute budget limits (``latency_ms``, ``memory_mb``).
        base_latency_ms: the uncompressed model's latency, measured once at the start of the run.
        threads: intra-op threads of the trial's compute (the job's ``resources.cpu``).
        skip_margin: a candidate measured more than this fraction over a limit is not distilled (None: always).
        teacher_cache: the teacher's logits on the distillation batches, computed once per run, or None.
        weights_dir: where a trial within budget keeps its weights (``<dir>/<trial number>/``), or None.
        gpu: distil on the trial's GPU (the job asks for GPUs and this process sees CUDA).
        trial_timeout_s: the job's limit on one trial (None: none).
        measure_timeout_s: the job's limit on one measurement (None: none).
        check_images: validation images a runtime backend compares its export of each candidate on (None: no
            check).
        fidelity: the multi-fidelity rule (a short distillation and score first; see :class:`FidelityConfig`), or
            None: every candidate is distilled fully and scored on all of ``val``.
        quiet_key: the run's name for quiet timing (:mod:`autocomp._quiet`): trials with the same key on one
            machine pause their steps while one of them times; None: every trial times while the others compute.
    """

    base: nn.Module
    val: Split
    calib: torch.Tensor
    train: Split
    profile: HardwareProfile
    limits: Mapping[str, float]
    base_latency_ms: float
    threads: int = 1
    skip_margin: float | None = None
    teacher_cache: TeacherCache | None = None
    weights_dir: str | None = None
    gpu: bool = False
    trial_timeout_s: float | None = None
    measure_timeout_s: float | None = None
    check_images: torch.Tensor | None = None
    fidelity: FidelityConfig | None = None
    quiet_key: str | None = None


def build_candidate(base: nn.Module, recipe: Recipe, calib: torch.Tensor, train: Split, *,
                    threads: int = 1, cache: TeacherCache | None = None) -> nn.Module:
    """The compressed (and, if the recipe says so, distilled) model of a recipe; deterministic, so a trial can be
    rebuilt for export.

    ``threads`` must be the trial's: float sums taken in another order would make a rebuilt, distilled model
    differ from the one the trial scored.
    """
    with num_threads(threads):
        with torch.no_grad():
            model = compress(base, recipe, calibration=calib)
        if distils(recipe):
            model = distill(model, base, train, recipe.distill, cache=cache)
    return model


def distils(recipe: Recipe) -> bool:
    """Whether a trial distils its candidate: the recipe asks for it and compresses something (an uncompressed
    candidate, a starting point, has nothing to recover)."""
    return recipe.distill is not None and recipe.distill.steps > 0 and any(recipe.blocks)


DISTILL_IMAGES = 8192


def distill_subset(train: Split) -> Split:
    """The training images trials distil on: the first ``DISTILL_IMAGES`` of the (already shuffled) split."""
    return train.subset(DISTILL_IMAGES)


def metrics_of(measurement: Measurement, base_latency_ms: float) -> dict[str, float]:
    """Trial metrics from a measurement.

    ``latency_ms`` is drift-corrected: the candidate's latency ratio to the uncompressed model, timed interleaved
    in the trial, times the uncompressed latency measured at the start of the run. ``raw_latency_ms`` is the
    candidate's own median in the trial, on a machine that other trials may be loading. ``runtime`` says what ran
    it; ``export_top1`` and ``export_max_logit_diff`` how a runtime backend's export agreed with PyTorch (None: no
    export).
    """
    ratio = measurement.latency_ratio if measurement.latency_ratio is not None else 1.0
    return {"latency_ms": ratio * base_latency_ms, "latency_ratio": ratio, "raw_latency_ms": measurement.latency_ms,
            "latency_iqr_ms": measurement.latency_iqr_ms, "memory_mb": measurement.memory_mb,
            "weights_mb": measurement.weights_mb, "activations_mb": measurement.activations_mb,
            "runtime": measurement.runtime, "export_top1": measurement.agreement,
            "export_max_logit_diff": measurement.max_logit_diff}


PHASES = ("compress", "measure", "distill", "evaluate")  # a trial's steps, timed as seconds_<phase>
MEASURED = ("latency_ms", "latency_ratio", "raw_latency_ms", "latency_iqr_ms", "memory_mb", "weights_mb",
            "activations_mb", "runtime", "export_top1", "export_max_logit_diff", "measured_on")  # a measurement's keys
MEASUREMENT_OF = "measurement_of"  # result key: the earlier trial whose measurement this one reused (None: its own)
SHORT, FULL = "short", "full"  # a trial's fidelity: stopped after the short distillation and score, or finished
ERROR = "error"  # a failed trial reports why under this key
STOP = "stop_search"  # set in a failed trial's result when the search cannot go on (the device left)


def run_trial(recipe_dict: Mapping[str, Any], inputs: TrialInputs, *, number: int | None = None,
              short: Callable[[dict[str, Any]], bool] | None = None,
              measured: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build, measure and score one candidate; returns its metrics and, flat, its budget violations
    (``violation:latency_ms`` ...: Ray Tune flattens nested results).

    The candidate is measured before it is distilled (distillation changes weights, not cost): one measured more
    than ``inputs.skip_margin`` over a limit is scored without distillation (``distilled`` False) and is infeasible
    anyway. A trial within budget keeps its weights under ``inputs.weights_dir`` so that ``best/`` and export need
    not distil again. Also returned: ``seconds_<phase>`` for each of ``PHASES``, ``trial_seconds`` (their total
    with the rest of the trial), ``paused_seconds`` (the part of them spent waiting for quiet timing,
    ``inputs.quiet_key``: for other trials' timings, or for their steps to end before this one's timing; None when
    off) and ``measured_on``, the Ray node id the measurement ran on (None: in this process).

    Multi-fidelity (``inputs.fidelity`` and ``short`` given): after the first part of its distillation, a candidate
    is scored on the validation subset and this result (``fidelity`` ``short``, ``short_accuracy``,
    ``saved_seconds``: what finishing would have cost, estimated from the time taken so far) goes to ``short``,
    which says whether to go on (inside Ray Tune it reports the result, and a scheduler that stops the trial ends it
    there). A candidate that goes on comes back with ``fidelity`` ``full`` and its full accuracy.

    ``measured``: the measurement of an earlier trial of the same compression (``trial``, its number, and the
    ``MEASURED`` keys of its result), which this trial reuses instead of exporting and timing the same candidate
    again (``measurement_of`` says which; None: measured here). Trials that differ only in their distillation
    measure the same model, since a trial measures its candidate before distilling it.

    A trial that fails for a reason a rerun would meet again returns ``{ERROR: why, "retry": False}``: a recipe
    the operators refuse (``refused``), non-finite logits, a time limit passed, a runtime backend that cannot export
    or run the candidate as PyTorch does; one whose device left the cluster returns ``{ERROR: why, STOP: True}``.
    """
    try:
        with time_limit(inputs.trial_timeout_s, setting="trial_timeout_s"), _quiet.quiet_machine(inputs.quiet_key):
            return _run_trial(Recipe.from_dict(recipe_dict), inputs, number, short, measured)
    except (TimedOut, ExportFailed) as exc:
        return {ERROR: str(exc), "retry": False}
    except DeviceLost as exc:
        return {ERROR: str(exc), STOP: True}


def _run_trial(recipe: Recipe, inputs: TrialInputs, number: int | None,
               short: Callable[[dict[str, Any]], bool] | None, measured: Mapping[str, Any] | None) -> dict[str, Any]:
    started = time.perf_counter()
    seconds = dict.fromkeys(PHASES, 0.0)

    def timed(phase: str, run: Callable[[], Any]) -> Any:
        begin = time.perf_counter()
        result = run()
        seconds[phase] += time.perf_counter() - begin
        return result

    with num_threads(inputs.threads):
        try:
            with _quiet.step():  # not while another trial on this machine times its candidate
                model = timed("compress", lambda: compress(inputs.base, recipe, calibration=inputs.calib))
        except TimedOut:
            raise
        except AutocompError as exc:  # a sampled combination the operators refuse (e.g. a rank that saves nothing)
            return {"refused": str(exc)}
    export = _export_folder(inputs, number) if measured is None else None
    if measured is None:
        placed = timed("measure", lambda: measure_on_device(model, inputs.profile, example=inputs.calib,
                                                            reference=inputs.base, timeout_s=inputs.measure_timeout_s,
                                                            check=inputs.check_images, keep=export))
        measurement = {**metrics_of(placed.measurement, inputs.base_latency_ms), "measured_on": placed.node_id,
                       MEASUREMENT_OF: None}
    else:
        measurement = {**{key: measured[key] for key in MEASURED}, MEASUREMENT_OF: measured["trial"]}
    metrics: dict[str, Any] = {**measurement, "fidelity": FULL, "short_accuracy": None, "saved_seconds": 0.0}
    over = violations(metrics, inputs.limits)
    if export is not None and not feasible(over):  # only a candidate within budget is measured again at the end
        shutil.rmtree(export, ignore_errors=True)
    wants = distils(recipe)
    distilled = wants and not (inputs.skip_margin is not None and max(over.values(), default=0.0) > inputs.skip_margin)
    stopped = False

    def finished(model: nn.Module, accuracy: float) -> dict[str, Any]:
        """The trial's result for ``model`` scored ``accuracy``."""
        with torch.no_grad():
            logits = model(inputs.calib[:8])
        if not torch.isfinite(logits).all():
            where = "after distillation (it diverged; lower distill lr)" if distilled else ""
            return {ERROR: f"the candidate's logits are not finite {where}".strip(), "retry": False}  # it would again
        return {**metrics, "accuracy": accuracy, "distilled": distilled,
                # simulated (fake-quant) layers have no real kernel: the latency is then no claim about the target
                "simulated_layers": len(simulated_layers(model)),
                "int8_activations": activation_kernels(model),  # onednn-u8, onednn-u7 (no VNNI), simulated or None
                **{f"seconds_{phase}": value for phase, value in seconds.items()},
                "paused_seconds": _quiet.paused_seconds(),  # of the phases: waiting for quiet timing (None: off)
                "trial_seconds": time.perf_counter() - started, **{f"violation:{k}": v for k, v in over.items()}}

    def go_on(probe: nn.Module) -> bool:
        nonlocal stopped
        subset = inputs.val.subset(inputs.fidelity.images)
        begin = time.perf_counter()
        accuracy = evaluate(probe, subset, device=device)
        took = time.perf_counter() - begin
        seconds["evaluate"] += took
        seconds["distill"] += time.perf_counter() - distill_began - took
        total = recipe.distill.steps
        metrics.update(fidelity=SHORT, short_accuracy=accuracy, saved_seconds=(
            seconds["distill"] * (total / pause_at - 1) + took * max(0.0, len(inputs.val) / len(subset) - 1)))
        result = finished(probe, accuracy)
        stopped = ERROR in result or not short(result)
        if not stopped:
            metrics.update(fidelity=FULL, saved_seconds=0.0)
        return not stopped

    device = scoring_device(inputs.gpu)  # where it distils and scores
    with num_threads(inputs.threads):
        if distilled:
            pause = None
            if short is not None and inputs.fidelity is not None:
                pause_at = max(1, round(recipe.distill.steps * inputs.fidelity.steps))
                pause = (pause_at, go_on)
            distill_began = time.perf_counter()
            model = distill(model, inputs.base, inputs.train, recipe.distill, cache=inputs.teacher_cache,
                            device=device, pause=pause)
            if stopped:  # its result is the short one (fidelity short)
                return finished(model, metrics["short_accuracy"])
            seconds["distill"] = time.perf_counter() - distill_began - seconds["evaluate"]
        accuracy = timed("evaluate", lambda: evaluate(model, inputs.val, device=device))
    result = finished(model, accuracy)
    if ERROR not in result and feasible(over) and (folder := _trial_folder(inputs.weights_dir, number)) is not None:
        _keep_weights(model, folder)
    return result


WEIGHTS_FILE = "weights.safetensors"
# <weights_dir>/<trial>/timed_export/: the file a runtime backend timed in the trial, until the best is named; its
# weights are undistilled (latency does not depend on them): a file to time, never to deploy
EXPORT_FOLDER = "timed_export"


def _trial_folder(weights_dir: str | None, number: int | None) -> Path | None:
    """``<weights_dir>/<number>/`` (made if missing), where a trial keeps its weights and its timed export; None
    without a trial number, where this process does not see the run folder (a node without the shared file system)
    or cannot write there: keeping is optional (the end of the search then rebuilds or exports again)."""
    if weights_dir is None or number is None or not Path(weights_dir).parent.is_dir():  # the parent: the run folder
        return None
    folder = Path(weights_dir) / str(number)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder


def _export_folder(inputs: TrialInputs, number: int | None) -> Path | None:
    """Where a trial keeps its candidate's export for the re-measurement of the best (latency does not depend on
    the weights: the file measured in the trial is the one to time again), or None: a backend that exports
    nothing, or no trial folder (:func:`_trial_folder`)."""
    folder = _trial_folder(inputs.weights_dir, number) if backend_of(inputs.profile).exports else None
    return folder / EXPORT_FOLDER if folder is not None else None


def _keep_weights(model: nn.Module, directory: Path) -> None:
    """Save the trial's weights in its folder (:func:`_trial_folder`); one that cannot be written keeps nothing."""
    try:
        write_safetensors(directory / WEIGHTS_FILE, model.state_dict())
    except Exception:  # noqa: BLE001 - disk full, permissions, safetensors' own errors: keeping weights is optional
        (directory / (WEIGHTS_FILE + ".tmp")).unlink(missing_ok=True)


def kept_model(base: nn.Module, recipe: Recipe, directory: Path) -> nn.Module | None:
    """The model a trial kept under ``directory`` (its structure rebuilt, its weights loaded), or None."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        return None
    model = compress(base, recipe, structure_only=True)
    weights = read_safetensors(path, "a trial's kept weights", f"delete {directory} to have the trial compressed and "
                               "distilled again from its recipe")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # a base module other than the searched one (a run before run.json recorded it)
        raise AutocompError(f"the weights kept in {directory} do not fit the model its recipe builds from the base "
                            f"given ({mismatch(exc)}); pass the module the search was given") from None
    return model.eval()
