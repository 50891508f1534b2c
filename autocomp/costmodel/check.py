"""How good the cost model is on this machine: random recipes from a job's search space, predicted and measured.

Each sampled recipe is compressed and measured interleaved with the uncompressed model (latency = the per-pair
ratio times the uncompressed model's median, so that the machine's drift cancels) twice, and predicted three ways:

- ``before``: the roofline's own milliseconds;
- ``anchored``: the roofline's ratio to the uncompressed model times its measured latency (what a search predicts
  before it has measured enough trials, see :mod:`autocomp.search._screen`);
- ``repeat``: a second measurement of each model taken as the "prediction" of the first: the best any cost
  model can do on this machine;
- ``after``: the measured correction, fitted leave-one-out (each recipe predicted by a correction fitted on the
  others), so the numbers are what an unseen recipe would get.

Memory is counted rather than fitted, so its ``before`` and ``after`` are the same prediction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import torch
from torch import nn

from autocomp._compress import compress
from autocomp.config import JobConfig, named
from autocomp.costmodel import CorrectedCostModel, CostModel, Prediction, describe, fidelity
from autocomp.costmodel._correction import FIXED, OVERHEAD
from autocomp.data import load_splits
from autocomp.errors import AutocompError
from autocomp.measure import measure, spread_warning
from autocomp.measure.backends import ExportFailed
from autocomp.measure.profiling import cap_note, load_profile
from autocomp.models import base_model, vit_blocks
from autocomp.recipe import Recipe
from autocomp.space import load_space
from autocomp.search._start import require_choices

__all__ = ["check_costmodel", "verdict", "LEGEND", "MIN_SAMPLES"]

MB = 1e6
MIN_SAMPLES = 3  # leave-one-out needs at least two others to fit on
FEW_SAMPLES = 10  # below: a rank correlation or an error over so few recipes says little
FAR_SCALE = 1.2  # a group the correction scales by more (or less than 1 / it) is named in the verdict
LEGEND = {
    "before": "the roofline's own milliseconds, from the hardware profile's peaks",
    "anchored": "the roofline's ratio to the uncompressed model times its measured latency (a search's first "
                "predictions)",
    "after": "anchored, then corrected by a fit on the other samples (leave-one-out: as for a recipe not yet seen; "
             "a search's predictions once it has measured trials)",
    "repeat": "a second measurement of each sample against its first: the noise floor, the best any cost model "
              "can do on this machine",
}


def check_costmodel(config: JobConfig, *, samples: int, out: str | Path,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample ``samples`` recipes from the config's search space (Optuna's RandomSampler, seeded with
    ``config.seed``), predict and measure each on the local device; write the report to ``out`` (JSON) and a
    predicted-vs-measured plot next to it (same name, ``.png``). Returns the report.

    Raises:
        AutocompError: fewer than ``MIN_SAMPLES`` samples, or a search space whose recipes the operators refuse.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < MIN_SAMPLES:
        raise AutocompError(f"--samples must be a whole number >= {MIN_SAMPLES} (the correction is validated "
                            f"leave-one-out), got {samples!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    profile = load_profile(config.hardware, log=log)
    space = load_space(config.search_space)
    base = base_model(config.model)
    where = named(config, "search_space", kind=True)
    space = space.for_depth(len(vit_blocks(base)), where=where)  # the blocks' own choices, as a search resolves them
    space.check_layers(base, where=where)  # what the operators would refuse in every sample, as a search refuses it
    space.check_ranks(base, where=where)
    space.check_tokens(base, where=where)
    require_choices(space, where=where)
    calib = load_splits(config.data, base).calib.x
    heads = [block.attn.num_heads for block in vit_blocks(base)]
    cost = CostModel(description=describe(base), profile=profile)
    identity = cost.predict(Recipe.identity(len(heads)))
    reference = measure(base, profile, example=calib)
    anchor = reference.latency_ms / identity.latency_ms  # measured ms per roofline ms
    log(f"uncompressed: {reference.latency_ms:.3f} ms (IQR {reference.latency_iqr_ms:.3f}), "
        f"{reference.memory_mb:.3f} MB; roofline {identity.latency_ms:.3f} ms")
    if (warning := spread_warning("the uncompressed model", reference.latency_ms, reference.latency_iqr_ms,
                                  cpu_share=reference.cpu_share, threads=profile.threads)):
        log(warning)

    rows, predictions, unrunnable = _sample_and_measure(base, cost, space, heads, calib, profile,
                                                        reference.latency_ms, samples=samples, seed=config.seed,
                                                        log=log)
    measured = [r["measured_latency_ms"] for r in rows]
    corrected = _leave_one_out(identity, predictions, measured, anchor)
    for row, prediction, value in zip(rows, predictions, corrected, strict=True):
        row["anchored_latency_ms"] = prediction.latency_ms * anchor
        row["corrected_latency_ms"] = value
    memory = fidelity([r["predicted_memory_mb"] for r in rows], [r["measured_memory_mb"] for r in rows])
    full = _correction(identity, predictions, measured, anchor)
    report = {
        "config": str(config.source) if config.source else None, "hardware": str(config.hardware),
        "profile": profile.name, "samples": len(rows), "seed": config.seed,
        "note": cap_note(profile.backend),  # the environment caps the CPU's kernels, and not this runtime's
        "not_run": unrunnable,  # samples the target cannot run, drawn again: the report covers the others
        "base": {"measured_latency_ms": reference.latency_ms, "latency_iqr_ms": reference.latency_iqr_ms,
                 "roofline_latency_ms": identity.latency_ms, "measured_memory_mb": reference.memory_mb,
                 "predicted_memory_mb": identity.memory_nbytes / MB},
        "latency": {"before": _clean(fidelity([r["roofline_latency_ms"] for r in rows], measured)),
                    "anchored": _clean(fidelity([r["anchored_latency_ms"] for r in rows], measured)),
                    "after": _clean(fidelity(corrected, measured)),
                    "repeat": _clean(fidelity([r["repeat_latency_ms"] for r in rows], measured))},
        "memory": {"before": _clean(memory), "after": _clean(memory)},
        "correction": {"validation": "leave-one-out", "units": "roofline ms (measured ms / anchor)",
                       "anchor_ms_per_roofline_ms": anchor, "scales_fitted_on_all": full.scales},
        "rows": rows, "plot": str(out.with_suffix(".png")),
    }
    report["verdict"] = verdict(report, config.skip_margin)
    out.write_text(json.dumps(report, indent=2))
    plot_fidelity(out.with_suffix(".png"), rows)
    return report


def verdict(report: dict[str, Any], skip_margin: float | None) -> list[str]:
    """What a report means for a search of the job, in sentences: whether there were samples enough to judge, how
    far the corrected model is from the noise floor, and whether its worst over-prediction would make a search skip
    a candidate within budget (the job's ``skip_margin``)."""
    latency, said = report["latency"], []
    if report["samples"] < FEW_SAMPLES:
        said.append(f"{report['samples']} samples are too few to judge the cost model (a rank correlation over so "
                    f"few means little): --samples {2 * FEW_SAMPLES} or more")
    after, noise = latency["after"]["mape"], latency["repeat"]["mape"]
    if after is not None and noise is not None:
        how = ("within twice the noise floor: as good as this machine's measurements allow" if after <= 2 * noise
               else f"{after / max(noise, 1e-9):.1f}x the noise floor: a search's predictions are coarse here, its "
               "measurements decide")
        said.append(f"corrected latency predictions are off by {100 * after:.1f}% on average, the machine's own "
                    f"repeat by {100 * noise:.1f}%: {how}")
    over = max((latency[stage]["max_ratio"] for stage in ("anchored", "after")
                if latency[stage].get("max_ratio") is not None), default=None)
    if over is not None and skip_margin is not None:
        if over - 1 > skip_margin:
            said.append(f"the worst over-prediction was {100 * (over - 1):.0f}% over the measured latency, more than "
                        f"the job's skip_margin ({100 * skip_margin:.0f}%): a search could skip a candidate within "
                        f"budget as predicted over it; raise skip_margin above {over - 1:.2f}")
        else:
            said.append(f"the worst over-prediction was {100 * max(over - 1, 0):.0f}% over the measured latency, "
                        f"within the job's skip_margin ({100 * skip_margin:.0f}%): no sample within budget would "
                        "have been skipped")
    scales = {group: scale for group, scale in report.get("correction", {}).get("scales_fitted_on_all", {}).items()
              if group not in (OVERHEAD, FIXED) and scale > 0 and abs(math.log(scale)) > math.log(FAR_SCALE)}
    if scales:  # which kinds of work the roofline misjudges here, before any trial has corrected it
        far = sorted(scales.items(), key=lambda item: -abs(math.log(item[1])))
        said.append("the correction fitted on every sample scales the roofline's time of " + ", ".join(
            f"{group} by {scale:.2f}" for group, scale in far) + " (over 1: slower here than the roofline "
            "predicts, so a search's predictions of it read fast until its trials correct them; under 1: faster; a "
            "group whose time varies little across the samples is fitted loosely)")
    return said


def _sample_and_measure(base: nn.Module, cost: CostModel, space: Any, heads: list[int], calib: torch.Tensor,
                        profile: Any, base_latency_ms: float, *, samples: int, seed: int,
                        log: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[Prediction], int]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rows: list[dict[str, Any]] = []
    predictions: list[Prediction] = []
    models: list[nn.Module] = []
    refused = unrunnable = 0
    offered = space.distinct(heads)  # as a search offers them: the blocks' own, one heads_keep per head count
    while len(rows) < samples:
        recipe = Recipe(blocks=space.sample(study.ask(), heads, allowed=offered).blocks)  # distillation: no cost
        try:
            prediction = cost.predict(recipe)
            with torch.no_grad():
                model = compress(base, recipe, calibration=calib)
        except AutocompError:
            refused += 1
            if refused > 10 * samples:
                raise AutocompError(f"the operators refused {refused} of the recipes sampled from the search "
                                    "space; check its fractions (e.g. a rank that saves nothing)") from None
            continue
        try:
            result = measure(model, profile, example=calib, reference=base)
        except ExportFailed as exc:  # the target cannot run it (e.g. int8 weights on OpenVINO without the kernel)
            unrunnable += 1
            log(f"not measured: the target cannot run {recipe.summary()} ({exc}); another sample is drawn")
            if unrunnable > 10 * samples:
                raise AutocompError(f"the target cannot run {unrunnable} of the recipes sampled from the search "
                                    "space; leave out of it the settings it cannot run (the log names them)") from None
            continue
        rows.append({"recipe_summary": recipe.summary(), "recipe": recipe.to_dict(),
                     "roofline_latency_ms": prediction.latency_ms,
                     "measured_latency_ms": result.latency_ratio * base_latency_ms,
                     "latency_ratio": result.latency_ratio, "raw_latency_ms": result.latency_ms,
                     "latency_iqr_ms": result.latency_iqr_ms,
                     "predicted_memory_mb": prediction.memory_nbytes / MB, "measured_memory_mb": result.memory_mb})
        predictions.append(prediction)
        models.append(model)
        log(f"sample {len(rows)}/{samples}: {recipe.summary()}  measured {rows[-1]['measured_latency_ms']:.3f} ms, "
            f"{result.memory_mb:.3f} MB")
    # The ceiling: a second measurement of every model, after all the first ones, predicts the first no better than
    # the machine allows. A cost model cannot rank candidates better than the measurement ranks itself.
    log(f"measuring the {len(rows)} samples a second time (the noise floor no cost model can beat on this machine)")
    for row, model in zip(rows, models, strict=True):
        again = measure(model, profile, example=calib, reference=base)
        row["repeat_latency_ms"] = again.latency_ratio * base_latency_ms
    return rows, predictions, unrunnable


def _correction(identity: Prediction, predictions: Sequence[Prediction], measured: Sequence[float],
                anchor: float) -> CorrectedCostModel:
    """A correction fitted on the uncompressed model and ``predictions``, in anchored units (as the search fits
    it, see :class:`autocomp.search._screen.CostPredictor`)."""
    correction = CorrectedCostModel()
    correction.add(identity, identity.latency_ms)
    for prediction, value in zip(predictions, measured, strict=True):
        correction.add(prediction, value / anchor)
    return correction


def _leave_one_out(identity: Prediction, predictions: Sequence[Prediction], measured: Sequence[float],
                   anchor: float) -> list[float]:
    """Each recipe's corrected latency (ms) from a correction fitted on all the others."""
    corrected = []
    for index, prediction in enumerate(predictions):
        others = [i for i in range(len(predictions)) if i != index]
        fit = _correction(identity, [predictions[i] for i in others], [measured[i] for i in others], anchor)
        corrected.append(fit.latency_ms(prediction) * anchor)
    return corrected


def _clean(stats: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: an undefined statistic (a rank correlation of constant values) is null."""
    return {key: None if math.isnan(value) else value for key, value in stats.items()}


def plot_fidelity(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Predicted against measured: latency (roofline, anchored, corrected) and memory, with the ±10 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    panels = ((axes[0], "measured_latency_ms", (("roofline_latency_ms", "roofline (before)", "0.6"),
                                                ("anchored_latency_ms", "anchored on the base", "tab:orange"),
                                                ("corrected_latency_ms", "corrected, leave-one-out (after)",
                                                 "tab:blue")), "latency (ms)"),
              (axes[1], "measured_memory_mb", (("predicted_memory_mb", "predicted", "tab:blue"),), "memory (MB)"))
    for axis, measured_key, series, label in panels:
        measured = [r[measured_key] for r in rows]
        values = measured + [r[key] for key, _, _ in series for r in rows]
        low, high = min(values) * 0.9, max(values) * 1.1
        axis.plot([low, high], [low, high], color="k", lw=1, label="predicted = measured")
        axis.fill_between([low, high], [0.9 * low, 0.9 * high], [1.1 * low, 1.1 * high], color="0.9",
                          label="±10 %")
        for key, name, color in series:
            axis.scatter(measured, [r[key] for r in rows], s=18, c=color, label=name)
        for scale in (axis.set_xscale, axis.set_yscale):
            scale("log")
        for ticks in (axis.xaxis, axis.yaxis):
            ticks.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ticks.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xlabel(f"measured {label}")
        axis.set_ylabel(f"predicted {label}")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"cost model fidelity, {len(rows)} random recipes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
