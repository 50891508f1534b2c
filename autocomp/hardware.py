"""Hardware profiles: the facts about a target device, from ``hardware_profiles/*.yaml``, in a frozen dataclass.

Hardware numbers live only in those YAML files, never in code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from autocomp.errors import AutocompError

__all__ = ["HardwareProfile", "load_profile"]

DEVICES = ("cpu",)


@dataclass(frozen=True)
class HardwareProfile:
    """A target device and how to measure on it.

    Attributes:
        name: a short name, e.g. ``local-cpu``.
        device: where the model runs; today ``cpu``.
        backend: the execution backend, e.g. ``pytorch-cpu``.
        threads: intra-op threads used when timing.
        batch_size: images per forward pass when timing and counting activation memory.
        warmup: untimed forward passes before timing.
        repeats: timed forward passes (the median is reported).
        int8_kernel: the backend runs int8 weights with a real int8 kernel (else they are simulated).
        ray_resource: the Ray custom resource that marks the node holding this device, or None for any node.
        sources: where each number came from (field -> source).
    """

    name: str
    device: str = "cpu"
    backend: str = "pytorch-cpu"
    threads: int = 1
    batch_size: int = 1
    warmup: int = 5
    repeats: int = 30
    int8_kernel: bool = True
    ray_resource: str | None = None
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise AutocompError(f"device must be one of {list(DEVICES)}, got {self.device!r}")
        for name in ("threads", "batch_size", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AutocompError(f"{name} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise AutocompError(f"warmup must be a whole number >= 0, got {self.warmup!r}")


def load_profile(path: str | Path) -> HardwareProfile:
    """Read and validate a hardware profile; errors name the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError:
        raise AutocompError(f"hardware profile not found: {path}; see hardware_profiles/ for examples") from None
    except yaml.YAMLError as exc:
        raise AutocompError(f"hardware profile {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return from_mapping(data, source=str(path))


def from_mapping(data: Any, *, source: str) -> HardwareProfile:
    if not isinstance(data, Mapping):
        raise AutocompError(f"hardware profile {source}: expected a mapping of fields")
    allowed = [f.name for f in dataclasses.fields(HardwareProfile)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise AutocompError(f"hardware profile {source}: unknown field(s) {unknown}; allowed: {allowed}")
    if "name" not in data:
        raise AutocompError(f"hardware profile {source}: missing field 'name'")
    try:
        return HardwareProfile(**data)
    except AutocompError as exc:
        raise AutocompError(f"hardware profile {source}: {exc}") from None
