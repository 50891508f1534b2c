from __future__ import annotations

import pytest
import torch

from conftest import small_vit
from torch import nn

import autocomp.ops.lowrank  # noqa: F401 - registers low_rank
import autocomp.ops.mlp  # noqa: F401 - registers prune_mlp
from autocomp import AutocompError, Recipe, compress
from autocomp.ops.lowrank import LOW_RANK_LAYERS, LOW_RANK_METHODS, LowRankLinear, low_rank_factors
from autocomp.ops.quantize import Int8Linear

SHAPES = {"qkv": (48, 144), "proj": (48, 48), "fc1": (48, 192), "fc2": (192, 48)}  # (in, out) at embed_dim 48


_model = small_vit


def _params(module):
    return sum(p.numel() for p in module.parameters())


def _layer(block, name):
    parent, attr = LOW_RANK_LAYERS[name]
    return getattr(getattr(block, parent), attr)


def _recipe(block0, block1=None):
    return Recipe.from_dict({"blocks": [block0, block1 if block1 is not None else block0]})


@pytest.mark.parametrize("rank, layers, saved", [
    # every layer has min(in, out) = 48; a factored layer holds r * (in + out) weights + its bias
    (0.25, ["qkv", "proj", "fc1", "fc2"], (48 * 144 - 12 * 192) + (48 * 48 - 12 * 96) + 2 * (48 * 192 - 12 * 240)),
    (0.125, ["qkv", "proj", "fc1", "fc2"], (48 * 144 - 6 * 192) + (48 * 48 - 6 * 96) + 2 * (48 * 192 - 6 * 240)),
    (0.5, ["fc1", "fc2"], 2 * (48 * 192 - 24 * 240)),
])
@pytest.mark.parametrize("method", LOW_RANK_METHODS)
def test_factored_layers_have_exact_shapes_and_parameter_counts(rank, layers, saved, method):
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    factored = compress(model, _recipe({"low_rank": {"rank": rank, "layers": layers, "method": method}}, {}),
                        calibration=x)
    r = round(rank * 48)
    for name, (fan_in, fan_out) in SHAPES.items():
        layer = _layer(factored.blocks[0], name)
        if name in layers:
            assert isinstance(layer, LowRankLinear)
            assert (layer.in_features, layer.out_features, layer.rank) == (fan_in, fan_out, r)
            assert layer.first.weight.shape == (r, fan_in) and layer.first.bias is None
            assert layer.second.weight.shape == (fan_out, r) and layer.second.bias.shape == (fan_out,)
        else:
            assert type(layer) is nn.Linear
    assert _params(factored.blocks[0]) == _params(model.blocks[0]) - saved
    assert _params(factored.blocks[1]) == _params(model.blocks[1])
    assert factored(x).shape == (2, 5)


@pytest.mark.parametrize("method", LOW_RANK_METHODS)
def test_full_rank_changes_nothing(method):
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    factored = compress(model, _recipe({"low_rank": {"rank": 1.0, "method": method}}), calibration=x)
    assert not any(isinstance(m, LowRankLinear) for m in factored.modules())
    assert torch.equal(factored(x), model(x))


@pytest.mark.parametrize("whitened", [False, True])
def test_factors_reproduce_a_matrix_of_that_rank(whitened):
    torch.manual_seed(0)
    weight = torch.randn(40, 5) @ torch.randn(5, 30)
    inputs = torch.randn(100, 30) @ torch.randn(30, 30)
    first, second = low_rank_factors(weight, 5, gram=inputs.T @ inputs / 100 if whitened else None)
    assert first.shape == (5, 30) and second.shape == (40, 5)
    assert torch.allclose(second @ first, weight, atol=1e-4)


