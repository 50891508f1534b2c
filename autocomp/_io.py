"""Files written so that a reader never sees half of one: a temporary file, then an atomic rename."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_json"]


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
