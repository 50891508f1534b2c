"""What users see of a mistake in their input: the error class (the fix in its message), and warnings about their
input or machine, attributed to their own line of code."""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

__all__ = ["AutocompError", "AutocompTypeError", "AutocompWarning", "warn", "shown"]

# where a warning is not attributed: autocomp's own files, and contextlib's (a context manager of autocomp's that
# warns on entry is called from there)
_NOT_THE_CALLER = (str(Path(__file__).resolve().parent), str(Path(contextlib.__file__).resolve()))


class AutocompError(ValueError):
    """A user error (bad model name, malformed YAML, missing data, impossible budget).

    The command line prints it as one line without a traceback; the message names the bad value and the fix.
    """


class AutocompTypeError(AutocompError, TypeError):
    """A value given in Python of another type than it takes (a job's budget given as a number): caught as either."""


class AutocompWarning(UserWarning):
    """Something about the user's input or machine they should know, with what to set to change it. The command line
    prints it as one line."""


def warn(message: str) -> None:
    """Warn with :class:`AutocompWarning`, attributed to the first caller outside autocomp: the user's own line
    through the Python API (where ``stacklevel=2`` would name a file inside the package). Filter them by this
    class (``warnings.filterwarnings("ignore", category=autocomp.AutocompWarning)``)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and any(Path(frame.f_code.co_filename).resolve().is_relative_to(skipped)
                                    for skipped in _NOT_THE_CALLER):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, AutocompWarning, stacklevel=level)


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a module's or a tensor's runs to pages), for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
