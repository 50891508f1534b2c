"""Run a search job: measure the uncompressed model (on the device's Ray node when the profile names one), then let
Ray Tune execute the trials that Optuna asks for and the cost model does not skip, writing results after every
trial."""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
import torch

from autocomp import _quiet
from autocomp._signals import Terminated, end_as_terminated, terminated_as_interrupted
from autocomp.budget import COUNTED, feasible, violations
from autocomp.config import JobConfig, load_config, named
from autocomp.data import preprocessing_source
from autocomp.data._config import REBUILT_FROM
from autocomp.errors import AutocompError, AutocompTypeError, warn
from autocomp.hardware import HardwareProfile, read_profile
from autocomp.measure import COUNTING, spread_warning
from autocomp.measure.backends import backend_of, check_images, require_backend
from autocomp.measure.placement import require_device
from autocomp.measure.profiling import cap_note, load_profile, profile_note, threads_note
from autocomp.models import ModelSpec, base_model, factory_module, model_digest, vit_blocks
from autocomp.ops.quantize import int8_linear_top_code
from autocomp.recipe import Recipe
from autocomp.results import STUDY_NAME, UNITS, study_file, study_storage, trial_rows, write_results
from autocomp.search import _before as before
from autocomp.search import _finish as finish
from autocomp.search import _images as run_images
from autocomp.search import _reach as reach
from autocomp.search import _rundir as rundir
from autocomp.search._controller import COARSE, DIRECTIONS, OptunaController, again, counted
from autocomp.search._fidelity import FrontRule
from autocomp.search._loop import TrialLoop
from autocomp.search._objective import TrialInputs, distill_subset
from autocomp.search._progress import Progress
from autocomp.search._ray import check_ray_address, ray_running, ray_session, require_trial_resources
from autocomp.search._screen import Screen
from autocomp.space import SearchSpace, load_space
from autocomp.search._sensitivity import Setting
from autocomp.search._start import START, as_built, require_choices, start_points
from autocomp.train import release_gpu, scoring_device

__all__ = ["run_search"]

PLOT_EVERY_S = 60.0
LOOP_SECONDS = "loop_seconds"  # study user attr: wall time of the trial loops (every run of the job), for the overhead
ASKING_SECONDS = "asking_seconds"  # ... and the time the controller spent choosing their trials
LEARNT_BEFORE = "learnt_before_trials"  # ... and the measurements the cost model learnt from before the first trial
GUIDED = ("tpe", "gp")  # the samplers the coarse stage and the local moves run with
SPLIT_NAMES = {"train": "training", "calib": "calibration", "val": "validation", "test": "test"}  # as logged


