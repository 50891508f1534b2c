"""Where autocomp keeps its caches, and how paths in YAML files are resolved."""

from __future__ import annotations

import os
from pathlib import Path

from autocomp.errors import AutocompError

__all__ = ["cache_dir", "resolve_path"]


def cache_dir() -> Path:
    """The cache root: ``$AUTOCOMP_CACHE`` if set, else ``~/.cache/autocomp``."""
    root = os.environ.get("AUTOCOMP_CACHE") or Path.home() / ".cache" / "autocomp"
    return Path(root).expanduser()


def resolve_path(value: str | os.PathLike, *, base: Path | None = None, what: str = "file",
                 must_exist: bool = True, keep_links: bool = False) -> Path:
    """Resolve a path from a YAML file.

    ``{cache}`` expands to :func:`cache_dir`; ``~`` and environment variables expand; a relative path is looked up
    next to ``base`` (the YAML file's folder) first, then in the current directory. ``keep_links``: an absolute path
    with its symbolic links kept (a data folder that Ray nodes reach through the same link, not its target here).
    """
    text = os.path.expandvars(str(value)).replace("{cache}", str(cache_dir()))
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else ([base / path] if base else []) + [Path.cwd() / path]
    for candidate in candidates:
        if candidate.exists():
            return Path(os.path.abspath(candidate)) if keep_links else candidate.resolve()
    if must_exist:
        tried = ", ".join(str(c) for c in candidates)
        raise AutocompError(f"{what} not found: {value!r} (looked at {tried}); fix the path" + shipped_hint(what, path))
    return candidates[0]


# what a file not found is called (read_yaml's, resolve_path's) -> the folder of a clone holding autocomp's own
SHIPPED = {"hardware profile": "hardware_profiles", "search space": "search_spaces",
           "search space file": "search_spaces"}


def shipped_hint(what: str, path: Path) -> str:
    """For a hardware profile or search space not found: the one of that name autocomp's clone holds, or the folder
    of those it holds ("" where there is none: an install from a wheel)."""
    folder = Path(__file__).resolve().parents[1] / SHIPPED.get(what, "")
    if what not in SHIPPED or not folder.is_dir():
        return ""
    for name in (path.name, path.name + ".yaml"):
        if (folder / name).is_file():
            return f"; autocomp's own is {folder / name}"
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    return f"; autocomp's own are in {folder} ({', '.join(names)})" if names else ""
