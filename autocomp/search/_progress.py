"""The search's progress: a live line in a terminal, a plain line per finished trial elsewhere."""

from __future__ import annotations

import functools
import json
from typing import Callable

__all__ = ["Progress"]


class Progress:
    """A live line: trials done of total, how many within budget, best accuracy within budget. Where standard
    output is no terminal (a log file, CI, a notebook), a plain line per trial told that changed it, given to
    ``log``."""

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
            progress.TimeElapsedColumn(), disable=not enabled)
        self._task = self._progress.add_task("search", total=total, completed=done, status="")
        self._last = ""  # the plain line said last

    def __enter__(self) -> Progress:
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
            self._say(line)
        self._last = line
