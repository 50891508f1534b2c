from __future__ import annotations

import timm
import torch
from torch import nn

from autocomp import Recipe, compress
from autocomp.measure import weight_nbytes
from autocomp.ops import Int8Linear


def _model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, num_classes=5,
                             embed_dim=64, depth=2, num_heads=4).eval()


def _linear_bytes(model):
    return sum(weight_nbytes(m) for m in model.blocks.modules() if isinstance(m, (nn.Linear, Int8Linear)))


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
