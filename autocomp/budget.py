"""The budget: the hard constraint of a search, and the one function that decides whether it is met."""

from __future__ import annotations

import dataclasses
import math
import re
from decimal import Decimal
from dataclasses import dataclass
from typing import Mapping

from autocomp.errors import AutocompError

__all__ = ["Budget", "violations", "feasible", "TIMED", "COUNTED", "aims"]

# The limits met by timing a model, which varies run to run by several %; the others (memory_mb: the bytes of weights
# and activations; weights_mb: the weights alone) are counted, and a candidate counted under its limit stays under it.
# What aims at a limit (the search's local moves and repairs) leaves room for the noise under a timed limit only.
TIMED = frozenset({"latency_ms"})
COUNTED = ("memory_mb", "weights_mb")  # the counted limits: bytes, which the cost model predicts, not timings


UNIT_MISTAKE = 100  # an absolute limit this many times the uncompressed model's figure: given in another unit


_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%")
_UNITS = {"latency_ms": "of milliseconds, e.g. 5", "memory_mb": "of megabytes (10^6 bytes), e.g. 8",
          "weights_mb": "of megabytes (10^6 bytes), e.g. 8",
          "latency": "(a fraction of the uncompressed model's latency), e.g. 0.6 or \"60%\"",
          "memory": "(a fraction of the uncompressed model's memory), e.g. 0.5 or \"50%\"",
          "weights": "(a fraction of the uncompressed model's weights), e.g. 0.25 or \"25%\""}
_FRACTIONS = {"latency": "latency_ms", "memory": "memory_mb", "weights": "weights_mb"}  # fraction -> absolute limit


