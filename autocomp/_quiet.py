"""Quiet timing: while one trial times its candidate, the other trials of the run on the same machine hold still.

Concurrent trials share the machine's cores, caches and memory bandwidth. A candidate timed while another trial
distils reads several percent faster or slower at random (one latency ratio spread over 0.65-0.78x against
0.72-0.76x with the other core idle: BENCHMARKS.md, "Session 13"), and a search that keeps the candidates measured
within budget keeps the lucky readings. With quiet timing on, a trial's timing waits until the steps under way
elsewhere on its machine end, and no step starts until it is done; the trials waiting report the seconds they
paused.

Two lock files in a folder of the machine's temporary directory, one folder per run, taken with ``flock`` (a
process that dies releases its locks, so a killed trial never leaves the others waiting):

- the gate: a timing holds it exclusively from before it waits for the steps until it ends; a step passes through it
  (shared, released at once) before it starts, so no step starts while a timing waits or runs;
- the work lock: each step holds it shared while it runs; a timing takes it exclusively, so it starts once the steps
  already under way have ended.

Waits are polls, so a time limit (:mod:`autocomp._timeout`) still ends a trial that waits. Trials on other machines
(other Ray nodes) do not wait for each other: they disturb no timing here. Where ``flock`` does not exist
(Windows), nothing waits.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Iterator

from autocomp._timeout import check_time

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["run_key", "quiet_machine", "timing", "step", "paused_seconds"]

POLL_S = 0.002  # how often a waiting step or timing tries its lock again


class _Locks:
    """This context's open lock files and what its steps waited."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.gate: IO[bytes] = open(folder / "gate", "ab")
        self.work: IO[bytes] = open(folder / "work", "ab")
        self.in_step = False
        self.paused = 0.0

    def close(self) -> None:
        self.gate.close()  # closing releases any lock still held
        self.work.close()


_current: ContextVar[_Locks | None] = ContextVar("autocomp_quiet", default=None)


def run_key(run_dir: str | Path) -> str:
    """The name the trials of one run share: their run folder's path, hashed."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


@contextmanager
def quiet_machine(key: str | None) -> Iterator[None]:
    """In the body, :func:`timing` and :func:`step` take turns with every other process of this machine in a body
    of the same ``key`` (None, or no ``flock`` here: they do not wait)."""
    if key is None or fcntl is None:
        yield
        return
    locks = _Locks(Path(tempfile.gettempdir()) / f"autocomp-quiet-{os.getuid()}" / key)
    token = _current.set(locks)
    try:
        yield
    finally:
        _current.reset(token)
        locks.close()


def _take(file: IO[bytes], mode: int) -> float:
    """Lock ``file`` (``fcntl.LOCK_SH`` or ``LOCK_EX``), polling; returns the seconds waited."""
    began = time.perf_counter()
    while True:
        try:
            fcntl.flock(file, mode | fcntl.LOCK_NB)
            return time.perf_counter() - began
        except BlockingIOError:
            check_time()
            time.sleep(POLL_S)


@contextmanager
def timing() -> Iterator[None]:
    """Hold the machine quiet for the body: wait for the steps under way to end, and start none until it is done."""
    locks = _current.get()
    if locks is None:
        yield
        return
    if locks.in_step:
        raise RuntimeError("a timing inside a step of the same context would wait for itself")
    _take(locks.gate, fcntl.LOCK_EX)
    try:
        _take(locks.work, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(locks.work, fcntl.LOCK_UN)
    finally:
        fcntl.flock(locks.gate, fcntl.LOCK_UN)


@contextmanager
def step() -> Iterator[None]:
    """One step of compute (a distillation step, an evaluation batch): it waits while another process times."""
    locks = _current.get()
    if locks is None or locks.in_step:
        yield
        return
    waited = _take(locks.gate, fcntl.LOCK_SH)
    try:
        waited += _take(locks.work, fcntl.LOCK_SH)
    finally:
        fcntl.flock(locks.gate, fcntl.LOCK_UN)
    locks.paused += waited
    locks.in_step = True
    try:
        yield
    finally:
        locks.in_step = False
        fcntl.flock(locks.work, fcntl.LOCK_UN)


def paused_seconds() -> float | None:
    """Seconds this context's steps have waited for timings so far; None outside :func:`quiet_machine` (or where it
    does nothing)."""
    locks = _current.get()
    return None if locks is None else locks.paused
