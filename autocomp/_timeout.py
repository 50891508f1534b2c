"""Time limits that long computations check at their own steps (a distillation step, an evaluation batch, a
timing round, a poll of a remote measurement): a trial past its limit stops at the next step and fails with the
reason, instead of holding its worker for ever.

The limit is contextual (a ``contextvars`` variable, so each thread, and each Ray Tune trial, has its own), which
keeps it out of the signatures of the library functions that check it; nested limits keep the earliest deadline.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, NamedTuple

from autocomp.errors import AutocompError

__all__ = ["TimedOut", "time_limit", "check_time"]


class TimedOut(AutocompError):
    """A computation ran past a time limit set with :func:`time_limit`."""


class _Deadline(NamedTuple):
    at: float  # time.monotonic()
    seconds: float
    setting: str  # the setting that set it, named in the error


_deadline: ContextVar[_Deadline | None] = ContextVar("autocomp_deadline", default=None)


@contextmanager
def time_limit(seconds: float | None, *, setting: str) -> Iterator[None]:
    """Let :func:`check_time` raise once ``seconds`` have passed in the body (None: no limit of its own).

    Args:
        seconds: the limit.
        setting: the name of the setting that gave it (``trial_timeout_s``), for the error message.
    """
    outer = _deadline.get()
    if seconds is None:
        yield
        return
    mine = _Deadline(at=time.monotonic() + seconds, seconds=seconds, setting=setting)
    token = _deadline.set(mine if outer is None or mine.at < outer.at else outer)
    try:
        yield
    finally:
        _deadline.reset(token)


def check_time() -> None:
    """Raise :class:`TimedOut` if the innermost time limit has passed; nothing without one."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline.at:
        raise TimedOut(f"timed out: ran past {deadline.setting} = {deadline.seconds:g} s")
