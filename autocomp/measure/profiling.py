"""Micro-benchmarks that calibrate a hardware profile on the machine they run on.

They time the kernels a ViT is made of, at ViT shapes, with PyTorch on the CPU: GEMMs per precision (fp32, bf16,
and the int8 dynamic-quantization kernel that ``quantize`` uses), fused attention, LayerNorm, softmax, a large copy
(memory bandwidth) and a tiny op (per-op overhead). The best GEMM rate per precision becomes the profile's
``peak_gflops``: an *achieved* peak, lower than the datasheet's, which is what a roofline on this machine needs.

:func:`load_profile` is how a hardware profile is loaded: a profile that says ``calibrate: on_first_use`` (such as
``hardware_profiles/local_cpu.yaml``) gets its device facts measured here the first time it is used on a CPU, and
cached under ``<cache>/profiles/`` per CPU (model, ISA extensions, caps set in the environment, torch version), so
another CPU gets its own numbers. A profile measured on one CPU and used on another says so
(:func:`profile_note`).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import yaml
from torch.nn import functional as F

from autocomp._paths import cache_dir
from autocomp.hardware import HardwareProfile, from_mapping, read_profile
from autocomp.measure import time_models
from autocomp.ops.quantize import Int8Linear, int8_static_range

__all__ = ["Calibration", "GemmShape", "VIT_GEMMS", "calibrate", "calibrated_profile", "cpu_description",
           "load_profile", "profile_note", "write_profile"]


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


# CPU features that decide which kernels PyTorch and oneDNN run (x86, then Arm)
_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
              "asimd", "asimddp", "i8mm", "bf16", "sve")
_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")  # environment variables that cap the kernels' ISA


@functools.cache
def cpu_description() -> str:
    """This CPU as its measured numbers depend on it, in one line: model, architecture, logical CPUs, the ISA
    extensions kernels use, PyTorch's CPU capability and the int8 range oneDNN computes exactly, the caps set in the
    environment, and the torch version."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags.update(value.split())
    except OSError:
        pass
    extensions = " ".join(f for f in _CPU_FLAGS if f in flags) or "no listed extensions"
    caps = [f"{name}={os.environ[name]}" for name in _CAPS if os.environ.get(name)]
    top = int8_static_range()
    return (f"{model} ({platform.machine()}, {os.cpu_count()} CPUs; {extensions}; "
            f"ATen {torch.backends.cpu.get_cpu_capability()}, int8 static range {top or 'none'}"
            + (f"; {', '.join(caps)}" if caps else "") + f"; torch {torch.__version__.split('+')[0]})")


def load_profile(path: str | Path, *, log: Callable[[str], None] | None = None) -> HardwareProfile:
    """Load a hardware profile ready to use on this machine.

    A ``calibrate: on_first_use`` profile is replaced by its calibrated form for this CPU: read from the cache,
    or measured now (seconds; said through ``log``) and cached. Any other profile is read as it is.

    Raises:
        AutocompError: the file is missing or malformed (names the file and field).
    """
    path = Path(path)
    template = read_profile(path)
    if template.calibrate is None:
        return template
    cached = cache_dir() / "profiles" / f"{path.stem}-{_calibration_key(path)}.yaml"
    if cached.is_file():
        return read_profile(cached)
    if log is not None:
        log(f"measuring this CPU for {path.name} (once; cached at {cached}): {cpu_description()}")
    base = yaml.safe_load(path.read_text())
    data = calibrated_profile(calibrate(threads=template.threads), base=base, threads=template.threads)
    write_profile(cached, data, header=f"Measured on first use of {path} by autocomp.measure.profiling.load_profile.")
    return read_profile(cached)


def profile_note(profile: HardwareProfile) -> str | None:
    """A warning when ``profile``'s numbers were measured on another CPU than this one; None when they were
    measured here or come from a datasheet."""
    here = cpu_description()
    if profile.measured_on is None or profile.measured_on == here:
        return None
    return (f"hardware profile {profile.name!r} was measured on {profile.measured_on}, but this is {here}: its "
            "numbers may not describe this CPU; measure it with autocomp profile, or use a profile with "
            "calibrate: on_first_use")


