"""One trial run in-process: what it records about how its quantized layers ran."""

from __future__ import annotations

import pytest

from autocomp.hardware import HardwareProfile
from autocomp.ops import quantize as q
from autocomp.recipe import Recipe
from autocomp.search._objective import TrialInputs, distill_subset, run_trial

PROFILE = HardwareProfile(name="t", threads=1, batch_size=4, warmup=1, repeats=3)


def _inputs(model, splits):
    return TrialInputs(base=model, val=splits.val, calib=splits.calib.x, train=distill_subset(splits.train),
                       profile=PROFILE, limits={"memory_mb": 100.0}, base_latency_ms=1.0)


@pytest.mark.parametrize("top, recorded, simulated", [(255, "onednn-u8", 0), (127, "onednn-u7", 0),
                                                       (None, "simulated", 8)])
def test_a_trial_records_how_its_static_int8_activations_ran(tiny_teacher, digits_splits, monkeypatch, top,
                                                            recorded, simulated):
    monkeypatch.setattr(q, "int8_static_range", lambda: top)  # VNNI, a CPU without it, no oneDNN kernel
    recipe = Recipe.from_dict({"blocks": [{"quantize": {"weight_bits": 8, "act_bits": 8}}, {}]})
    result = run_trial(recipe.to_dict(), _inputs(tiny_teacher[1], digits_splits))
    assert result["int8_activations"] == recorded and result["simulated_layers"] == simulated // 2
    plain = run_trial(Recipe.from_dict({"blocks": [{"quantize": {}}, {}]}).to_dict(),
                      _inputs(tiny_teacher[1], digits_splits))
    assert plain["int8_activations"] is None and plain["simulated_layers"] == 0
