from __future__ import annotations

import copy
import io

import pytest
import timm
import torch
from conftest import small_vit
from safetensors.torch import load_file, save_file
from torch import nn

from autocomp import AutocompError, Recipe, compress
from autocomp.measure import weight_nbytes
from autocomp.ops import Int8Linear
from autocomp.ops import _qlayers, _quantizers
from autocomp.ops import quantize as q
from autocomp.ops._quantizers import pack_codes, search_scale, unpack_codes
from autocomp.ops.qat import FakeQuantLinear, deployed, trainable, trainable_layer
from autocomp.ops.quantize import (Bf16Linear, Int8StaticLinear, PackedLinear, Quantize, quantize_linear,
                                   simulated_layers)

CONFIGS = [  # every deployed form: bit-widths, scale searches, a short last group, static activations, smoothing
    Quantize(weight_bits=16), Quantize(), Quantize(weight_bits=8, scale="mse"), Quantize(weight_bits=6),
    Quantize(weight_bits=4), Quantize(weight_bits=3, group_size=32, scale="percentile"),
    Quantize(weight_bits=2, group_size=20, scale="mse"), Quantize(weight_bits=8, act_bits=8),
    Quantize(weight_bits=4, act_bits=8), Quantize(smooth=0.5), Quantize(act_bits=8, smooth=0.5),
]
IDS = [c.tag() for c in CONFIGS]


def _model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, num_classes=5,
                             embed_dim=64, depth=2, num_heads=4).eval()


def _linear_bytes(model):
    return sum(weight_nbytes(m) for m in model.blocks.modules() if isinstance(m, (nn.Linear, q.QuantizedLinear)))


def _compress(config, model=None, **kwargs):
    model = model if model is not None else small_vit()
    calibration = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return compress(model, Recipe(blocks=({"quantize": config},) * 2), calibration=calibration, **kwargs)


