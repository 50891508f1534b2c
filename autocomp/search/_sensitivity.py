"""The sensitivity pass, before the search: every setting of every searched knob applied to one block alone, scored
without distillation on a validation subset, with its predicted latency.

It shows the user which blocks tolerate what (``sensitivity.csv`` and the heatmap ``sensitivity.png`` in the run
folder), and it shapes the search: a setting that alone costs more than ``drop_above`` points is not offered in
that block (the least compressing choice always is). A pretrained ViT is far more fragile than a model trained
from scratch on a small data set; without this, the sampler spends its trials learning that the hard way.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp._compress import compress
from autocomp.data import Split
from autocomp.errors import AutocompError
from autocomp.measure import num_threads
from autocomp.measure.backends import ExportFailed
from autocomp.recipe import Recipe
from autocomp.search._screen import CostPredictor
from autocomp.space import STATIC, STATIC_BITS, SearchSpace, heads_kept, setting_label
from autocomp.search._start import held_by_all, lightest, recipe_of, setting_values, uniform_values
from autocomp.train import cpu_only, evaluate

__all__ = ["Setting", "sensitivity_pass", "allowed_choices", "write_sensitivity", "uniform_latencies",
           "unrunnable_settings", "passes_run", "first_block_only", "too_slow", "without_slow", "without",
           "write_uniform_latencies", "progress_lines"]


@dataclass(frozen=True)
class Setting:
    """One knob setting on one block, alone.

    Attributes:
        block: the block's index.
        knob: ``heads_keep``, ``mlp_keep``, ``rank``, ``tokens_keep``, ``weight_bits`` or ``act_bits`` (value 8:
            8-bit weights with static activations, ``STATIC``).
        value: the setting.
        accuracy_drop: points lost against the uncompressed model on the subset, before any distillation (None:
            the operators refuse the setting on this block).
        predicted_latency_ratio: the cost model's latency for it, as a fraction of the uncompressed model's (None
            without a cost model).
        refused: why the operators refuse it on this block (their message), None where they do not.
    """

    block: int
    knob: str
    value: float
    accuracy_drop: float | None
    predicted_latency_ratio: float | None
    refused: str | None = None


def sensitivity_pass(base: nn.Module, space: SearchSpace, heads_per_block: Sequence[int], *, val: Split,
                     calib: torch.Tensor, predictor: CostPredictor | None, threads: int,
                     log: Callable[[str], None] | None = None, device: str = "cpu") -> list[Setting]:
    """Score each non-lightest choice of each searched knob on each block alone (see the module docstring), on
    ``device`` (``cuda``: where the trials score; a setting with CPU-only layers on the CPU); ``log`` hears how far
    it is, every ``PROGRESS_S`` seconds (a 224-px ViT takes minutes on a laptop's CPU)."""
    light = lightest(space)
    uncompressed = {f"b{i}.{knob}": value for i in range(len(heads_per_block)) for knob, value in light.items()}
    space = dataclasses.replace(space, uniform=False)  # each block alone, even where the search keeps them alike
    depth, per_block = len(heads_per_block), len(_settings(space, light))
    with num_threads(threads), torch.no_grad():
        reference = evaluate(base, val, device=device)
        # a space whose every candidate holds some compression (weight_bits [8]): a setting costs what it loses
        # against that, scored from the same block's input, not against the uncompressed model
        least = None
        if held_by_all(space):
            try:
                least = compress(base, recipe_of(space, heads_per_block, uncompressed), calibration=calib)
            except AutocompError:  # the operators refuse it: so they do each setting with it (marked so below)
                pass
        base_latency = predictor.predict(recipe_of(space, heads_per_block, uncompressed))["latency_ms"] \
            if predictor is not None else None
        inputs = BlockInputs.of(base, val, device=device)
        if least is not None and inputs is None:
            reference = evaluate(least, val, device=device)
        # from a block's input, a setting on block b runs depth - b blocks (and the compression, about one more)
        work = [depth - b + 1 if inputs is not None else 1 for b in range(depth) for _ in range(per_block)]
        tick = progress_lines(log, "sensitivity: {done} of {total} settings scored", work)
        settings = []
        for block in range(len(heads_per_block)):
            if inputs is not None and block > 0:
                inputs.advance()
            if least is not None and inputs is not None:  # blocks b.. at the least compression, from b's input
                reference = inputs.accuracy(least)
            scored: dict[int, Setting] = {}  # heads kept -> the (larger) fraction scored for it in this block
            for knob, value in _settings(space, light):
                tick(len(settings))
                if knob == "tokens_keep" and block == depth - 1:  # the recipe leaves it out (nothing after the
                    # last block reads fewer tokens): the uncompressed model, which costs nothing to score
                    settings.append(Setting(block, knob, value, 0.0, 1.0 if predictor is not None else None))
                    continue
                if knob == "heads_keep" and (same := scored.get(heads_kept(value, heads_per_block[block]))):
                    settings.append(dataclasses.replace(same, value=value))  # the same model: scored once
                    continue
                recipe = recipe_of(space, heads_per_block, {**uncompressed, **{
                    space.name(block, k): v for k, v in setting_values(space, knob, value).items()}})
                try:
                    model = compress(base, recipe, calibration=calib)
                except AutocompError as exc:  # e.g. a rank that saves nothing on this block's shapes
                    settings.append(Setting(block, knob, value, None, None, refused=str(exc)))
                    continue
                ratio = predictor.predict(recipe)["latency_ms"] / base_latency if predictor is not None else None
                accuracy = inputs.accuracy(model) if inputs is not None else evaluate(model, val, device=device)
                settings.append(Setting(block, knob, value, reference - accuracy, ratio))
                if knob == "heads_keep":
                    scored[heads_kept(value, heads_per_block[block])] = settings[-1]
    return settings


class _Skip(nn.Module):
    """Stands in for a block whose output is already known: passes its input on."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


class _Captured(Exception):
    """Ends a forward pass once the input of the first block is captured."""


BLOCK_INPUTS_BYTES = 1 << 30  # the most a pass holds of block inputs; beyond, each setting runs the whole model


class BlockInputs:
    """The validation images' input to one block of the uncompressed model, batch by batch, moved on one block at a
    time. A setting on block ``b`` leaves blocks ``0..b-1`` as they are, so their output is the same for every
    setting of ``b``: the pass runs blocks ``b..`` only (half the blocks on average), and decodes the images once.
    The accuracy is the same as :func:`autocomp.train.evaluate`'s, batch for batch, on the same device."""

    def __init__(self, base: nn.Module, inputs: list[torch.Tensor], labels: list[torch.Tensor],
                 probe: torch.Tensor, device: str = "cpu") -> None:
        self.base, self.inputs, self.labels, self.probe, self.block = base, inputs, labels, probe, 0
        self.device = device

    @classmethod
    def of(cls, base: nn.Module, val: Split, *, device: str = "cpu") -> BlockInputs | None:
        """The input of block 0 for ``val``, computed and kept on ``device`` (a copy of ``base`` goes there); None
        for a model whose blocks do not simply follow one another (a token-reducing base) or when the inputs would
        take more than ``BLOCK_INPUTS_BYTES``."""
        if getattr(base.blocks, "plan", None) or not len(val):
            return None
        base = base if device == "cpu" else copy.deepcopy(base).to(device)
        blocks = base.blocks
        captured: list[torch.Tensor] = []

        def capture(module: nn.Module, args: tuple) -> None:
            captured.append(args[0])
            raise _Captured

        labels, probe, handle = [], None, blocks[0].register_forward_pre_hook(capture)
        was_training = base.training
        base.eval()
        try:
            for x, y in val.batches(val.eval_batch_size()):
                try:
                    base(x.to(device))
                except _Captured:
                    pass
                labels.append(y)
                probe = x[:1].to(device) if probe is None else probe
                if sum(h.numel() * h.element_size() for h in captured) > BLOCK_INPUTS_BYTES:
                    return None
        finally:
            handle.remove()
            base.train(was_training)
        if len(captured) != len(labels):  # a forward that does not call its first block: score the whole model
            return None
        return cls(base, captured, labels, probe, device)

    def advance(self) -> None:
        """Move on to the next block's input."""
        block = self.base.blocks[self.block]
        was_training = block.training
        block.eval()
        self.inputs = [block(h) for h in self.inputs]
        block.train(was_training)
        self.block += 1

    def accuracy(self, model: nn.Module) -> float:
        """Top-1 accuracy in percent of ``model``, whose blocks before ``self.block`` are the uncompressed model's:
        those are skipped and the block gets the known input (the stem runs on one image, its output replaced).
        It runs on the inputs' device, or on the CPU for a model holding CPU-only layers; it is on the CPU after."""
        device = "cpu" if cpu_only(model) else self.device
        blocks, batch = model.blocks, []
        kept = [blocks[index] for index in range(self.block)]
        for index in range(self.block):
            blocks[index] = _Skip()
        handle = blocks[self.block].register_forward_pre_hook(lambda module, args: (batch[0], *args[1:]))
        was_training = model.training
        model.eval().to(device)
        try:
            correct = 0
            for h, y in zip(self.inputs, self.labels):
                batch[:] = [h.to(device)]
                correct += int((model(self.probe.to(device)).argmax(-1).cpu() == y).sum())
        finally:
            handle.remove()
            for index, block in enumerate(kept):
                blocks[index] = block
            model.to("cpu").train(was_training)
        return 100.0 * correct / sum(len(y) for y in self.labels)


PROGRESS_S = 30.0  # seconds between two progress lines of a pass before the trials


def progress_lines(log: Callable[[str], None] | None, message: str, work: Sequence[float]) -> Callable[[int], None]:
    """A callable taking how many of the items are done (``work``: what each costs, relative to the others) that
    logs ``message`` (with ``{done}`` and ``{total}``), the minutes so far and, from the pace so far, about how many
    are left, once ``PROGRESS_S`` seconds have passed since the start or its last line: ``sensitivity: 12 of 96
    settings scored (1.0 min; about 7 min left)`` (seconds where less than 90 are left)."""
    started = last = time.perf_counter()
    total = sum(work)

    def tick(done: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if log is not None and now - last >= PROGRESS_S:
            last, elapsed, share = now, now - started, sum(work[:done]) / total
            rest = elapsed / share * (1 - share) if share else None
            left = ("" if rest is None else f"; about {rest:.0f} s left" if rest < 90
                    else f"; about {rest / 60:.0f} min left")
            log(f"{message.format(done=done, total=len(work))} ({elapsed / 60:.1f} min{left})")
    return tick


def passes_run(space: SearchSpace, images: int) -> bool:
    """Whether a new search runs the passes before its first trial (``sensitivity.images``: how many validation
    images the sensitivity pass scores; 0 skips them): where the space has a knob or activations to choose."""
    return images > 0 and (bool(lightest(space)) or space.chooses_activations)


def _settings(space: SearchSpace, light: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Each searched knob's choices but the lightest, and 8-bit weights with static activations where a block
    chooses its activations (``STATIC``: beside ``weight_bits 8``, which then has dynamic ones)."""
    return ([(knob, value) for knob in light for value in sorted(getattr(space, knob), reverse=True)
             if value != light[knob]] + ([STATIC] if space.chooses_activations else []))


def allowed_choices(settings: Sequence[Setting], space: SearchSpace, *, drop_above: float,
                    allowed: Mapping[str, tuple] | None = None) -> dict[str, tuple]:
    """Per Optuna parameter name (``b3.heads_keep``), the choices left (of ``allowed``, else of the space) once
    those that alone lose more than ``drop_above`` points (or that the operators refuse) are removed (as
    :func:`without` removes them from a block); only names that lost a choice are listed."""
    removed: dict[int, set[tuple[str, Any]]] = {}
    for s in settings:
        if s.accuracy_drop is None or s.accuracy_drop > drop_above:
            removed.setdefault(s.block, set()).add((s.knob, s.value))
    result = dict(allowed or {})
    for block, gone in removed.items():
        result = _without_in(result, gone, space, block)
    return result


def offered_settings(allowed: Mapping[str, tuple], space: SearchSpace, blocks: int) -> list[tuple[str, Any]]:
    """The (knob, value) settings of the space (the lightest aside) that ``allowed`` (see :func:`allowed_choices`)
    offers in at least one of ``blocks`` blocks."""
    return [(knob, value) for knob, value in _settings(space, lightest(space))
            if any(offered_in(space, allowed, index, knob, value) for index in range(blocks))]


def offered_in(space: SearchSpace, allowed: Mapping[str, tuple], block: int, knob: str, value: Any) -> bool:
    """Whether ``allowed`` offers the setting (knob, value) in ``block``: each choice it takes (static activations:
    8-bit weights and ``act_bits`` 8) offered there."""
    return all(v in space.offered(block, k, allowed) for k, v in setting_values(space, knob, value).items())


def uniform_latencies(base: nn.Module, space: SearchSpace, heads_per_block: Sequence[int], *, calib: torch.Tensor,
                      measure: Callable[[nn.Module], float],
                      observe: Callable[[Recipe, float], None] | None = None,
                      log: Callable[[str], None] | None = None,
                      settings: Sequence[tuple[str, Any]] | None = None,
                      min_saving: float | None = None) -> dict[tuple[str, Any], float]:
    """Each non-lightest setting of each searched knob (of ``settings``, else every one) applied to every block at
    once, measured: its latency as a fraction of the uncompressed model's (``measure`` times a model against it, on
    the target); ``observe`` gets each recipe with its ratio (the cost model learns from them). What the cost model
    predicts from MACs and kernel rates, this measures: on a small model in PyTorch eager, low-rank pairs or
    simulated 4-bit weights can cost more time than they save. Settings the operators refuse are left out.

    A setting the target's runtime cannot run (:class:`~autocomp.measure.backends.ExportFailed`: e.g. OpenVINO
    without a kernel for int8 weights on this CPU) gets the ratio ``inf``, so that no block is offered it; ``log``
    hears which, with the runtime's reason, and how far the pass is, as in :func:`sensitivity_pass`.

    ``min_saving``: what a setting must save to be offered; one that would be left out though that is implausible
    (:func:`out_of_order`) is measured twice more, and the median kept (None: each once, as where nothing is left
    out for its time)."""
    return _on_target(base, space, heads_per_block, calib=calib, measure=measure, observe=observe, log=log,
                      name="latency", done="measured", settings=settings, remeasure=min_saving)


def unrunnable_settings(base: nn.Module, space: SearchSpace, heads_per_block: Sequence[int], *,
                        calib: torch.Tensor, run: Callable[[nn.Module], None],
                        log: Callable[[str], None] | None = None,
                        settings: Sequence[tuple[str, Any]] | None = None) -> set[tuple[str, Any]]:
    """:func:`uniform_latencies` without the timing, where it does not run (a memory limit): the settings (of
    ``settings``, else every one) the target cannot run (logged, with the runtime's reason), each given to ``run``
    (exported and run on the target once).

    Each setting runs first on :func:`first_block_only` of ``base``: an operator changes a block's layers alike in
    any block, so the target runs them in the first block or in none, and a 12-block ViT cut to one exports and runs
    in a fraction of the time (BENCHMARKS.md, session 27). A setting the cut model fails runs again in every block of
    the whole model, and is refused only if it fails there too: nothing is left out for a reason of the cut model's
    own. How far the outputs drift over every block is each trial's export check."""
    def runs(model: nn.Module) -> float:
        run(model)
        return 0.0
    cut, suspects = first_block_only(base), settings
    if cut is not None:
        first = _on_target(cut, space, heads_per_block[:1], calib=calib, measure=runs, observe=None, log=log,
                           name="runtime", done="run on the target in the first block", settings=settings,
                           report=False)
        # and those block 0's own choices leave out (run there as its lightest, they ran nothing)
        suspects = [setting for setting, result in first.items() if result == math.inf
                    or any(space.fitted(0, k, v) != v for k, v in setting_values(space, *setting).items())]
        if not suspects:
            return set()
    results = _on_target(base, space, heads_per_block, calib=calib, measure=runs, observe=None, log=log,
                         name="runtime", done="run on the target in every block", settings=suspects)
    return {setting for setting, result in results.items() if result == math.inf}


def first_block_only(model: nn.Module) -> nn.Module | None:
    """A shallow copy of ``model`` (its modules shared) that runs its first transformer block alone, for a question
    any block answers alike; None where its blocks are not a plain ``nn.Sequential`` of two or more."""
    blocks = getattr(model, "blocks", None)
    if type(blocks) is not nn.Sequential or len(blocks) < 2:
        return None
    cut = copy.copy(model)
    cut._modules = {**model._modules, "blocks": nn.Sequential(blocks[0])}
    return cut


def _on_target(base: nn.Module, space: SearchSpace, heads_per_block: Sequence[int], *, calib: torch.Tensor,
               measure: Callable[[nn.Module], float], observe: Callable[[Recipe, float], None] | None,
               log: Callable[[str], None] | None, name: str, done: str,
               settings: Sequence[tuple[str, Any]] | None = None, report: bool = True,
               remeasure: float | None = None) -> dict[tuple[str, Any], float]:
    """``measure`` of each setting (of ``settings``, else every one) in every block at once (``inf``: the target
    cannot run it); the log lines begin with the pass's ``name``, say how many settings are ``done`` and, with
    ``report``, each setting the target cannot run."""
    light = lightest(space)
    results, recipes = {}, {}
    settings = _settings(space, light) if settings is None else list(settings)
    tick = progress_lines(log, f"{name}: {{done}} of {{total}} settings {done}", [1] * len(settings))
    for knob, value in settings:
        tick(len(results))
        values = uniform_values(space, {**light, **setting_values(space, knob, value)}, len(heads_per_block))
        try:
            with torch.no_grad():
                recipe = recipe_of(space, heads_per_block, values)
                model = compress(base, recipe, calibration=calib)
        except AutocompError:
            continue
        try:
            results[(knob, value)] = measure(model)
        except ExportFailed as exc:
            results[(knob, value)] = math.inf
            if log is not None and report:
                log(f"{name}: {setting_label(knob, value, dynamic=space.chooses_activations)} is offered in no "
                    f"block, the target cannot run it: {exc}")
            continue
        recipes[(knob, value)] = recipe  # not the model: a 224-px ViT's every setting would be held at once
    # a busy machine's one slow window, not the setting: what the pass would leave out for it is measured again
    suspects = {} if remeasure is None else out_of_order(results, min_saving=remeasure,
                                                         uncompressed=not held_by_all(space))
    for setting, why in suspects.items():
        first, again = results[setting], [results[setting]]
        with torch.no_grad():
            model = compress(base, recipes[setting], calibration=calib)
        try:
            again += [measure(model) for _ in range(2)]
        except ExportFailed:  # ran once, not again: its first figure stands
            continue
        finally:
            del model
        results[setting] = statistics.median(again)
        if log is not None:
            knob, value = setting
            log(f"{name}: {setting_label(knob, value, dynamic=space.chooses_activations)} measured {first:.2f}x, "
                f"{why}: measured twice more, {results[setting]:.2f}x kept (the median of "
                f"{', '.join(f'{r:.2f}' for r in again)})")
    if observe is not None:
        for setting, recipe in recipes.items():
            observe(recipe, results[setting])
    return results


SHRINKING = ("heads_keep", "mlp_keep", "rank", "tokens_keep")  # a smaller value removes more of the same work
STRUCTURAL = ("heads_keep", "mlp_keep")  # smaller matrices only: faster than the uncompressed model


def out_of_order(ratios: Mapping[tuple[str, Any], float], *, min_saving: float, uncompressed: bool = True,
                 margin: float = 0.03) -> dict[tuple[str, Any], str]:
    """The settings of a knob that removes more work the smaller its value that the pass would leave out (saving
    less than ``min_saving``) though that is implausible, each with why: measured more than ``margin`` slower than a
    setting of the same knob that removes less, or, for pruned heads and MLP width (smaller matrices, nothing added),
    at all where the space's lightest candidate is the ``uncompressed`` model. A busy machine slows one setting's
    window (a new user's 4 of 6 heads at 1.03x, between 5 heads at 0.77x and 3 at 0.71x). Where every candidate holds
    some compression (int8 throughout), the ratios are against the uncompressed model, not the least the search can
    choose: only the settings' order is judged then."""
    found = {}
    for knob in SHRINKING:
        mine = sorted(((value, ratio) for (k, value), ratio in ratios.items()
                       if k == knob and ratio < math.inf and isinstance(value, (int, float))),
                      reverse=True)  # the least removed first
        fastest, lighter = math.inf, ""
        for value, ratio in mine:
            if ratio > fastest * (1 + margin):
                found[(knob, value)] = f"slower than {lighter} ({fastest:.2f}x), which removes less"
            elif knob in STRUCTURAL and uncompressed and ratio > 1 - min_saving:
                found[(knob, value)] = (f"saving less than {min_saving:.0%} though it only makes matrices smaller")
            if ratio < fastest and (knob, value) not in found:
                fastest, lighter = ratio, setting_label(knob, value)
    if uncompressed:  # a setting the pass keeps is not worth two more measurements
        found = {setting: why for setting, why in found.items() if ratios[setting] > 1 - min_saving}
    return found


def too_slow(ratios: Mapping[tuple[str, Any], float], *, min_saving: float) -> dict[tuple[str, Any], float]:
    """The settings that, in every block at once, save less than ``min_saving`` of the latency, and their ratios
    (one the target cannot run, ``inf``, is not among them)."""
    return {setting: ratio for setting, ratio in ratios.items() if 1 - min_saving < ratio < math.inf}


def offered(ratio: float, *, min_saving: float | None) -> bool:
    """Whether a setting measured at ``ratio`` of the latency in every block at once is offered to the search: it
    saves at least ``min_saving``; with ``min_saving`` None (a memory limit too: it may save the bytes needed),
    the target runs it."""
    return ratio < math.inf if min_saving is None else ratio <= 1 - min_saving


def without_slow(allowed: Mapping[str, tuple], ratios: Mapping[tuple[str, Any], float], space: SearchSpace,
                 blocks: int, *, min_saving: float | None) -> dict[str, tuple]:
    """``allowed`` (see :func:`allowed_choices`) with every setting not :func:`offered` removed from every block
    (the lightest choice always stays)."""
    slow = {setting for setting, ratio in ratios.items() if not offered(ratio, min_saving=min_saving)}
    return without(allowed, slow, space, blocks)


def without(allowed: Mapping[str, tuple], settings: set[tuple[str, Any]], space: SearchSpace,
            blocks: int) -> dict[str, tuple]:
    """``allowed`` (see :func:`allowed_choices`) with each (knob, value) of ``settings`` removed from every block
    (see :func:`_without_in`)."""
    result = dict(allowed)
    for index in range(blocks):
        result = _without_in(result, settings, space, index)
    return result


def _without_in(allowed: Mapping[str, tuple], settings: set[tuple[str, Any]], space: SearchSpace,
                block: int) -> dict[str, tuple]:
    """``allowed`` with each (knob, value) of ``settings`` removed from ``block`` (its lightest choice always stays,
    of its own where ``blocks`` gives it some; dynamic activations too). ``weight_bits 8`` (with dynamic activations)
    removed where the block still offers ``STATIC`` leaves its 8-bit choice with static activations only; without
    ``STATIC`` left, it goes."""
    light = lightest(space)
    result = dict(allowed)
    act = space.name(block, "act_bits")
    static = (space.chooses_activations and STATIC not in settings
              and STATIC_BITS in result.get(act, space.act_bits))
    for knob in [*light, "act_bits"] if space.chooses_activations else light:
        name = space.name(block, knob)
        choices = result.get(name, tuple(getattr(space, knob)))
        kept = space.fitted(block, knob, light[knob]) if knob in light else None  # the block's lightest stays
        gone = {v for v in choices if (knob, v) in settings and v != kept}
        if knob == "weight_bits" and STATIC_BITS in gone and static:
            gone.discard(STATIC_BITS)
            result[act] = (STATIC_BITS,)
        if gone:
            result[name] = tuple(v for v in choices if v not in gone)
    if space.chooses_activations and not result.get(act, space.act_bits):  # neither activation left at 8 bits
        bits = space.name(block, "weight_bits")
        if light.get("weight_bits", STATIC_BITS) != STATIC_BITS:
            result[bits] = tuple(v for v in result.get(bits, space.weight_bits) if v != STATIC_BITS)
        result[act] = (space.first_act(block),)  # asked of no block then; where 8 bits is the lightest, dynamic
    return result


def write_uniform_latencies(run_dir: Path, ratios: Mapping[tuple[str, Any], float], *,
                            min_saving: float | None, floor: float = 1.0) -> None:
    """``uniform_latency.csv``: each setting measured in every block at once (``inf``: the target cannot run it), as
    a fraction of the uncompressed model's latency, and whether it is :func:`offered` (judged against ``floor``: the
    ratio of what every candidate of the space holds, 1 where that is nothing)."""
    with (run_dir / "uniform_latency.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["knob", "value", "latency_ratio", "offered"])
        for (knob, value), ratio in ratios.items():
            writer.writerow([knob, value, f"{ratio:.3f}", offered(ratio / floor, min_saving=min_saving)])


def write_sensitivity(run_dir: Path, settings: Sequence[Setting], *, drop_above: float,
                      offer: tuple[SearchSpace, Mapping[str, tuple], Sequence[int]] | None = None,
                      left_out: Mapping[tuple[str, Any], str] | None = None) -> None:
    """``sensitivity.csv`` (one row per setting) and ``sensitivity.png`` (blocks x settings, coloured by the
    accuracy drop; settings not offered to the search are crossed). Offered: by the drop alone, or, with ``offer``
    (the space, the choices the passes left, :func:`allowed_choices` and after, and the blocks' head counts), as the
    search samples (a head fraction that keeps as many heads as one offered is that one); why a setting is not
    (``left_out``: by the passes after this one, e.g. "the target cannot run it")."""
    def offered(s: Setting) -> bool:
        if s.accuracy_drop is None or s.accuracy_drop > drop_above or offer is None:
            return s.accuracy_drop is not None and s.accuracy_drop <= drop_above
        space, allowed, heads = offer
        if s.knob == "tokens_keep" and s.block == len(heads) - 1:  # scored as nothing: no recipe reduces there
            return False
        if s.knob == "heads_keep":
            return any(heads_kept(v, heads[s.block]) == heads_kept(s.value, heads[s.block])
                       for v in space.offered(s.block, "heads_keep", allowed))
        return offered_in(space, allowed, s.block, s.knob, s.value)

    def why(s: Setting) -> str:
        if offer is not None and s.knob == "tokens_keep" and s.block == len(offer[2]) - 1:
            return "after the last block no block reads fewer tokens: the search never reduces them there"
        if offer is not None and any(offer[0].fitted(s.block, k, v) != v
                                     for k, v in setting_values(offer[0], s.knob, s.value).items()):
            return "the search space's blocks: leaves it out of this block"
        if s.refused:
            return "the operators refuse it"
        if s.accuracy_drop is None or s.accuracy_drop > drop_above:
            return f"alone it costs more than {drop_above:g} points"
        return (left_out or {}).get((s.knob, s.value), "not offered")

    marks = [offered(s) for s in settings]
    with (run_dir / "sensitivity.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["block", "knob", "value", "accuracy_drop", "predicted_latency_ratio", "offered", "refused",
                         "left_out"])
        for s, mark in zip(settings, marks):
            writer.writerow([s.block, s.knob, s.value, _fmt(s.accuracy_drop), _fmt(s.predicted_latency_ratio),
                             mark, s.refused or "", "" if mark else why(s)])
    if settings:
        _heatmap(run_dir / "sensitivity.png", settings, marks, drop_above)


def read_sensitivity(run_dir: Path) -> list[Setting]:
    """The settings :func:`write_sensitivity` saved in ``run_dir`` (none when the run has no ``sensitivity.csv``)."""
    path = run_dir / "sensitivity.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [Setting(int(row["block"]), row["knob"], float(row["value"]), _number(row["accuracy_drop"]),
                        _number(row["predicted_latency_ratio"]), refused=row.get("refused") or None)
                for row in csv.DictReader(handle)]  # a run's file from before "refused": None


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _number(text: str) -> float | None:
    return float(text) if text else None


