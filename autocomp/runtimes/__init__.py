"""Deployment runtimes: a compressed candidate exported to a runtime's format, checked against the PyTorch model,
and timed in that runtime.

- :mod:`~autocomp.runtimes.onnx`: ONNX export with autocomp's own quantized numbers (int8 as integer ops, 2-6 bit
  as ``MatMulNBits``, static activations as QDQ), the file's weight bytes.
- :mod:`~autocomp.runtimes.ort`: ONNX Runtime sessions, top-1 agreement with the PyTorch model, interleaved timing.
- :mod:`~autocomp.runtimes.openvino`: OpenVINO IR from the ONNX export, compiled and run on OpenVINO's CPU plugin.
- :mod:`~autocomp.runtimes.cuda`: a model on a CUDA GPU captured in a CUDA graph and replayed.

``onnx``, ``onnxruntime``, ``onnxscript`` and ``openvino`` are imported when used, so ``autocomp`` itself does not
need them.
"""

from __future__ import annotations

from autocomp.runtimes.cuda import cuda_graphed
from autocomp.runtimes.onnx import (
    INT8_WEIGHT_FORMS,
    LayerExport,
    OnnxExport,
    OnnxExportConfig,
    export_onnx,
    onnx_weight_nbytes,
    op_types,
)
from autocomp.runtimes.ort import Agreement, OrtModule, SessionTiming, compare_outputs, ort_session, time_sessions

__all__ = ["INT8_WEIGHT_FORMS", "OnnxExportConfig", "LayerExport", "OnnxExport", "Agreement", "SessionTiming",
           "OrtModule", "export_onnx", "onnx_weight_nbytes", "op_types", "compare_outputs", "ort_session",
           "time_sessions", "cuda_graphed"]
