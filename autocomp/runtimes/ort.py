"""Run an ONNX file in ONNX Runtime's CPU provider: a session, the session called as a PyTorch module, its top-1
agreement with the model it was exported from, its latency timed interleaved with a reference, and whether this
CPU's u8 x s8 integer kernel is exact over the full code range (which ``matmul_integer``, an int8 form of
:mod:`autocomp.runtimes.onnx`, needs).

``onnxruntime`` is imported when used.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocomp._timing import time_models

__all__ = ["Agreement", "SessionTiming", "OrtModule", "compare_outputs", "ort_session", "ort_u8s8_exact",
           "time_sessions"]


@functools.cache
def ort_u8s8_exact() -> bool:
    """Whether ONNX Runtime's u8 x s8 integer GEMM is exact on this CPU over the full code range: True where it
    sums the products in 32 bits (VNNI, AMX, ARM), False where pairs of them are summed in 16 bits and saturate
    (x86 without VNNI). Found by running ``MatMulInteger`` on the worst case, inputs at 255 against constant weights
    of 127 (prepacked, as a model's are), and comparing with the exact sum."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    width = 64
    weight = helper.make_tensor("w", TensorProto.INT8, (width, 4), [127] * (width * 4))
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "u8s8",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, (2, width))],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, (2, 4))], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.full((2, width), 255, dtype=np.uint8)})[0]
    return bool((out == 255 * 127 * width).all())


def ort_session(path: str | Path, *, threads: int = 1, spinning: bool = False) -> Any:
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, sequential execution, every graph optimization.

    ``spinning`` off by default: idle pool threads would otherwise spin after each run and steal the cores from
    the session timed next to it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtModule(nn.Module):
    """An ONNX Runtime session called like the model it was exported from (torch tensors in and out), so that
    :func:`autocomp.measure.time_models` times it as it times PyTorch models."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: images.numpy()})[0])


@dataclass(frozen=True)
class Agreement:
    """An exported model against its PyTorch model on the same images.

    Attributes:
        top1: fraction of images whose top-1 class is the same.
        max_logit_diff: the largest absolute logit difference.
        images: how many images were compared.
    """

    top1: float
    max_logit_diff: float
    images: int


@torch.no_grad()
def compare_outputs(model: nn.Module, session: Any, images: torch.Tensor, *, batch_size: int = 64) -> Agreement:
    """Top-1 agreement and largest logit difference of ``session`` (an ORT session, or a module such as
    :class:`OrtModule`) against ``model`` on ``images``, in batches of ``batch_size`` (the session must accept that
    batch, e.g. a dynamic one)."""
    runtime = session if isinstance(session, nn.Module) else OrtModule(session)
    same, largest = 0, 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].contiguous()
        expected, got = model(batch).float(), runtime(batch).float()
        same += int((expected.argmax(-1) == got.argmax(-1)).sum())
        largest = max(largest, float((expected - got).abs().max()))
    return Agreement(top1=same / len(images), max_logit_diff=largest, images=len(images))


@dataclass(frozen=True)
class SessionTiming:
    """Latency of a candidate timed interleaved with a reference.

    Attributes:
        latency_ms: the candidate's median.
        reference_ms: the reference's median.
        ratio: median of the per-round ratios candidate / reference (drift cancels within a round).
    """

    latency_ms: float
    reference_ms: float
    ratio: float


def time_sessions(candidate: Any, reference: Any, example: torch.Tensor, *, warmup: int = 5, repeats: int = 30,
                  threads: int = 1) -> SessionTiming:
    """Time two sessions (ORT sessions, :class:`OrtModule` or PyTorch modules) on ``example``, interleaved in
    alternating order exactly as :func:`autocomp.measure.measure` times PyTorch models.

    ``threads`` is what PyTorch modules among the two run with; an ORT session keeps the count it was made with
    (:func:`ort_session`).
    """
    runners = [s if isinstance(s, nn.Module) else OrtModule(s) for s in (candidate, reference)]
    own, ref = time_models(runners, example.contiguous(), warmup=warmup, repeats=repeats, threads=threads)
    return SessionTiming(latency_ms=1e3 * statistics.median(own), reference_ms=1e3 * statistics.median(ref),
                         ratio=float(np.median([a / b for a, b in zip(own, ref)])))
