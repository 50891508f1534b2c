"""A recipe: per transformer block, which operators to apply with which settings, and the distillation that recovers
accuracy afterwards. It is plain data and round-trips through YAML exactly."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from autocomp._loader import build, read_yaml
from autocomp.errors import AutocompError
from autocomp.ops import OPERATORS

__all__ = ["Recipe", "Distill", "FORMAT"]

FORMAT = "autocomp-recipe/1"


@dataclass(frozen=True)
class Distill:
    """Settings of the distillation fine-tuning (a model-level recipe entry; plain data, round-trips through YAML
    as ``dataclasses.asdict`` / ``Distill(**d)``).

    Attributes:
        steps: optimizer steps; 0 leaves the student as it is.
        alpha: weight of the distillation term, in [0, 1]; ``1 - alpha`` weights the cross-entropy with the labels.
        temperature: softmax temperature ``T`` > 0 of both models' logits in the distillation term.
        lr: peak AdamW learning rate (linear warm-up over ``autocomp.distill.WARMUP_FRACTION`` of the steps, then
            cosine to 0).
        batch_size: images per step.
        feature_weight: weight (>= 0) of the MSE between student and teacher block outputs; 0 turns it off.
        seed: seed (>= 0) of the batch order and of any dropout.
    """

    steps: int
    alpha: float
    temperature: float = 4.0
    lr: float = 1e-3
    batch_size: int = 64
    feature_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_whole(self, "steps", 0, "a whole number of optimizer steps")
        _check_number(self, "alpha", "the weight of the distillation term, a number in [0, 1]", 0.0, 1.0)
        _check_number(self, "temperature", "the softmax temperature, a number > 0", 0.0, math.inf, low_open=True)
        _check_number(self, "lr", "the peak learning rate, a number > 0", 0.0, math.inf, low_open=True)
        _check_whole(self, "batch_size", 1, "a whole number of images per step")
        _check_number(self, "feature_weight", "the weight of the feature MSE, a number >= 0 (0 turns it off)", 0.0,
                      math.inf)
        _check_whole(self, "seed", 0, "a whole-number seed")

    def tag(self) -> str:
        tag = f"kd{self.steps}a{self.alpha:g}T{self.temperature:g}"
        return tag + (f"f{self.feature_weight:g}" if self.feature_weight else "")


def _check_whole(config: Distill, name: str, minimum: int, meaning: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AutocompError(f"{name} must be {meaning} >= {minimum}, got {value!r}")


def _check_number(config: Distill, name: str, meaning: str, low: float, high: float, *,
                  low_open: bool = False) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or value > high or (low_open and value == low):
        raise AutocompError(f"{name} must be {meaning}, got {value!r}")
    object.__setattr__(config, name, float(value))  # YAML's 1 and 1.0 are the same setting


def _block(index: int, block: Mapping[str, Any] | None, source: str) -> dict[str, Any]:
    """One block's operators, each config built from its plain settings (an operator's config is kept)."""
    block = block or {}
    if not isinstance(block, Mapping):
        raise AutocompError(f"{source}: block {index} must be a mapping of operator -> settings")
    parsed = {}
    for name, settings in block.items():
        if name not in OPERATORS:
            raise AutocompError(f"{source}: block {index}: unknown operator {name!r}; known: {sorted(OPERATORS)}")
        config_cls = OPERATORS[name].config_cls
        parsed[name] = settings if isinstance(settings, config_cls) else build(
            config_cls, settings or {}, where=f"{source}: block {index}: {name}")
    return parsed


@dataclass(frozen=True)
class Recipe:
    """Per-block operator configs.

    Attributes:
        blocks: one mapping per transformer block, from operator name (``prune_heads``, ``quantize``) to its
            frozen config. An empty mapping leaves the block as it is.
        distill: knowledge-distillation recovery after compression (model-level), or None for none.
    """

    blocks: tuple[Mapping[str, Any], ...]
    distill: Distill | None = None

    def __post_init__(self) -> None:
        """Settings given as plain data (``Recipe(blocks=({"quantize": {"weight_bits": 8}},))``) are checked and
        built as :meth:`from_dict` builds them; operator configs are kept as they are."""
        if not isinstance(self.blocks, (tuple, list)):
            raise AutocompError(f"recipe: blocks must be a sequence with one entry per transformer block, got "
                                f"{type(self.blocks).__name__}")
        object.__setattr__(self, "blocks", tuple(_block(index, block, "recipe")
                                                 for index, block in enumerate(self.blocks)))
        if self.distill is not None and not isinstance(self.distill, Distill):
            object.__setattr__(self, "distill", build(Distill, self.distill, where="recipe: distill"))

    @property
    def reads_calibration(self) -> bool:
        """Whether compressing with this recipe reads the calibration images (other images give another model)."""
        return any(getattr(config, "reads_calibration", False) for block in self.blocks for config in block.values())

    @classmethod
    def identity(cls, depth: int) -> Recipe:
        """The recipe that changes nothing in a model of ``depth`` blocks."""
        return cls(blocks=tuple({} for _ in range(depth)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "recipe") -> Recipe:
        """Build and validate a recipe from its dict form; errors name the block, the field and the fix."""
        if not isinstance(data, Mapping) or not isinstance(data.get("blocks"), list):
            raise AutocompError(f"{source}: expected a mapping with a 'blocks' list, one entry per transformer block")
        unknown = set(data) - {"format", "blocks", "distill"}
        if unknown:
            raise AutocompError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: 'format', 'blocks', 'distill'")
        blocks = tuple(_block(index, block, source) for index, block in enumerate(data["blocks"]))
        distill = data.get("distill")
        distill = build(Distill, distill, where=f"{source}: distill") if distill is not None else None
        return cls(blocks=blocks, distill=distill)

    def to_dict(self) -> dict[str, Any]:
        """The YAML-ready dict form (operators in application order)."""
        order = list(OPERATORS)
        data: dict[str, Any] = {
            "format": FORMAT,
            "blocks": [
                {name: dataclasses.asdict(block[name]) for name in order if name in block} for block in self.blocks
            ],
        }
        if self.distill is not None:
            data["distill"] = dataclasses.asdict(self.distill)
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        return cls.from_dict(read_yaml(path, what="recipe"), source=str(path))

    def summary(self) -> str:
        """A compact one-line description, e.g. ``h8/8:q8 | h4/8 | -``."""
        parts = []
        for block in self.blocks:
            tags = [block[name].tag() for name in OPERATORS if name in block]
            parts.append(":".join(tags) if tags else "-")
        return " | ".join(parts) + (f" + {self.distill.tag()}" if self.distill is not None else "")