@dataclass(frozen=True)
class Budget:
    """The hard constraint. Absolute limits, or fractions of the uncompressed model measured in the same run.

    Attributes:
        latency_ms: at most this many milliseconds per forward pass.
        memory_mb: at most this many MB of weights plus peak activations at the profile's batch size.
        weights_mb: at most this many MB of weights, as the target's runtime holds them (``memory_mb`` without the
            activations): the limit for a model that must fit the device's memory beside its other work. On ONNX
            Runtime and OpenVINO 16-bit weights count 4 bytes each (the runtimes widen them to fp32 as they load
            the file, which holds 2).
        latency: at most this fraction of the uncompressed model's latency (e.g. 0.5 = twice as fast; at most 1),
            or a percentage as text (``"50%"``).
        memory: at most this fraction of the uncompressed model's memory (or a percentage, ``"50%"``).
        weights: at most this fraction of the uncompressed model's weights (or a percentage, ``"25%"``).
    """

    latency_ms: float | None = None
    memory_mb: float | None = None
    latency: float | str | None = None  # a str only as written ("65%"): a float once built
    memory: float | str | None = None
    weights_mb: float | None = None
    weights: float | str | None = None

    def __post_init__(self) -> None:
        for key in _FRACTIONS:  # a fraction may be written as a percentage: "65%" is 0.65
            value = getattr(self, key)
            if isinstance(value, str) and (match := _PERCENT.fullmatch(value.strip())):
                percent = Decimal(match.group(1))  # "33.3%" is 0.333, as written, not 0.33299999999999996
                if not 0 < percent <= 100:
                    raise AutocompError(f"budget.{key} is a percentage of the uncompressed model's {key}, above 0% "
                                        f"and at most 100%, got {value!r}")
                object.__setattr__(self, key, float(percent / 100))
        set_fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if not set_fields:
            raise AutocompError("budget is empty; set at least one of latency_ms, memory_mb, weights_mb, latency "
                                "(fraction), memory (fraction), weights (fraction)")
        for key, value in set_fields.items():
            finite = not isinstance(value, float) or math.isfinite(value)  # YAML's .nan and .inf are not
            if not isinstance(value, (int, float)) or not finite or value <= 0:
                raise AutocompError(f"budget.{key} must be a positive number {_UNITS[key]}, got {value!r}")
        for key, unit in _FRACTIONS.items():
            value = set_fields.get(key)
            if value is not None and value > 1:  # the uncompressed model meets it: nothing to search for
                guess = f"did you mean {value / 100:g} ({value:g}%)? " if 10 <= value <= 100 else ""
                raise AutocompError(f"budget.{key} is a fraction of the uncompressed model's {key} (0.5: half of it), "
                                    f"at most 1, got {value!r}; {guess}an absolute limit is budget.{unit}")
        for key, unit in _FRACTIONS.items():
            if getattr(self, unit) is not None and getattr(self, key) is not None:
                raise AutocompError(f"budget: give {unit} or {key} (fraction), not both")

    def limits(self, base: Mapping[str, float]) -> dict[str, float]:
        """Absolute limits (``latency_ms``, ``memory_mb``, ``weights_mb``) given the uncompressed model's measured
        figures (``base``, by the same keys)."""
        limits = {}
        for fraction, key in _FRACTIONS.items():
            if getattr(self, key) is not None:
                limits[key] = getattr(self, key)
            elif getattr(self, fraction) is not None:
                limits[key] = getattr(self, fraction) * base[key]
        return limits

    def given_as_fraction(self, key: str) -> float | None:
        """The fraction of the uncompressed model's figure the limit ``key`` (``latency_ms`` ...) was given as, or
        None where it was given absolute (or not at all)."""
        return next((getattr(self, fraction) for fraction, unit in _FRACTIONS.items() if unit == key), None)

    def check_plausible(self, base: Mapping[str, float]) -> None:
        """Refuse an absolute limit ``UNIT_MISTAKE`` times the uncompressed model's figure or more: it constrains
        nothing, and is most likely given in another unit (bytes for MB, microseconds for ms), which a whole search
        would not reveal. ``base``: the uncompressed model's measured figures."""
        for key, given, unit, other in (("memory_mb", self.memory_mb, "MB", "bytes or KB"),
                                        ("weights_mb", self.weights_mb, "MB", "bytes or KB"),
                                        ("latency_ms", self.latency_ms, "ms", "microseconds")):
            if given is None:
                continue
            base_value = base[key]
            if given >= UNIT_MISTAKE * base_value:
                alone = sum(value is not None for value in dataclasses.asdict(self).values()) == 1
                fix = ("give the limit in " + unit + ", or a fraction (budget." + key.split("_")[0] + ": 0.5 for "
                       "half the uncompressed model's)") if alone else "leave it out to search without that limit"
                raise AutocompError(f"budget.{key} is {given:g} {unit}, {given / base_value:,.0f}x the uncompressed "
                                    f"model's {base_value:.4g} {unit}, so it constrains nothing: budget.{key} is in "
                                    f"{unit} (was it given in {other}?); {fix}")

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
        if self.weights_mb is not None:
            parts.append(f"weights <= {self.weights_mb:g} MB")
        if self.weights is not None:
            parts.append(f"weights <= {self.weights:g} x uncompressed")
        return ", ".join(parts)


def violations(metrics: Mapping[str, float], limits: Mapping[str, float]) -> dict[str, float]:
    """How far each limit is exceeded, relative to the limit (0.1: 10 % over); a value <= 0 means that limit is met.

    With :func:`feasible`, the one place that decides feasibility: the trial's Optuna constraints, the cost screen
    (on predicted metrics) and the results all use it.
    """
    return {key: metrics[key] / limit - 1.0 for key, limit in limits.items()}


def feasible(over: Mapping[str, float]) -> bool:
    """Whether every limit is met, given :func:`violations`."""
    return all(value <= 0 for value in over.values())


def aims(limits: Mapping[str, float], timed_share: float) -> dict[str, float]:
    """What to aim at under each limit: ``timed_share`` of a timed limit (:data:`TIMED`), a counted limit itself."""
    return {key: limit * (timed_share if key in TIMED else 1.0) for key, limit in limits.items()}
