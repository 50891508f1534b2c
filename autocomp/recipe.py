"""A recipe: per transformer block, which operators to apply with which settings. It is plain data and
round-trips through YAML exactly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from autocomp.distill import Distill
from autocomp.errors import AutocompError
from autocomp.ops._registry import registry

__all__ = ["Recipe"]

FORMAT = "autocomp-recipe/1"


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
        ops = registry()
        blocks = []
        for index, block in enumerate(data["blocks"]):
            block = block or {}
            if not isinstance(block, Mapping):
                raise AutocompError(f"{source}: block {index} must be a mapping of operator -> settings")
            parsed = {}
            for name, settings in block.items():
                if name not in ops:
                    raise AutocompError(f"{source}: block {index}: unknown operator {name!r}; known: {sorted(ops)}")
                parsed[name] = _make_config(ops[name].config_cls, settings or {}, f"{source}: block {index}: {name}")
            blocks.append(parsed)
        distill = data.get("distill")
        distill = _make_config(Distill, distill, f"{source}: distill") if distill is not None else None
        return cls(blocks=tuple(blocks), distill=distill)

    def to_dict(self) -> dict[str, Any]:
        """The YAML-ready dict form (operators in application order)."""
        order = list(registry())
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
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise AutocompError(f"cannot read recipe {path}: {exc}".splitlines()[0]) from None
        return cls.from_dict(data, source=str(path))

    def summary(self) -> str:
        """A compact one-line description, e.g. ``h8/8:q8 | h4/8 | -``."""
        parts = []
        for block in self.blocks:
            tags = [block[name].tag() for name in registry() if name in block]
            parts.append(":".join(tags) if tags else "-")
        return " | ".join(parts) + (f" + {self.distill.tag()}" if self.distill is not None else "")


def _make_config(config_cls: type, settings: Any, where: str) -> Any:
    if not isinstance(settings, Mapping):
        raise AutocompError(f"{where}: settings must be a mapping, got {settings!r}")
    allowed = [f.name for f in dataclasses.fields(config_cls)]
    unknown = set(settings) - set(allowed)
    if unknown:
        raise AutocompError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {allowed}")
    try:
        return config_cls(**settings)
    except AutocompError as exc:
        raise AutocompError(f"{where}: {exc}") from None
