"""Micro-benchmarks that calibrate a hardware profile on the machine they run on.

They time the kernels a ViT is made of, at ViT shapes, with PyTorch on the CPU: GEMMs per precision (fp32, bf16,
and the int8 dynamic-quantization kernel that ``quantize`` uses), fused attention, LayerNorm, softmax, a large copy
(memory bandwidth) and a tiny op (per-op overhead). The best GEMM rate per precision becomes the profile's
``peak_gflops``: an *achieved* peak, lower than the datasheet's, which is what a roofline on this machine needs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.nn import functional as F

from autocomp.measure import time_models
from autocomp.ops.quantize import Int8Linear

__all__ = ["Calibration", "GemmShape", "VIT_GEMMS", "calibrate"]


@dataclass(frozen=True)
class GemmShape:
    """``tokens x in_features -> out_features``, as a ViT Linear at some batch size."""

    tokens: int
    in_features: int
    out_features: int

    @property
    def macs(self) -> int:
        return self.tokens * self.in_features * self.out_features


# DeiT-Small at 224 px, batch 1: qkv, proj, fc1, fc2 (197 tokens, width 384, MLP 1536).
VIT_GEMMS = (GemmShape(197, 384, 1152), GemmShape(197, 384, 384), GemmShape(197, 384, 1536),
             GemmShape(197, 1536, 384))


@dataclass(frozen=True)
class Calibration:
    """Profile numbers measured here.

    Attributes:
        peak_gflops: precision -> best achieved GFLOP/s over the GEMM shapes (a multiply-add counts 2).
        memory_bandwidth_gbs: bytes read plus written per second by a large copy, in GB/s.
        op_overhead_us: median time of a call of a tiny Linear module (Python and dispatch cost), in µs.
        details: every benchmark's own number (``gemm.fp32.197x384x1152``: GFLOP/s, ``layernorm``: GB/s ...).
    """

    peak_gflops: dict[str, float]
    memory_bandwidth_gbs: float
    op_overhead_us: float
    details: dict[str, float] = field(default_factory=dict)


def calibrate(*, threads: int = 1, shapes: tuple[GemmShape, ...] = VIT_GEMMS,
              precisions: tuple[str, ...] = ("fp32", "bf16", "int8"), repeats: int = 20,
              copy_mb: int = 512) -> Calibration:
    """Run the micro-benchmarks with ``threads`` intra-op threads; each number is a median over ``repeats``.

    Precisions this build of PyTorch cannot run are left out of ``peak_gflops``.
    """
    timer = _Timer(threads=threads, repeats=repeats)
    details: dict[str, float] = {}
    peaks: dict[str, float] = {}
    for precision in precisions:
        for shape in shapes:
            run = _gemm(precision, shape)
            if run is None:
                break
            rate = 2 * shape.macs / timer(run) / 1e9
            details[f"gemm.{precision}.{shape.tokens}x{shape.in_features}x{shape.out_features}"] = rate
            peaks[precision] = max(peaks.get(precision, 0.0), rate)
    width, heads, tokens = shapes[0].in_features, 6, shapes[0].tokens
    q = torch.randn(1, heads, tokens, width // heads)
    seconds = timer(lambda: F.scaled_dot_product_attention(q, q, q))
    details["attention"] = 2 * 2 * heads * tokens * tokens * (width // heads) / seconds / 1e9
    x = torch.randn(tokens, width)
    norm_weight, norm_bias = torch.ones(width), torch.zeros(width)
    details["layernorm"] = 2 * x.numel() * 4 / timer(lambda: F.layer_norm(x, (width,), norm_weight, norm_bias)) / 1e9
    scores = torch.randn(heads, tokens, tokens)
    details["softmax"] = 2 * scores.numel() * 4 / timer(lambda: scores.softmax(-1)) / 1e9
    source = torch.ones(copy_mb * 2**20 // 4)
    target = torch.zeros_like(source)  # touched once here, so the timed copies pay no page faults
    seconds = _Timer(threads=threads, repeats=max(3, repeats // 4))(lambda: target.copy_(source))
    bandwidth = 2 * source.numel() * 4 / seconds / 1e9
    one = torch.ones(1)
    details["tiny_add_us"] = 1e6 * timer(lambda: one + one)
    tiny, row = torch.nn.Linear(4, 4), torch.ones(1, 4)
    overhead_us = 1e6 * timer(lambda: tiny(row))  # a module call: most ops of a ViT are one
    return Calibration(peak_gflops=peaks, memory_bandwidth_gbs=bandwidth, op_overhead_us=overhead_us,
                       details=details)


class _Timer:
    """Median seconds of a callable, through :func:`autocomp.measure.time_models` (the project's one timing loop)."""

    def __init__(self, *, threads: int, repeats: int) -> None:
        self.threads, self.repeats = threads, repeats

    def __call__(self, run: Callable[[], object]) -> float:
        times = time_models([lambda _: run()], torch.empty(0), warmup=3, repeats=self.repeats,  # type: ignore[list-item]
                            threads=self.threads)
        return statistics.median(times[0])


def _gemm(precision: str, shape: GemmShape) -> Callable[[], object] | None:
    """A callable running one GEMM of ``shape`` at ``precision``, or None if this build cannot."""
    x = torch.randn(shape.tokens, shape.in_features)
    weight = torch.randn(shape.out_features, shape.in_features)
    bias = torch.randn(shape.out_features)
    if precision == "fp32":
        return lambda: F.linear(x, weight, bias)
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        xh, wh, bh = x.to(dtype), weight.to(dtype), bias.to(dtype)
        try:
            F.linear(xh, wh, bh)
        except RuntimeError:
            return None
        return lambda: F.linear(xh, wh, bh)
    if precision == "int8":
        linear = torch.nn.Linear(shape.in_features, shape.out_features)
        layer = Int8Linear.from_linear(linear)  # the kernel the quantize operator really uses
        return lambda: layer(x)
    return None