def run_search(config: JobConfig | str | Path, run_dir: str | Path, *, ray_address: str | None = None,
               log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Search compressed variants of ``config.model`` within ``config.budget``; returns the summary. ``config``: a
    :class:`JobConfig`, or the path of a job YAML (:func:`~autocomp.config.load_config`).

    Results land in ``run_dir`` as trials finish. Running again on the same ``run_dir`` resumes the study: only the
    trials still missing are run. When the hardware profile names a ``ray_resource``, every measurement runs on the
    Ray node holding it (:mod:`autocomp.measure.placement`), and a cluster without it is refused before anything runs.
    Candidates the cost model predicts to be more than ``config.skip_margin`` over a limit are skipped
    (:mod:`autocomp.search._screen`).
    """
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif not isinstance(config, JobConfig):
        raise AutocompTypeError(f"run_search takes a JobConfig (autocomp.config.load_config('job.yaml')) or the "
                                f"path of a job YAML, got {type(config).__name__}")
    if not isinstance(run_dir, (str, Path)):
        raise AutocompTypeError(f"run_search's run_dir must be the path of the run folder (str or Path), got "
                                f"{type(run_dir).__name__} {run_dir!r}")
    if not callable(log):
        raise AutocompTypeError(f"run_search's log must be a function taking each line (print, a logger's info, "
                                f"list.append), got {type(log).__name__} {log!r}; to keep the lines in a file, pass "
                                "e.g. open('search.log', 'a').write, or a logging.Logger's info")
    check_ray_address(ray_address)  # before anything is computed
    run_dir = Path(run_dir)
    # kill PID stops a search begun from Python as Ctrl-C does, then ends the process as it would have (the
    # command line, which takes SIGTERM itself, and a caller with a handler of its own keep theirs); Ctrl-C (a
    # notebook's interrupt) is remembered where Python would drop it (landing in a finalizer), as the command line's
    with terminated_as_interrupted(unless_handled=True, ctrl_c=True) as taken:
        try:
            with rundir.one_search_at_a_time(run_dir, log):
                try:
                    return _search(config, run_dir, ray_address=ray_address, log=log, progress=progress)
                except Exception as exc:  # an interrupt landing inside a library's own handler (Optuna's journal
                    # lock, releasing) comes out as that handler's error: still the user's interrupt, with what is kept
                    if (interrupt := _interrupt_behind(exc)) is not None:
                        raise interrupt from None
                    raise
        except Terminated:
            if not taken:
                raise
            log(f"terminated; results written so far are kept in {run_dir} (run the same search again to resume)")
    end_as_terminated()


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C, or SIGTERM as the command line raises it) that ``exc`` was raised while
    handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def _search(config: JobConfig, run_dir: Path, *, ray_address: str | None, log: Callable[[str], None],
            progress: bool) -> dict[str, Any]:
    """:func:`run_search`'s work, in a run folder it holds."""
    # what costs nothing is checked first: the space's file, the target's runtime, the model and its weights, the
    # folder's other job, the data and its preprocessing; a profile is measured on first use (half a minute) last
    resuming = (run_dir / "run.json").is_file()
    space = load_space(config.search_space)  # a mistake in its file is said first: it costs nothing to read
    _runtime_first(config, ray_address)
    base = base_model(config.model)
    if rebuilt := getattr(base, REBUILT_FROM, None):
        log(f"model: {rebuilt['model']}, rebuilt as timm's VisionTransformer with the same weights (the same "
            "outputs): the candidates, best/ and the exports are timm's")
    if isinstance(config.model, ModelSpec) and config.model.name is not None and not config.model.checkpoint:
        warn(f"model.checkpoint is not given: {config.model.name} starts from random weights (autocomp never "
             "downloads timm's pretrained ones), so every accuracy of this search is a random model's; give the "
             "trained weights file (.safetensors or .pth) in model.checkpoint")
    # the blocks' own choices resolved for this model (run.json records the file's, as written: ``given``)
    given, space = space, space.for_depth(len(vit_blocks(base)), where=named(config, "search_space", kind=True))
    space.check_layers(base, where=named(config, "search_space", kind=True))  # its names, before the images load
    if not resuming:  # a run begun before these checks keeps what its passes left
        space.check_ranks(base, where=named(config, "search_space", kind=True))
        space.check_tokens(base, where=named(config, "search_space", kind=True))
        require_choices(space, where=named(config, "search_space", kind=True),
                        heads=[block.attn.num_heads for block in vit_blocks(base)])
    job, identity, fingerprint = rundir.job_identity(config, base)
    digest = model_digest(base)
    previous = rundir.previous_run(run_dir, [fingerprint, rundir.earlier_fingerprint(config, identity, job, run_dir),
                                             rundir.moved(config, identity, job, run_dir) if resuming else None],
                                   job, config, digest)
    if previous is not None:
        rundir.require_same_model(previous, digest, config, run_dir)
    recorded = None if previous is None else previous.get("images", run_images.OLDER)
    splits = rundir.run_splits(config, base, recorded, run_dir, log)
    profile, measuring = _target(config, log, ray_address=ray_address)
    if previous is not None:  # what the job's files hold checked: where they moved, the new paths are kept
        rundir.record_move(run_dir, config, job, fingerprint, log)
    origins = splits.origins or {}
    counts = ", ".join(f"{len(getattr(splits, name))} {what}" + (f" ({origins[name]})" if name in origins else "")
                       for name, what in SPLIT_NAMES.items())
    log(f"data: {counts} images; preprocessing {splits.preprocessing.to_dict()} "
        f"({preprocessing_source(base, config.data)})")
    names = (getattr(base, "pretrained_cfg", None) or {}).get("label_names")
    if config.data.dataset == "imagefolder" and names and list(splits.classes) == list(names) and \
            list(names) != sorted(names):  # the folders ordered as the model names its outputs
        log(f"note: the class folders are the model's outputs in the order it names them (its label names): "
            f"{list(splits.classes)}")
    held = [name for name in ("val", "test") if origins.get(name, "").startswith("held out of")]
    if held:  # a model trained on every image of the folder has seen these: the scores read high
        one = len(held) == 1
        log(f"note: the {' and '.join(SPLIT_NAMES[name] for name in held)} images are {origins[held[0]]}, which the "
            f"model may have been trained on: {'its' if one else 'their'} scores read high then, and every "
            f"candidate's with them; {'a ' if one else ''}{' and '.join(f'{name}/' for name in held)} "
            f"folder{'' if one else 's'} of images it never saw avoid{'s' if one else ''} it")
    before.check_classes(base, splits, config)
    if len(splits.val) < before.FEW_IMAGES:  # e.g. a folder of a few images each: every score a coin's throw
        warn(f"validation holds {len(splits.val)} image{'s' if len(splits.val) != 1 else ''}: each is "
             f"{100 / len(splits.val):.3g} points of accuracy, so the scores and the front are noise at this size; "
             "give more labelled images (a val/ folder, or more in train/ to hold validation out of), "
             f"{before.FEW_IMAGES} at the very least")
    heads = [block.attn.num_heads for block in vit_blocks(base)]
    log(f"base model {getattr(config.model, 'name', None) or type(base).__name__}: {len(heads)} blocks, heads {heads}")
    if previous is None:  # an absolute memory limit no candidate meets: refused before the measuring
        reach.check_memory_first(space, heads, base, profile, config, log)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(run_dir, writer=True),
                                load_if_exists=True, directions=list(DIRECTIONS))
    # Resuming: the sampler's random start-up must not repeat the recipes the first run drew from the same seed
    study.sampler = _sampler(config, seed=config.seed + len(study.trials))
    run_images.note_train_images(study, recorded, splits)  # before the interrupted trials are queued anew
    interrupted = _requeue_interrupted(study)
    if interrupted:
        log(f"trials {interrupted} were running when an earlier search stopped; they are marked failed and queued "
            "again with the same recipes (one the cost model now predicts over budget is skipped, as a new one is)")
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    remaining = max(0, config.trials - done)
    if previous is not None and (note := rundir.seed_otherwise(run_dir, config, done=done, remaining=remaining)):
        log(note)
    if previous is not None:  # the pass is run again only where it left nothing and no trial ran
        rundir.record_resumed_settings(run_dir, config, log=log,
                                       pass_kept=(run_dir / before.SENSITIVITY).is_file() or bool(study.trials))
    if previous is not None:
        baseline = previous["baseline"]
    elif profile.ray_resource is None:  # before an embedded Ray starts: its start-up load would bias the anchor
        baseline = before.baseline_cost(base, profile, splits)
    else:
        baseline = None  # measured on the device's node, once Ray is up
    # a device on a Ray node is needed for the baseline, the trials, and the final re-measurement of the best
    needs_ray = remaining > 0 or baseline is None or profile.ray_resource is not None
    modules = [module] if (module := factory_module(config.model)) is not None else []
    with ray_session(workers=config.workers, ray_address=ray_address, log=log, modules=modules) if needs_ray \
            else nullcontext():
        if needs_ray:
            if profile.ray_resource is not None:
                measuring = require_device(profile, source=config.hardware)
                log(f"measuring on {measuring} (node holding {profile.ray_resource!r})")
            require_trial_resources(config.resources, ray_address=ray_address)
        if baseline is None:
            baseline = before.baseline_cost(base, profile, splits)
        if previous is not None:  # resuming: keep the limits the earlier trials were judged by
            limits = previous["limits"]
        else:
            limits = config.budget.limits(baseline)
            timings = baseline.get("timings", 1)  # said before any check judges a budget in ms by it
            if warning := spread_warning("the uncompressed model" + (f" (the fastest of {timings} timings)"
                                                                     if timings > 1 else ""),
                                         baseline["raw_latency_ms"], baseline["latency_iqr_ms"],
                                         cpu_share=baseline.get("cpu_share"), threads=profile.threads,
                                         absolute=config.budget.latency_ms is not None,
                                         cpu_ms=(baseline["latency_ms"] if baseline["latency_ms"]
                                                 != baseline["raw_latency_ms"] else None)):
                log(warning)
        screen = before.screen_of(base, profile, baseline, limits, config, log) if remaining else None
        measured_with = {"backend": measuring, "counting": COUNTING, "forms": backend_of(profile).export_forms(),
                         "int8_codes": int8_linear_top_code(),  # Int8Linear's inputs, as its trials are scored
                         **({"activations": rundir.PACKED} if backend_of(profile).exports else {})}
        if previous is None:
            config.budget.check_plausible(baseline)  # before run.json too
            if screen is not None and reach.check_reachable(space, heads, screen, config, log):  # before
                # run.json: a rerun with a budget that can be met starts afresh; where the cost model places the
                # latency limit out of reach, measured before the passes
                reach.check_latency_early(run_dir, base, space, heads, splits, config, profile, limits,
                                          baseline["latency_ms"], log)
            scored = before.baseline_accuracy(base, splits, device=scoring_device(config.resources.gpu))
            baseline = {**scored, **baseline}
            rundir.write_run_info(run_dir, config, base, job, fingerprint, baseline, limits, run_images.record(splits),
                            measured_with, digest, given)
        else:
            if (note := rundir.measured_otherwise(previous.get("measured_with"), measured_with,
                                                  packed=any(bits < 8 for bits in space.weight_bits))) is not None:
                log(f"note: the trials in {run_dir} were measured {note}; figures measured apart may not compare "
                    "(the earlier trials keep theirs): search into a new run folder (--out) to measure every trial "
                    "alike")
            if remaining and (note := rundir.space_otherwise(previous.get("space"),
                                                             rundir.resolved_space(given))) is not None:
                log(f"note: {note}; each trial is recorded as it ran, but the sampler learns from both: search into "
                    "a new run folder (--out) to search every trial alike")
                if previous.get("space") is None:  # said once: later resumes compare with the space as now
                    rundir.record_space(run_dir, given)
        per = f" per batch of {profile.batch_size}" if profile.batch_size > 1 else ""  # what a budget in ms limits
        log(f"uncompressed: val {baseline['val_accuracy']:.2f}%  latency {baseline['latency_ms']:.2f} ms{per}  "
            f"memory {baseline['memory_mb']:.2f} MB"
            + (f" (weights {baseline['weights_mb']:.2f} MB)" if "weights_mb" in limits else "")
            + f";  budget: {config.budget.describe()} -> "
            + ", ".join(f"{k} <= {v:.3g}" + _share(k, v, baseline, config) for k, v in limits.items()))
        if (note := before.untrained_note(baseline["val_accuracy"], splits.val, config)) is not None:
            warn(note)
        over = violations(baseline, limits)
        if feasible(over):
            log("note: the uncompressed model meets this budget already; the search still looks for smaller models "
                "within it, and best/ is the most accurate of those (a tighter budget asks for a smaller model)")
        elif met := [key for key, v in over.items() if v <= 0]:  # an absolute limit set from a reading at another load
            log(f"note: the uncompressed model meets {', '.join(f'{k} <= {limits[k]:.3g}' for k in met)} already "
                f"({', '.join(f'{baseline[k]:.3g} {UNITS[k]}' for k in met)}): only "
                f"{', '.join(k for k in over if k not in met)} constrains the search")
        if done:
            log(f"resuming: {done} trials already in {study_file(run_dir)}, {remaining} to run"
                + (f" (more than the {config.trials} asked for: all {done} are kept, on the front and for best/)"
                   if done > config.trials else ""))
        elif previous is not None:  # stopped before a trial finished: what it measured before them is kept
            log(f"resuming {run_dir}: no trial had finished; its measurement of the uncompressed model is kept"
                + (", and the passes before the trials" if (run_dir / before.SENSITIVITY).is_file() else ""))

        train = distill_subset(splits.train)
        inputs = TrialInputs(base=base, val=splits.val, calib=splits.calib.x, train=train, profile=profile,
                             limits=limits, base_latency_ms=baseline["latency_ms"], threads=config.resources.cpu,
                             skip_margin=config.skip_margin,
                             teacher_cache=before.teacher_cache(
                                 base, train, space, config, log, run_dir=run_dir,
                                 identity=repr((digest, splits.digests, config.data, splits.preprocessing))
                             ) if remaining else None,
                             weights_dir=str((run_dir / finish.KEPT).resolve()), gpu=config.resources.gpu > 0,
                             trial_timeout_s=config.trial_timeout_s, measure_timeout_s=config.measure_timeout_s,
                             check_images=check_images(profile, lambda n: splits.val.subset(n).tensors()[0],
                                                       splits.val.input_numel()),
                             fidelity=config.fidelity, quiet_key=_quiet_key(config, profile, run_dir))
        display = Progress(total=config.trials, done=done, enabled=progress, log=log)

        plotted = [0.0]  # when pareto.png was last drawn: the driver draws it at most every PLOT_EVERY_S seconds,
        # since Ray starts no trial while the driver is busy (the end of the search draws it once more)

        def on_told(_trial: optuna.trial.FrozenTrial) -> None:
            rows = trial_rows(study, list(limits))
            plot = time.perf_counter() - plotted[0] >= PLOT_EVERY_S
            write_results(run_dir, rows, limits, plot=plot, baseline=baseline)
            if plot:
                plotted[0] = time.perf_counter()
            finish.prune_kept(run_dir, rows)
            display.update(rows)

        if remaining:
            rule = _front_rule(study, config, len(splits.val))
            # the trials' Ray workers start (and receive the inputs) while the sensitivity pass runs
            with _quiet.removed_after(inputs.quiet_key), TrialLoop(  # room for replacements, and retries of all
                    inputs, run_dir, trials=2 * remaining * (1 + config.retries), workers=config.workers,
                    resources=config.resources, rule=rule, log=log) as loop:
                if screen is not None:  # what the cost model learnt before the first trial in an earlier run of the
                    # search (its passes, not run again): learnt again, so that it skips as that run would have
                    screen.learn_again(study.user_attrs.get(LEARNT_BEFORE, []))
                try:
                    settings, allowed = before.sensitivity(run_dir, base, space, heads, splits, screen, config,
                                                           log, fresh=not study.trials, profile=profile,
                                                           limits=limits, base_latency_ms=baseline["latency_ms"],
                                                           before_timing=loop.wait_for_workers)
                except reach.BudgetUnreachable:
                    if not study.trials:  # nothing ran: a rerun with another budget starts afresh in this folder
                        (run_dir / "run.json").unlink(missing_ok=True)
                    raise
                _keep_learnt(study, screen)
                if screen is not None and not study.trials and "latency_ms" in limits \
                        and any(key in limits for key in COUNTED):
                    loop.wait_for_workers()  # it may measure a candidate: not while workers start
                    reach.warn_jointly_unreachable(space, heads, screen, log, allowed=allowed,
                                                   measure=before.latency_of(base, profile, splits, config, screen,
                                                                             baseline["latency_ms"]))
                recipes = space.size(len(heads), allowed=allowed)
                if recipes < remaining:
                    log(f"the space offers {recipes} different recipe{'s' if recipes != 1 else ''} (after the "
                        "sensitivity pass), fewer than the "
                        f"{remaining} trials left: at most {recipes} will run, as a recipe drawn again is not run; "
                        f"widen the space (or raise sensitivity.drop_above) to use the trials")
                if config.start_points and not study.trials:
                    if "latency_ms" in limits:  # the all-knobs point is measured: not while workers start
                        loop.wait_for_workers()
                    _enqueue_start_points(study, space, heads, screen, limits, config, log, allowed=allowed,
                                          settings=settings,
                                          measure=before.latency_of(base, profile, splits, config, screen,
                                                                    baseline["latency_ms"]))
                _keep_learnt(study, screen)  # the joint check's and the start points' measurements too
                controller = OptunaController(study=study, space=space, heads_per_block=heads, n_trials=remaining,
                                              on_told=on_told, screen=screen, retries=config.retries,
                                              allowed=allowed, coarse=_coarse_draws(study, space, config),
                                              local=config.local if config.sampler in GUIDED else 0.0,
                                              drops={(s.block, s.knob, s.value): s.accuracy_drop
                                                     for s in as_built(space, settings, allowed or {})
                                                     if s.accuracy_drop is not None},
                                              seed=config.seed + done)
                release_gpu()  # what the passes before cached there: the trials on this GPU need it
                started = time.perf_counter()
                with display:
                    loop.run(controller)
            if controller.stopped is not None:
                kept = sum(counted(t) for t in study.get_trials(deepcopy=False))
                raise AutocompError(f"search stopped: {controller.stopped}; the {kept} trials done are kept in "
                                    f"{run_dir}; run the same command again to resume once that is put right")
            if controller.unfinished:  # Tune returned with trials to go, and no error: not a finished search
                kept = sum(counted(t) for t in study.get_trials(deepcopy=False))
                raise AutocompError(f"search stopped: Ray Tune ended with {controller.unfinished} trial(s) not run "
                                    "or not finished, without an error (were Ray's processes interrupted?); the "
                                    f"{kept} trials done are kept in {run_dir}; run the same command again to resume")
            took = time.perf_counter() - started
            study.set_user_attr(LOOP_SECONDS, study.user_attrs.get(LOOP_SECONDS, 0.0) + took)
            study.set_user_attr(ASKING_SECONDS, study.user_attrs.get(ASKING_SECONDS, 0.0) + controller.asking_seconds)
            log(f"{remaining} trial{'s' if remaining != 1 else ''} in {took:.0f} s"
                + (f"; {rule.stopped} stopped after the short distillation and score, {rule.promoted} finished"
                   if rule is not None and rule.stopped + rule.promoted else ""))
            if taken := _places_taken(controller.places_taken, remaining):
                log(taken)
        try:
            return finish.finalize(run_dir, study, config=config, splits=splits, base=base, baseline=baseline,
                                   limits=limits, profile=profile, log=log,
                                   loop_seconds=study.user_attrs.get(LOOP_SECONDS),
                                   asking_seconds=study.user_attrs.get(ASKING_SECONDS), measured_with=measured_with)
        except AutocompError as exc:  # e.g. an image past the trials' subset, first read by the final distillation
            kept = sum(counted(t) for t in study.get_trials(deepcopy=False))
            raise type(exc)(f"{exc}; the {kept} trials done are kept in {run_dir}: once that is mended, the same "
                            "command finishes the search without running them again") from exc


