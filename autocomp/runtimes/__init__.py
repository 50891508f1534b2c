"""Deployment runtimes: a compressed candidate exported to a runtime's format, checked against the PyTorch model,
and timed in that runtime.

- :mod:`~autocomp.runtimes.onnx`: ONNX export with autocomp's own quantized numbers (int8 as integer ops, 2-6 bit
  as ``MatMulNBits``, static activations as QDQ), the file's weight bytes, top-1 agreement, ONNX Runtime sessions
  and interleaved timing.

``onnx``, ``onnxruntime``, ``onnxscript`` and ``openvino`` are imported when used, so ``autocomp`` itself does not
need them.
"""

from __future__ import annotations

from autocomp.runtimes.onnx import (
    INT8_WEIGHT_FORMS,
    Agreement,
    LayerExport,
    OnnxExport,
    OnnxExportConfig,
    OrtModule,
    SessionTiming,
    compare_outputs,
    export_onnx,
    onnx_weight_nbytes,
    op_types,
    ort_session,
    time_sessions,
)

__all__ = ["INT8_WEIGHT_FORMS", "OnnxExportConfig", "LayerExport", "OnnxExport", "Agreement", "SessionTiming",
           "OrtModule", "export_onnx", "onnx_weight_nbytes", "op_types", "compare_outputs", "ort_session",
           "time_sessions"]
