"""SIGTERM (``kill PID``, a scheduler's preemption) stopping a search as Ctrl-C does: its trials end, what is written
is kept, the Ray it started is shut down. The command line takes it for the whole command; a search started from
Python where the process has the default handler takes it for the search, then ends the process as SIGTERM would."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator, NoReturn


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C's KeyboardInterrupt is: a search running in the background,
    where a shell leaves SIGINT ignored, is stopped that way."""


_PENDING: list[type[KeyboardInterrupt]] = []  # the interrupt taken and not yet handled (see raise_pending)
_OURS: set = set()  # the handlers installed now by terminated_as_interrupted


def _defaults_in_child() -> None:
    """In a process forked while a handler of ours is installed: the default handlers back at once. A Python
    handler runs only between bytecodes, and a child stuck in C never gets there: OpenVINO's telemetry forks a
    process per event and terminates it after a timeout, and on an offline machine the child hangs in getaddrinfo
    (a lock another thread of the parent held at the fork); it outlived SIGTERM, and the parent's exit waited on it
    for ever (``autocomp export --format openvino`` never returned)."""
    try:
        if signal.getsignal(signal.SIGTERM) in _OURS:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if signal.getsignal(signal.SIGINT) in _OURS:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread of the main interpreter: nothing of ours can be installed there
        pass
    _OURS.clear()


os.register_at_fork(after_in_child=_defaults_in_child)


@contextmanager
def terminated_as_interrupted(*, unless_handled: bool = False, ctrl_c: bool = False) -> Iterator[bool]:
    """SIGTERM raises :class:`Terminated` in the block (in the main thread, where signals are handled); yields
    whether it does. ``unless_handled``: only where SIGTERM has the default handler (a caller's own stays).
    ``ctrl_c``: Ctrl-C's KeyboardInterrupt is remembered as well, where Python's own handler takes it (the command
    line's; a notebook's interrupt).

    Python drops an exception raised while it runs a finalizer (a weakref callback, ``__del__``: "Exception
    ignored in ..."), where a signal lands now and then: the interrupt is remembered until the block ends, for
    :func:`raise_pending` to raise where the search waits. A process forked in the block (OpenVINO's telemetry
    forks one per event, and terminates it) inherits the handler: there SIGTERM ends it as by default."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    sigterm = not (unless_handled and signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)
    owner = os.getpid()

    def terminate(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a child forked in C, not by os.fork (its hook unrun): as by default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        _PENDING[:] = [Terminated]
        raise Terminated

    def interrupt(signum: int, frame: object) -> None:
        _PENDING[:] = [KeyboardInterrupt]
        raise KeyboardInterrupt

    # Ctrl-C only where Python's own handler takes it: a shell running the command in the background from a script
    # has it ignored, and so it stays
    ctrl_c = ctrl_c and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if not sigterm and not ctrl_c:  # both a caller's (the command line's, around a search it runs)
        yield False
        return
    previous = signal.signal(signal.SIGTERM, terminate) if sigterm else None
    if ctrl_c:
        signal.signal(signal.SIGINT, interrupt)
    _OURS.update({terminate, interrupt})
    try:
        yield sigterm
    finally:
        _OURS.difference_update({terminate, interrupt})
        if sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
        if ctrl_c:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _PENDING.clear()


def raise_pending() -> None:
    """Raise the interrupt taken in a :func:`terminated_as_interrupted` block where it was lost (dropped in a
    finalizer); a search calls it where it waits, which it otherwise does until its trials end."""
    if _PENDING:
        raise _PENDING[0]


def end_as_terminated() -> NoReturn:
    """End this process as SIGTERM's default handler does (exit status 143 to a shell), once a search has stopped
    and cleaned up after it."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing more can be said there
            pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    os._exit(128 + signal.SIGTERM)  # not reached: the signal ends the process first