def test_plain_svd_leaves_exactly_the_dropped_singular_values_as_weight_error():
    torch.manual_seed(0)
    weight = torch.randn(40, 30)
    first, second = low_rank_factors(weight, 7)
    tail = torch.linalg.svdvals(weight)[7:]
    assert torch.allclose((weight - second @ first).norm(), tail.norm(), rtol=1e-5)
    assert torch.allclose(first.norm(dim=1), second.norm(dim=0))  # sqrt(S) on each side


def _calibration_inputs(model, x):
    inputs = {}
    hooks = [_layer(block, name).register_forward_pre_hook(
        lambda module, args, key=(index, name): inputs.__setitem__(key, args[0]))
        for index, block in enumerate(model.blocks) for name in LOW_RANK_LAYERS]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return inputs


@pytest.mark.parametrize("name", sorted(LOW_RANK_LAYERS))
@pytest.mark.parametrize("rank", [0.125, 0.25])
def test_whitened_svd_has_lower_output_error_on_calibration_data(name, rank):
    model = _model()
    x = torch.randn(8, 3, 16, 16)
    inputs = _calibration_inputs(model, x)
    errors = {}
    for method in LOW_RANK_METHODS:
        factored = compress(model, _recipe({"low_rank": {"rank": rank, "layers": [name], "method": method}}),
                            calibration=x)
        for index in range(2):
            original, replaced = _layer(model.blocks[index], name), _layer(factored.blocks[index], name)
            expected = original(inputs[index, name])
            errors[method, index] = ((replaced(inputs[index, name]) - expected).norm() / expected.norm()).item()
    for index in range(2):
        assert errors["whitened", index] < 0.9 * errors["svd", index]


def test_yaml_round_trip_is_exact_and_gives_identical_outputs(tmp_path):
    model = _model()
    x = torch.randn(4, 3, 16, 16)
    recipe = Recipe.from_dict({"blocks": [
        {"low_rank": {"rank": 0.25, "layers": ["fc1", "fc2"], "method": "whitened"}},
        {"prune_heads": {"keep": 3}, "low_rank": {"rank": 0.4}, "quantize": {}},
    ]})
    recipe.save(tmp_path / "r.yaml")
    again = Recipe.load(tmp_path / "r.yaml")
    assert again == recipe and Recipe.from_dict(recipe.to_dict()) == recipe
    config = again.blocks[0]["low_rank"]
    assert config.layers == ("fc1", "fc2") and hash(config) == hash(recipe.blocks[0]["low_rank"])
    assert recipe.summary() == "r0.25w[fc1,fc2] | h3:r0.4:w8"
    assert torch.equal(compress(model, again, calibration=x)(x), compress(model, recipe, calibration=x)(x))


def test_structure_only_model_reloads_the_compressed_weights_exactly():
    """Every structural operator, then low rank, then int8: the rebuilt shapes take the saved weights."""
    model = _model()
    x = torch.randn(4, 3, 16, 16)
    recipe = Recipe.from_dict({"blocks": [
        {"prune_heads": {"keep": 4}, "prune_mlp": {"keep": 0.5}, "low_rank": {"rank": 0.25, "method": "whitened"}},
        {"low_rank": {"rank": 0.3, "layers": ["qkv", "fc2"]}, "quantize": {}},
    ]})
    compressed = compress(model, recipe, calibration=x)
    rebuilt = compress(_model(), recipe, structure_only=True)
    rebuilt.load_state_dict(compressed.state_dict())
    assert torch.equal(rebuilt(x), compressed(x))