def _keep_learnt(study: optuna.Study, screen: Screen | None) -> None:
    """Record in the study what the cost model has learnt so far before the first trial (that of an earlier run of
    the search, learnt again, and this run's): after each phase, so that a run stopped in the next one keeps it."""
    if screen is not None and study.user_attrs.get(LEARNT_BEFORE) != screen.observed:
        study.set_user_attr(LEARNT_BEFORE, screen.observed)


def _places_taken(taken: Mapping[str, int], asked: int) -> str | None:
    """What the trials of a run that built nothing went to: candidates skipped, or recipes drawn again, once the
    draws that take no trial's place ran out (the sampler finds few new recipes within budget); None where none."""
    if not sum(taken.values()):
        return None
    by = {"skipped": "candidates the cost model skipped (predicted over budget)", "drawn again": "recipes drawn again"}
    what = " and ".join(f"{count} by {by[key]}" for key, count in taken.items() if count)
    return (f"note: {sum(taken.values())} of the {asked} trials built no model: taken {what}, once the extra draws "
            "that take no trial's place ran out. Few recipes of the space not yet run fit the budget: a rerun with "
            "more trials would mostly draw such ones again; widen the search space or loosen the budget")


def _target(config: JobConfig, log: Callable[[str], None], *,
            ray_address: str | None) -> tuple[HardwareProfile, str | None]:
    """The hardware profile (measured on first use) and, for a target on this machine, what measures there (a
    runtime that is missing is refused here); a target on a Ray node is checked once Ray is up. A GPU profile's
    ``ray_resource`` names a cluster's node: a search on its own embedded Ray (one machine) measures on its GPU (a
    CPU profile's stays: this CPU is not that device)."""
    profile = load_profile(config.hardware, log=log)
    name = profile.ray_resource  # a GPU profile's node: a search on its own Ray (this machine) measures its GPU
    alone = _gpu_here(profile, config, ray_address)
    if alone:
        profile = dataclasses.replace(profile, ray_resource=None)
    if (note := profile_note(profile)) is not None:
        log(f"warning: {note}")
    if profile.ray_resource is None and profile.device == "cpu" and \
            (note := threads_note(profile.threads, f"hardware profile {profile.name!r}")) is not None:
        log(f"warning: {note}")
    if (note := cap_note(profile.backend)) is not None:
        log(f"note: {note}")
    measuring = None
    if profile.ray_resource is None:
        measuring = require_device(profile, source=config.hardware)
        if alone:
            log(f"note: {named(config, 'hardware', kind=True)} measures on the Ray node declaring {name!r}; with no "
                "--ray-address the search runs on this machine alone, and measures on its GPU")
        log(f"measuring on {measuring}")
    return profile, measuring


