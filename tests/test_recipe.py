from __future__ import annotations

import pytest
import torch

from autocomp import AutocompError, Recipe, compress
from autocomp.ops import PruneHeads, Quantize
from autocomp.recipe import Distill


def test_yaml_round_trip_is_exact_and_gives_identical_outputs(tmp_path, tiny_teacher, digits_splits):
    _, model = tiny_teacher
    recipe = Recipe(blocks=({"prune_heads": PruneHeads(keep=2), "quantize": Quantize(weight_bits=8)},
                            {"prune_heads": PruneHeads(keep=3, importance="weight_norm")}))
    recipe.save(tmp_path / "r.yaml")
    again = Recipe.load(tmp_path / "r.yaml")
    assert again == recipe
    x = digits_splits.calib.x
    a = compress(model, recipe, calibration=x)(x)
    b = compress(model, again, calibration=x)(x)
    assert torch.equal(a, b)


def test_summary_names_each_block():
    recipe = Recipe(blocks=({"prune_heads": PruneHeads(keep=2), "quantize": Quantize()}, {}))
    assert recipe.summary() == "h2:w8 | -"


@pytest.mark.parametrize("blocks, message", [
    ([{"prune_heads": {"keep": 0}}], "block 0: prune_heads: keep must be a whole number of heads >= 1"),
    ([{}, {"quantize": {"weight_bits": 5}}], "block 1: quantize: weight_bits must be one of ["),
    ([{"prune_head": {"keep": 2}}],
     "block 0: unknown operator 'prune_head'; known: ['low_rank', 'prune_heads', 'prune_mlp', 'quantize', "
     "'reduce_tokens']"),
    ([{"prune_heads": {"kept": 2}}], "block 0: prune_heads: unknown key(s) ['kept']; allowed: ['keep', 'imp"),
    ([{"prune_heads": {"keep": 2, "importance": "magic"}}], "importance must be one of"),
    ([{"quantize": [8]}], "block 0: quantize is a list; write 'key: value' lines, not '- ' items"),
])
def test_bad_settings_are_refused_when_read(blocks, message):
    with pytest.raises(AutocompError) as info:
        Recipe.from_dict({"blocks": blocks})
    assert message in str(info.value)


def test_recipe_longer_than_model_is_refused(tiny_teacher):
    _, model = tiny_teacher
    with pytest.raises(AutocompError, match="the recipe has 3 blocks but the model has 2"):
        compress(model, Recipe.identity(3))


def test_keeping_more_heads_than_exist_is_refused(tiny_teacher):
    _, model = tiny_teacher
    with pytest.raises(AutocompError, match="block 1: prune_heads.keep=5 but the block has 4 heads; allowed 1..4"):
        compress(model, Recipe.from_dict({"blocks": [{}, {"prune_heads": {"keep": 5}}]}))


def test_a_recipe_built_in_python_from_plain_settings_is_checked_and_built_as_from_yaml():
    """Recipe(blocks=...) with plain dicts was accepted, then failed inside compress ('dict' object has no attribute
    'layers')."""
    plain = Recipe(blocks=({"quantize": {"weight_bits": 8}}, None), distill={"steps": 10, "alpha": 0.5})
    assert plain == Recipe.from_dict({"blocks": [{"quantize": {"weight_bits": 8}}, {}],
                                      "distill": {"steps": 10, "alpha": 0.5}})
    assert isinstance(plain.blocks, tuple) and isinstance(plain.distill, Distill)
    with pytest.raises(AutocompError, match=r"^recipe: block 0: unknown operator 'quantise'; known: "):
        Recipe(blocks=({"quantise": {}},))
    with pytest.raises(AutocompError, match=r"^recipe: block 1: quantize"):
        Recipe(blocks=({}, {"quantize": {"weight_bits": 7.5}}))
    with pytest.raises(AutocompError, match=r"^recipe: blocks must be a sequence"):
        Recipe(blocks={"quantize": {}})
