"""One trial: build the candidate from a recipe, score it on validation, measure it (on the device's node when the
profile names one, see :mod:`autocomp.measure.placement`). The same function runs inside a Ray Tune trial or
in-process."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from autocomp.budget import violations
from autocomp.compress import compress
from autocomp.data import Split
from autocomp.distill import distill
from autocomp.errors import AutocompError
from autocomp.hardware import HardwareProfile
from autocomp.measure import Measurement, num_threads
from autocomp.measure.placement import measure_on_device
from autocomp.ops.quantize import activation_kernels, simulated_layers
from autocomp.recipe import Recipe
from autocomp.train import evaluate

__all__ = ["TrialInputs", "build_candidate", "distill_subset", "run_trial", "metrics_of"]


@dataclass(frozen=True)
class TrialInputs:
    """Everything a trial needs, shipped once to every Ray worker.

    Attributes:
        base: the uncompressed model (eval mode).
        val: the validation split candidates are scored on.
        calib: calibration images (importance scores; the timing input).
        train: training images for distillation recovery (a fixed subset of the training split).
        profile: how to measure.
        limits: absolute budget limits (``latency_ms``, ``memory_mb``).
        base_latency_ms: the uncompressed model's latency, measured once at the start of the run.
    """

    base: nn.Module
    val: Split
    calib: torch.Tensor
    train: Split
    profile: HardwareProfile
    limits: Mapping[str, float]
    base_latency_ms: float


def build_candidate(base: nn.Module, recipe: Recipe, calib: torch.Tensor, train: Split) -> nn.Module:
    """The compressed (and, if the recipe says so, distilled) model of a recipe; deterministic, so a trial can be
    rebuilt for export.

    One thread, as in a trial: float sums taken in another order would make a rebuilt, distilled model differ from
    the one the trial scored.
    """
    with num_threads(TRIAL_THREADS):
        with torch.no_grad():
            model = compress(base, recipe, calibration=calib)
        if recipe.distill is not None and recipe.distill.steps > 0:
            model = distill(model, base, train, recipe.distill)
    return model


DISTILL_IMAGES = 8192
TRIAL_THREADS = 1  # intra-op threads of a trial's compute (Ray gives each trial one CPU)


def distill_subset(train: Split) -> Split:
    """The training images trials distil on: the first ``DISTILL_IMAGES`` of the (already shuffled) split."""
    return train.subset(DISTILL_IMAGES)


def metrics_of(measurement: Measurement, base_latency_ms: float) -> dict[str, float]:
    """Trial metrics from a measurement.

    ``latency_ms`` is drift-corrected: the candidate's latency ratio to the uncompressed model, timed interleaved
    in the trial, times the uncompressed latency measured at the start of the run. ``raw_latency_ms`` is the
    candidate's own median in the trial, on a machine that other trials may be loading.
    """
    ratio = measurement.latency_ratio if measurement.latency_ratio is not None else 1.0
    return {"latency_ms": ratio * base_latency_ms, "latency_ratio": ratio, "raw_latency_ms": measurement.latency_ms,
            "latency_iqr_ms": measurement.latency_iqr_ms, "memory_mb": measurement.memory_mb,
            "weights_mb": measurement.weights_mb, "activations_mb": measurement.activations_mb}


def run_trial(recipe_dict: Mapping[str, Any], inputs: TrialInputs) -> dict[str, Any]:
    """Build, score and measure one candidate; returns its metrics and, flat, its budget violations
    (``violation:latency_ms`` ...: Ray Tune flattens nested results).

    Also returned: ``trial_seconds``, the wall time of all these steps (what skipping a candidate saves), and
    ``measured_on``, the Ray node id the measurement ran on (None: in this process).
    """
    started = time.perf_counter()
    recipe = Recipe.from_dict(recipe_dict)
    try:
        model = build_candidate(inputs.base, recipe, inputs.calib, inputs.train)
    except AutocompError as exc:  # a sampled combination the operators refuse (e.g. a rank that saves nothing)
        return {"refused": str(exc)}
    placed = measure_on_device(model, inputs.profile, example=inputs.calib, reference=inputs.base)
    metrics: dict[str, Any] = metrics_of(placed.measurement, inputs.base_latency_ms)
    metrics["accuracy"] = evaluate(model, inputs.val)
    # simulated (fake-quant) layers have no real kernel: the trial's latency is then no claim about the target
    metrics["simulated_layers"] = len(simulated_layers(model))
    metrics["int8_activations"] = activation_kernels(model)  # onednn-u8, onednn-u7 (no VNNI), simulated or None
    metrics.update(trial_seconds=time.perf_counter() - started, measured_on=placed.node_id)
    return {**metrics, **{f"violation:{k}": v for k, v in violations(metrics, inputs.limits).items()}}
