"""The one loader for every YAML file autocomp reads (job config, recipe, hardware profile, search space): YAML ->
frozen dataclasses, with one-line errors that name the file and the key.

:func:`read_yaml` parses a file; :func:`build` turns a mapping into a dataclass, in this order: the mapping itself,
unknown keys, missing keys (fields without a default), the dataclass's own ``__post_init__`` checks on the values as
written (their messages quote the user's value), then each value's type from the field's annotation (``bool`` is
not a number; an ``int`` is accepted for a ``float``; a list for a ``tuple``; a mapping for a nested dataclass;
``None`` only where the annotation allows it).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from autocomp._paths import shipped_hint
from autocomp.errors import AutocompError

__all__ = ["read_yaml", "build"]


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last without a word: a
    budget written twice lost its first limit, a search space's second weight_bits replaced the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<': merged keys may be overridden, as YAML says
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = key in first
            except TypeError:  # an unhashable key: the base loader says what is wrong with it
                continue
            if seen:
                problem = f"the key {key!r} is given a second time (keep one; the first is at line {first[key] + 1})"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, *, what: str) -> Any:
    """The parsed YAML of ``path``; a missing file or invalid YAML is one line naming ``what`` and the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError:
        raise AutocompError(f"{what} not found: {path}" + shipped_hint(what, path)) from None
    try:
        return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise AutocompError(f"{what} {path} is not valid YAML: {_yaml_problem(exc, text)}") from None


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """PyYAML's reason on one line, with the line and column it points at and that line's text."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or not problem:
        return " ".join(str(exc).split())
    lines = text.splitlines()
    quoted = f": {lines[mark.line].strip()!r}" if mark.line < len(lines) and lines[mark.line].strip() else ""
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None:
        context += f" started at line {start.line + 1}, column {start.column + 1}"
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}{quoted}" + (f" ({context})" if context else "")


def build(cls: type, data: Any, *, where: str) -> Any:
    """``cls(**data)``, checked as the module docstring says.

    The values are handed to ``cls`` as written first, so that a dataclass whose ``__post_init__`` validates a
    field gives its own, more specific message quoting the user's value; if it does not object, the loader checks
    the types and builds the dataclass from the converted values. Fields whose
    metadata says ``{"yaml": False}`` cannot be set from a file.

    Args:
        cls: a dataclass whose ``__post_init__`` raises :class:`AutocompError` for bad values.
        data: the parsed YAML mapping.
        where: how errors start, e.g. ``"hardware profile hw.yaml"`` or ``"job.yaml: budget"``.

    Raises:
        AutocompError: one line, ``"{where}: ..."``, naming the key.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.metadata.get("yaml", True)}
    if not isinstance(data, Mapping):
        got = ("is empty" if data is None
               else "is a list; write 'key: value' lines, not '- ' items" if isinstance(data, list)
               else f"is {data!r}, not a mapping of keys")
        raise AutocompError(f"{where} {got}; the keys are {list(fields)}")
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        def closest(key: str) -> list[str]:  # the same key in other case first (memory_MB: memory_mb, not memory)
            same = [name for name in fields if name.lower() == key.lower()]
            return same or difflib.get_close_matches(key, list(fields), n=1, cutoff=0.75)
        guesses = [f"{close[0]!r} for {key!r}" for key in unknown if (close := closest(key))]
        raise AutocompError(f"{where}: unknown key(s) {unknown}; allowed: {list(fields)}"
                            + (f"; did you mean {', '.join(guesses)}?" if guesses else ""))
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise AutocompError(f"{where}: missing key(s) {missing}")
    try:  # the dataclass's own checks first, on the values as written (its messages then quote them)
        cls(**data)
    except TypeError:  # a check that tripped over a value of the wrong type, or a section not yet built (an
        pass  # AutocompError that is a TypeError too): the loader converts it, or names it, below
    except AutocompError as exc:
        raise AutocompError(_located(where, str(exc))) from None
    except ValueError:
        pass
    hints = typing.get_type_hints(cls)
    values, wrong = {}, {}
    for name, value in data.items():
        converted = _convert(value, hints[name], name, where)
        values[name] = value if converted is _WRONG else converted
        if converted is _WRONG:
            wrong[name] = value
    try:
        built = cls(**values)
    except TypeError as exc:  # a check that tripped over a value of the wrong type: the loader's words for it below
        if not wrong:
            raise AutocompError(_located(where, str(exc))) from None
    except AutocompError as exc:
        raise AutocompError(_located(where, str(exc))) from None
    except ValueError as exc:
        if not wrong:
            raise AutocompError(_located(where, str(exc))) from None
    if wrong:
        name, value = next(iter(wrong.items()))
        raise AutocompError(f"{where}: {name} must be {_describe(hints[name])}, got {value!r}")
    return built


_WRONG = object()


def _located(where: str, message: str) -> str:
    """``where: message``, without saying the section twice when the message already starts with it
    (``job.yaml: budget`` + ``budget.latency must be ...`` -> ``job.yaml: budget.latency must be ...``)."""
    head, _, section = where.rpartition(": ")
    if head and message.startswith((f"{section}.", f"{section}:", f"{section} ")):
        return f"{head}: {message}"
    return f"{where}: {message}"


def _convert(value: Any, hint: Any, key: str, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _WRONG
        for arm in (a for a in args if a is not type(None)):
            converted = _convert(value, arm, key, where)
            if converted is not _WRONG:
                return converted
        return _WRONG
    if hint is type(None):
        return None if value is None else _WRONG
    if hint is bool:
        return value if isinstance(value, bool) else _WRONG
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if hint is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _WRONG
    if hint is str:
        return value if isinstance(value, str) else _WRONG
    if hint is Path:
        return Path(value) if isinstance(value, (str, Path)) else _WRONG
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _WRONG
        arms = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(arms) != len(value):
            return _WRONG
        items = tuple(_convert(v, arm, f"{key}[{i}]", where) for i, (v, arm) in enumerate(zip(value, arms)))
        return _WRONG if any(item is _WRONG for item in items) else items
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            return _WRONG
        key_hint, value_hint = args if args else (Any, Any)
        pairs = [(_convert(k, key_hint, key, where), _convert(v, value_hint, f"{key}.{k}", where))
                 for k, v in value.items()]
        return _WRONG if any(_WRONG in pair for pair in pairs) else dict(pairs)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            return _WRONG
        return build(hint, value, where=f"{where}: {key}")
    if isinstance(hint, type):
        return value if isinstance(value, hint) else _WRONG
    return value  # an annotation this loader does not check (a callable, a type variable)


def _describe(hint: Any) -> str:
    """How an annotation reads in an error: ``a whole number``, ``a list of numbers``, ``null or a string``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [_describe(a) for a in args if a is not type(None)]
        text = " or ".join(arms)
        return f"{text} or null" if type(None) in args else text
    if origin is tuple:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (dict, Mapping, typing.Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} settings"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            Path: "a path"}.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    return {bool: "true/false values", int: "whole numbers", float: "numbers", str: "strings"}.get(
        hint, _describe(hint))
