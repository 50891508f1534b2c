"""What users see of a mistake in their input: the error class (the fix in its message), and warnings about their
input or machine, attributed to their own line of code."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

__all__ = ["AutocompError", "AutocompWarning", "warn"]

_PACKAGE = str(Path(__file__).resolve().parent)


class AutocompError(ValueError):
    """A user error (bad model name, malformed YAML, missing data, impossible budget).

    The command line prints it as one line without a traceback; the message names the bad value and the fix.
    """


class AutocompWarning(UserWarning):
    """Something about the user's input or machine they should know, with what to set to change it. The command line
    prints it as one line."""


def warn(message: str) -> None:
    """Warn with :class:`AutocompWarning`, attributed to the first caller outside autocomp: the user's own line
    through the Python API (where ``stacklevel=2`` would name a file inside the package)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, AutocompWarning, stacklevel=level)