def _heatmap(path: Path, settings: Sequence[Setting], offered: Sequence[bool], drop_above: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = list(dict.fromkeys((s.knob, s.value) for s in settings))
    blocks = sorted({s.block for s in settings})
    grid = np.full((len(blocks), len(columns)), np.nan)
    for s in settings:
        if s.accuracy_drop is not None:
            grid[blocks.index(s.block), columns.index((s.knob, s.value))] = s.accuracy_drop
    from matplotlib.colors import TwoSlopeNorm

    fig, axis = plt.subplots(figsize=(2.5 + 0.6 * len(columns), 2.0 + 0.35 * len(blocks)))
    # losses red, gains blue (a setting that alone scores above its reference: noise or a real gain), 0 white
    scored = grid[~np.isnan(grid)]
    low, high = (float(scored.min()), float(scored.max())) if scored.size else (0.0, 0.0)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=min(low, -0.5), vmax=max(high, 0.5))
    image = axis.imshow(grid, cmap="RdBu_r", norm=norm, aspect="auto")
    for s, mark in zip(settings, offered):
        where = columns.index((s.knob, s.value)), blocks.index(s.block)
        dark = s.accuracy_drop is not None and abs(float(norm(s.accuracy_drop)) - 0.5) > 0.3
        text = f"{s.accuracy_drop:.1f}" if mark else "x"
        axis.text(*where, text, ha="center", va="center", fontsize=8 if text == "x" else 6,
                  color="white" if dark else "black")
    axis.set_xticks(range(len(columns)), [setting_label(k, v) for k, v in columns], rotation=60, ha="right",
                    fontsize=8)
    axis.set_yticks(range(len(blocks)), [f"block {b}" for b in blocks], fontsize=8)
    fig.colorbar(image, label="points lost undistilled (< 0: gained)")
    axis.set_title(f"each setting alone; x: not offered (drop > {drop_above:g}, or see sensitivity.csv)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
