"""What a search does before its first trial: the uncompressed model's accuracy and cost (the baseline), the cost
model's screen, the sensitivity and latency passes that narrow the choices (with the checks that the budget can be
met at all, :mod:`autocomp.search._reach`), and the teacher's outputs every distillation reuses."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from autocomp._compress import compress
from autocomp._io import read_safetensors, write_safetensors
from autocomp.budget import COUNTED
from autocomp.config import JobConfig
from autocomp.data import Split, Splits
from autocomp.data._config import REBUILT_FROM
from autocomp.distill import TeacherCache
from autocomp.errors import AutocompError
from autocomp.hardware import HardwareProfile
from autocomp.measure import busy, num_threads, starved
from autocomp.measure.backends import PyTorchCpu, backend_of
from autocomp.measure.placement import DeviceLost, measure_on_device
from autocomp.measure.profiling import usable_cpus
from autocomp.models import ModelSpec, require_float32
from autocomp.recipe import Distill, Recipe
from autocomp.search import _reach
from autocomp.search._objective import metrics_of
from autocomp.search._reach import check_latency_reachable, check_reachable
from autocomp.search._screen import CostPredictor, Screen
from autocomp.space import SearchSpace, setting_label
from autocomp.search._sensitivity import (Setting, allowed_choices, offered_settings, passes_run, progress_lines,
                                          read_sensitivity, sensitivity_pass, too_slow, uniform_latencies,
                                          unrunnable_settings, without, without_slow, write_sensitivity,
                                          write_uniform_latencies)
from autocomp.search._start import held_by_all, lightest, recipe_of, uniform_values
from autocomp.train import evaluate, scoring_device

__all__ = ["check_classes", "baseline_cost", "baseline_accuracy", "untrained_note", "screen_of", "sensitivity",
           "latency_of", "teacher_cache", "SENSITIVITY"]


def check_classes(base: nn.Module, splits: Splits, config: JobConfig) -> None:
    """Refuse a model whose outputs are not the data's classes (one calibration image through it): an ImageNet head
    on a folder of 37 classes would score near 0 and distil against labels it has no output for. So is a forward
    that returns other than a logits tensor (a tuple, a dict)."""
    image, data = splits.calib.x[:1], config.data.dataset
    require_float32(base)  # its first layer refused the images' float32 with a dtype error, read as image settings
    try:
        with torch.no_grad():
            logits = base(image)
    except Exception as exc:  # noqa: BLE001 - the user's forward, on the images the data section makes
        fix = ("set data.image_size (and data.mean, data.std) to the images the model was trained on"
               if data == "imagefolder" else f"give a model built for {data}'s images")
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 300 else reason[:300] + " ..."
        raise AutocompError(f"the model fails on the data's images ({'x'.join(map(str, image.shape[1:]))}, "
                            f"channels x height x width): {type(exc).__name__}: {reason}; {fix}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = f"a tensor of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else \
            f"a {type(logits).__name__}"
        raise AutocompError(f"the model's forward returns {got} for one image; autocomp scores and distils the "
                            "logits, a tensor of (images, classes): give it a module whose forward returns them "
                            "(e.g. a wrapper returning the logits item of the tuple or dict)")
    if splits.num_classes < 2:
        where = f" ({config.data.root}: one class folder)" if data == "imagefolder" else ""
        raise AutocompError(f"the data has {splits.num_classes} class{where}: every image has the same label, so "
                            "every candidate scores 100% and nothing tells them apart; give images of at least 2 "
                            "classes")
    if (outputs := logits.shape[-1]) != splits.num_classes:
        order = " (class folders in sorted order)" if data == "imagefolder" else ""
        count = splits.num_classes
        rebuilt = (getattr(base, REBUILT_FROM, None) or {}).get("model", "")
        kind = rebuilt.split()[1] if rebuilt.startswith("transformers'") else ""
        kind = "DeiTForImageClassification" if kind.endswith("WithTeacher") else kind  # that one cannot be trained
        head = (f"transformers' {kind}.from_pretrained with num_labels={count} and "
                "ignore_mismatched_sizes=True" if rebuilt.startswith("transformers'") else
                f"torchvision's model.heads.head = nn.Linear(hidden_dim, {count})" if rebuilt.startswith("torchvision")
                else f"a timm model's reset_classifier({count})")
        fix = (f"give a module with {count} outputs trained on these classes ({head} makes such a head, untrained)"
               if isinstance(config.model, nn.Module) or rebuilt else
               f"set model.kwargs.num_classes: {count} and give a checkpoint trained on these classes")
        raise AutocompError(f"the model has {outputs} outputs but the data has {count} classes; its outputs must be "
                            f"the data's classes{order}: {fix}")


SENSITIVITY = "sensitivity.json"  # the choices the sensitivity pass left per parameter, reused on resume
TEACHER_OUTPUTS = "teacher_outputs-{}.safetensors"  # the teacher's logits for distillation, reused on resume (key)


def sensitivity(run_dir: Path, base: nn.Module, space: SearchSpace, heads: list[int], splits: Splits,
                screen: Screen | None, config: JobConfig, log: Callable[[str], None], *, fresh: bool,
                profile: HardwareProfile, limits: Mapping[str, float], base_latency_ms: float,
                before_timing: Callable[[], None]) -> tuple[list[Setting], dict[str, tuple]]:
    """The sensitivity pass of a new search (its settings, and the choices it leaves per parameter); a resumed one
    reuses the settings and choices it saved (the settings guide the local moves' fill).

    Under a latency limit it also measures each setting in every block at once (each that the sensitivity pass
    left in some block: timing one it left in none would buy nothing): without a memory limit, a setting that saves
    less than ``sensitivity.min_saving`` of the latency is offered in no block (on this backend it does not buy
    time; with one, it stays for the bytes it saves), and the cost model learns from these measurements before the
    first trial. ``before_timing`` is
    called before them (it waits until the trials' workers have started). Under another budget, on a target other
    than PyTorch on the CPU, each such setting is run there once instead (exported and checked, not timed; in the
    first block, and in every block where that fails). Either way a setting the target cannot run is offered in no
    block."""
    def label(knob: str, value: Any) -> str:
        return setting_label(knob, value, dynamic=space.chooses_activations)

    saved = run_dir / SENSITIVITY
    if saved.is_file():
        allowed = {name: tuple(values) for name, values in json.loads(saved.read_text()).items()}
        return read_sensitivity(run_dir), allowed
    if not fresh:  # a study begun before the choices were saved: offer them as it did (and the blocks' own)
        return [], space.distinct(heads) if space.blocks else {}
    settings: list[Setting] = []
    removed, refused = 0, set()  # what the sensitivity pass and the runtime pass leave out
    left_out: dict[tuple[str, Any], str] = {}  # why the passes after the sensitivity pass left a setting out
    distinct = allowed = space.distinct(heads)  # the blocks' own choices, one heads_keep per head count
    if fewer := space.distinct_heads(heads):
        groups: dict[tuple, list[str]] = {}  # (fractions offered, head count) -> the blocks
        for name, values in fewer.items():
            block = name.split(".")[0]
            groups.setdefault((tuple(values), heads[0 if block == "all" else int(block[1:])]), []).append(block)
        log("heads_keep: choices that keep as many heads as a larger one are offered once (the largest "
            "fraction for each count): " + "; ".join(
                f"{'every block' if len(blocks) == len(heads) or blocks == ['all'] else ', '.join(blocks)} "
                + ", ".join(setting_label("heads_keep", value, [count]).removeprefix("heads_keep ")
                            for value in values) for (values, count), blocks in groups.items()))
    passes = passes_run(space, config.sensitivity.images)
    if passes and not space.uniform:
        started = time.perf_counter()
        subset = splits.val.subset(config.sensitivity.images)  # all of validation when it is smaller
        device = scoring_device(config.resources.gpu)
        settings = sensitivity_pass(base, space, heads, val=subset,
                                    calib=splits.calib.x, predictor=screen.predictor if screen is not None else None,
                                    threads=setup_threads(config), log=log, device=device)
        drop_above = config.sensitivity.drop_above
        allowed = allowed_choices(settings, space, drop_above=drop_above, allowed=distinct)
        write_sensitivity(run_dir, settings, drop_above=drop_above, offer=(space, allowed, heads))
        removed = sum(len(distinct.get(name, getattr(space, name.split(".")[1]))) - len(values)
                      for name, values in allowed.items())
        log(f"sensitivity: {len(settings)} settings, each on one block alone, scored on {len(subset)} "
            f"validation images{' on the GPU' if device != 'cpu' else ''} in {time.perf_counter() - started:.0f} s; "
            f"{removed} not offered to the search (alone "
            f"they cost more than {drop_above:g} points, or the operators refuse them): {run_dir / 'sensitivity.csv'}")
        refusals: dict[tuple[str, Any], list[Setting]] = {}
        for s in settings:
            if s.refused:
                refusals.setdefault((s.knob, s.value), []).append(s)
        for (knob, value), blocks in refusals.items():  # said once per setting, with the first block's reason
            log(f"sensitivity: the operators refuse {label(knob, value)} in {len(blocks)} of {len(heads)} blocks "
                f"({blocks[0].refused})")  # "block 0: low_rank rank=0.5 keeps ..."
    if passes and "latency_ms" in limits:
        before_timing()
        started = time.perf_counter()
        timed = offered_settings(allowed, space, len(heads))  # one offered in no block has no time to buy
        untimed = [setting for setting in offered_settings(distinct, space, len(heads))
                   if setting not in timed]  # what the sensitivity pass took from every block
        # under a memory or weights limit as well, a setting that saves no time may save the bytes the budget
        # needs: kept
        minimum = None if any(key in limits for key in COUNTED) else config.sensitivity.min_saving
        with num_threads(config.resources.cpu):
            ratios = uniform_latencies(  # the cost model learns from them before the first trial
                base, space, heads, calib=splits.calib.x, measure=_reach.ratio_of(base, profile, splits, config),
                observe=None if screen is None else lambda recipe, r: screen.observe(recipe, r * base_latency_ms),
                log=log, settings=timed, min_saving=minimum)
            # a space whose every candidate holds some compression (weight_bits [8]): a setting saves time or not
            # against that, the least the search can choose, not against the uncompressed model
            floor = _floor_ratio(base, space, heads, splits, config, profile, screen, base_latency_ms, log) \
                if held_by_all(space) and any(r < math.inf for r in ratios.values()) else 1.0
        judged = {setting: ratio / floor for setting, ratio in ratios.items()}
        write_uniform_latencies(run_dir, ratios, min_saving=minimum, floor=floor)  # before a refusal: it explains it
        check_latency_reachable(ratios, base, space, heads, splits, config, profile, limits["latency_ms"],
                                base_latency_ms, allowed=allowed, dropped=untimed, floor=floor)
        allowed = without_slow(allowed, judged, space, len(heads), min_saving=minimum)
        refused = {setting for setting, ratio in ratios.items() if ratio == math.inf}  # named if memory is short
        saving = config.sensitivity.min_saving
        slow = [f"{label(knob, value)} ({r:.2f}x{': slower' if round(r, 2) > 1 else ''})"
                for (knob, value), r in too_slow(judged, min_saving=saving).items()]
        against = "" if floor == 1.0 else f" against {held_by_all(space)} in every block ({floor:.2f}x)"
        if minimum is not None:  # the ratio as uniform_latency.csv has it
            left_out |= {setting: ("in every block it slows the model" if round(judged[setting], 2) > 1 else
                                   f"in every block it saves less than {minimum:.0%} of the latency")
                         + f"{against} ({ratios[setting]:.2f}x, uniform_latency.csv)"
                         for setting in too_slow(judged, min_saving=minimum)}
        if not ratios:
            log("latency: nothing to time: the sensitivity pass offers no setting in any block")
        else:
            took = time.perf_counter() - started
            log(f"latency: {len(ratios)} settings measured in every block at once in {took:.0f} "
                + (f"s ({len(untimed)} more, which the sensitivity pass offers in no block, not timed); " if untimed
                   else "s; ")
                + (("offered for the memory limit although they " if minimum is None else "not offered, they ")
                   + f"{_reach.saves_too_little(saving, plural=True)} here{against}: " + ", ".join(slow) if slow
                   else f"each one the target runs saves time here{against}") + f": {run_dir / 'uniform_latency.csv'}")
    elif passes and backend_of(profile).name != PyTorchCpu.name:  # untimed: what the target cannot run is left out
        started = time.perf_counter()
        with num_threads(config.resources.cpu):
            refused = unrunnable_settings(base, space, heads, calib=splits.calib.x,
                                          run=run_once(profile, splits, config), log=log,
                                          settings=offered_settings(allowed, space, len(heads)))
        allowed = without(allowed, refused, space, len(heads))
        log(f"runtime: the settings run on the target in {time.perf_counter() - started:.0f} s (each in the first "
            "block, and in every block where that failed); "
            + ("the target cannot run " + ", ".join(label(knob, value) for knob, value in sorted(refused))
               if refused else "the target runs each one"))
    left_out |= {setting: "the target cannot run it" for setting in refused}
    if settings and left_out:  # what the passes after the sensitivity pass left out: its file says so too
        write_sensitivity(run_dir, settings, drop_above=config.sensitivity.drop_above, offer=(space, allowed, heads),
                          left_out=left_out)
    if screen is not None and any(key in limits for key in COUNTED) and allowed != distinct:  # what the passes left
        # may not reach the bytes it needs
        said = ([f"the sensitivity pass left out {removed} settings that alone cost a block more than "
                 f"{config.sensitivity.drop_above:g} points or that the operators refuse, see sensitivity.csv: a "
                 "higher sensitivity.drop_above lets the search try the former"] if removed else [])
        said += [f"the target cannot run {', '.join(label(k, v) for k, v in sorted(refused))}"] if refused else []
        check_reachable(space, heads, screen, config, log, allowed=allowed, left_out="; ".join(said))
    saved.write_text(json.dumps(allowed, indent=1))
    return settings, allowed


def _floor_ratio(base: nn.Module, space: SearchSpace, heads: list[int], splits: Splits, config: JobConfig,
                 profile: HardwareProfile, screen: Screen | None, base_latency_ms: float,
                 log: Callable[[str], None]) -> float:
    """The latency, as a fraction of the uncompressed model's, of the space's least compression in every block (what
    every candidate holds: ``held_by_all``), measured on the target (the cost model learns from it); 1 (settings
    judged against the uncompressed model) where the operators refuse it or the target cannot run it (said)."""
    recipe = recipe_of(space, heads, uniform_values(space, lightest(space), len(heads)))
    try:
        with torch.no_grad():
            model = compress(base, recipe, calibration=splits.calib.x)
        ratio = _reach.ratio_of(base, profile, splits, config)(model)
    except DeviceLost:
        raise
    except AutocompError as exc:
        log(f"latency: {held_by_all(space)} in every block, what every candidate holds, was not measured ({exc}); "
            "each setting is judged against the uncompressed model")
        return 1.0
    if screen is not None:
        screen.observe(recipe, ratio * base_latency_ms)
    return ratio


def run_once(profile: HardwareProfile, splits: Splits, config: JobConfig) -> Callable[[nn.Module], None]:
    """Runs a model on the target as a trial's measurement does (exported, checked against PyTorch on a batch of
    validation images), timed once: raises :class:`~autocomp.measure.backends.ExportFailed` where it cannot run."""
    once = dataclasses.replace(profile, warmup=0, repeats=1)
    images = splits.val.subset(RUN_CHECK_IMAGES).tensors()[0]

    def run(model: nn.Module) -> None:
        measure_on_device(model, once, example=splits.calib.x, timeout_s=config.measure_timeout_s, check=images)
    return run


RUN_CHECK_IMAGES = 64  # validation images a setting's run on the target is checked on (a trial checks up to 256)


def latency_of(base: nn.Module, profile: HardwareProfile, splits: Splits, config: JobConfig, screen: Screen | None,
               base_latency_ms: float) -> Callable[[Recipe], float] | None:
    """A recipe's latency in ms, compressed and measured on the target (the cost model learns from it); None
    without a cost model (nothing is predicted that a measurement would check)."""
    if screen is None:
        return None
    ratio = _reach.ratio_of(base, profile, splits, config)

    def latency_ms(recipe: Recipe) -> float:
        with torch.no_grad(), num_threads(config.resources.cpu):
            measured = ratio(compress(base, recipe, calibration=splits.calib.x)) * base_latency_ms
        screen.observe(recipe, measured)
        return measured
    return latency_ms


BASELINE_TIMINGS = 3  # the uncompressed model is timed up to this many times on a busy machine


def baseline_cost(base: nn.Module, profile: HardwareProfile, splits: Splits) -> dict[str, Any]:
    """The uncompressed model's cost, measured on the device: what the budget's limits and checks need. Timed again
    on a busy machine (:func:`autocomp.measure.busy`), up to ``BASELINE_TIMINGS`` times, the fastest kept: a load
    only slows a timing, and every latency in ms of the run is a ratio times this one. Where its one thread still
    got too little of a CPU (:func:`autocomp.measure.starved`: other processes kept it busy throughout), its
    ``latency_ms`` is the CPU time of its passes, about what it takes alone, and ``raw_latency_ms`` the wall time.
    ``cpu_share`` and ``timings`` say how it went."""
    measurement = measure_on_device(base, profile, example=splits.calib.x, cached=True).measurement  # a runtime
    timings = 1  # backend exports it once, for these timings and as every trial's reference
    while busy(measurement, profile.threads) and timings < BASELINE_TIMINGS:
        again = measure_on_device(base, profile, example=splits.calib.x, cached=True).measurement
        measurement, timings = min(measurement, again, key=lambda m: m.latency_ms), timings + 1
    cost = {**metrics_of(measurement, measurement.latency_ms), "cpu_share": measurement.cpu_share,
            "timings": timings}
    if starved(measurement, profile.threads):  # a steady load slowed every timing: the CPU time of its passes
        cost["latency_ms"] = measurement.latency_ms * measurement.cpu_share  # (raw_latency_ms: the wall time)
    return cost


def baseline_accuracy(base: nn.Module, splits: Splits, *, device: str = "cpu") -> dict[str, float]:
    """The uncompressed model's validation and test accuracy, on ``device`` (where the trials score): scored once
    the budget is known to be reachable (on a 224-px ViT on a laptop's CPU, minutes that a refused budget would
    lose)."""
    return {"val_accuracy": evaluate(base, splits.val, device=device),
            "test_accuracy": evaluate(base, splits.test, device=device)}


FEW_IMAGES = 50  # validation images below which one image moves a score by more than 2 points


def untrained_note(val_accuracy: float, val: Split, config: JobConfig) -> str | None:
    """A warning where the uncompressed model scores no better on validation than always answering its most common
    class (within two binomial standard errors of that share): a wrong checkpoint (an untrained model), outputs in
    another order than the classes, or preprocessing unlike its training's. The search would compress and distil a
    model that knows nothing of the task, its every accuracy meaningless; None where the model has learnt something.
    """
    labels = val.labels_only()
    if len(labels) < FEW_IMAGES:  # a score of a few images is noise, said by a warning of its own
        return None
    share = torch.bincount(labels).max().item() / len(labels)
    if val_accuracy > 100 * (share + 2 * math.sqrt(share * (1 - share) / len(labels))):
        return None
    checkpoint = getattr(config.model, "checkpoint", None) if isinstance(config.model, ModelSpec) else None
    weights = f"its weights (model.checkpoint: {checkpoint})" if checkpoint else "its weights (is it trained?)"
    folders = config.data.dataset == "imagefolder"
    return (f"the uncompressed model scores {val_accuracy:.2f}% on validation, not clearly better than always "
            f"answering the most common class ({100 * share:.2f}% of the {len(labels)} images; within two standard "
            f"errors): {weights}, the order of its outputs"
            + (" (the class folders in sorted order)" if folders else "") + " or its preprocessing (data.mean, "
            f"data.std{', data.image_size' if folders else ''}) does not match these images; the search goes on, but "
            "it compresses a model that has not learnt this task, and its accuracies measure nothing")


def screen_of(base: nn.Module, profile: HardwareProfile, baseline: Mapping[str, Any], limits: Mapping[str, float],
              config: JobConfig, log: Callable[[str], None]) -> Screen | None:
    """The cost predictor and skip rule of the run; None (nothing predicted or skipped) for a model the cost model
    cannot describe, which is said in the log."""
    try:
        predictor = CostPredictor(base=base, profile=profile, base_latency_ms=baseline["latency_ms"])
    except AutocompError as exc:
        log(f"cost model unavailable ({exc}); trials are not predicted and none is skipped")
        return None
    return Screen(predictor=predictor, limits=limits, margin=config.skip_margin, uncompressed=baseline)


def _first_batch_same(base: nn.Module, train: Split, plan: Distill, kept: torch.Tensor, device: str) -> bool:
    """Whether the teacher gives ``kept`` on the first batch ``plan`` draws (to float rounding: threads and the
    batches the images were run in differ)."""
    first = TeacherCache.build(base, train, dataclasses.replace(plan, steps=1), device=device).outputs[0]
    tolerance = 1e-3 if device != "cpu" else 1e-4  # a GPU's convolutions (TF32) differ more from batch to batch
    return first.shape == kept.shape and torch.allclose(first, kept, rtol=tolerance, atol=tolerance / 10)


def setup_threads(config: JobConfig) -> int:
    """Threads for the driver's work before the first trial (the teacher's outputs, the sensitivity pass): no trial
    runs yet, so it may use the CPUs the trials will share, as far as this machine has them."""
    return max(config.resources.cpu, min(config.workers * config.resources.cpu, usable_cpus()))


def teacher_cache(base: nn.Module, train: Split, space: SearchSpace, config: JobConfig,
                  log: Callable[[str], None], *, run_dir: Path, identity: str) -> TeacherCache | None:
    """The teacher's logits on every batch the space's distillations draw (the longest one; the others take a
    prefix), computed once before the trials, and kept in the run folder for the run's next start (a resume):
    ``identity`` says which model and images they are of (the file of another is computed again); None when the
    space never distils."""
    steps = max(space.distill_steps)
    if steps == 0:
        return None
    plan, device = Distill(steps=steps, alpha=0.5), scoring_device(config.resources.gpu)  # where the trials distil
    key = hashlib.sha256(json.dumps([identity, len(train), steps, plan.batch_size, plan.seed, device]).encode())
    path = run_dir / TEACHER_OUTPUTS.format(key.hexdigest()[:16])
    if path.is_file():
        try:
            kept = read_safetensors(path, "teacher outputs", "")
            cache = TeacherCache(batch_size=plan.batch_size, seed=plan.seed,
                                 outputs=tuple(kept[str(step)] for step in range(steps)))
        except (AutocompError, KeyError):  # damaged (a copy cut short): computed again below
            cache = None
        # the key holds the model, the images' names and labels and their preprocessing, not the pixels: the first
        # batch run again tells an image replaced under its name (or a teacher changed otherwise)
        if cache is not None and _first_batch_same(base, train, plan, cache.outputs[0], device):
            log(f"teacher outputs for {steps} distillation steps read from {path.name}, as an earlier start of this "
                "run computed them")
            return cache
    started = time.perf_counter()
    drawn = TeacherCache.drawn(len(train), plan)
    apart = len(torch.unique(torch.cat(drawn))) if drawn else 0  # each run once, in batches of the plan's
    tick = progress_lines(log, "teacher outputs: {done} of {total} batches of the images the distillations draw",
                          [1] * math.ceil(apart / plan.batch_size))
    with num_threads(setup_threads(config)):
        cache = TeacherCache.build(base, train, plan, progress=tick, device=device)
    log(f"teacher outputs for {steps} distillation steps ({sum(map(len, drawn))} images drawn, {apart} of them "
        f"apart, each run once) computed once for all trials ({time.perf_counter() - started:.1f} s"
        f"{', on the GPU' if device != 'cpu' else ''})")
    try:
        for stale in run_dir.glob(TEACHER_OUTPUTS.format("*") + "*"):  # another model's or images', a write cut short
            stale.unlink()
        write_safetensors(path, {str(step): output for step, output in enumerate(cache.outputs)})
    except OSError as exc:  # the trials have them all the same
        log(f"note: cannot keep the teacher outputs in {path} ({exc.strerror or exc}); a resume computes them again")
    return cache