def test_ranks_follow_the_shapes_left_by_earlier_pruning():
    model = _model()
    recipe = _recipe({"prune_heads": {"keep": 3}, "prune_mlp": {"keep": 0.5}, "low_rank": {"rank": 0.25}})
    factored = compress(model, recipe, calibration=torch.randn(2, 3, 16, 16))
    expected = {"qkv": (48, 72, 12), "proj": (24, 48, 6), "fc1": (48, 96, 12), "fc2": (96, 48, 12)}
    for name, shape in expected.items():
        layer = _layer(factored.blocks[1], name)
        assert (layer.in_features, layer.out_features, layer.rank) == shape
    assert factored(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_quantized_factors_keep_the_reported_shape():
    model = _model()
    factored = compress(model, _recipe({"low_rank": {"rank": 0.25}, "quantize": {}}))
    layer = factored.blocks[0].mlp.fc1
    assert isinstance(layer.first, Int8Linear) and isinstance(layer.second, Int8Linear)
    assert (layer.in_features, layer.out_features, layer.rank) == (48, 192, 12)


@pytest.mark.parametrize("settings, message", [
    ({"rank": 0}, "rank must be the fraction of each layer's full rank kept, in (0, 1], got 0"),
    ({"rank": 1.2}, "rank must be the fraction of each layer's full rank kept, in (0, 1], got 1.2"),
    ({"rank": "half"}, "rank must be the fraction of each layer's full rank kept, in (0, 1], got 'half'"),
    ({"rank": 0.25, "layers": "qkv"},
     "layers must be a non-empty list of layer names from ['qkv', 'proj', 'fc1', 'fc2'], got 'qkv'"),
    ({"rank": 0.25, "layers": []},
     "layers must be a non-empty list of layer names from ['qkv', 'proj', 'fc1', 'fc2'], got []"),
    ({"rank": 0.25, "layers": ["qkv", "mlp"]},
     "layers must name each of ['qkv', 'proj', 'fc1', 'fc2'] at most once, got ['qkv', 'mlp']"),
    ({"rank": 0.25, "layers": ["fc1", "fc1"]},
     "layers must name each of ['qkv', 'proj', 'fc1', 'fc2'] at most once, got ['fc1', 'fc1']"),
    ({"rank": 0.25, "method": "pca"}, "method must be one of ['svd', 'whitened'], got 'pca'"),
])
def test_bad_settings_are_refused_when_read(settings, message):
    with pytest.raises(AutocompError) as info:
        Recipe.from_dict({"blocks": [{}, {"low_rank": settings}]})
    assert f"block 1: low_rank: {message}" in str(info.value)


@pytest.mark.parametrize("settings, message, useful", [
    ({"rank": 0.6}, "block 0: low_rank rank=0.6 keeps 29 of 48 ranks of proj (48 -> 48), whose factors would hold "
                    "2784 weights against 2304 for the layer itself; use rank <= 0.479 for this layer, or leave "
                    "'proj' out of layers", 0.479),
    ({"rank": 0.75, "layers": ["fc1", "qkv"]}, "block 0: low_rank rank=0.75 keeps 36 of 48 ranks of qkv (48 -> 144), "
                                               "whose factors would hold 6912 weights against 6912", 0.729),
])
def test_ranks_that_save_nothing_are_refused_with_the_largest_useful_rank(settings, message, useful):
    model = _model()
    with pytest.raises(AutocompError) as info:
        compress(model, _recipe({"low_rank": settings}, {}))
    assert message in str(info.value)
    name = "proj" if "proj" in message else "qkv"
    factored = compress(model, _recipe({"low_rank": {"rank": useful, "layers": [name]}}, {}))
    layer = _layer(factored.blocks[0], name)
    assert layer.rank * (layer.in_features + layer.out_features) < layer.in_features * layer.out_features


def test_a_layer_factored_once_is_refused_a_second_time():
    recipe = _recipe({"low_rank": {"rank": 0.25}})
    once = compress(_model(), recipe)
    with pytest.raises(AutocompError) as info:
        compress(once, recipe)
    assert "block 0: attn.qkv is a LowRankLinear, not an nn.Linear; low_rank factors each layer once" in str(info.value)


def test_whitened_without_calibration_data_is_refused():
    with pytest.raises(AutocompError) as info:
        compress(_model(), _recipe({"low_rank": {"rank": 0.25, "method": "whitened"}}))
    assert "low_rank method 'whitened' needs calibration data; pass calibration images or use method 'svd'" in str(
        info.value)
