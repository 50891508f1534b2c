"""Rebuild any trial of a finished (or interrupted) run and save it as a loadable model folder."""

from __future__ import annotations

from pathlib import Path

import optuna
from torch import nn

from autocomp.config import load_config
from autocomp.data import load_splits
from autocomp.errors import AutocompError
from autocomp.models import ModelSpec, create_model
from autocomp.recipe import Recipe
from autocomp.results import STUDY_NAME, study_storage
from autocomp.saving import save_model
from autocomp.search._finish import KEPT
from autocomp.search._objective import build_candidate, distill_subset, kept_model

__all__ = ["export_trial"]


def export_trial(run_dir: Path, number: int, out: Path, *, base: nn.Module | None = None) -> Path:
    """Save trial ``number`` of ``run_dir`` to ``out``: the weights the trial kept, or rebuilt from its recipe.

    ``base``: the uncompressed model, when the search was given it as an ``nn.Module`` in Python.
    """
    if not (run_dir / "study.db").is_file() or not (run_dir / "config.yaml").is_file():
        raise AutocompError(f"{run_dir} is not a search run folder (no study.db / config.yaml)")
    study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(run_dir))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials or trials[number].state != optuna.trial.TrialState.COMPLETE:
        complete = [n for n, t in trials.items() if t.state == optuna.trial.TrialState.COMPLETE]
        raise AutocompError(f"trial {number} is not a complete trial of {run_dir}; complete trials: "
                            f"{complete[:20]}{' ...' if len(complete) > 20 else ''}")
    config = load_config(run_dir / "config.yaml", model=base)
    recipe = Recipe.from_dict(trials[number].user_attrs["recipe"])
    base = config.model if not isinstance(config.model, ModelSpec) else create_model(config.model)
    splits = load_splits(config.data, base)
    model = kept_model(base, recipe, run_dir / KEPT / str(number))  # the weights the trial scored, if kept
    if model is None:
        model = build_candidate(base, recipe, splits.calib.x, distill_subset(splits.train),
                                threads=config.resources.cpu)
    save_model(out, model, recipe, config.model, metrics={"trial": number, **trials[number].user_attrs},
               preprocessing=splits.preprocessing)
    return out
