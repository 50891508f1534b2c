"""The search's progress: a live line in a terminal, a plain line per finished trial elsewhere."""

from __future__ import annotations

import functools
import json
import time
from typing import Callable

__all__ = ["Progress"]


class Progress:
    """A live line: trials done of total, how many within budget, best accuracy within budget, and the time left
    at the pace so far. Where standard output is no terminal (a log file, CI, a notebook), a plain line per trial
    told that changed it, given to ``log``, with the minutes so far and about how many are left (a trial of a 224-px
    ViT takes minutes: a log said nothing more for four)."""

    def __init__(self, *, total: int, done: int, enabled: bool, log: Callable[[str], None] = print) -> None:
        import sys

        from rich import progress

        self._total = total
        self._say = functools.partial(print, flush=True) if log is print else log  # shown as each trial ends
        self._lines = enabled and not sys.stdout.isatty()  # plain lines in logs and CI, a live bar in a terminal
        enabled = enabled and not self._lines
        self._progress = progress.Progress(
            progress.TextColumn("[bold]search"), progress.BarColumn(), progress.MofNCompleteColumn(),
            progress.TextColumn("{task.fields[status]}", markup=False),  # errors may hold [...]
            progress.TimeElapsedColumn(), progress.TimeRemainingColumn(), disable=not enabled,
            speed_estimate_period=24 * 3600.0)  # its pace over every trial: they may be minutes apart
        self._task = self._progress.add_task("search", total=total, completed=done, status="")
        self._last = ""  # the plain line said last, without its times
        self._started, self._done = time.perf_counter(), done  # the pace: of the trials finished in this run

    def __enter__(self) -> Progress:
        self._started = time.perf_counter()  # the trials start here, after the passes before them
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def update(self, rows: list) -> None:
        finished = [r for r in rows if r.state == "COMPLETE"]  # skipped and failed ones are asked for again
        feasible = [r for r in rows if r.feasible]
        best = max((r.accuracy for r in feasible if r.final), default=None)
        skipped = sum(r.skipped_reason is not None for r in rows)
        # a failure whose recipe a retry then completed (an interrupted trial run again) no longer counts here
        completed = {json.dumps(r.recipe, sort_keys=True) for r in finished}
        failed = [r for r in rows if r.state == "FAIL" and not r.interrupted  # run again: not a failure
                  and json.dumps(r.recipe, sort_keys=True) not in completed]
        status = (f"within budget {len(feasible)}" + (f", best {best:.2f}%" if best is not None else "")
                  + (f", skipped {skipped}" if skipped else "")
                  + (f", failed {len(failed)} (last: {failed[-1].error})" if failed else ""))
        self._progress.update(self._task, completed=len(finished), status=status)
        line = f"search {len(finished)}/{self._total}  {status}"
        if self._lines and line != self._last:  # a trial told without changing the figures: said once
            self._say(f"search {len(finished)}/{self._total}{self._times(len(finished))}  {status}")
        self._last = line

    def _times(self, finished: int) -> str:
        """`` (3.4 min; about 7 min left)``: the minutes since this run's first trial began and, at the pace of the
        trials finished since, the time the rest take; "" before one has."""
        elapsed, new = time.perf_counter() - self._started, finished - self._done
        if new <= 0:
            return ""
        rest = elapsed / new * max(0, self._total - finished)
        left = "" if not rest else f"; about {rest:.0f} s left" if rest < 90 else f"; about {rest / 60:.0f} min left"
        return f" ({elapsed / 60:.1f} min{left})"
