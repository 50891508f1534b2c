"""Files written so that a reader never sees half of one (a temporary file, then an atomic rename), weights read
back with a clear error where a file is not whole, and a model's weights hashed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp.errors import AutocompError

__all__ = ["hash_weights", "read_safetensors", "tensor_bytes", "write_json", "write_safetensors", "write_yaml"]


def hash_weights(model: nn.Module, digest: Any) -> None:
    """Feed ``digest`` (a :mod:`hashlib` object) each state-dict entry of ``model``: its name, dtype, shape and bytes
    (a module's extra state, not a tensor, by its repr)."""
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            digest.update(f"{name} {value.dtype} {tuple(value.shape)}".encode())
            digest.update(tensor_bytes(value))
        else:
            digest.update(f"{name} {value!r}".encode())


def tensor_bytes(value: torch.Tensor) -> bytes:
    """A tensor's bytes in C order, wherever it lives and whatever its dtype (bfloat16 has no NumPy form)."""
    return value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    tmp.replace(path)


def write_yaml(path: Path, data: Any) -> None:
    import yaml

    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save ``tensors`` to ``path`` (``.safetensors``) readable as any other file written here: safetensors creates
    its files for the owner alone (0600), which a folder copied to a server run by another user could not load."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({name: tensor.detach().contiguous() for name, tensor in tensors.items()}, str(tmp))
    os.chmod(tmp, 0o666 & ~_umask())
    tmp.replace(path)


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` sets one to read it, which a file another thread
    creates meanwhile would get)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022  # not Linux: the usual default


def read_safetensors(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a file that is not one (truncated by an interrupted copy, another
    format under the name) is refused with ``what`` it is, the reader's reason, and ``fix``: what the user can do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise AutocompError(f"cannot read {what} {path}: {exc}; {fix}") from None
