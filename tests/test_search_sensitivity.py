"""The sensitivity pass: each knob setting on one block alone, scored before distillation; it narrows the search."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
import yaml

from autocomp.compress import compress
from autocomp.search._sensitivity import Setting, allowed_choices, sensitivity_pass, write_sensitivity
from autocomp.search._space import SearchSpace
from autocomp.search._start import recipe_of, start_points
from autocomp.train import evaluate

SPACE = SearchSpace(heads_keep=(0.5, 1.0), mlp_keep=(0.25, 0.5, 1.0), weight_bits=(32, 8))


def test_each_setting_is_scored_on_one_block_alone(tiny_teacher, digits_splits):
    base, val = tiny_teacher[1], digits_splits.val.subset(200)
    settings = sensitivity_pass(base, SPACE, [4, 4], val=val, calib=digits_splits.calib.x, predictor=None,
                                threads=1)
    assert [(s.block, s.knob, s.value) for s in settings] == [
        (b, k, v) for b in (0, 1) for k, v in (("heads_keep", 0.5), ("mlp_keep", 0.5), ("mlp_keep", 0.25),
                                               ("weight_bits", 8))]
    one = next(s for s in settings if (s.block, s.knob, s.value) == (1, "mlp_keep", 0.25))
    recipe = recipe_of(SPACE, [4, 4], {"b0.heads_keep": 1.0, "b0.mlp_keep": 1.0, "b0.weight_bits": 32,
                                       "b1.heads_keep": 1.0, "b1.mlp_keep": 0.25, "b1.weight_bits": 32})
    assert recipe.blocks[0] == {} and recipe.blocks[1]["prune_mlp"].keep == 0.25
    alone = evaluate(compress(base, recipe, calibration=digits_splits.calib.x), val)
    assert one.accuracy_drop == pytest.approx(evaluate(base, val) - alone)
    assert one.predicted_latency_ratio is None  # no cost model given


def test_settings_that_cost_too_much_alone_are_not_offered_and_the_lightest_always_is(tmp_path):
    settings = [Setting(0, "heads_keep", 0.5, 12.0, 0.8), Setting(0, "mlp_keep", 0.5, 1.0, 0.9),
                Setting(0, "mlp_keep", 0.25, 7.0, 0.8), Setting(1, "heads_keep", 0.5, 0.2, 0.8),
                Setting(1, "weight_bits", 8, None, None)]
    allowed = allowed_choices(settings, SPACE, drop_above=5.0)
    assert allowed == {"b0.heads_keep": (1.0,), "b0.mlp_keep": (0.5, 1.0), "b1.weight_bits": (32,)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        recipe = SPACE.sample(study.ask(), [4, 4], allowed=allowed)
        assert "prune_heads" not in recipe.blocks[0] and "quantize" not in recipe.blocks[1]
        assert recipe.blocks[0].get("prune_mlp") is None or recipe.blocks[0]["prune_mlp"].keep == 0.5
    write_sensitivity(tmp_path, settings, drop_above=5.0)
    rows = list(csv.DictReader((tmp_path / "sensitivity.csv").open()))
    assert [r["offered"] for r in rows] == ["False", "True", "False", "True", "False"]
    assert (tmp_path / "sensitivity.png").stat().st_size > 0
    labels = [label for label, _ in start_points(SPACE, [4, 4], predictor=None, limits={}, cap=10, allowed=allowed,
                                                  sensitivity=settings)]
    # uniform int8 uses a choice block 1 lost; the quiet point: block 1 at heads 0.5 (0.2 points alone)
    assert labels == ["uncompressed", "each block at the strongest settings that alone cost <= 0.5 point"]


def test_a_search_shows_the_pass_and_keeps_its_choices_on_resume(tmp_path, tiny_teacher):
    from autocomp.cli import main
    from autocomp.results import STUDY_NAME, study_storage
    from test_search_e2e import write_job

    space = tmp_path / "space.yaml"
    space.write_text("heads_keep: [0.25, 0.5, 1.0]\nweight_bits: [32, 8]\n")
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.99}, trials=4, workers=1)
    values = {**yaml.safe_load(job.read_text()), "search_space": str(space),
              "sensitivity": {"images": 200, "drop_above": 0.0}}
    job.write_text(yaml.safe_dump(values))
    run = tmp_path / "run"
    assert main(["search", str(job), "--out", str(run), "--quiet"]) == 0
    rows = list(csv.DictReader((run / "sensitivity.csv").open()))
    assert len(rows) == 2 * 3 and (run / "sensitivity.png").is_file()
    allowed = json.loads((run / "sensitivity.json").read_text())
    lost = {(f"b{r['block']}.{r['knob']}", float(r["value"])) for r in rows if r["offered"] == "False"}
    assert lost and all(value not in allowed[name] for name, value in lost)
    trials = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(run)).get_trials()
    for trial in trials:  # no trial used a setting the pass removed
        for index, block in enumerate(trial.user_attrs["recipe"]["blocks"]):
            if "prune_heads" in block:
                assert (f"b{index}.heads_keep", block["prune_heads"]["keep"] / 4) not in lost
