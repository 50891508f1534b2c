"""Quantized Linear kernels vs the fp32 Linear on this CPU: latency ratios measured interleaved, one layer at a time.

    python benchmarks/quant_kernels.py [--repeats 40] [--threads 1]

Each row is one layer shape (tokens M, in K, out N) of the ViTs autocomp targets; each column is the median over
``repeats`` rounds of (candidate time / fp32 time) in the same round (A, B, C, ... interleaved, so drift on a shared
machine cancels). Below 1.0 is faster than fp32. Besides autocomp's modules it times the alternatives that were
considered and rejected: fp16 weights computed in fp16, fp16 weights upcast to fp32 per call, and PyTorch's int4 CPU
kernel (``aten._weight_int4pack_mm_for_cpu``) with fp32 and bf16 activations.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from autocomp.measure import time_models
from autocomp.measure.profiling import cpu_description
from autocomp.ops.quantize import Quantize, quantize_linear

SHAPES = {  # label: (tokens M, in K, out N)
    "fashion b16 qkv": (16 * 50, 96, 288),
    "fashion b16 fc2": (16 * 50, 384, 96),
    "deit-s b1 qkv": (197, 384, 1152),
    "deit-s b1 fc2": (197, 1536, 384),
    "fashion b1 fc1": (50, 96, 384),
    "deit-s b1 fc1, 8 tokens": (8, 384, 1536),
}


class _Fp16(nn.Module):
    """fp16 weights; ``upcast``: cast to fp32 per call (fp32 GEMM), else fp16 GEMM on fp16 activations."""

    def __init__(self, linear: nn.Linear, *, upcast: bool) -> None:
        super().__init__()
        self.weight, self.bias, self.upcast = linear.weight.detach().half(), linear.bias.detach().half(), upcast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upcast:
            return nn.functional.linear(x, self.weight.float(), self.bias.float())
        return nn.functional.linear(x.half(), self.weight, self.bias).float()


class _Int4Aten(nn.Module):
    """PyTorch's int4 CPU GEMM (tinygemm layout): codes 0..15, ``w = (q - 8) * scale + zero`` per group."""

    def __init__(self, linear: nn.Linear, *, group_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        out_features, in_features = weight.shape
        grouped = weight.view(out_features, in_features // group_size, group_size)
        scale = (grouped.abs().amax(-1) / 7).clamp(min=1e-8)
        codes = (torch.round(grouped / scale[..., None]).clamp(-7, 7) + 8).view(out_features, in_features)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 2)
        self.scale_zero = torch.stack([scale.t(), torch.zeros_like(scale.t())], -1).contiguous().to(dtype)
        self.group_size, self.dtype, self.bias = group_size, dtype, linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(self.dtype), self.packed, self.group_size, self.scale_zero)
        return y.float() + self.bias


def candidates(linear: nn.Linear, example: torch.Tensor) -> dict[str, nn.Module]:
    act = (float(example.abs().max()) / 127.5, 128)
    found = {
        "bf16 (Bf16Linear)": quantize_linear(linear, Quantize(weight_bits=16)),
        "fp16 gemm": _Fp16(linear, upcast=False),
        "fp16 upcast": _Fp16(linear, upcast=True),
        "int8 dyn": quantize_linear(linear, Quantize(weight_bits=8)),
        "int8 static": quantize_linear(linear, Quantize(weight_bits=8, act_bits=8), act=act),
    }
    for bits in (6, 4, 3, 2):
        found[f"w{bits} unpack"] = quantize_linear(linear, Quantize(weight_bits=bits, group_size=64))
    if linear.out_features % 16 == 0 and linear.in_features % 64 == 0:
        found["int4 aten fp32-in"] = _Int4Aten(linear, group_size=64, dtype=torch.float32)
        found["int4 aten bf16-in"] = _Int4Aten(linear, group_size=64, dtype=torch.bfloat16)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")
    print(f"{args.threads} thread(s), {args.repeats} interleaved rounds, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; ratios = candidate / fp32 latency")
    for label, (tokens, in_features, out_features) in SHAPES.items():
        torch.manual_seed(0)
        linear = nn.Linear(in_features, out_features).eval()
        example = torch.randn(tokens, in_features)
        found = candidates(linear, example)
        with torch.no_grad():
            times = time_models([linear, *found.values()], example, warmup=3, repeats=args.repeats,
                                threads=args.threads)
        ratios = {name: statistics.median(t / b for t, b in zip(row, times[0])) for name, row in zip(found, times[1:])}
        fp32_ms = 1e3 * statistics.median(times[0])
        print(f"{label} (M={tokens}, K={in_features}, N={out_features}): fp32 {fp32_ms:.3f} ms")
        print("   " + "  ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items()))


if __name__ == "__main__":
    main()
