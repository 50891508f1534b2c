"""Quiet timing: while one trial times its candidate, the other trials of the run on the same machine hold still.

Concurrent trials share the machine's cores, caches and memory bandwidth. A candidate timed while another trial
distils reads faster or slower at random (on the 2-core demo machine the ratio's spread over repeated measurements
was 1.3x to 2.4x that with quiet timing in four of five runs of ``benchmarks/quiet_timing.py``), and a search that
keeps the candidates measured within budget keeps the lucky readings. With quiet timing on, a trial's timing waits
until the steps under way elsewhere on its machine end, and no step starts until it is done; the trials report the
seconds they waited. A step is a trial's compression of its candidate, the export and checks of a measurement, a
distillation step or an evaluation batch. Not paused: the driver (the sampler, results writing) and the data-loader
processes that decode an image folder's images ahead of a trial.

Two lock files in a folder of the machine's temporary directory, one folder per run, taken with ``flock`` (a process
that dies releases its locks, so a killed trial does not leave the others waiting; data-loader processes it forked
share its lock files and release them when they exit, seconds later):

- the gate: a timing holds it exclusively from before it waits for the steps until it ends; a step passes through it
  (shared, released at once) before it starts, so no step starts while a timing waits or runs;
- the work lock: each step holds it shared while it runs; a timing takes it exclusively, so it starts once the steps
  already under way have ended.

A step that ran CUDA kernels waits for them before it lets a timing start (they run after the Python call returns).
Waits are polls, so a time limit (:mod:`autocomp._timeout`) still ends a trial that waits. Trials on other machines
(other Ray nodes) do not wait for each other: they disturb no timing here. Where ``flock`` does not exist (Windows) or
the temporary folder cannot be locked (a warning says so), nothing waits.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Iterator

import torch

from autocomp._timeout import check_time
from autocomp.errors import warn

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["run_key", "quiet_machine", "timing", "step", "paused_seconds", "removed_after"]

TIMING_POLL_S = 0.001  # how often a timing waiting for the steps under way tries its lock again
STEP_POLL_S = 0.01  # ... and a step waiting for a timing: seldom, as its wake-ups land on the timed machine


class _Locks:
    """This context's open lock files and what its steps waited."""

    def __init__(self, folder: Path) -> None:
        """Raises OSError where the files cannot be made or locked (a read-only or network file system)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.gate: IO[bytes] = open(folder / "gate", "ab")
        self.work: IO[bytes] = open(folder / "work", "ab")
        self.in_step = self.in_timing = False
        self.paused = 0.0
        try:  # flock works here: a lock is taken, or refused because another process holds it
            fcntl.flock(self.gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(self.gate, fcntl.LOCK_UN)
        except BlockingIOError:
            pass
        except OSError:
            self.close()
            raise

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
    try:
        locks = _Locks(_folder(key))
    except OSError as exc:
        warn(f"quiet timing is off in this trial: cannot lock files in {_folder(key)} ({exc}); set TMPDIR to a "
             "local folder this user can write, or quiet_timing: false to silence this")
        yield
        return
    token = _current.set(locks)
    try:
        yield
    finally:
        _current.reset(token)
        locks.close()


def _folder(key: str) -> Path:
    return Path(tempfile.gettempdir()) / f"autocomp-quiet-{os.getuid()}" / key


@contextmanager
def removed_after(key: str | None) -> Iterator[None]:
    """Remove this machine's lock files of ``key`` when the body (the run's trial loop) ends."""
    try:
        yield
    finally:
        if key is not None and fcntl is not None:
            shutil.rmtree(_folder(key), ignore_errors=True)


def _take(file: IO[bytes], mode: int, poll_s: float) -> float:
    """Lock ``file`` (``fcntl.LOCK_SH`` or ``LOCK_EX``), trying every ``poll_s``; returns the seconds waited."""
    began = time.perf_counter()
    while True:
        try:
            fcntl.flock(file, mode | fcntl.LOCK_NB)
            return time.perf_counter() - began
        except BlockingIOError:
            check_time()
            time.sleep(poll_s)


@contextmanager
def timing() -> Iterator[None]:
    """Hold the machine quiet for the body: wait for the steps under way to end, and start none until it is done."""
    locks = _current.get()
    if locks is None:
        yield
        return
    if locks.in_step:
        raise RuntimeError("a timing inside a step of the same context would wait for itself")
    locks.paused += _take(locks.gate, fcntl.LOCK_EX, TIMING_POLL_S)  # another trial's timing
    try:
        locks.paused += _take(locks.work, fcntl.LOCK_EX, TIMING_POLL_S)  # the steps under way
        locks.in_timing = True
        try:
            yield
        finally:
            locks.in_timing = False
            fcntl.flock(locks.work, fcntl.LOCK_UN)
    finally:
        fcntl.flock(locks.gate, fcntl.LOCK_UN)


@contextmanager
def step() -> Iterator[None]:
    """One step of compute (compressing a candidate, exporting it, a distillation step, an evaluation batch): it
    waits while another process times."""
    locks = _current.get()
    if locks is None or locks.in_step or locks.in_timing:  # (taking the shared lock would weaken the timing's own)
        yield
        return
    locks.paused += _take(locks.gate, fcntl.LOCK_SH, STEP_POLL_S)
    try:
        _take(locks.work, fcntl.LOCK_SH, STEP_POLL_S)  # at once: only a timing holding the gate holds it
    finally:
        fcntl.flock(locks.gate, fcntl.LOCK_UN)
    locks.in_step = True
    try:
        yield
    finally:
        locks.in_step = False
        try:
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
        finally:
            fcntl.flock(locks.work, fcntl.LOCK_UN)


def paused_seconds() -> float | None:
    """Seconds this context has waited for quiet timing so far (its steps for other contexts' timings, its timings
    for their steps under way and their timings); None outside :func:`quiet_machine` (or where it does nothing)."""
    locks = _current.get()
    return None if locks is None else locks.paused