def _share(key: str, limit: float, baseline: Mapping[str, float], config: JobConfig) -> str:
    """What an absolute limit asks of the uncompressed model as measured now (' (0.83x the uncompressed)'): how much
    compression a budget in ms or MB takes is known only once it is measured, here."""
    given = getattr(config.budget, key)  # the absolute limit as given (None: given as a fraction)
    return "" if given is None or not baseline.get(key) else f" ({limit / baseline[key]:.2f}x the uncompressed)"


def _gpu_here(profile: HardwareProfile, config: JobConfig, ray_address: str | None) -> bool:
    """Whether a GPU profile naming a Ray node measures on this machine's GPU instead (a search on its own Ray: this
    machine alone); refused where this machine has none."""
    alone = profile.ray_resource is not None and profile.device == "gpu" and ray_address is None and \
        not ray_running()
    if alone and not torch.cuda.is_available():
        raise AutocompError(f"{named(config, 'hardware', kind=True)} measures on a CUDA GPU, on the Ray node declaring "
                            f"{profile.ray_resource!r} (its ray_resource), and this machine has none that torch "
                            f"{torch.__version__} can use; pass --ray-address of the Ray cluster holding that node, "
                            "or search with a CPU profile")
    return alone


def _runtime_first(config: JobConfig, ray_address: str | None) -> None:
    """A runtime or GPU missing here for a target on this machine, said before the model and data load (a profile
    on a Ray node is checked on that node, once Ray is up)."""
    template = read_profile(config.hardware)
    if template.ray_resource is None or _gpu_here(template, config, ray_address):
        require_backend(template if template.ray_resource is None else
                        dataclasses.replace(template, ray_resource=None), source=config.hardware)