def test_int8_weights_take_about_a_quarter_of_fp32():
    model = _model()
    quantized = compress(model, Recipe.from_dict({"blocks": [{"quantize": {}}] * 2}))
    linears = [m for m in quantized.blocks.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 8 and not any(isinstance(m, nn.Linear) for m in quantized.blocks.modules())
    floats = [m for m in model.blocks.modules() if isinstance(m, nn.Linear)]
    assert _linear_bytes(quantized) == sum(m.weight.numel() + 4 * 2 * m.out_features for m in floats)  # + scale, bias
    ratio = _linear_bytes(quantized) / _linear_bytes(model)
    assert 0.25 <= ratio < 0.28  # at width 64 the fp32 scales and biases add 2%
    assert weight_nbytes(quantized) < weight_nbytes(model)


def test_int8_outputs_stay_close_and_runs_the_int8_kernel(monkeypatch):
    model = _model()
    x = torch.randn(4, 3, 16, 16)
    quantized = compress(model, Recipe.from_dict({"blocks": [{"quantize": {}}, {}]}))
    error = (quantized(x) - model(x)).abs().max() / model(x).abs().max()
    assert error < 0.05
    calls = []
    kernel = torch.ops.quantized.linear_dynamic
    monkeypatch.setattr(torch.ops.quantized, "linear_dynamic", lambda *a: calls.append(1) or kernel(*a),
                        raising=False)
    quantized(x)
    assert len(calls) == 4


def test_int8_state_dict_is_plain_tensors_and_reloads_exactly():
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    recipe = Recipe.from_dict({"blocks": [{"quantize": {}}] * 2})
    quantized = compress(model, recipe)
    state = quantized.state_dict()
    assert state["blocks.0.attn.qkv.weight_int8"].dtype == torch.int8
    assert state["blocks.0.attn.qkv.weight_scale"].shape == (3 * 64,)
    rebuilt = compress(_model(), recipe, structure_only=True)
    rebuilt.load_state_dict(state)
    assert torch.equal(rebuilt(x), quantized(x))


@pytest.mark.parametrize("bits, group, in_features, expected", [
    (16, 64, 192, 2 * 40 * 192 + 2 * 40),  # bf16 weight + bf16 bias
    (8, 64, 192, 40 * 192 + 4 * 40 + 4 * 40),  # int8 weight + fp32 scale per row + fp32 bias
    (6, 64, 192, 40 * 192 * 6 // 8 + 2 * 40 * 3 + 4 * 40),  # packed codes + fp16 scale per group + fp32 bias
    (4, 64, 192, 40 * 192 // 2 + 2 * 40 * 3 + 4 * 40),
    (3, 64, 192, 40 * 192 * 3 // 8 + 2 * 40 * 3 + 4 * 40),
    (2, 64, 192, 40 * 192 // 4 + 2 * 40 * 3 + 4 * 40),
    (4, 32, 192, 40 * 192 // 2 + 2 * 40 * 6 + 4 * 40),
    (3, 64, 100, 1500 + 2 * 40 * 2 + 4 * 40),  # 4000 codes * 3 bits = 1500 bytes; 2 groups, the last of 36
    (2, 64, 25, 250 + 2 * 40 * 1 + 4 * 40),  # one short group
])
def test_stored_bytes_are_exactly_the_packed_codes_scales_and_bias(bits, group, in_features, expected):
    torch.manual_seed(0)
    layer = quantize_linear(nn.Linear(in_features, 40), Quantize(weight_bits=bits, group_size=group))
    assert weight_nbytes(layer) == layer.stored_nbytes() == expected
    assert sum(t.numel() * t.element_size() for t in layer.state_dict().values()) == expected  # saved == counted
    config = Quantize(weight_bits=bits, group_size=group)
    assert q.stored_nbytes_for(in_features, 40, bias=True, config=config) == expected  # without building it
    with_act = quantize_linear(nn.Linear(in_features, 40), Quantize(weight_bits=bits, group_size=group, act_bits=8),
                               act=(0.1, 3))
    assert weight_nbytes(with_act) == expected + 12  # + fp32 activation scale, int32 zero point and top code


def test_four_bit_linears_take_at_most_a_seventh_of_fp32_at_width_192():
    model = small_vit(embed_dim=192, num_heads=3)
    sizes = {bits: _linear_bytes(_compress(Quantize(weight_bits=bits), model)) for bits in (16, 8, 6, 4, 3, 2)}
    assert _linear_bytes(model) / 7 >= sizes[4]
    assert sizes[16] > sizes[8] > sizes[6] > sizes[4] > sizes[3] > sizes[2]
    assert sizes[2] < _linear_bytes(model) / 12  # 2 bits + 0.25 bit of fp16 scale + bias


def test_reconstruction_error_falls_as_bits_rise():
    torch.manual_seed(0)
    linear = nn.Linear(256, 96)
    errors = []
    for bits in (2, 3, 4, 6, 8, 16):
        weight, _ = quantize_linear(linear, Quantize(weight_bits=bits)).dequantized()
        errors.append(float((weight - linear.weight.detach()).norm() / linear.weight.detach().norm()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.005 and errors[0] < 0.7
    assert all(a > 1.5 * b for a, b in zip(errors, errors[1:]))


def _with_outliers():
    torch.manual_seed(0)
    weight = torch.randn(64, 256) * 0.02
    rows, cols = torch.randint(0, 64, (20,)), torch.randint(0, 256, (20,))
    weight[rows, cols] = 0.5 * torch.sign(torch.randn(20))  # 25x the typical weight
    return weight


def _heavy_tailed():
    torch.manual_seed(0)
    return torch.distributions.StudentT(3.0).sample((64, 256)) * 0.02


def _error(weight, bits, group, method):
    scale = search_scale(weight, bits, group, method)
    codes = _quantizers.quantize_codes(weight, scale, bits, group)
    return float(((_quantizers.dequantize(codes, scale, group) - weight) ** 2).sum())


@pytest.mark.parametrize("bits, group", [(8, None), (6, 64), (4, 64), (3, 32), (2, 64)])
def test_mse_scale_search_never_loses_to_minmax_and_wins_on_outliers(bits, group):
    for weight in (_with_outliers(), _heavy_tailed(), torch.randn(64, 256)):
        assert _error(weight, bits, group, "mse") <= _error(weight, bits, group, "minmax")  # the grid includes 1.0
    if bits < 8:
        assert _error(_with_outliers(), bits, group, "mse") < 0.995 * _error(_with_outliers(), bits, group, "minmax")
    assert torch.equal(search_scale(_with_outliers(), bits, group, "mse"),
                       search_scale(_with_outliers(), bits, group, "mse"))  # deterministic


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_percentile_clipping_beats_minmax_on_heavy_tailed_weights_at_low_bits(bits):
    # At 6-8 bits it clips more than rounding costs (measured: 1.1x to 10x minmax's error), so it is a low-bit choice.
    weight = _heavy_tailed()
    assert _error(weight, bits, 64, "percentile") < 0.995 * _error(weight, bits, 64, "minmax")
    scale = search_scale(weight, bits, 64, "percentile")
    expected = torch.quantile(weight.abs().view(64, 4, 64), 0.999, dim=-1) / _quantizers.levels(bits)
    assert torch.equal(scale, expected.half().float())


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("count", [1, 7, 64, 1001])
def test_pack_unpack_round_trips_codes_exactly(bits, count):
    codes = torch.randint(0, 2 ** bits, (count,), generator=torch.Generator().manual_seed(count))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-count * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, count).long(), codes)


@pytest.mark.parametrize("bits, codes, stream", [  # little-endian bit stream, hand-derived
    (4, [1, 2], [0x21]),
    (2, [1, 2, 3, 0], [1 | 2 << 2 | 3 << 4]),
    (3, [1, 2, 3, 4, 5, 6, 7, 0], [0xD1, 0x58, 0x1F]),  # sum(c_i << 3i) = 0x1F58D1
    (6, [1, 2, 3, 63], [0x81, 0x30, 0xFC]),  # 1 + 2 << 6 + 3 << 12 + 63 << 18 = 0xFC3081
])
def test_packed_layout_is_the_documented_bit_stream(bits, codes, stream):
    assert pack_codes(torch.tensor(codes), bits).tolist() == stream


def test_packed_layer_holds_codes_of_its_bit_width_and_uses_every_level():
    torch.manual_seed(0)
    layer = quantize_linear(nn.Linear(128, 16), Quantize(weight_bits=3, group_size=32))
    codes = layer.codes()
    assert codes.min() == -3 and codes.max() == 3 and len(codes.unique()) == 7
    assert layer.state_dict()["weight_packed"].numel() == 16 * 128 * 3 // 8


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_recipe_yaml_round_trip_is_exact(tmp_path, config):
    recipe = Recipe(blocks=({"quantize": config}, {}))
    recipe.save(tmp_path / "r.yaml")
    assert Recipe.load(tmp_path / "r.yaml") == recipe
    assert Recipe.from_dict({"blocks": [{"quantize": {"weight_bits": 8}}, {}]}) == Recipe(
        blocks=({"quantize": Quantize()}, {}))  # yesterday's recipes still read as before


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_safetensors_reload_into_a_structure_only_model_is_identical(tmp_path, config):
    x = torch.randn(2, 3, 16, 16)
    quantized = _compress(config)
    save_file({k: v.contiguous() for k, v in quantized.state_dict().items()}, str(tmp_path / "w.safetensors"))
    rebuilt = _compress(config, structure_only=True)
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    assert torch.equal(rebuilt(x), quantized(x))
    assert weight_nbytes(rebuilt) == weight_nbytes(quantized)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_trainable_then_deployed_gives_identical_outputs_and_tensors(config):
    x = torch.randn(2, 3, 16, 16)
    quantized = _compress(config)
    fake = trainable(copy.deepcopy(quantized))
    assert sum(isinstance(m, FakeQuantLinear) for m in fake.modules()) == 8
    assert (fake(x) - quantized(x)).abs().max() < 0.05 * quantized(x).abs().max()  # trains what deploys
    again = deployed(fake)
    assert torch.equal(again(x), quantized(x))
    for key, tensor in quantized.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key


def test_minmax_scales_follow_the_trained_weights_and_searched_scales_stay_frozen():
    torch.manual_seed(0)
    linear = nn.Linear(128, 16)
    for method, follows in (("minmax", True), ("mse", False), ("percentile", False)):
        packed = quantize_linear(linear, Quantize(weight_bits=4, group_size=32, scale=method))
        fake = trainable_layer(packed)
        with torch.no_grad():
            fake.weight.mul_(1.5)
        rescaled = fake.deployed().scales()
        assert torch.equal(rescaled, (1.5 * packed.scales().float()).half()) == follows, method
        assert torch.equal(rescaled, packed.scales()) != follows, method


def test_a_model_pickles_and_copies_with_every_kernel():
    x = torch.randn(2, 3, 16, 16)
    model = small_vit()
    recipe = Recipe(blocks=({"quantize": Quantize(weight_bits=8, act_bits=8)}, {"quantize": Quantize(weight_bits=3)}))
    quantized = compress(model, recipe, calibration=torch.randn(8, 3, 16, 16))
    buffer = io.BytesIO()
    torch.save(quantized, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), quantized(x))
    assert torch.equal(copy.deepcopy(quantized)(x), quantized(x))


@pytest.mark.parametrize("config", [Quantize(weight_bits=16), Quantize(weight_bits=4, group_size=20),
                                    Quantize(weight_bits=3, group_size=32)], ids=lambda c: c.tag())
def test_a_layer_moved_to_another_device_takes_the_tensors_it_holds_in_their_formats(config):
    # they are neither parameters nor buffers, so torch's .to() would leave them behind (a model on the GPU then
    # failed at its first 16-bit layer); the meta device stands in for a GPU here and runs the same code
    model = _compress(config)
    layer = model.blocks[0].attn.qkv
    formats = {name: tensor.dtype for name, tensor in layer._state().items()}
    model.half().float()  # a dtype change leaves a layer's storage as it is: it is the format
    x = torch.randn(2, 3, 16, 16)
    assert {name: tensor.dtype for name, tensor in layer._state().items()} == formats
    model.to("meta").half().float()  # a dtype change on another device leaves them there too
    assert {name: (tensor.device.type, tensor.dtype) for name, tensor in layer._state().items()} == {
        name: ("meta", dtype) for name, dtype in formats.items()}
    assert layer(torch.randn(2, 17, 48, device="meta")).shape == (2, 17, 144)  # codes unpacked where they are
    assert model(x.to("meta")).shape == (2, 5)


def test_an_int8_layer_refuses_to_leave_the_cpu_by_name():
    model = _compress(Quantize(weight_bits=8))
    model.to("cpu").float()  # no move: nothing to refuse
    with pytest.raises(AutocompError, match=r"Int8Linear \(w8\) cannot move to meta: its int8 kernel is a CPU "
                                            r"kernel; search weight bits 16 or 2-6 for a GPU"):
        model.to("meta")


@pytest.mark.parametrize("config", [Quantize(weight_bits=16), Quantize(weight_bits=4, group_size=32),
                                    Quantize(weight_bits=8, act_bits=8)], ids=["w16", "w4g32", "w8a8"])
def test_straight_through_gradients_reach_the_fp32_weights(config):
    torch.manual_seed(0)
    linear = nn.Linear(64, 8)
    fake = trainable_layer(quantize_linear(linear, config, act=(0.02, 128)))
    x, target = torch.randn(5, 64, requires_grad=True), torch.randn(5, 8)
    ((fake(x) - target) ** 2).sum().backward()
    with torch.no_grad():  # STE: the gradient is the one of a plain Linear holding the quantized weights
        weight, bias = fake.deployed().dequantized()
        inputs = x if not config.act_bits else torch.fake_quantize_per_tensor_affine(x, 0.02, 128, 0, 255)
        if config.weight_bits == 16:
            inputs = inputs.bfloat16().float()
        residual = 2 * (nn.functional.linear(inputs, weight, bias) - target)
    torch.testing.assert_close(fake.weight.grad, residual.t() @ inputs, rtol=2e-2, atol=1e-3)
    assert fake.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_each_class_names_its_kernel():
    kernels = {cls: cls.kernel for cls in (Bf16Linear, Int8Linear, Int8StaticLinear, PackedLinear)}
    assert kernels == {Bf16Linear: "bf16_matmul", Int8Linear: "int8_dynamic", Int8StaticLinear: "int8_static",
                       PackedLinear: "unpacked_fp32"}
    for config, cls in [(Quantize(weight_bits=16), Bf16Linear), (Quantize(), Int8Linear),
                        (Quantize(weight_bits=8, act_bits=8), Int8StaticLinear),
                        (Quantize(weight_bits=2), PackedLinear)]:
        layers = [m for m in _compress(config).blocks.modules() if isinstance(m, q.QuantizedLinear)]
        assert len(layers) == 8 and all(type(m) is cls for m in layers)


def test_static_int8_activations_run_the_onednn_kernel_and_match_their_simulation(monkeypatch):
    x = torch.randn(4, 3, 16, 16)
    real = _compress(Quantize(weight_bits=8, act_bits=8))
    assert simulated_layers(real) == []
    calls = []
    kernel = torch.ops.onednn.qlinear_pointwise
    monkeypatch.setattr(torch.ops.onednn, "qlinear_pointwise", lambda *a: calls.append(1) or kernel(*a),
                        raising=False)
    expected = real(x)
    assert len(calls) == 8
    monkeypatch.setattr(_qlayers, "int8_static_range", lambda: None)  # a backend without it: simulated, labelled
    simulated = _compress(Quantize(weight_bits=8, act_bits=8))
    assert {type(m) for m in simulated.blocks.modules() if isinstance(m, q.QuantizedLinear)} == {Int8Linear}
    assert len(simulated_layers(simulated)) == 8 and simulated_layers(simulated)[0] == "blocks.0.attn.qkv"
    assert simulated.state_dict().keys() == real.state_dict().keys()  # same weights file either way
    assert len(simulated_layers(real)) == 8  # the kernel's layers, where it is absent, simulate the same quantizer
    assert (real(x) - expected).abs().max() < 0.05 * expected.abs().max()


def test_low_bit_activation_quantization_is_simulated_and_labelled():
    model = _compress(Quantize(weight_bits=4, act_bits=8))
    layers = [m for m in model.blocks.modules() if isinstance(m, PackedLinear)]
    assert all(m.simulated for m in layers) and len(simulated_layers(model)) == 8
    assert not any(m.simulated for m in _compress(Quantize(weight_bits=4)).modules() if hasattr(m, "simulated"))


def test_activation_ranges_come_from_the_calibration_images():
    model = small_vit()
    images = torch.randn(8, 3, 16, 16)
    seen = []
    hook = model.blocks[1].mlp.fc2.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(images)
    hook.remove()
    low, high = min(float(seen[0].min()), 0.0), float(seen[0].max())
    quantized = compress(model, Recipe(blocks=({}, {"quantize": Quantize(weight_bits=4, act_bits=8)})),
                         calibration=images)
    scale, zero_point, top = quantized.blocks[1].mlp.fc2.act_qparams
    assert top == 255  # a simulated (4-bit) layer models an ideal uint8 kernel, on every CPU
    assert scale == pytest.approx((high - low) / top) and zero_point == round(-low / scale)


def test_bf16_layer_computes_in_bf16():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(3, 64)
    expected = nn.functional.linear(x.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16()).float()
    assert torch.equal(quantize_linear(linear, Quantize(weight_bits=16))(x), expected)


@pytest.mark.parametrize("settings, message", [
    ({"weight_bits": 5}, "block 0: quantize: weight_bits must be one of [16, 8, 6, 4, 3, 2], got 5"),
    ({"weight_bits": 32}, "weight_bits must be one of [16, 8, 6, 4, 3, 2], got 32"),
    ({"weight_bits": 8.0}, "weight_bits must be one of [16, 8, 6, 4, 3, 2], got 8.0"),
    ({"group_size": 4}, "group_size must be a whole number >= 8, got 4"),
    ({"group_size": "64"}, "group_size must be a whole number >= 8, got '64'"),
    ({"scale": "max"}, "scale must be one of ['minmax', 'percentile', 'mse'], got 'max'"),
    ({"act_bits": 4}, "act_bits must be one of [None, 8] (null: weights only), got 4"),
    ({"bits": 4}, "unknown key(s) ['bits']; allowed: ['weight_bits', 'group_size', 'scale', 'act_bits', 'smooth', "
                  "'layers']"),
])
def test_impossible_settings_are_refused_when_the_recipe_is_read(settings, message):
    with pytest.raises(AutocompError) as info:
        Recipe.from_dict({"blocks": [{"quantize": settings}]})
    assert message in str(info.value)


def test_activation_quantization_without_calibration_images_is_refused():
    recipe = Recipe(blocks=({}, {"quantize": Quantize(act_bits=8)}))
    with pytest.raises(AutocompError, match=r"block 1: quantize w8a8 calibrates .* pass calibration="):
        compress(small_vit(), recipe)
    compress(small_vit(), recipe, structure_only=True)  # loading saved weights needs none


def test_weights_saved_under_another_bit_width_are_refused_with_the_shapes():
    state = _compress(Quantize(weight_bits=4)).state_dict()
    rebuilt = _compress(Quantize(weight_bits=3), structure_only=True)
    with pytest.raises(RuntimeError, match=r"PackedLinear \(w3g64\): blocks.0.attn.qkv.weight_packed: expected "
                                           r"\(2592,\) torch.uint8, got \(3456,\) torch.uint8"):
        rebuilt.load_state_dict(state)
    with pytest.raises(AutocompError, match="act_bits=8 needs the calibrated input"):
        quantize_linear(nn.Linear(8, 8), Quantize(act_bits=8))


def test_the_static_int8_kernel_is_exact_over_the_range_its_layers_use():
    # The worst case for a 16-bit accumulation: every input at the top code, every weight at 127.
    top = q.int8_static_range()
    if top is None:
        pytest.skip("this PyTorch build has no oneDNN int8 Linear")
    layer = quantize_linear(nn.Linear(256, 8), Quantize(weight_bits=8, act_bits=8), act=(1.0, 0, top))
    layer._set_state({"weight_int8": torch.full((8, 256), 127, dtype=torch.int8), "weight_scale": torch.ones(8),
                      "bias": torch.zeros(8)})
    assert layer.executes_activations()
    assert torch.equal(layer(torch.full((3, 256), 255.0)), torch.full((3, 8), float(top * 127 * 256)))


def test_a_full_range_layer_on_a_cpu_that_would_saturate_is_simulated_with_the_same_numbers(monkeypatch):
    x = torch.randn(4, 3, 16, 16)
    monkeypatch.setattr(_qlayers, "int8_static_range", lambda: 255)
    full = _compress(Quantize(weight_bits=8, act_bits=8))
    assert {m.act_qparams.quant_max for m in full.modules() if isinstance(m, Int8StaticLinear)} == {255}
    assert q.activation_kernels(full) == "onednn-u8"
    monkeypatch.setattr(_qlayers, "int8_static_range", lambda: 127)  # the same weights on a CPU without VNNI
    assert len(simulated_layers(full)) == 8 and q.activation_kernels(full) == "simulated"
    monkeypatch.setattr(_qlayers, "int8_static_range", lambda: None)
    simulated_everywhere = full(x)
    monkeypatch.setattr(_qlayers, "int8_static_range", lambda: 127)
    assert torch.allclose(full(x), simulated_everywhere, rtol=1e-4, atol=1e-4)
    reduced = _compress(Quantize(weight_bits=8, act_bits=8))  # calibrated here: 0..127, run by the kernel
    assert {m.act_qparams.quant_max for m in reduced.modules() if isinstance(m, Int8StaticLinear)} == {127}
    assert q.activation_kernels(reduced) == "onednn-u7"


@pytest.mark.skipif(q.int8_static_range() is None, reason="this PyTorch build has no oneDNN int8 Linear")
@pytest.mark.parametrize("isa", ["AVX2", "SSE41"])  # e.g. Haswell-Skylake clients and Zen 1-3; an AVX-only CPU
def test_a_cpu_without_vnni_is_detected_and_gets_seven_bit_activations(isa):
    import os
    import subprocess
    import sys

    script = ("import torch; from autocomp.ops import quantize as q; torch.backends.quantized.engine = 'onednn'; "
              "print(q.int8_static_range(), q.activation_quant_max(), q.int8_linear_top_code())")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": isa}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    # oneDNN there sums u8 x s8 pairs in 16 bits: static and dynamic int8 Linears take codes 0..127
    assert result.stdout.split() == ["127", "127", "127"]


@pytest.mark.skipif(torch.backends.quantized.engine not in ("x86", "fbgemm"), reason="FBGEMM's kernels")
def test_int8_linear_takes_full_range_codes_where_fbgemm_has_vnni():
    """FBGEMM (PyTorch's x86 engine for dynamic int8) sums u8 x s8 products in 32 bits with AVX512-VNNI: Int8Linear
    takes codes 0..255 there (and the ONNX export writes ORT's fused DynamicQuantizeLinear form), 0..127 on other
    x86 CPUs, whose 16-bit pair sums would saturate. QNNPACK (PyTorch's mobile engine, built on x86 too) sums in
    32 bits everywhere."""
    from pathlib import Path

    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    assert q.int8_linear_top_code() == (255 if "avx512_vnni" in flags else 127)
    if "qnnpack" in torch.backends.quantized.supported_engines:
        shipped = torch.backends.quantized.engine
        try:
            torch.backends.quantized.engine = "qnnpack"
            assert q.int8_linear_top_code() == 255
        finally:
            torch.backends.quantized.engine = shipped


@pytest.mark.skipif(not {"x86", "qnnpack"} <= set(torch.backends.quantized.supported_engines),
                    reason="needs FBGEMM and QNNPACK")
def test_an_int8_layer_keeps_the_codes_of_the_kernel_that_packed_it():
    """A layer packed by FBGEMM on a CPU without VNNI (FBGEMM_ENABLE_INSTRUCTIONS=AVX2) sums codes 0..127 only; the
    engine switched afterwards (to QNNPACK, exact with 0..255) must not give it codes its packed kernel saturates
    on, while a copy made under QNNPACK is packed by QNNPACK, and takes 0..255."""
    import os
    import subprocess
    import sys

    script = """
import copy, torch
from autocomp.ops.quantize import Quantize, quantize_linear
linear = torch.nn.Linear(256, 4, bias=False)
torch.nn.init.ones_(linear.weight)
torch.backends.quantized.engine = "x86"
layer = quantize_linear(linear, Quantize())
torch.backends.quantized.engine = "qnnpack"
x = torch.full((2, 256), 0.5)
print(float(layer(x)[0, 0]), float(copy.deepcopy(layer)(x)[0, 0]), copy.deepcopy(layer)._reduce_range)
"""
    env = {**os.environ, "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    kept, copied, reduce_range = result.stdout.split()
    assert abs(float(kept) - 128.0) < 0.2 and abs(float(copied) - 128.0) < 0.2 and reduce_range == "False"


def _with_outlier_channels(model, factor=100.0):
    """``model`` computing the same function, its LayerNorm outputs carrying two channels ``factor`` times larger
    (a LayerNorm weight and bias scaled up, the Linear fed by it scaled down): what pretrained ViTs look like."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for block in model.blocks:
            for norm, linear in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc1)):
                norm.weight[:2] *= factor
                if getattr(norm, "bias", None) is not None:
                    norm.bias[:2] *= factor
                linear.weight[:, :2] /= factor
    return model


def _output_error(model, reference, images):
    return float((model(images) - reference(images)).pow(2).mean() / reference(images).pow(2).mean())


def _rms_norm_vit():
    from timm.layers import RmsNorm

    return small_vit(norm_layer=RmsNorm)


@pytest.mark.parametrize("act_bits, make", [(None, small_vit), (8, small_vit), (8, _rms_norm_vit)],
                         ids=["w8", "w8a8", "w8a8-rmsnorm"])
def test_smoothing_keeps_int8_activations_accurate_under_layernorm_outlier_channels(act_bits, make):
    base = _with_outlier_channels(make())
    torch.manual_seed(1)
    images = torch.randn(32, 3, 16, 16)
    with torch.no_grad():
        assert _output_error(base, make(), images) < 1e-8  # the same function
        recipes = {smooth: Recipe(blocks=({"quantize": Quantize(act_bits=act_bits, smooth=smooth)},) * 2)
                   for smooth in (None, 0.5)}
        plain, smoothed = (compress(base, recipes[smooth], calibration=images) for smooth in (None, 0.5))
        assert _output_error(smoothed, base, images) < _output_error(plain, base, images) / 10
    assert [type(m) for m in smoothed.modules()] == [type(m) for m in plain.modules()]  # nothing added at run time
    assert _linear_bytes(smoothed) == _linear_bytes(plain)
    for block, reference in zip(smoothed.blocks, base.blocks):  # folded into the LayerNorms instead
        assert not torch.equal(block.norm1.weight, reference.norm1.weight)
        assert not torch.equal(block.norm2.weight, reference.norm2.weight)
    if act_bits:  # the static range is the smoothed input's
        seen = []
        hook = smoothed.blocks[0].attn.qkv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        with torch.no_grad():
            smoothed(images)
        hook.remove()
        layer = smoothed.blocks[0].attn.qkv
        expected = q.activation_qparams(float(seen[0].min()), float(seen[0].max()), layer.act_qparams.quant_max)
        assert layer.act_qparams.scale == pytest.approx(expected.scale, rel=1e-5)
        assert layer.act_qparams.zero_point == expected.zero_point


def test_smoothing_folds_into_layernorms_only_where_every_linear_they_feed_is_quantized():
    base = _with_outlier_channels(small_vit())
    torch.manual_seed(1)
    images = torch.randn(16, 3, 16, 16)
    recipe = Recipe(blocks=({"quantize": Quantize(smooth=0.5, layers=("fc1",))},) * 2)
    with torch.no_grad():
        model = compress(base, recipe, calibration=images)
        for block, reference in zip(model.blocks, base.blocks):
            assert torch.equal(block.norm1.weight, reference.norm1.weight)  # qkv stays fp32: it reads norm1 as is
            assert not torch.equal(block.norm2.weight, reference.norm2.weight)
            assert isinstance(block.mlp.fc1, Int8Linear) and type(block.attn.qkv) is nn.Linear
        # the low-rank form: norm1 feeds qkv's first factor, which is quantized with the second
        factored = compress(base, Recipe.from_dict({"blocks": [{"low_rank": {"rank": 0.25},
                                                                "quantize": {"smooth": 0.5}}] * 2}),
                            calibration=images)
        assert not torch.equal(factored.blocks[0].norm1.weight, base.blocks[0].norm1.weight)
        assert _output_error(factored, compress(base, Recipe.from_dict({"blocks": [{"low_rank": {"rank": 0.25}}] * 2})),
                      images) < 1e-3
        # compressed again: qkv, already int8, is no Linear to fold a scale into, so norm1 stays as it is
        again = compress(compress(base, Recipe(blocks=({"quantize": Quantize(layers=("qkv",))},) * 2)),
                         Recipe(blocks=({"quantize": Quantize(smooth=0.5)},) * 2), calibration=images)
        assert torch.equal(again.blocks[0].norm1.weight, base.blocks[0].norm1.weight)
        assert not torch.equal(again.blocks[0].norm2.weight, base.blocks[0].norm2.weight)


def test_the_calibration_pass_stops_after_the_last_block_it_reads():
    base = small_vit()
    runs = []
    base.blocks[1].register_forward_pre_hook(lambda module, args: runs.append(1))
    images = torch.randn(8, 3, 16, 16)
    compress(base, Recipe(blocks=({"quantize": Quantize(act_bits=8, smooth=0.5)}, {"quantize": Quantize()})),
             calibration=images)
    assert runs == []
    compress(base, Recipe(blocks=({}, {"quantize": Quantize(act_bits=8)})), calibration=images)
    assert runs == [1]


def test_smoothing_leaves_a_block_whose_linears_do_not_read_its_layernorm_output_alone():
    from timm.models.vision_transformer import ResPostBlock  # norm after attention: qkv reads the residual stream

    base = small_vit(block_fn=ResPostBlock)
    torch.manual_seed(1)
    images = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        model = compress(base, Recipe(blocks=({"quantize": Quantize(smooth=0.5)},) * 2), calibration=images)
        unsmoothed = compress(base, Recipe(blocks=({"quantize": Quantize()},) * 2), calibration=images)
        for block, reference in zip(model.blocks, base.blocks):
            assert torch.equal(block.norm1.weight, reference.norm1.weight)
            assert torch.equal(block.norm2.weight, reference.norm2.weight)
        assert torch.equal(model(images), unsmoothed(images))


def test_smoothing_leaves_a_layernorm_alone_that_feeds_another_linear_too():
    from timm.layers import Attention

    class GatedAttention(Attention):  # its gate reads norm1's output beside qkv, so no scale can be folded there
        def __init__(self, *args, **kwargs):
            super().__init__(*args, gated=True, **kwargs)

    base = small_vit(attn_layer=GatedAttention)
    torch.manual_seed(1)
    images = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        for layers in (None, ("qkv", "fc1")):  # the gate quantized too, or left in float
            model = compress(base, Recipe(blocks=({"quantize": Quantize(smooth=0.5, layers=layers)},) * 2),
                             calibration=images)
            for block, reference in zip(model.blocks, base.blocks):
                assert torch.equal(block.norm1.weight, reference.norm1.weight)
                assert not torch.equal(block.norm2.weight, reference.norm2.weight)


def test_smoothing_settings_are_checked():
    assert Quantize(smooth=0.5).tag() == "w8-sq" and Quantize(act_bits=8, smooth=1).tag() == "w8a8-sq1"
    assert Quantize(smooth=0.5).reads_calibration and not Quantize().reads_calibration
    assert not Quantize(smooth=0.5, layers=("proj", "fc2")).smooths  # no LayerNorm feeds them
    assert not Quantize(smooth=0.5, layers=("proj", "fc2")).reads_calibration
    assert Quantize(smooth=0.5, layers=("re:attn[.]qkv[.]first",)).smooths
    for bad in (0, 1.5, True, "0.5"):
        with pytest.raises(AutocompError, match="smooth must be null"):
            Quantize(smooth=bad)
    with pytest.raises(AutocompError, match="only 8-bit weights quantize activations.*weight_bits is 4"):
        Quantize(weight_bits=4, smooth=0.5)
    with pytest.raises(AutocompError, match=r"block 0: quantize w8-sq smooths activations .* pass calibration=.* "
                                            r"or set smooth: null"):
        compress(small_vit(), Recipe(blocks=({"quantize": Quantize(smooth=0.5)}, {})))


@pytest.mark.parametrize("variant", [{}, {"qk_norm": True}, {"init_values": 1e-2}, {"reg_tokens": 2},
                                     {"class_token": False, "global_pool": "avg"}, {"qkv_bias": False},
                                     {"pre_norm": True}, {"global_pool": "avg", "fc_norm": True}],
                         ids=["plain", "qk_norm", "layerscale", "reg_tokens", "avgpool", "no_qkv_bias", "pre_norm",
                              "fc_norm"])
def test_the_smoothing_fold_alone_keeps_each_vit_variants_function(variant):
    """The fold without quantization: every LayerNorm takes its scale and the float model computes what it did."""
    model = small_vit(**variant)
    torch.manual_seed(1)
    images = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        for block in model.blocks:  # LayerNorms that are not the identity, so that a wrong fold shows
            for norm in (block.norm1, block.norm2):
                norm.weight.uniform_(0.5, 3.0)
                norm.bias.normal_()
        reference = copy.deepcopy(model)
        inputs = q._observe_inputs(model, list(model.blocks), images)
        for block in model.blocks:
            q._smooth(block, [m for m in block.modules() if isinstance(m, nn.Linear)], inputs, 0.5)
        for block, before in zip(model.blocks, reference.blocks):
            assert not torch.equal(block.norm1.weight, before.norm1.weight)
            assert not torch.equal(block.norm2.weight, before.norm2.weight)
        assert _output_error(model, reference, images) < 1e-10
