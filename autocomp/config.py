"""The job config: one YAML file naming the model, data, search space, hardware profile, budget and trial count."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from torch import nn

from autocomp._loader import build, read_yaml
from autocomp._paths import cache_dir, resolve_path
from autocomp.budget import Budget
from autocomp.data import DataConfig
from autocomp.errors import AutocompError, AutocompTypeError, shown
from autocomp.hardware import REQUIRED_IN_FILE, HardwareProfile, from_mapping
from autocomp.models import ModelSpec, factory_folder, factory_module, timm_equivalent, vit_blocks
from autocomp.space import SearchSpace

__all__ = ["JobConfig", "FidelityConfig", "Resources", "SensitivityConfig", "load_config"]


@dataclass(frozen=True)
class Resources:
    """What each trial asks Ray for.

    Attributes:
        cpu: CPUs per trial, and the intra-op threads its compression, distillation and evaluation use.
        gpu: GPUs (a fraction shares one) per trial; distillation runs on the trial's GPU. Latency is still measured
            where the hardware profile says.
    """

    cpu: int = 1
    gpu: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.cpu, bool) or not isinstance(self.cpu, int) or self.cpu < 1:
            raise AutocompError(f"resources.cpu must be a whole number of CPUs >= 1, got {self.cpu!r}")
        if (isinstance(self.gpu, bool) or not isinstance(self.gpu, (int, float)) or self.gpu < 0
                or (self.gpu > 1 and self.gpu != int(self.gpu))):
            raise AutocompError(f"resources.gpu must be a number of GPUs >= 0, a fraction of one (0.5 shares it) or "
                                f"a whole number, got {self.gpu!r}")


SAMPLERS = ("tpe", "gp", "nsga2", "random")


@dataclass(frozen=True)
class SensitivityConfig:
    """The sensitivity pass before the search (:mod:`autocomp.search._sensitivity`).

    Attributes:
        images: validation images each setting is scored on (the first of the split); 0 skips the pass.
        drop_above: a setting that alone, before distillation, costs a block more accuracy points than this is not
            offered to the search in that block.
        min_saving: under a latency budget, a setting that, measured in every block at once, saves less than this
            fraction of the uncompressed latency is offered in no block (on the target it does not buy time).
    """

    images: int = 512
    drop_above: float = 5.0
    min_saving: float = 0.03

    def __post_init__(self) -> None:
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 0:
            raise AutocompError(f"sensitivity.images must be a whole number >= 0 (0 skips the pass), got "
                                f"{self.images!r}")
        if isinstance(self.drop_above, bool) or not isinstance(self.drop_above, (int, float)) \
                or not self.drop_above >= 0:
            raise AutocompError(f"sensitivity.drop_above must be accuracy points >= 0, got {self.drop_above!r}")
        if isinstance(self.min_saving, bool) or not isinstance(self.min_saving, (int, float)) \
                or not 0 <= self.min_saving < 1:
            raise AutocompError(f"sensitivity.min_saving must be a fraction of the latency in [0, 1) (0.03: 3%), "
                                f"got {self.min_saving!r}")


@dataclass(frozen=True)
class FidelityConfig:
    """Multi-fidelity: every distilled candidate is first distilled for a part of its steps and scored on a
    validation subset; only one that could enter the front of those short scores (within budget, and no other
    candidate at most as slow and as large more accurate by ``slack`` points) finishes its distillation and is
    scored on all of validation. The others stop there, reported with their short scores (``fidelity: short``).

    Attributes:
        steps: the fraction of the recipe's distillation steps taken before the decision.
        images: the validation images (the first of the split) of the short score.
        slack: accuracy points a short score may always lose to a dominating one and still go on; the rule also
            lets through any within one standard deviation of the difference of two scores on ``images`` images
            (1.5 points near 87% on 1,000), whichever is larger.
    """

    steps: float = 0.25
    images: int = 1000
    slack: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, float)) or not 0 < self.steps < 1:
            raise AutocompError(f"fidelity.steps must be a fraction of the distillation steps between 0 and 1 "
                                f"(0.25: a quarter), got {self.steps!r}")
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise AutocompError(f"fidelity.images must be a whole number of validation images >= 1, got "
                                f"{self.images!r}")
        if isinstance(self.slack, bool) or not isinstance(self.slack, (int, float)) or not self.slack >= 0:
            raise AutocompError(f"fidelity.slack must be accuracy points >= 0, got {self.slack!r}")


@dataclass(frozen=True)
class JobConfig:
    """A search job.

    Attributes:
        model: the base (teacher) model: a timm spec, or (Python API) the ``nn.Module`` itself.
        data: the dataset and its splits.
        search_space: path of the search-space YAML; given in Python, also a
            :class:`~autocomp.search.SearchSpace` or the mapping its file would hold (written to a file in the cache
            named by its content: :func:`given_file`).
        hardware: path of the hardware-profile YAML; given in Python, also a
            :class:`~autocomp.hardware.HardwareProfile` or the mapping its file would hold (as ``search_space``).
        budget: the hard constraint.
        trials: candidates to build, distil and measure (those the cost model skips as far over budget are not
            counted: up to 3 per trial, another candidate is drawn in their place).
        workers: trials run at once.
        seed: seed of the sampler.
        skip_margin: skip (never compress, distil, measure or evaluate) a candidate the cost model predicts to
            exceed a budget limit by more than this fraction (0.5: 50 % over), narrower once the cost model has
            come closer on this run's measurements (:class:`~autocomp.search._screen.Screen`), and do not distil one
            measured that far over; None never skips.
        resources: CPUs and GPUs per trial.
        retries: how many times a crashed trial's recipe is run again (on top of ``trials``).
        sampler: how Optuna draws recipes: ``tpe`` (multivariate TPE), ``gp`` (Optuna's Gaussian-process sampler
            in TPE's place after the coarse stage), ``nsga2`` or ``random``.
        sensitivity: the sensitivity pass that shows which blocks tolerate what and narrows their choices.
        coarse: with the ``tpe`` or ``gp`` sampler, the fraction of the trials drawn coarse first: every block
            alike, by a TPE over the uniform settings, before the per-block sampler refines from them (0: per block
            from the start).
        local: with the ``tpe`` or ``gp`` sampler, the share of the draws after the coarse stage that are local
            moves from the best trial within budget: one block knob a step lighter or heavier, or one lighter and
            another heavier, among the moves the cost model predicts to fit the budget (0: the sampler draws them
            all).
        fidelity: stop candidates early that cannot enter the front (:class:`FidelityConfig`); None distils every
            candidate fully and scores it on all of validation.
        start_points: evaluate known-good recipes first (the uncompressed model, uniform int8, per knob the uniform
            setting predicted to fit the budget; :mod:`autocomp.search._start`), then let the sampler draw.
        trial_timeout_s: a trial running longer stops at its next step (distillation step, evaluation batch, timing
            round) and fails with the reason; None: no limit.
        measure_timeout_s: a measurement not done within this time (waiting for a busy device included) fails its
            trial; None: no limit.
        quiet_timing: while a trial times its candidate on its own machine, the run's other trials there pause at
            their next distillation step or evaluation batch (:mod:`autocomp._quiet`), so that no candidate is
            timed beside another trial's compute. Costs throughput: about (trials at once per machine - 1) x the
            measure phase's share of a trial (the summary's ``quiet_timing`` gives the seconds paused). False: trials
            time while the others compute (noisier figures). No effect with one worker, or with a profile that
            measures on a device node of its own (``ray_resource``).
        final_distill_steps: distil the best candidate within budget again from its compressed weights, for this
            many steps on the whole training split, before it is saved as ``best/`` (the trials distil briefly, on a
            subset, to rank candidates; the deployed model gets the long recovery). Its cost does not change:
            distillation changes weights, not structure. Kept only if it scores higher on validation; 0: the trial's
            own weights.
        source: the YAML file the config came from.
    """

    model: ModelSpec | nn.Module
    data: DataConfig
    search_space: Path  # a SearchSpace or a mapping given is its file's path once made (__post_init__)
    hardware: Path
    budget: Budget
    trials: int = 30
    workers: int = 1
    seed: int = 0
    skip_margin: float | None = 0.5
    resources: Resources = dataclasses.field(default_factory=Resources)
    retries: int = 1
    sampler: str = "tpe"
    sensitivity: SensitivityConfig = dataclasses.field(default_factory=SensitivityConfig)
    start_points: bool = True
    coarse: float = 0.5
    local: float = 0.5
    fidelity: FidelityConfig | None = dataclasses.field(default_factory=FidelityConfig)
    trial_timeout_s: float | None = None
    measure_timeout_s: float | None = 600.0
    quiet_timing: bool = True
    final_distill_steps: int = 0
    source: Path | None = dataclasses.field(default=None, metadata={"yaml": False})

    def __post_init__(self) -> None:
        for key, minimum in (("trials", 1), ("workers", 1), ("seed", 0), ("retries", 0), ("final_distill_steps", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:  # of another type: a TypeError
                error = AutocompError if isinstance(value, int) and not isinstance(value, bool) else AutocompTypeError
                raise error(f"{key} must be a whole number >= {minimum}, got {value!r}")
        if self.sampler not in SAMPLERS:
            raise AutocompError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if not isinstance(self.quiet_timing, bool):
            raise AutocompError(f"quiet_timing must be true or false, got {self.quiet_timing!r}")
        for key in ("trial_timeout_s", "measure_timeout_s"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value > 0):
                raise AutocompError(f"{key} must be a number of seconds > 0, or null for no limit, got {value!r}")
        if isinstance(self.coarse, bool) or not isinstance(self.coarse, (int, float)) or not 0 <= self.coarse <= 1:
            raise AutocompError(f"coarse must be a fraction of the trials in [0, 1] (0.5: the first half drawn with "
                                f"every block alike), got {self.coarse!r}")
        if isinstance(self.local, bool) or not isinstance(self.local, (int, float)) or not 0 <= self.local <= 1:
            raise AutocompError(f"local must be a share of the draws in [0, 1] (0.5: every other draw after the "
                                f"coarse stage is a local move), got {self.local!r}")
        margin = self.skip_margin
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                                   or not margin >= 0):
            raise AutocompError(f"skip_margin must be a fraction >= 0 (0.5 = skip candidates predicted 50% over a "
                                f"limit) or null to never skip, got {margin!r}")
        # a JobConfig made in Python (dataclasses.replace(config, budget=...)): each part of the type it must be
        for key, kind, example in (
                ("model", (ModelSpec, nn.Module), "autocomp.models.ModelSpec(name='vit_small_patch16_224'), or the "
                                                  "nn.Module itself"),
                ("data", DataConfig, "autocomp.data.DataConfig(dataset='imagefolder', root='images')"),
                ("budget", Budget, "autocomp.budget.Budget(latency=0.5)"),
                ("resources", Resources, "autocomp.config.Resources(cpu=2)"),
                ("sensitivity", SensitivityConfig, "autocomp.config.SensitivityConfig(drop_above=5.0)"),
                ("fidelity", (FidelityConfig, type(None)), "autocomp.config.FidelityConfig(), or None")):
            value = getattr(self, key)
            if key == "budget" and not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value <= 1:
                example = f"autocomp.budget.Budget(latency={value!r}) (or memory=)"  # the number given, in place
            if not isinstance(value, kind):
                raise AutocompTypeError(f"{key} must be {example}, got {type(value).__name__} {shown(value)}")
        if isinstance(self.model, nn.Module):  # a torchvision ViT is searched as timm's, with its weights
            object.__setattr__(self, "model", timm_equivalent(self.model))
        for key in ("search_space", "hardware"):
            value = getattr(self, key)
            object.__setattr__(self, key, Path(value) if isinstance(value, (str, Path)) else given_file(key, value))


GIVEN = {"search_space": ("search space", "autocomp.search.SearchSpace(heads_keep=(1.0, 0.75), weight_bits=(32, 8))"),
         "hardware": ("hardware profile", "dataclasses.replace(autocomp.hardware.read_profile("
                                          "'hardware_profiles/local_cpu.yaml'), threads=2)")}


def given_file(key: str, value: Any, *, given: str = "given in Python") -> Path:
    """The file of a search space or hardware profile given in Python (the object, or the mapping its YAML file
    would hold) or as a mapping in a job file (``given``: where, for its messages), checked as its file would be,
    then written to the cache under a name made of its content: every step of a search that reads the space or the
    profile (the run folder, a resume, the calibration of a profile measured on first use) reads a file, and the
    same settings given again, either way, are the same file, so their run resumes."""
    what, example = GIVEN[key]
    kind = SearchSpace if key == "search_space" else HardwareProfile
    if isinstance(value, kind):
        data = _plain(dataclasses.asdict(value))
    elif isinstance(value, Mapping):
        data = _plain(value)
    else:
        raise AutocompTypeError(f"{key} must be the path of a {what} YAML file, the {kind.__name__} or the mapping "
                                f"its file would hold (e.g. {example}), got {type(value).__name__} {shown(value)}")
    # checked as its file would be, then written with the settings that differ from their defaults (and what a
    # profile file must state), sorted: the same settings, an object or a mapping, are one file, a later version's
    # new defaults apply as to a file, and what a profile measured on first use fills in where unset stays unset
    checked = (build(SearchSpace, data, where=f"{what} {given}") if kind is SearchSpace
               else from_mapping(data, source=given))
    stated = REQUIRED_IN_FILE if kind is HardwareProfile else ()
    data = {field.name: _plain(getattr(checked, field.name)) for field in sorted(dataclasses.fields(checked),
                                                                                 key=lambda field: field.name)
            if getattr(checked, field.name) != _default(field)
            or (field.name in stated and getattr(checked, field.name) not in (None, "", {}))}
    text = f"# A {what} given as its settings (autocomp.config.given_file).\n" + yaml.safe_dump(
        data, sort_keys=False, width=1000)  # (a block's own choices may mix whole and text keys: not sorted)
    path = given_folder() / f"{key}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(handle, "w") as out:
                out.write(text)
            os.replace(tmp, path)
        except OSError as exc:
            raise AutocompError(f"cannot write the {what} {given} to {path} ({exc.strerror or exc}): set "
                                "AUTOCOMP_CACHE to a folder you can write") from None
    return path


def named(config: Any, key: str, *, kind: bool = False) -> str:
    """How a message names the job's ``search_space`` or ``hardware`` (``key``): its file as given (``kind``: after
    what it is, ``search space search_spaces/x.yaml``), or, for one given as settings (in Python, or as a mapping in
    the job file), where they were given (``the search space given in job.yaml``): the file the cache made of them
    is no name the user knows."""
    what, path = GIVEN[key][0], Path(getattr(config, key))
    if path.parent == given_folder():
        source = getattr(config, "source", None)
        return f"the {what} given in {Path(source).name if source else 'Python'}"
    return f"{what} {path}" if kind else str(path)


def given_folder() -> Path:
    """Where :func:`given_file` writes the search spaces and profiles given as settings."""
    return cache_dir() / "given"


def _extended(key: str, value: Mapping[str, Any], *, job: Path) -> Path:
    """A job file's ``search_space`` or ``hardware`` written as a mapping: the keys of its file, or ``extends:`` a
    file and the keys to change (``hardware: {extends: ../hardware_profiles/onnxruntime_cpu.yaml, batch_size:
    1}``), as :func:`given_file` writes it."""
    data, what = dict(value), GIVEN[key][0]
    given = f"given in {job} ({key}:)"
    if "extends" in data:
        if not isinstance(data["extends"], str):
            raise AutocompError(f"{job}: {key}.extends must be the path of a {what} file, got {data['extends']!r}")
        parent = resolve_path(data.pop("extends"), base=job.parent, what="search space file" if key ==
                              "search_space" else what)
        inherited = read_yaml(parent, what=what)
        if not isinstance(inherited, Mapping):
            raise AutocompError(f"{job}: {key}.extends names {parent}, which holds no mapping of {what} settings")
        data, given = {**inherited, **data}, f"given in {job} ({key}: {parent} with {sorted(data)} changed)"
    return given_file(key, data, given=given)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _plain(value: Any) -> Any:
    """``value`` as YAML writes it: tuples as lists, mappings as dicts (their keys kept: a block index, a bit-width)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def load_config(path: str | Path, *, model: nn.Module | None = None, files_must_exist: bool = True) -> JobConfig:
    """Read a job config (:func:`autocomp._loader.build`); paths in it are resolved next to the file first.

    ``model``: the ``nn.Module`` to search, in a job that leaves ``model:`` out, or the one a run's config.yaml says
    the search was given in Python (``given_as: nn.Module``); nothing in a config is ever unpickled.
    ``files_must_exist``: the search space and hardware profile files are refused where missing (off: a run
    folder's config read by what needs neither, such as an export).
    """
    if model is not None and not isinstance(model, nn.Module):
        raise AutocompTypeError(f"the model given in Python (load_config's model=, export_trial's base=) "
                                f"must be the nn.Module, got {type(model).__name__} {shown(model)}; a timm "
                                "name or a factory goes in the job's model: section")
    path = Path(path)
    raw = read_yaml(path, what="config file")
    if not isinstance(raw, Mapping):
        raise AutocompError(f"{path}: expected a mapping with model, data, search_space, hardware, budget")
    values = dict(raw)
    base = path.parent
    section = values.get("model")
    if isinstance(section, Mapping) and "module" in section:
        raise AutocompError(f"{path}: model.module (a pickled model) is not read: loading a pickle can run code; "
                            "give model: {factory: 'package.module:function', kwargs: {...}, checkpoint: "
                            "weights.safetensors}, or pass the nn.Module from Python")
    given = isinstance(section, Mapping) and section.get("given_as") == "nn.Module"  # a run folder's config.yaml
    if given and model is None:
        raise AutocompError(f"{path}: this search was given its model as an nn.Module in Python; pass the same "
                            "module (e.g. autocomp.search.export_trial(run, number, out, base=my_model))")
    if model is not None and section is not None and not given:
        raise AutocompError(f"{path} names its model ({section}) and an nn.Module was given too: leave model: out "
                            "of the job to search the module, or give none to search the job's model")
    if section is None and model is None:  # said as the generic "missing key(s) ['model']", with no word of a module
        raise AutocompError(f"{path} names no model; name one (model: {{name: vit_small_patch16_224, kwargs: "
                            "{num_classes: 10}, checkpoint: weights.safetensors}), or, from Python, give the module: "
                            f"load_config({str(path)!r}, model=my_vit)")
    if model is not None:
        values["model"] = model.eval()  # JobConfig rebuilds a torchvision or transformers ViT as timm's
    for key, what in (("search_space", "search space file"), ("hardware", "hardware profile")):
        if isinstance(values.get(key), str):
            values[key] = resolve_path(values[key], base=base, what=what, must_exist=files_must_exist)
        elif isinstance(values.get(key), Mapping):  # the settings themselves, or a file's and the ones that change
            values[key] = _extended(key, values[key], job=path)
    config = build(JobConfig, values, where=str(path))
    if model is not None:
        vit_blocks(config.model)  # a model autocomp cannot compress is refused here, not when the search starts
    if config.data.root:  # on a Ray node without this folder, the split names it (autocomp.data)
        root = resolve_path(config.data.root, base=base, what="data.root", must_exist=False, keep_links=True)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(root)))
    if isinstance(config.model, ModelSpec) and config.model.checkpoint:
        # relative and nowhere: both places it was looked for are said (an absolute one is said where it loads)
        relative = not Path(os.path.expandvars(config.model.checkpoint)).expanduser().is_absolute()
        checkpoint = resolve_path(config.model.checkpoint, base=base, what="checkpoint",
                                  must_exist=files_must_exist and relative and "{cache}" not in config.model.checkpoint)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, checkpoint=str(checkpoint)))
    if isinstance(config.model, ModelSpec) and config.model.factory is not None:  # a module beside the job file
        config = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                       path=_module_folder(config.model, base)))
    return dataclasses.replace(config, source=path)


def _module_folder(model: ModelSpec, base: Path) -> str | None:
    """``model.path``: the folder given, where it holds the factory's module; else the config file's folder or the
    current one, where either does and Python does not find the module on its own (:func:`factory_folder`: a run's
    config.yaml recorded a folder its project has moved from since)."""
    given = None if model.path is None else str(resolve_path(model.path, base=base, what="model.path",
                                                             must_exist=False))
    if given is not None and factory_module(dataclasses.replace(model, path=given)) is not None:
        return given
    return factory_folder(model.factory, [base, Path.cwd()]) or given
