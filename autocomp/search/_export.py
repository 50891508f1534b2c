"""Rebuild any trial of a finished (or interrupted) run and save it as a loadable model folder, and, with
``format`` ``onnx`` or ``openvino``, the deployable file beside it (``model.onnx``; ``model.xml`` + ``model.bin``),
exported with autocomp's own numbers by the backend that measures on that runtime
(:mod:`autocomp.measure.backends`) and checked against the PyTorch model on validation images (``export.json``)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

import optuna
from torch import nn

from autocomp._io import write_json
from autocomp._loader import build, read_yaml
from autocomp.budget import violations
from autocomp.config import JobConfig, load_config
from autocomp.data import BUILTIN_PIXEL_MAX, Preprocessing, Split, Splits, load_splits
from autocomp.errors import AutocompError
from autocomp.hardware import HardwareProfile
from autocomp.measure.backends import CHECK_IMAGES, Backend, OnnxRuntimeCpu, Prepared, backend_of
from autocomp.models import ModelSpec, create_model, model_digest, require_structure
from autocomp.ops.quantize import Int8Linear, int8_linear_top_code
from autocomp.recipe import Recipe
from autocomp.results import load_run_study, study_file, trial_error
from autocomp.saving import GIVEN_AS, STRUCTURE, load_classes, load_model, load_preprocessing, save_model
from autocomp.search import _images as run_images
from autocomp.search._controller import DUPLICATE, RETRY_OF, SKIPPED
from autocomp.search._finish import BEST, KEPT
from autocomp.search._objective import SHORT, build_candidate, distill_subset, distils, kept_model
from autocomp.search._rundir import BASE_WEIGHTS, scored_int8_codes
from autocomp.train import evaluate

__all__ = ["export_trial", "FORMATS"]

# --format -> the backend whose export it is (None: the PyTorch folder alone)
FORMATS = {"pytorch": None, "onnx": "onnxruntime-cpu", "openvino": "openvino-cpu"}
CHECK_BATCH = 16  # images per run of the exported model when it is checked
TEST_SCORED = 1000  # test images an export scores in its runtime, at most (a listed test/ folder may hold 50,000)
NAMED = {"engine_seconds": "seconds_engine"}  # a trial's record -> its name in metrics.json, as trials.csv has it
# a trial's runtime check of the file it timed -> its name under metrics.json "search_check"
SEARCH_CHECK = {"runtime": "runtime", "export_top1": "top1_agreement", "export_max_logit_diff": "max_logit_diff"}
DEPLOYABLE = ("model.onnx", "model.xml", "model.bin", "export.json")  # what a --format onnx|openvino export writes


def export_trial(run_dir: str | Path, number: int | str, out: str | Path, *, base: nn.Module | None = None,
                 format: str = "pytorch", int8_weights: str = "auto",  # noqa: A002 - the CLI's --format
                 log: Callable[[str], None] = print) -> Path:
    """Save trial ``number`` of ``run_dir`` to ``out``: the weights the trial kept, or rebuilt from its recipe
    (``number`` ``"best"``: the run's ``best/`` model, as the search saved it, after any final distillation); with
    ``format`` ``onnx`` or ``openvino`` also the deployable file, checked against the PyTorch model (top-1
    agreement and largest logit difference on validation images, in ``out/export.json``).

    A trial scored undistilled (measured far over budget) is rebuilt undistilled. A rebuild that is not the model its
    trial scored (a trial stopped after the short part of its distillation, ``fidelity`` ``short``, is rebuilt with
    all of it; an image folder's calibration or training images changed since the trial ran; it distilled on a GPU)
    is scored on all of validation: ``metrics.json`` records why (``rebuilt``), its ``accuracy`` is the rebuild's
    (``trial_accuracy`` the trial's), and ``log`` says so.

    ``base``: the uncompressed model, when the search was given it as an ``nn.Module`` in Python.
    ``int8_weights``: with ``onnx``, the form of int8 weights (``OnnxExportConfig.int8_weights``; ``export.json``
    names the one written): ``auto`` takes the input codes the run scored its trials with (run.json's
    ``measured_with.int8_codes``; for a run from before that record, what its export form implies; else this
    machine's): ``matmul_integer`` for 0..255 (x86 CPUs with AVX512-VNNI or AMX), whose outputs would be off on x86
    without VNNI (``export.json`` notes it), and ``matmul_integer_reduce_range`` for 0..127 (exact on every CPU).

    Raises:
        AutocompError: not a run folder, not a complete trial, no ``best/`` (nothing met the budget), an unknown
            format or int8 form, the format's runtime not installed (before anything is rebuilt), or an export that
            fails or disagrees with PyTorch (the files stay in ``out`` to look at).
    """
    from autocomp.runtimes.onnx import INT8_WEIGHT_FORMS, int8_weight_form

    run_dir, out = Path(run_dir), Path(out)
    if format not in FORMATS:
        raise AutocompError(f"unknown export format {format!r}; known: {list(FORMATS)}")
    if int8_weights not in INT8_WEIGHT_FORMS:
        raise AutocompError(f"unknown int8 weight form {int8_weights!r}; known: {list(INT8_WEIGHT_FORMS)}")
    if int8_weights != "auto" and format != "onnx":
        raise AutocompError(f"--int8-weights is a choice of the ONNX file; with --format {format} leave it out")
    profile = (HardwareProfile(name="export", backend=FORMATS[format], batch_size=CHECK_BATCH)
               if FORMATS[format] else None)
    scored_top = scored_int8_codes(_run_info(run_dir).get("measured_with"))  # the codes its trials were scored with
    form = int8_weight_form(int8_weights, top=scored_top)  # auto: those codes, wherever it is exported
    backend = None if profile is None else (OnnxRuntimeCpu(form) if format == "onnx" else backend_of(profile))
    if backend is not None:
        try:
            backend.require()
        except AutocompError as exc:
            raise AutocompError(f"--format {format}: {exc}") from None
    if not study_file(run_dir).is_file() or not (run_dir / "config.yaml").is_file():
        raise AutocompError(f"{run_dir} is not a search run folder (no {study_file(run_dir).name} / config.yaml)")
    if out.exists() and not out.is_dir():
        raise AutocompError(f"--out {out} is a file; give a folder to write the model to")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise AutocompError(f"--out {out} is inside the run folder {run_dir}, whose files (best/ among them) the "
                            "search wrote; give a folder outside it")
    try:  # before a trial is rebuilt (minutes) for a folder that cannot be written
        made = next((folder for folder in [*reversed(out.parents), out] if not folder.exists()), None)
        out.mkdir(parents=True, exist_ok=True)
        (out / ".autocomp-write-check").touch()
        (out / ".autocomp-write-check").unlink()
        if made is not None:  # made again once there is a model to write: a refusal below leaves no empty folder
            shutil.rmtree(made)
    except OSError as exc:
        raise AutocompError(f"cannot write --out {out} ({exc.strerror or exc}); give a folder you can write") from None
    if number == BEST:
        if not (run_dir / BEST / "weights.safetensors").is_file():
            raise AutocompError(f"{run_dir} has no {BEST}/ model (no candidate met the budget, or the search has not "
                                "finished); export a trial by number: --trial N (trials.csv lists every trial, "
                                "autocomp pareto the front)")
    elif not isinstance(number, int):
        raise AutocompError(f"--trial must be a trial number or 'best', got {number!r}")
    else:
        trial, history = _complete_trial(run_dir, number)
    searched = (read_yaml(run_dir / "config.yaml", what="run config") or {}).get("model")
    if base is not None and not (isinstance(searched, dict) and searched.get(GIVEN_AS) == "nn.Module"):
        named = searched.get("name") or searched.get("factory") if isinstance(searched, dict) else searched
        raise AutocompError(f"{run_dir} searched {named}, the model its config.yaml names, not one given as an "
                            "nn.Module: leave base out (it is for runs searched on a module given in Python)")
    # best/ and the weights a trial kept need the model's structure alone: neither its checkpoint nor the search
    # space or hardware profile file (a run folder copied to another machine exports them as they are)
    config = load_config(run_dir / "config.yaml", model=base, files_must_exist=False)
    spec = config.model
    if isinstance(spec, nn.Module):  # what a trial's kept weights need of it (not its own weights)
        require_structure(_run_info(run_dir).get(STRUCTURE), spec, run_dir)
    base = create_model(spec, load_weights=False) if isinstance(spec, ModelSpec) else spec
    # the images: a deployable file's check and a trial's rebuild; best/ and kept weights alone need none
    recorded = run_images.recorded(run_dir, config.data)
    splits = _run_splits(config, base, recorded, run_dir, f"the {format} file is checked against the PyTorch model "
                         "on the run's validation images") if backend is not None else None
    if number == BEST:
        model, recipe = load_model(run_dir / BEST, base=base), Recipe.load(run_dir / BEST / "recipe.yaml")
        metrics = json.loads((run_dir / BEST / "metrics.json").read_text())
        metrics["exported_from"] = str((run_dir / BEST).resolve())  # where it is now (the run folder may move)
        preprocessing = load_preprocessing(run_dir / BEST)  # as the search scored it
        classes = load_classes(run_dir / BEST) or _searched(run_dir, "classes")
        if metrics.get("within_budget_again") is False:  # as the search warned when it named best/
            figures = [(f"{metrics[key]:.4g} {unit}", f"{metrics[again]:.4g} {unit}")
                       for key, again, unit in (("latency_ms", "remeasured_latency_ms", "ms"),
                                                ("memory_mb", "remeasured_memory_mb", "MB"))
                       if metrics.get(again) is not None]
            log(f"note: best/ (trial {metrics.get('trial')}) is within the run's budget as its trial measured it "
                f"({', '.join(first for first, _ in figures)}), not as measured again before it was named "
                f"({', '.join(second for _, second in figures)}; metrics.json within_budget_again): a candidate at "
                "the budget's edge; exported as asked")
    else:
        recipe = Recipe.from_dict(trial.user_attrs["recipe"])
        if trial.user_attrs.get("distilled") is False:  # measured far over budget: scored undistilled
            recipe = dataclasses.replace(recipe, distill=None)
        metrics = {"trial": number, **dict(zip(("accuracy", "latency_ms", "memory_mb"), trial.values)),
                   **{NAMED.get(k, k): v for k, v in trial.user_attrs.items()
                      if k not in SEARCH_CHECK or k == "runtime"},  # what its latency was measured on, as best/'s
                   "recipe": recipe.to_dict(), "exported_from": str(run_dir.resolve())}
        if trial.user_attrs.get("runtime") is not None:  # apart from this export's own check (export.json)
            metrics["search_check"] = {"of": "the undistilled candidate the trial timed",
                                       **{name: trial.user_attrs.get(key) for key, name in SEARCH_CHECK.items()}}
        model = kept_model(base, recipe, run_dir / KEPT / str(number))  # the weights the trial scored, if kept
        if model is None:  # rebuilt from the searched model's weights, on the run's images
            base = create_model(spec) if isinstance(spec, ModelSpec) else spec
            splits = splits or _run_splits(config, base, recorded, run_dir, f"trial {number} kept no weights and "
                                           "is rebuilt from its recipe on the run's images")
            _require_searched_model(run_dir, base, config.model, number)
            model = build_candidate(base, recipe, splits.calib.x, distill_subset(splits.train),
                                    threads=config.resources.cpu)
            changed = run_images.changed_for_trial(recorded, splits, number, history)
            short_images = min(config.fidelity.images, len(splits.val)) if config.fidelity else len(splits.val)
            reasons = _why_unscored(trial, recipe, changed, older=recorded == run_images.OLDER,
                                    gpu=config.resources.gpu > 0, short_images=short_images)
            if reasons:  # the accuracy of the model written is the rebuild's; the trial's is kept beside it
                metrics["rebuilt"] = _score_rebuild(model, trial, reasons, splits.val, log)
                metrics.update(trial_accuracy=metrics["accuracy"], accuracy=metrics["rebuilt"]["val_accuracy"])
        metrics["val_accuracy"] = metrics["accuracy"]  # under best/'s name for it too
        over = _over_budget(run_dir, metrics)
        metrics["within_budget"] = None if over is None else not over  # None: the run records no limits
        if limits := _run_info(run_dir).get("limits"):  # as best/metrics.json has them
            metrics["violations"] = violations({key: metrics[key] for key in limits}, limits)
        if over:
            log(f"note: trial {number} is over the run's budget ({over}); exported as asked")
        preprocessing, classes = _searched(run_dir, "preprocessing"), _searched(run_dir, "classes")
    if preprocessing is None:  # a trial of an unfinished run, or a run from before it was recorded
        splits = splits or load_splits(config.data, base)
        preprocessing = splits.preprocessing
    if config.data.dataset in BUILTIN_PIXEL_MAX:  # recorded before pixel_max was (digits: 0..16, not 0..255)
        preprocessing = dataclasses.replace(preprocessing, pixel_max=BUILTIN_PIXEL_MAX[config.data.dataset])
    if classes is None and splits is not None:  # likewise; never worth reading the images for alone
        classes = splits.classes
    if (out / "export.json").is_file() or (out / "recipe.yaml").is_file():  # an earlier export's files (one that
        # failed wrote no export.json): its deployable files are not this model's
        stale = [name for name in DEPLOYABLE if (out / name).is_file()]
        for name in stale:
            (out / name).unlink()
        if stale:
            log(f"{out}: removed the earlier export's {', '.join(stale)}")
    metrics["path"] = str(out.resolve())  # this model's folder (best/'s names best/)
    save_model(out, model, recipe, config.model, metrics=metrics, preprocessing=preprocessing, classes=classes)
    extra = {"int8_weights": form} if format == "onnx" else {}
    here = int8_linear_top_code()
    if scored_top is None:
        scored_top = here
    elif scored_top != here and any(isinstance(layer, Int8Linear) and layer.act_qparams is None  # static layers
                                    for layer in model.modules()):  # keep the codes they were saved with
        extra["int8_codes_note"] = note = (
            f"the run scored its int8 layers with input codes 0..{scored_top}, which PyTorch here quantizes to "
            f"0..{here}: the model loaded here scores a little differently from metrics.json"
            + (f" (the ONNX file takes the scored codes, {form})" if format == "onnx" and int8_weights == "auto"
               else ""))
        log(f"note: {note}")
    if backend is not None:
        images = splits.val.subset(CHECK_IMAGES).tensors()[0]
        _write_deployable(backend, model, images, out, profile, format, extra=extra, scored_top=scored_top,
                          test=splits.test, log=log)
    log(f"{'the best model' if number == BEST else f'trial {number}'} written to {out}")
    if backend is not None:
        info = json.loads((out / "export.json").read_text())
        log(f"{info['file']}: {info['file_weight_nbytes'] / 1e6:.3f} MB of weights in the file, "
            f"{info['weight_nbytes'] / 1e6:.3f} MB once the runtime loads it; top-1 agreement with the PyTorch "
            f"model {100 * info['top1_agreement']:.1f}% of {info['images']} validation images, largest logit "
            f"difference {info['max_logit_diff']:.3g}"
            + (f"; test accuracy in {info['test_runtime']} {info['test_accuracy']:.2f}% (the PyTorch model "
               f"{info['test_accuracy_pytorch']:.2f}%, on the same {info['test_images']} test images)"
               if info.get("test_images") else "") + _batch_note(metrics, info, model, splits, profile))
    return out


def _batch_note(metrics: Mapping[str, Any], info: Mapping[str, Any], model: nn.Module, splits: Splits | None,
                profile: HardwareProfile) -> str:
    """Where the export scored a sample of the test images: the run's figure on all of them. Where the run scored the
    same test images at another batch size and the model's int8 layers quantize their inputs per batch (dynamic
    activations): the run's figure, and why the export's differs from it by an image or two (a new user took that
    for a wrong file)."""
    scored, batch = metrics.get("test_accuracy"), (metrics.get("accuracy_batch") or {}).get("test")
    if scored is not None and splits is not None and info.get("test_images") and info["test_images"] < len(splits.test):
        # a sample scores apart from the whole split (by 2 points on a user's run): the run's figure, on all of them
        return (f"; a seeded sample of the {len(splits.test)} test images, on all of which the run scored "
                f"{scored:.2f}%")
    dynamic = any(isinstance(layer, Int8Linear) and layer.act_qparams is None for layer in model.modules())
    if (not dynamic or scored is None or batch in (None, profile.batch_size) or splits is None
            or info.get("test_images") != len(splits.test)):
        return ""
    return (f"; the run scored {scored:.2f}% on them at batch {batch}: its int8 layers quantize their inputs per batch "
            "(dynamic activations), so other batch sizes score an image or two apart")


# the data section's keys that give the preprocessing, each as summary.json records it
PREPROCESSING_KEYS = ("image_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


def _run_splits(config: JobConfig, base: nn.Module, recorded: Any, run_dir: Path, why: str) -> Splits:
    """The run's images, as :func:`run_images.read_splits` reads them; where they cannot be read (a run folder
    copied to another machine, its image folder elsewhere), the error says why the export needs them and where to
    say where they are."""
    data, searched = config.data, _searched(run_dir, "preprocessing")
    if searched is not None and data.dataset == "imagefolder":  # as the trials were scored: nothing guessed (and
        # warned about) again
        data = dataclasses.replace(data, **{key: getattr(searched, key) for key in PREPROCESSING_KEYS})
    try:
        return run_images.read_splits(data, base, recorded)
    except AutocompError as exc:
        if config.data.root is None or Path(config.data.root).is_dir():  # the images are there: another problem
            raise
        raise AutocompError(f"{why}: {exc} (the data section of {run_dir / 'config.yaml'} says where they are: "
                            "edit it to point at them on this machine)") from None


def _searched(run_dir: Path, key: str) -> Any:
    """The ``preprocessing`` the run's trials were scored with, or its ``classes``, as summary.json records them
    (None: a run not finished, or finished before they were recorded)."""
    try:
        recorded = json.loads((run_dir / "summary.json").read_text()).get(key)
    except (OSError, ValueError):
        return None
    if key == "preprocessing" and recorded:
        return build(Preprocessing, recorded, where=str(run_dir / "summary.json"))
    return recorded or None


def _require_searched_model(run_dir: Path, base: nn.Module, given: ModelSpec | nn.Module, number: int) -> None:
    """Refuse to rebuild trial ``number`` from its recipe on a base model whose weights or heads are not those the
    run searched (run.json ``model``; a run from before that record is not checked). Kept weights, best/'s among
    them, take only the model's structure and are not checked (as :func:`autocomp.load`)."""
    recorded = _run_info(run_dir).get("model")
    if recorded is None or recorded == model_digest(base):
        return
    if isinstance(given, nn.Module):
        fix = (f"load the weights the run searched into the module first ({Path(run_dir) / BASE_WEIGHTS}, with "
               "safetensors.torch.load_file and load_state_dict; its heads as they were)")
    elif given.checkpoint is None:
        fix = "no rebuild can be: the run's model has no checkpoint (random weights, other ones in every process)"
    else:
        fix = f"put the checkpoint back as it was ({given.checkpoint})"
    raise AutocompError(f"the model's weights or heads changed since {run_dir} searched it (its run.json records "
                        f"another model digest): trial {number}, rebuilt from its recipe, would not be the model "
                        f"it scored; {fix}, or export a trial that kept its weights (best, or one on the front)")


def _run_info(run_dir: Path) -> dict[str, Any]:
    """run.json, or {} (a run from before it, or a folder that is not a run's: refused elsewhere)."""
    info = Path(run_dir) / "run.json"
    try:
        data = json.loads(info.read_text()) if info.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _over_budget(run_dir: Path, metrics: dict[str, Any]) -> str | None:
    """How a trial's measured latency and memory exceed the run's limits (run.json), e.g. "latency_ms over by 14%";
    empty within budget; None where the run records no limits."""
    limits = _run_info(run_dir).get("limits")
    if not limits:
        return None
    over = violations({key: metrics[key] for key in limits}, limits)
    return ", ".join(f"{key} over by {100 * value:.1f}%" for key, value in over.items() if value > 0)


def _complete_trial(run_dir: Path, number: int) -> tuple[optuna.trial.FrozenTrial, list | None]:
    """Trial ``number`` of the run, and the study's record of the training images its trials distilled on."""
    study = load_run_study(run_dir)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials or trials[number].state != optuna.trial.TrialState.COMPLETE:
        complete = [n for n, t in trials.items() if t.state == optuna.trial.TrialState.COMPLETE]
        why = f" ({_not_complete(trials[number], trials)})" if number in trials else ""
        raise AutocompError(f"trial {number} is not a complete trial of {run_dir}{why}; complete trials: "
                            f"{complete[:20]}{' ...' if len(complete) > 20 else ''}")
    return trials[number], study.user_attrs.get(run_images.TRAIN_HISTORY)


def _not_complete(trial: optuna.trial.FrozenTrial, trials: Mapping[int, optuna.trial.FrozenTrial]) -> str:
    """Why ``trial`` (one of ``trials``, by number) has no score to export."""
    if (same := trial.user_attrs.get(DUPLICATE)) is not None:
        return f"its recipe was drawn again, not run: trial {same} has it"
    if SKIPPED in trial.user_attrs:
        return f"skipped by the cost model: {trial.user_attrs[SKIPPED]}"
    if trial.state == optuna.trial.TrialState.FAIL:
        again = [n for n, t in trials.items() if t.user_attrs.get(RETRY_OF) == trial.number]
        return f"failed: {trial_error(trial)}" + (f"; trial {again[0]} ran its recipe again" if again else "")
    if trial.state == optuna.trial.TrialState.RUNNING:
        return "running, or left running by a search that stopped"
    return "queued: it has not run yet"


def _why_unscored(trial: optuna.trial.FrozenTrial, recipe: Recipe, changed: list[str], *, older: bool,
                  gpu: bool, short_images: int) -> list[str]:
    """Why a trial's rebuild is not the model the trial scored: stopped at its short score (the rebuild is distilled
    in full), built from other calibration or training images than the trial's (``changed``; ``older``: a run that
    recorded none), or distilled on a GPU (the rebuild distils on this CPU). ``short_images``: the validation images
    of a short score."""
    reasons = []
    distilled = distils(recipe)
    if trial.user_attrs.get("fidelity") == SHORT and distilled:
        short = trial.user_attrs["short_accuracy"]
        reasons.append(f"it stopped after the short part of its distillation (scored {short:.2f}% on "
                       f"{short_images} validation images) and is rebuilt with all of it")
    if older and (recipe.reads_calibration or distilled):
        reasons.append("the run predates autocomp's record of its images: the calibration and training images it "
                       "was built from may have been other ones")
    else:
        if "calib" in changed and recipe.reads_calibration:
            reasons.append("the calibration images its compression read changed since the run")
        if "train" in changed and distilled:
            reasons.append("the training images it distilled on changed since it ran")
    if gpu and distilled:
        reasons.append("it distilled on a GPU; the rebuild distils on this CPU (its sums in another order)")
    return reasons


def _score_rebuild(model: nn.Module, trial: optuna.trial.FrozenTrial, reasons: list[str], val: Split,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """Score a rebuild the search never scored on all of validation; what ``metrics.json`` records of it."""
    accuracy = evaluate(model, val)
    note = (f"trial {trial.number} rebuilt as a model the search never scored: {'; '.join(reasons)}. It scores "
            f"{accuracy:.2f}% on all {len(val)} validation images")
    log(note)
    return {"note": note, "val_accuracy": accuracy, "images": len(val),
            "short_accuracy": trial.user_attrs.get("short_accuracy")}


def _openvino_defaults(model: nn.Module, path: Path, images: torch.Tensor,
                       log: Callable[[str], None]) -> dict[str, Any]:
    """How the IR runs compiled with OpenVINO's defaults on this CPU, beside the f32 it was checked (and measured)
    in: on CPUs with AVX512_BF16 or AMX the default runs its fp32 layers in bf16, another model; said when so."""
    from autocomp.runtimes import compare_outputs
    from autocomp.runtimes.openvino import OvModule, capped_isa, default_precision, ov_compiled

    precision = default_precision()
    if precision == "f32":
        return {"precision": precision}
    try:
        with torch.no_grad():
            agreement = compare_outputs(model, OvModule(ov_compiled(path, precision=None)), images)
    except Exception as exc:  # noqa: BLE001 - a check beside the export's own: said, the export stands
        reason = " ".join(str(exc).split())[:300]
        log(f"note: OpenVINO's default precision on this CPU, {precision}, cannot compile {path.name} here "
            f"({type(exc).__name__}: {reason}); compile it with {{'INFERENCE_PRECISION_HINT': 'f32'}}, the precision "
            "autocomp checked and measured it in"
            + capped_isa(f"it takes {precision} from this CPU; a CPU without AVX512_BF16 or AMX defaults to f32, the "
                         "precision checked"))
        return {"precision": precision, "error": f"{type(exc).__name__}: {reason}"}
    log(f"note: OpenVINO compiles {path.name} in {precision} by default on this CPU (top-1 agreement with the "
        f"checked model {100 * agreement.top1:.1f}%, largest logit difference {agreement.max_logit_diff:.3g}); "
        "compile it with {'INFERENCE_PRECISION_HINT': 'f32'} to run the model autocomp scored and measured")
    return {"precision": precision, "top1_agreement": agreement.top1, "max_logit_diff": agreement.max_logit_diff}


def _write_deployable(backend: Backend, model: nn.Module, images: torch.Tensor, out: Path,
                      profile: HardwareProfile, format: str, extra: dict,  # noqa: A002
                      scored_top: int, test: Split | None = None, log: Callable[[str], None] = print) -> None:
    """Export ``model`` into ``out`` with ``backend``, check it on ``images``, score it on a seeded sample of
    ``TEST_SCORED`` images of ``test`` (beside the PyTorch model, on the same batches) and record it all in
    export.json. ``scored_top``: the top int8 input code the model was scored with."""
    from autocomp.runtimes.onnx import op_types  # both formats export through ONNX

    path = out / f"model{backend.suffix}"
    nbytes = backend.write(model.eval(), images[:2], path)
    # the weights the runtime holds once it loads the file (what memory counted), and those of the file itself
    info = {"format": format, "file": path.name, "weight_nbytes": nbytes,
            "file_weight_nbytes": backend.weight_nbytes_in(path, loaded=False),
            "runtime": backend.describe(profile) + "; as the check ran it (the file takes any batch size)",
            **extra}
    try:  # a file the runtime cannot load, or whose outputs disagree, is said so beside it: never taken as checked
        prepared = Prepared(run=backend.load(path, profile), weight_nbytes=nbytes, weights_from=backend.weights_from)
        agreement = backend.check(model, prepared, images, profile)
    except AutocompError as exc:
        write_json(out / "export.json", {**info, "check": str(exc)})
        _drop_intermediate(path)
        raise type(exc)(f"{exc}; {path.name}, failed so, is left in {out} to look at (export.json's check says why): "
                        "not for deployment") from exc
    info.update(top1_agreement=agreement.top1, max_logit_diff=agreement.max_logit_diff, images=agreement.images)
    if test is not None and len(test):  # a sample: a listed test/ folder is in class order
        try:
            info.update(_test_accuracy(backend, model, prepared, test.sample(TEST_SCORED), profile))
        except AutocompError as exc:  # an image that cannot be read: the file was checked all the same
            info["test_check"] = f"not scored on the test images: {exc}"
            log(f"note: {path.name} {info['test_check']}")
    if format == "openvino":
        info["default_precision"] = _openvino_defaults(model, path, images, log)
        from autocomp.runtimes.openvino import SNIPPETS_OFF, ir_heads_equal_tokens

        if (where := ir_heads_equal_tokens(path)) is not None:
            info["static_batch_properties"] = SNIPPETS_OFF
            info["static_batch_note"] = note = (
                f"its attention has {where} in a block, which OpenVINO's CPU plugin computes wrongly at a static "
                f"batch (the file reshaped to one) in its fused kernels: autocomp checked and measured it compiled "
                f"with {SNIPPETS_OFF}; pass those properties to compile_model whenever you reshape it to a static "
                "batch (with the batch kept dynamic, it is exact)")
            log(f"note: {note}")
    if info.get("int8_weights") == "matmul_integer" and "MatMulInteger" in op_types(path):
        exact = ("matmul_integer_u8 (the scored model's input codes, a slower kernel) or "
                 "matmul_integer_reduce_range (codes 0..127: outputs a little off the scored model's, a few more "
                 "nodes)" if scored_top == 255 else
                 "matmul_integer_reduce_range (the default here: the scored model's own input codes, a few more "
                 "nodes)")
        info["int8_weights_note"] = note = (
            "its int8 layers take input codes 0..255 on ONNX Runtime's u8 x s8 kernel, exact on x86 CPUs with VNNI "
            "or AMX and on ARM; on x86 CPUs without VNNI (AVX2 alone) that kernel sums pairs of products in 16 bits, "
            "which saturate on large codes, and the outputs are off the scored model's by as much as that "
            f"happens: for a file exact on every CPU, export with int8 weights {exact} (--int8-weights; "
            "export_trial's int8_weights=)")
        log(f"note: {note}")
    write_json(out / "export.json", info)
    _drop_intermediate(path)


def _test_accuracy(backend: Backend, model: nn.Module, prepared: Prepared, test: Split,
                   profile: HardwareProfile) -> dict[str, Any]:
    """Top-1 accuracy (%) of the exported file in its runtime and of the PyTorch model, on the same batches of the
    test images (the check's size): what a deployment scores, beside how often it agrees."""
    right = {"runtime": 0, "pytorch": 0}
    for x, y in test.batches(profile.batch_size):
        expected, got = backend.outputs(model, prepared, x, profile)
        right["pytorch"] += int((expected.argmax(-1) == y).sum())
        right["runtime"] += int((got.argmax(-1) == y).sum())
    return {"test_runtime": backend.name, "test_accuracy": 100.0 * right["runtime"] / len(test),
            "test_accuracy_pytorch": 100.0 * right["pytorch"] / len(test), "test_images": len(test)}


def _drop_intermediate(path: Path) -> None:
    """Remove the ONNX file an IR at ``path`` was converted from: not part of what is deployed."""
    if path.suffix != ".onnx":
        path.with_suffix(".onnx").unlink(missing_ok=True)
