"""optuna-dashboard opens a search's study.journal: the study, its three objectives, its trials and their user attrs.

The study is built by hand the way ``autocomp.search._controller`` writes it (ask, user attrs, ``set_constraint``,
tell), so no search has to run; the dashboard's WSGI app is then called directly, without a server.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
import pytest

from autocomp.recipe import Recipe
from autocomp.results import STUDY_NAME, study_file, study_storage
from autocomp.search._controller import DIRECTIONS, SKIPPED

MEASURED = {  # trial number -> (recipe, objective values, constraints as set_constraint gets them)
    0: ({"blocks": [{"prune_heads": {"keep": 2}}, {}]}, (91.5, 1.2, 3.4), {"latency_ms": -0.25, "memory_mb": -0.5}),
    1: ({"blocks": [{}, {"prune_mlp": {"keep": 0.5}}]}, (93.0, 2.1, 3.9), {"latency_ms": 0.05, "memory_mb": -0.4}),
}
SKIPPED_RECIPE = {"blocks": [{}, {}]}  # the screen's verdict: far over budget, told PRUNED without running
SKIPPED_VIOLATIONS = {"latency_ms": 0.8, "memory_mb": 0.1}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose study.journal holds two measured trials and one the screen skipped."""
    path = tmp_path_factory.mktemp("run")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(path), directions=list(DIRECTIONS))
    for data, values, violations in MEASURED.values():
        trial = _ask(study, data)
        for key, value in violations.items():
            trial.set_constraint(key, value)
        study.tell(trial, list(values))
    trial = _ask(study, SKIPPED_RECIPE)
    trial.set_user_attr(SKIPPED, "predicted latency 1.8x the budget")
    for key, value in SKIPPED_VIOLATIONS.items():
        trial.set_constraint(key, value)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return path


def _ask(study: optuna.Study, data: dict[str, Any]) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_categorical("block0.heads", [2, 4])  # a parameter, as SearchSpace.sample draws them
    recipe = Recipe.from_dict(data)
    trial.set_user_attr("recipe", recipe.to_dict())
    trial.set_user_attr("recipe_summary", recipe.summary())
    return trial


def _get(app: Any, path: str) -> dict[str, Any]:
    """GET ``path`` from a WSGI app; the decoded JSON body (the status must be 200)."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO(b"")}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda code, headers, exc_info=None: status.append(code)))
    assert status == ["200 OK"], (path, status, body[:200])
    return json.loads(body)


@pytest.fixture(params=["storage", "path"])
def dashboard(request, run_dir: Path) -> Any:
    """The dashboard's app on the run's study: given autocomp's storage, or the file's path as
    ``optuna-dashboard runs/x/study.journal`` gets it (the README's command)."""
    path = study_file(run_dir)
    assert path.name == "study.journal"
    return optuna_dashboard.wsgi(study_storage(run_dir) if request.param == "storage" else str(path))


def _study(app: Any) -> dict[str, Any]:
    (summary,) = _get(app, "/api/studies")["study_summaries"]
    assert summary["study_name"] == STUDY_NAME
    assert summary["directions"] == list(DIRECTIONS)
    return _get(app, f"/api/studies/{summary['study_id']}")


def test_the_study_list_and_detail_show_the_search(dashboard):
    detail = _study(dashboard)
    assert detail["name"] == STUDY_NAME
    assert detail["directions"] == ["maximize", "minimize", "minimize"] == list(DIRECTIONS)
    trials = {t["number"]: t for t in detail["trials"]}
    assert sorted(trials) == [0, 1, 2]
    assert [trials[n]["state"] for n in (0, 1, 2)] == ["Complete", "Complete", "Pruned"]
    for number, (_, values, _) in MEASURED.items():
        assert trials[number]["values"] == pytest.approx(list(values))


def test_user_attrs_come_through(dashboard):
    trials = {t["number"]: t for t in _study(dashboard)["trials"]}
    for number, data in {**{n: d for n, (d, _, _) in MEASURED.items()}, 2: SKIPPED_RECIPE}.items():
        attrs = {a["key"]: a["value"] for a in trials[number]["user_attrs"]}
        recipe = Recipe.from_dict(data)
        assert attrs["recipe_summary"] == recipe.summary()
        assert json.loads(attrs["recipe"]) == recipe.to_dict()
    assert {a["key"]: a["value"] for a in trials[2]["user_attrs"]}[SKIPPED] == "predicted latency 1.8x the budget"


@pytest.mark.xfail(strict=True, reason="optuna-dashboard 0.21 reads only the pre-Optuna-5 'constraints' list "
                                       "(_serializer.serialize_frozen_trial), not the named constraints that "
                                       "Trial.set_constraint stores")
def test_constraints_come_through(dashboard):
    trials = {t["number"]: t for t in _study(dashboard)["trials"]}
    expected = {**{n: v for n, (_, _, v) in MEASURED.items()}, 2: SKIPPED_VIOLATIONS}
    for number, violations in expected.items():
        assert trials[number]["constraints"] == pytest.approx(list(violations.values()))
