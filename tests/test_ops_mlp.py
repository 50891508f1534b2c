from __future__ import annotations

import copy

import pytest
import torch

from conftest import small_vit
from timm.layers import GluMlp, RmsNorm

import autocomp.ops.mlp  # noqa: F401 - registers prune_mlp
from autocomp import AutocompError, Recipe, compress
from autocomp.importance import NEURON_SCORES
from autocomp.ops.mlp import keep_neurons
from autocomp.ops.quantize import Int8Linear

HIDDEN = 192  # embed_dim 48 * mlp_ratio 4


_model = small_vit


def _params(module):
    return sum(p.numel() for p in module.parameters())


VARIANTS = {
    "plain": {},
    "mlp-layernorm": {"scale_mlp_norm": True},
    "layerscale+registers": {"init_values": 1e-1, "reg_tokens": 4},
    "no-class-token": {"class_token": False, "global_pool": "avg"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("keep, kept", [(0.5, 96), (0.3, 58), (0.001, 1)])  # 0.3 * 192 = 57.6; 0.192 -> at least 1
def test_pruning_keeps_the_rounded_fraction_of_neurons(variant, keep, kept):
    model = _model(**VARIANTS[variant])
    x = torch.randn(2, 3, 16, 16)
    pruned = compress(model, Recipe.from_dict({"blocks": [{"prune_mlp": {"keep": keep}}, {}]}), calibration=x)
    mlp = pruned.blocks[0].mlp
    assert mlp.fc1.weight.shape == (kept, 48) and mlp.fc2.weight.shape == (48, kept)
    norm_params = 2 * kept if variant == "mlp-layernorm" else 0
    assert _params(mlp) == (48 * kept + kept) + (kept * 48 + 48) + norm_params  # fc1 weight+bias, fc2 weight+bias
    assert _params(pruned) == _params(model) - (HIDDEN - kept) * (48 + 1 + 48 + (2 if norm_params else 0))
    assert pruned.blocks[1].mlp.fc1.out_features == HIDDEN
    assert pruned(x).shape == (2, 5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("importance", sorted(NEURON_SCORES))
def test_keeping_every_neuron_changes_nothing(variant, importance):
    model = _model(**VARIANTS[variant])
    x = torch.randn(2, 3, 16, 16)
    recipe = Recipe.from_dict({"blocks": [{"prune_mlp": {"keep": 1.0, "importance": importance}}] * 2})
    pruned = compress(model, recipe, calibration=x)
    assert torch.equal(pruned(x), model(x))


def test_pruning_computes_the_mlp_with_the_dropped_neurons_silenced():
    model = _model()
    mlp = model.blocks[0].mlp
    tokens = torch.randn(2, 17, 48)
    kept = torch.tensor([150, 3, 77, 0, 191, 42])
    pruned = copy.deepcopy(mlp)
    keep_neurons(pruned, kept)
    dropped = torch.ones(HIDDEN, dtype=torch.bool)
    dropped[kept] = False
    with torch.no_grad():
        mlp.fc2.weight[:, dropped] = 0
    assert pruned.fc1.out_features == 6
    assert torch.allclose(pruned(tokens), mlp(tokens), atol=1e-6)


@pytest.mark.parametrize("importance", sorted(NEURON_SCORES))
def test_importance_drops_a_dead_neuron(importance):
    model = _model()
    with torch.no_grad():  # neuron 7 contributes nothing: its fc2 column is zero
        model.blocks[0].mlp.fc2.weight[:, 7] = 0
    recipe = Recipe.from_dict({"blocks": [{"prune_mlp": {"keep": 191 / 192, "importance": importance}}, {}]})
    pruned = compress(model, recipe, calibration=torch.randn(4, 3, 16, 16))
    fc2 = pruned.blocks[0].mlp.fc2.weight
    assert fc2.shape == (48, 191) and fc2.abs().sum(0).min() > 0  # the dead neuron's zero column is gone


def test_activation_importance_finds_a_neuron_that_never_fires():
    """Neuron 7 has the largest weights but its GELU input is always about -100: only the data can tell."""
    model = _model()
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[7] *= 3
        model.blocks[0].mlp.fc1.bias[7] = -100
    x = torch.randn(4, 3, 16, 16)
    kept_biases = {}
    for importance in NEURON_SCORES:
        recipe = Recipe.from_dict({"blocks": [{"prune_mlp": {"keep": 191 / 192, "importance": importance}}, {}]})
        kept_biases[importance] = compress(model, recipe, calibration=x).blocks[0].mlp.fc1.bias
    assert kept_biases["activation"].min() > -100
    assert kept_biases["weight_norm"].min() == -100


def test_yaml_round_trip_is_exact_and_gives_identical_outputs(tmp_path):
    model = _model()
    x = torch.randn(4, 3, 16, 16)
    recipe = Recipe.from_dict({"blocks": [{"prune_mlp": {"keep": 0.5, "importance": "weight_norm"}},
                                          {"prune_mlp": {"keep": 0.25}}]})
    recipe.save(tmp_path / "r.yaml")
    again = Recipe.load(tmp_path / "r.yaml")
    assert again == recipe and Recipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.summary() == "m0.5 | m0.25"
    assert torch.equal(compress(model, again, calibration=x)(x), compress(model, recipe, calibration=x)(x))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_structure_only_model_reloads_the_pruned_weights_exactly(variant):
    model = _model(**VARIANTS[variant])
    x = torch.randn(2, 3, 16, 16)
    recipe = Recipe.from_dict({"blocks": [{"prune_mlp": {"keep": 0.25}}, {"prune_mlp": {"keep": 0.7}}]})
    pruned = compress(model, recipe, calibration=x)
    rebuilt = compress(_model(**VARIANTS[variant]), recipe, structure_only=True)
    rebuilt.load_state_dict(pruned.state_dict())
    assert torch.equal(rebuilt(x), pruned(x))


@pytest.mark.parametrize("settings, message", [
    ({"keep": 0}, "keep must be the fraction of MLP neurons kept, in (0, 1], got 0"),
    ({"keep": 1.5}, "keep must be the fraction of MLP neurons kept, in (0, 1], got 1.5"),
    ({"keep": True}, "keep must be the fraction of MLP neurons kept, in (0, 1], got True"),
    ({"keep": "half"}, "keep must be the fraction of MLP neurons kept, in (0, 1], got 'half'"),
    ({"keep": 0.5, "importance": "magic"}, "importance must be one of ['activation', 'weight_norm'], got 'magic'"),
])
def test_bad_settings_are_refused_when_read(settings, message):
    with pytest.raises(AutocompError) as info:
        Recipe.from_dict({"blocks": [{}, {"prune_mlp": settings}]})
    assert f"block 1: prune_mlp: {message}" in str(info.value)


def _glu_mlp_model():
    return _model(mlp_layer=GluMlp)


def _rms_norm_model():
    model = _model()
    model.blocks[0].mlp.norm = RmsNorm(HIDDEN)
    return model


def _quantized_fc1_model():
    model = _model()
    model.blocks[0].mlp.fc1 = Int8Linear.from_linear(model.blocks[0].mlp.fc1)
    return model


@pytest.mark.parametrize("make, calibrate, message", [
    (_glu_mlp_model, True, "block 0: prune_mlp supports timm's Mlp (fc1 -> act -> norm -> fc2), this block has a "
                           "GluMlp"),
    (_rms_norm_model, True, "block 0: cannot prune MLP neurons through a RmsNorm mlp.norm"),
    (_quantized_fc1_model, True, "block 0: mlp.fc1 is a Int8Linear, not an nn.Linear"),
    (_model, False, "importance 'activation' needs calibration data; pass calibration images or use importance "
                    "'weight_norm'"),
])
def test_unsupported_models_are_refused_when_applied(make, calibrate, message):
    model = make()
    calibration = torch.randn(2, 3, 16, 16) if calibrate else None
    with pytest.raises(AutocompError) as info:
        compress(model, Recipe.from_dict({"blocks": [{"prune_mlp": {"keep": 0.5}}, {}]}), calibration=calibration)
    assert message in str(info.value)
