"""The search: Optuna (ask/tell) decides what to try, Ray Tune runs each trial, results are written as they come.

Public: :func:`run_search` (a whole job), :func:`export_trial` (any trial as a loadable model), and the search
space (:mod:`autocomp.space`, which a job's config reads too). The modules behind them are private: ``_screen``
(cost prediction and the skip rule), ``_controller`` (Optuna behind Ray Tune's Searcher; ``_coarse`` and ``_local``,
its coarse stage and local moves), ``_objective`` (one trial), ``_ray`` (the Ray a search runs on), ``_runner`` (the
job), ``_rundir`` (the run folder: its lock, the job it holds, resuming it), ``_before`` (the baseline, reach
checks, sensitivity and latency passes before the first trial), ``_finish`` (summary and best model), ``_export``.
"""

from __future__ import annotations

from autocomp.search._export import export_trial
from autocomp.search._runner import run_search
from autocomp.space import SearchSpace, load_space

__all__ = ["SearchSpace", "load_space", "run_search", "export_trial"]