def _calibration_key(path: Path) -> str:
    """What a cached calibration depends on: this CPU and the profile file's own settings."""
    return hashlib.sha256((cpu_description() + "\n" + path.read_text()).encode()).hexdigest()[:12]


def write_profile(path: Path, data: Mapping[str, Any], *, header: str) -> None:
    """Write a profile file (validated first: never one that would not load), atomically."""
    from_mapping(data, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(dict(data), sort_keys=False,
                                                                                     width=1000)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# what autocomp's quantize operator runs on PyTorch's CPU backend: weight bits -> the precision its GEMM computes at
_CPU_KERNELS = {16: "bf16", 8: "int8"}
_MEASURED = ("threads", "peak_gflops", "memory_bandwidth_gbs", "op_overhead_us", "measured_on")


def calibrated_profile(calibration: Calibration, *, base: Mapping[str, Any] | None, threads: int,
                       name: str | None = None, copy_mb: int = 512) -> dict[str, Any]:
    """The dict form of a profile file: the numbers measured in ``calibration`` on this CPU, the rest from ``base``
    (a profile file's mapping, or None for this machine's defaults). Facts ``base`` leaves out (memory, kernels,
    fused ops) are measured too; every measured number's source says so."""
    date = datetime.date.today().isoformat()
    measured = f"measured by autocomp profile on {date}"
    data = dict(base) if base else {"name": "local-cpu", "device": "cpu", "backend": "pytorch-cpu",
                                     "batch_size": 1, "warmup": 5, "repeats": 30}
    data.pop("calibrate", None)
    sources = {k: v for k, v in (data.get("sources") or {}).items() if str(k).split(".")[0] not in _MEASURED}
    data.update(threads=threads, peak_gflops={k: round(v, 1) for k, v in calibration.peak_gflops.items()},
                memory_bandwidth_gbs=round(calibration.memory_bandwidth_gbs, 2),
                op_overhead_us=round(calibration.op_overhead_us, 2), measured_on=cpu_description())
    if name:
        data["name"] = name
    sources["threads"] = f"autocomp profile --threads {threads}"
    for precision in calibration.peak_gflops:
        sources[f"peak_gflops.{precision}"] = f"{measured}: best of ViT GEMMs at {precision}, {threads} thread(s)"
    sources["memory_bandwidth_gbs"] = f"{measured}: {copy_mb} MiB tensor copy (read + write), {threads} thread(s)"
    sources["op_overhead_us"] = f"{measured}: median call of a tiny nn.Linear module"
    sources["measured_on"] = f"{measured}: autocomp.measure.profiling.cpu_description()"
    if not data.get("memory_gb"):
        data["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
        sources["memory_gb"] = f"{measured}: physical memory (sysconf), not reduced for other users"
    if data.get("fast_weight_bits") is None:
        data["fast_weight_bits"] = dict(_CPU_KERNELS)
        sources["fast_weight_bits"] = ("autocomp.ops.quantize on pytorch-cpu: 16 bits run a bf16 GEMM, 8 bits the "
                                       "int8 dynamic kernel; listed where that precision was measured, at its "
                                       "measured rate (slow where the CPU lacks AVX512-BF16/AMX)")
    # a kernel at a precision this machine could not run is gone
    data["fast_weight_bits"] = {bits: p for bits, p in data["fast_weight_bits"].items()
                                if p in calibration.peak_gflops}
    if data.get("fast_ops") is None:
        data["fast_ops"] = ["fused_attention"] if _fused_attention() else []
        sources["fast_ops"] = f"{measured}: which kernel scaled_dot_product_attention dispatches to"
    if not sources.get("device"):
        sources["device"] = f"autocomp profile on {date} ran on this machine's CPU: {cpu_description()}"
    data["sources"] = sources
    return data


def _fused_attention() -> bool:
    """Whether PyTorch runs scaled_dot_product_attention here as one fused kernel (the scores never stored)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    q = torch.randn(1, 2, 16, 8)
    with Ops() as ops:
        F.scaled_dot_product_attention(q, q, q)
    return any("flash" in n or "efficient" in n or "fused" in n for n in ops.names)
