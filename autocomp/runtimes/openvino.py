"""OpenVINO: the ONNX export (autocomp's own numbers) converted to OpenVINO IR, compiled for the CPU, and timed and
checked with the same helpers as ONNX Runtime sessions.

OpenVINO's ONNX front end turns ``DequantizeLinear`` of a constant int8 weight, and ``MatMulNBits``, into its
compressed-weight pattern (integer constant -> convert -> multiply by the scales -> MatMul), which its CPU plugin runs
with the weights kept compressed and the activations quantized on the fly (``DYNAMIC_QUANTIZATION_GROUP_SIZE``).
``DynamicQuantizeLinear -> MatMulInteger`` (ORT's int8 form) is not recognised, so the export for OpenVINO writes
weights-only int8 as ``DequantizeLinear -> MatMul`` (:data:`OPENVINO_EXPORT`).

bf16 weights (``Bf16Linear``) are bf16 initializers cast to fp32 in the ONNX file; ``convert_model`` folds the cast,
which would leave the IR holding them in fp32 (4 bytes where autocomp's model and the ONNX file hold 2). The export
stores them in bf16 again, each behind a ``Convert`` (:func:`_narrow_to_bf16`): lossless, and compiled as before (the
CPU plugin widens them when it loads the model, as ONNX Runtime does).

Not used: ``nncf.compress_weights`` chooses its own scales (it would deploy numbers the search never evaluated), and
``save_model``'s default ``compress_to_fp16`` would round the fp32 weights; both are left out on purpose.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from autocomp.runtimes.onnx import OnnxExport, OnnxExportConfig, export_onnx

__all__ = ["OPENVINO_EXPORT", "SNIPPETS_OFF", "OpenVinoExport", "OvModule", "capped_isa", "default_precision",
           "compile_settings", "export_openvino", "heads_equal_tokens", "ir_heads_equal_tokens", "ir_weight_nbytes",
           "ov_compiled"]

OPENVINO_EXPORT = OnnxExportConfig(int8_weights="dequantize_linear")


@dataclass(frozen=True)
class OpenVinoExport:
    """A candidate in OpenVINO IR.

    Attributes:
        path: the ``.xml`` file (its weights in the ``.bin`` beside it).
        onnx: the ONNX export it was converted from (kept beside it, ``.onnx``).
        weight_nbytes: bytes of the IR's constants (:func:`ir_weight_nbytes`).
    """

    path: Path
    onnx: OnnxExport
    weight_nbytes: int


def export_openvino(model: nn.Module, example: torch.Tensor, path: str | Path, *,
                    config: OnnxExportConfig = OPENVINO_EXPORT) -> OpenVinoExport:
    """Export ``model`` to ONNX (``path`` with ``.onnx``), convert it with ``openvino.convert_model`` and save the
    IR to ``path`` (``.xml`` + ``.bin``) with the weights as they are (no fp16 compression)."""
    import openvino as ov

    path = Path(path)
    exported = export_onnx(model, example, path.with_suffix(".onnx"), config=config)
    converted = ov.convert_model(str(exported.path))
    _narrow_to_bf16(converted, _bf16_initializers(exported.path))
    ov.save_model(converted, str(path), compress_to_fp16=False)
    return OpenVinoExport(path=path, onnx=exported, weight_nbytes=ir_weight_nbytes(path))


def _bf16_initializers(path: Path) -> dict[int, set[bytes]]:
    """The ONNX file's bf16 initializers widened to fp32: size -> digests of their values (:func:`_digest`)."""
    import onnx
    from onnx import numpy_helper

    found: dict[int, set[bytes]] = {}
    for tensor in onnx.load(str(path)).graph.initializer:
        if tensor.data_type == onnx.TensorProto.BFLOAT16 and math.prod(tensor.dims) > 0:
            values = numpy_helper.to_array(tensor).astype(np.float32)
            found.setdefault(values.size, set()).add(_digest(values))
    return found


def _digest(values: np.ndarray) -> bytes:
    # of the bit patterns in order (convert_model transposes weights and reshapes biases); sorted as integers, since
    # a float sort leaves 0.0 and -0.0 (and NaNs) in no fixed order
    return hashlib.sha256(np.sort(np.ascontiguousarray(values, dtype=np.float32).view(np.uint32), axis=None)
                          .tobytes()).digest()


def _narrow_to_bf16(model: Any, bf16: dict[int, set[bytes]]) -> int:
    """Replace each fp32 constant of ``model`` holding the values of one of the ``bf16`` initializers by a bf16
    constant and a ``Convert`` to fp32 (exact: its values are bf16's). Returns how many were replaced."""
    import openvino as ov
    import openvino.opset13 as ops

    narrowed = 0
    for op in model.get_ops():
        if (op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.f32
                or math.prod(op.get_output_shape(0)) not in bf16 or not _feeds_linear(op)):
            continue
        values = np.ascontiguousarray(op.get_data(), dtype=np.float32)
        if _digest(values) not in bf16[values.size]:
            continue
        tensor = ov.Tensor(ov.Type.bf16, ov.Shape(list(values.shape)))
        np.asarray(tensor.data).view(np.uint16).reshape(-1)[:] = (values.view(np.uint32) >> 16).reshape(-1)
        op.output(0).replace(ops.convert(ov.op.Constant(tensor), ov.Type.f32).output(0))
        narrowed += 1
    return narrowed


def _feeds_linear(constant: Any) -> bool:
    """Whether every consumer of ``constant`` is a MatMul or an Add: a Linear's weight or bias, not a constant of
    the graph's own arithmetic (which a plugin's fusions match as a Constant)."""
    consumers = [target.get_node().get_type_name() for target in constant.output(0).get_target_inputs()]
    return bool(consumers) and all(name in ("MatMul", "Add") for name in consumers)


