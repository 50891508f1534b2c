"""The search: Optuna (ask/tell) decides what to try, Ray Tune runs each trial, results are written as they come."""

from __future__ import annotations

from autocomp.search.space import SearchSpace, load_space

__all__ = ["SearchSpace", "load_space", "run_search"]


def run_search(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - see autocomp.search.runner.run_search
    from autocomp.search.runner import run_search as _run

    return _run(*args, **kwargs)


run_search.__doc__ = "Run a search job; see :func:`autocomp.search.runner.run_search`."
