"""The one error class users see: a mistake in their input, with the fix in the message."""

from __future__ import annotations

__all__ = ["AutocompError"]


class AutocompError(ValueError):
    """A user error (bad model name, malformed YAML, missing data, impossible budget).

    The command line prints it as one line without a traceback; the message names the bad value and the fix.
    """
