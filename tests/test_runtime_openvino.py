"""OpenVINO: the IR of a compressed model holds autocomp's numbers and bytes, runs in OpenVINO's CPU plugin, and
agrees with the PyTorch model (the tiny digits teacher on the 600 validation and test digits). No test asserts a
time."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from autocomp import compress  # noqa: E402
from autocomp.ops import Quantize, ReduceTokens  # noqa: E402
from autocomp.runtimes import compare_outputs, op_types  # noqa: E402
from autocomp.runtimes.openvino import OvModule, export_openvino, ov_compiled  # noqa: E402
from conftest import both_blocks, onnx_initializers, skip_where_openvino_lacks_compressed_weights  # noqa: E402

CASES = [pytest.param("quantize", Quantize(), id="w8"),
         pytest.param("quantize", Quantize(weight_bits=16), id="w16"),
         pytest.param("quantize", Quantize(weight_bits=4, group_size=16), id="w4g16"),
         pytest.param("quantize", Quantize(act_bits=8), id="w8a8"),
         pytest.param("reduce_tokens", ReduceTokens(keep=0.5), id="tokens", marks=pytest.mark.uncapped_only)]


@pytest.mark.parametrize("name, config", CASES)
def test_openvino_runs_the_export_with_autocomps_numbers(tiny_teacher, digits_splits, digits_images, tmp_path, name,
                                                         config):
    calibration = digits_splits.calib.tensors()[0]
    model = compress(tiny_teacher[1], both_blocks(name, config), calibration=calibration)
    result = export_openvino(model, calibration[:2], tmp_path / "model.xml")
    assert result.path.is_file()
    # the IR adds a few shape constants, and holds MatMulNBits' fp16 scales as fp32 (2 more bytes each); bf16
    # weights stay bf16 (convert_model alone would widen them to fp32)
    fp16 = sum(t.size for t in onnx_initializers(result.onnx.path).values() if t.dtype == np.float16)
    assert result.onnx.weight_nbytes <= result.weight_nbytes <= result.onnx.weight_nbytes + 2 * fp16 + 2048
    if name == "quantize" and not config.act_bits:
        assert "MatMulInteger" not in op_types(result.onnx.path)  # weights-only int8 as DequantizeLinear -> MatMul
    try:
        agreement = compare_outputs(model, OvModule(ov_compiled(result.path)), digits_images)
    except RuntimeError as exc:
        if name != "quantize" or config.act_bits:
            raise
        skip_where_openvino_lacks_compressed_weights(exc)
    assert agreement.top1 >= 0.99, agreement


def test_every_bf16_weight_stays_bf16_in_the_ir_signed_zeros_too(tiny_teacher, digits_splits, tmp_path):
    """convert_model widens bf16 initializers to fp32 constants (transposed); the export narrows each back, including
    a weight holding both 0.0 and -0.0, which a float sort leaves in no fixed order."""
    import copy

    import openvino as ov
    import torch

    teacher = copy.deepcopy(tiny_teacher[1])
    with torch.no_grad():
        teacher.blocks[0].mlp.fc1.weight[0, :4] = torch.tensor([0.0, -0.0, 0.0, -0.0])  # as a pruning mask leaves
    calibration = digits_splits.calib.tensors()[0]
    model = compress(teacher, both_blocks("quantize", Quantize(weight_bits=16)), calibration=calibration)
    result = export_openvino(model, calibration[:2], tmp_path / "model.xml")
    bf16 = [t for t in onnx_initializers(result.onnx.path).values() if t.dtype.name == "bfloat16"]
    narrowed = [op for op in ov.Core().read_model(str(result.path)).get_ops()
                if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.bf16]
    assert len(narrowed) == len(bf16) == 16  # both blocks' four Linears: weights and biases


def test_attention_with_as_many_heads_as_tokens_runs_right_at_a_static_batch(tmp_path):
    """OpenVINO's CPU plugin (2026.4) fuses attention at a static batch into kernels that compute it wrongly where
    a block's heads equal its tokens (token merging and head pruning can make one so): such a model is compiled
    with those kernels off, and exact; at another token count nothing is said."""
    import timm
    import torch

    from autocomp.runtimes.openvino import compile_settings, heads_equal_tokens, ir_heads_equal_tokens

    torch.manual_seed(0)
    for size, expected in ((8, "4 heads over 4 tokens"), (12, None)):  # 2 x 2 patches, then 3 x 3
        model = timm.create_model("vit_tiny_patch16_224", img_size=size, patch_size=4, embed_dim=64, depth=2,
                                  num_heads=4, num_classes=5, class_token=False, global_pool="avg").eval()
        with torch.no_grad():
            for block in model.blocks:
                block.attn.qkv.weight.mul_(8)  # peaked attention, as trained weights have it (random: near uniform)
        images = torch.randn(16, 3, size, size)
        path = export_openvino(model, images, tmp_path / f"model{size}.xml").path
        assert ir_heads_equal_tokens(path) == expected
        with torch.no_grad():
            assert (OvModule(ov_compiled(path, batch=16))(images) - model(images)).abs().max() < 1e-4
    import openvino as ov

    for size, off in ((8, True), (12, False)):  # asked for whether or not this CPU's plugin fuses the attention
        reshaped = ov.Core().read_model(str(tmp_path / f"model{size}.xml"))
        reshaped.reshape({reshaped.input(0): [16, 3, size, size]})
        assert (heads_equal_tokens(reshaped) is not None) is off
        assert (compile_settings(reshaped, static=True).get("SNIPPETS_MODE") == "DISABLE") is off
        assert "SNIPPETS_MODE" not in compile_settings(reshaped, static=False)  # a dynamic batch is exact