def _quiet_key(config: JobConfig, profile: HardwareProfile, run_dir: Path) -> str | None:
    """The run's quiet-timing key (:mod:`autocomp._quiet`), or None where trials need not wait for each other's
    timings: one worker, the job's ``quiet_timing: false``, or timings on a device node of their own."""
    if config.workers == 1 or not config.quiet_timing or profile.ray_resource is not None:
        return None
    return _quiet.run_key(run_dir)


def _coarse_draws(study: optuna.Study, space: SearchSpace, config: JobConfig) -> int:
    """How many recipes this run draws coarse (every block alike) before the per-block sampler (TPE or the GP):
    ``config.coarse`` of the job's trials, less those an earlier run of the job drew; none for another sampler or a
    uniform space."""
    if config.sampler not in GUIDED or space.uniform:
        return 0
    drawn = sum(COARSE in t.user_attrs for t in study.get_trials(deepcopy=False))
    return max(0, round(config.coarse * config.trials) - drawn)


def _sampler(config: JobConfig, *, seed: int) -> optuna.samplers.BaseSampler:
    """The job's ``sampler``: multivariate TPE, Optuna's Gaussian-process sampler, NSGA-II, or random. TPE's and the
    GP's random start-up is a fifth of the trials (4 to 10): the starting points already spread the first trials, and
    a short search left random for 10 trials would hardly be guided at all."""
    startup = min(config.trials, 10, max(4, config.trials // 5))
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, config.trials // 3)))
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)


def _enqueue_start_points(study: optuna.Study, space: SearchSpace, heads: list[int], screen: Screen | None,
                          limits: Mapping[str, float], config: JobConfig, log: Callable[[str], None], *,
                          allowed: Mapping[str, tuple], settings: list[Setting],
                          measure: Callable[[Recipe], float] | None) -> None:
    """Queue the known-good starting recipes (:mod:`autocomp.search._start`), a quarter of the trials at most, and
    one where that is none (a search of 1 to 3 trials spends one on the best-placed, not on a random draw)."""
    cap = max(1, config.trials // 4)
    if cap == 1:  # one point, predicted: measuring mixes on the target (minutes) that the cap would drop is waste
        measure = None
    if measure is not None and "latency_ms" in limits:  # minutes on a large model on a runtime backend: said
        # before, not only after (under a memory limit alone nothing is measured: start_points predicts)
        log("starting points: measuring the candidates with every knob alike on the target")
    points = start_points(space, heads, predictor=screen.predictor if screen is not None else None, limits=limits,
                          cap=cap, allowed=allowed, sensitivity=settings, measure=measure)
    for label, params in points:
        study.enqueue_trial(params, user_attrs={START: label})
    log("starting points: " + (" ".join(f"({n}) {label};" for n, (label, _) in enumerate(points, 1))[:-1]
                               if points else
                               "none (no known-good recipe is predicted within budget; the sampler starts alone)"))


def _requeue_interrupted(study: optuna.Study) -> list[int]:
    """Trials an earlier driver left RUNNING (it was killed): mark them failed and queue their parameters again,
    so the rerun evaluates the same recipes instead of drawing new ones; returns their numbers."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs=again(trial), skip_if_exists=False)
    return [trial.number for trial in stale]


def _front_rule(study: optuna.Study, config: JobConfig, val_images: int) -> FrontRule | None:
    """The multi-fidelity rule of the job (None: off), knowing the short results of the study's earlier trials and
    the images a short score is measured on (``val_images``: the validation split's size)."""
    if config.fidelity is None:
        return None
    seen = [(t.user_attrs["short_accuracy"], t.values[1], t.values[2])
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("short_accuracy") is not None
            and all(value <= 0 for name, value in t.system_attrs.items() if name.startswith("constraints:"))]
    return FrontRule(slack=config.fidelity.slack, images=min(config.fidelity.images, val_images), seen=seen)
