"""The job config: one YAML file naming the model, data, search space, hardware profile, budget and trial count."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from autocomp._paths import resolve_path
from autocomp.data import DataConfig
from autocomp.errors import AutocompError
from autocomp.models import ModelSpec

__all__ = ["Budget", "JobConfig", "load_config"]


@dataclass(frozen=True)
class Budget:
    """The hard constraint. Absolute limits, or fractions of the uncompressed model measured in the same run.

    Attributes:
        latency_ms: at most this many milliseconds per forward pass.
        memory_mb: at most this many MB of weights plus peak activations.
        latency: at most this fraction of the uncompressed model's latency (e.g. 0.5 = twice as fast).
        memory: at most this fraction of the uncompressed model's memory.
    """

    latency_ms: float | None = None
    memory_mb: float | None = None
    latency: float | None = None
    memory: float | None = None

    def __post_init__(self) -> None:
        set_fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if not set_fields:
            raise AutocompError("budget is empty; set at least one of latency_ms, memory_mb, latency (fraction), "
                                "memory (fraction)")
        for key, value in set_fields.items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise AutocompError(f"budget.{key} must be a positive number, got {value!r}")
        if self.latency_ms is not None and self.latency is not None:
            raise AutocompError("budget: give latency_ms or latency (fraction), not both")
        if self.memory_mb is not None and self.memory is not None:
            raise AutocompError("budget: give memory_mb or memory (fraction), not both")

    def limits(self, base_latency_ms: float, base_memory_mb: float) -> dict[str, float]:
        """Absolute limits (``latency_ms``, ``memory_mb``) given the uncompressed model's measurements."""
        limits = {}
        if self.latency_ms is not None or self.latency is not None:
            limits["latency_ms"] = self.latency_ms if self.latency_ms is not None else self.latency * base_latency_ms
        if self.memory_mb is not None or self.memory is not None:
            limits["memory_mb"] = self.memory_mb if self.memory_mb is not None else self.memory * base_memory_mb
        return limits

    def describe(self) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency <= {self.latency_ms:g} ms")
        if self.latency is not None:
            parts.append(f"latency <= {self.latency:g} x uncompressed")
        if self.memory_mb is not None:
            parts.append(f"memory <= {self.memory_mb:g} MB")
        if self.memory is not None:
            parts.append(f"memory <= {self.memory:g} x uncompressed")
        return ", ".join(parts)


def violations(metrics: Mapping[str, float], limits: Mapping[str, float]) -> dict[str, float]:
    """How far each limit is exceeded, relative to the limit; a value <= 0 means that limit is met.

    The one place that decides feasibility: the search's Optuna constraints and the results both use it.
    """
    return {key: metrics[key] / limit - 1.0 for key, limit in limits.items()}


@dataclass(frozen=True)
class JobConfig:
    """A search job.

    Attributes:
        model: the base (teacher) model: a timm spec, or (Python API) the ``nn.Module`` itself.
        data: the dataset and its splits.
        search_space: path of the search-space YAML.
        hardware: path of the hardware-profile YAML.
        budget: the hard constraint.
        trials: candidates to evaluate.
        workers: trials run at once.
        seed: seed of the sampler.
        skip_margin: skip (never compress, distil, measure or evaluate) a candidate the cost model predicts to
            exceed a budget limit by more than this fraction (0.5: 50 % over); None never skips.
        source: the YAML file the config came from.
    """

    model: ModelSpec | nn.Module
    data: DataConfig
    search_space: Path
    hardware: Path
    budget: Budget
    trials: int = 30
    workers: int = 1
    seed: int = 0
    skip_margin: float | None = 0.5
    source: Path | None = None


_SECTIONS = {"model": ModelSpec, "data": DataConfig, "budget": Budget}


def load_config(path: str | Path) -> JobConfig:
    """Read a job config; unknown or malformed keys are named with the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError:
        raise AutocompError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise AutocompError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, Mapping):
        raise AutocompError(f"{path}: expected a mapping with model, data, search_space, hardware, budget")
    allowed = [f.name for f in dataclasses.fields(JobConfig) if f.name != "source"]
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise AutocompError(f"{path}: unknown key(s) {unknown}; allowed: {allowed}")
    missing = [key for key in ("model", "data", "search_space", "hardware", "budget") if key not in raw]
    if missing:
        raise AutocompError(f"{path}: missing key(s) {missing}")
    base = path.parent
    values: dict[str, Any] = {}
    for key, cls in _SECTIONS.items():
        if key == "model" and isinstance(raw[key], Mapping) and set(raw[key]) == {"module"}:
            continue  # a pickled nn.Module that autocomp itself saved in a run folder (see search.runner)
        values[key] = _section(cls, raw[key], f"{path}: {key}")
    if "model" not in values:
        module_path = resolve_path(raw["model"]["module"], base=base, what="saved base module")
        values["model"] = torch.load(module_path, weights_only=False).eval()  # written by autocomp, not a user
    if isinstance(values["model"], ModelSpec) and values["model"].checkpoint:
        checkpoint = resolve_path(values["model"].checkpoint, base=base, what="checkpoint", must_exist=False)
        values["model"] = dataclasses.replace(values["model"], checkpoint=str(checkpoint))
    values["search_space"] = resolve_path(raw["search_space"], base=base, what="search space file")
    values["hardware"] = resolve_path(raw["hardware"], base=base, what="hardware profile")
    for key in ("trials", "workers", "seed"):
        if key in raw:
            if not isinstance(raw[key], int) or raw[key] < (0 if key == "seed" else 1):
                raise AutocompError(f"{path}: {key} must be a whole number >= {0 if key == 'seed' else 1}, "
                                    f"got {raw[key]!r}")
            values[key] = raw[key]
    if "skip_margin" in raw:
        margin = raw["skip_margin"]
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                                   or not margin >= 0):
            raise AutocompError(f"{path}: skip_margin must be a fraction >= 0 (0.5 = skip candidates predicted "
                                f"50% over a limit) or null to never skip, got {margin!r}")
        values["skip_margin"] = None if margin is None else float(margin)
    return JobConfig(**values, source=path)


def _section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise AutocompError(f"{where}: expected a mapping, got {data!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise AutocompError(f"{where}: unknown key(s) {unknown}; allowed: {allowed}")
    try:
        return cls(**data)
    except AutocompError as exc:
        raise AutocompError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise AutocompError(f"{where}: {exc}") from None