def ir_weight_nbytes(path: str | Path, *, loaded: bool = False) -> int:
    """Bytes of the constants an OpenVINO IR (or any model file OpenVINO reads) holds; ``loaded``: those the CPU
    plugin holds once it compiles it instead, bf16 and fp16 constants widened to fp32 (its kernels run fp32 at the
    f32 precision autocomp compiles with)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    half = (ov.Type.bf16, ov.Type.f16)
    return sum(op.get_byte_size() * (2 if loaded and op.get_output_element_type(0) in half else 1)
               for op in model.get_ops() if op.get_type_name() == "Constant")


def capped_isa(what: str) -> str:
    """Where oneDNN is capped to a lesser CPU's instructions (``ONEDNN_MAX_CPU_ISA``, which OpenVINO's CPU plugin
    follows in part), a sentence that says so after an OpenVINO failure, ``what`` being how a real CPU of that kind
    fares (the plugin picks its kernels and default precision from this CPU, then compiles under the cap); else ""."""
    import os

    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip()
    if not capped or capped.upper() == "ALL":  # ALL: oneDNN's own "no cap"
        return ""
    return f" (ONEDNN_MAX_CPU_ISA={capped} is set here, which OpenVINO follows in part: {what})"


def default_precision() -> str:
    """The precision OpenVINO's CPU plugin runs fp32 layers in when compiled with its defaults on this CPU (``bf16``
    on CPUs with AVX512_BF16 or AMX; ``f32`` elsewhere): what a user's ``compile_model(path, "CPU")`` gets."""
    import openvino as ov

    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


# OpenVINO's CPU plugin (2026.4) fuses attention into a "snippets" kernel at static shapes, which computes it wrongly
# where the heads equal the tokens (4 heads over 4 tokens: logits off by 0.69 on a user's model, BENCHMARKS.md
# "Session 49"; another count, a dynamic batch or snippets off are exact). Token merging and head pruning can make a
# block so.
SNIPPETS_OFF = {"SNIPPETS_MODE": "DISABLE"}


def heads_equal_tokens(model: Any) -> str | None:
    """Where an OpenVINO model's attention has as many heads as tokens (its ``ScaledDotProductAttention`` query, or
    a softmax over the scores, shaped ``(batch, heads, tokens, ...)`` with heads == tokens), e.g. "4 heads over 4
    tokens"; None where none has."""
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("ScaledDotProductAttention", "Softmax"):
            continue
        shape = op.get_input_partial_shape(0)
        if shape.rank.is_static and shape.rank.get_length() == 4:
            heads, tokens = shape[1], shape[2]
            if heads.is_static and tokens.is_static and heads.get_length() == tokens.get_length():
                return f"{heads.get_length()} heads over {tokens.get_length()} tokens"
    return None


def ir_heads_equal_tokens(path: str | Path) -> str | None:
    """:func:`heads_equal_tokens` of the IR (or ONNX file) at ``path``."""
    import openvino as ov

    return heads_equal_tokens(ov.Core().read_model(str(path)))


def ov_compiled(path: str | Path, *, threads: int = 1, batch: int | None = None, precision: str | None = "f32",
                properties: Mapping[str, Any] | None = None) -> Any:
    """A model compiled for OpenVINO's CPU plugin: ``threads`` inference threads, one stream, latency mode.

    Args:
        path: an IR ``.xml`` or an ``.onnx`` file.
        threads: ``INFERENCE_NUM_THREADS``.
        batch: make the batch axis static at this size (OpenVINO plans static shapes better); None keeps it. A
            model whose attention has as many heads as tokens is then compiled with :data:`SNIPPETS_OFF`.
        precision: ``INFERENCE_PRECISION_HINT``; ``f32`` by default, since on CPUs with AVX512_BF16 or AMX the
            plugin would otherwise run fp32 layers in bf16 (a different model from the one autocomp evaluated);
            None: the plugin's default (:func:`default_precision`).
        properties: further CPU properties, e.g. ``{"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}`` (off).
    """
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if batch is not None:
        shape = model.input(0).get_partial_shape()
        shape[0] = batch
        model.reshape({model.input(0): shape})
    settings = compile_settings(model, threads=threads, static=batch is not None, precision=precision,
                                properties=properties)
    try:
        return core.compile_model(model, "CPU", settings)
    except RuntimeError:
        if settings.get("SNIPPETS_MODE") != SNIPPETS_OFF["SNIPPETS_MODE"] or "SNIPPETS_MODE" in (properties or {}):
            raise
        # an OpenVINO that refuses that (internal) property: the batch left dynamic, where attention is exact
        return ov_compiled(path, threads=threads, batch=None, precision=precision, properties=properties)


def compile_settings(model: Any, *, threads: int = 1, static: bool = False, precision: str | None = "f32",
                     properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The CPU plugin's settings :func:`ov_compiled` compiles ``model`` with (``static``: its batch made static)."""
    return {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False, **({"INFERENCE_PRECISION_HINT": precision} if precision else {}),
            **(SNIPPETS_OFF if static and heads_equal_tokens(model) else {}), **(properties or {})}


class OvModule(nn.Module):
    """A compiled OpenVINO model called like the model it came from (torch tensors in and out), for
    :func:`autocomp.runtimes.compare_outputs` and :func:`autocomp.runtimes.time_sessions`."""

    def __init__(self, compiled: Any) -> None:
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: images.numpy()})
        out = torch.from_numpy(np.array(self.request.get_output_tensor(0).data))  # a copy: OV reuses the buffer
        if out.shape[0] != images.shape[0]:  # seen with int8 weights and a capped oneDNN: no error, no rows
            raise RuntimeError(f"OpenVINO returned {out.shape[0]} outputs for {images.shape[0]} images")
        return out
