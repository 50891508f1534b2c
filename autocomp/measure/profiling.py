"""Micro-benchmarks that calibrate a hardware profile on the machine they run on.

They time the kernels a ViT is made of, at ViT shapes, on the CPU backend the profile names
(:mod:`autocomp.measure.backends`: PyTorch eager, or each kernel exported and run by ONNX Runtime or OpenVINO):
GEMMs per precision (fp32, and the quantized layers autocomp deploys there: bf16 and int8 in PyTorch, int8 and
low-bit weights in the runtimes), attention, LayerNorm, softmax, a large copy (memory bandwidth) and a tiny op (the
per-op overhead of that backend). The best GEMM rate per precision becomes the profile's
``peak_gflops``: an *achieved* peak, lower than the datasheet's, which is what a roofline on this machine needs.

:func:`load_profile` is how a hardware profile is loaded: a profile that says ``calibrate: on_first_use`` (such as
``hardware_profiles/local_cpu.yaml``) gets its device facts measured here the first time it is used on a CPU, and
cached under ``<cache>/profiles/`` per CPU (model, ISA extensions, caps set in the environment, torch version), so
another CPU gets its own numbers. A profile measured on one CPU and used on another says so
(:func:`profile_note`).
"""

from __future__ import annotations

import dataclasses
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
from autocomp.hardware import INT8_STATIC, HardwareProfile, from_mapping, read_profile
from autocomp.errors import AutocompError, warn
from autocomp.measure import time_models
from autocomp.measure.backends import ExportFailed, backend_of
from autocomp.ops.quantize import (Quantize, activation_qparams, activation_quant_max, int8_static_range,
                                   quantize_linear)

__all__ = ["Calibration", "GemmShape", "VIT_GEMMS", "BACKEND_PRECISIONS", "BACKEND_KERNELS", "calibrate",
           "calibrated_profile", "cap_note", "caps_set", "cpu_description", "load_profile", "profile_note",
           "threads_note", "usable_cpus",
           "pytorch_fuses_attention", "write_profile"]


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


# The precisions whose GEMM rate each CPU backend is calibrated for, and which of them each weight bit-width's
# layer computes at there (``fast_weight_bits``); ``int8_static`` is the int8 GEMM with static activations (one
# calibrated scale per input: no range to find per batch; the runtimes fuse its quantization), measured apart because
# it runs at another rate than the dynamic one, faster or slower by runtime (DeiT-S, BENCHMARKS.md: 0.38x against
# 0.69x of fp32 in OpenVINO, 0.42x against 0.39x in ONNX Runtime). On pytorch-cpu: autocomp's bf16 GEMM and int8
# dynamic and static kernels (static only where oneDNN's kernel runs: elsewhere the layer is simulated); 2-6
# bits are unpacked to fp32. On the runtimes, 16-bit weights run an fp32 GEMM (cast when the file is loaded), 8-bit
# the runtime's int8 kernel, 2-6 bits its low-bit weight kernel (``MatMulNBits`` / compressed weights), whose
# measured rate is listed as ``int4``.
BACKEND_PRECISIONS = {"pytorch-cpu": ("fp32", "bf16", "int8", INT8_STATIC),
                      "onnxruntime-cpu": ("fp32", "int8", INT8_STATIC, "int4"),
                      "openvino-cpu": ("fp32", "int8", INT8_STATIC, "int4")}
_LOW_BITS = {6: "int4", 4: "int4", 3: "int4", 2: "int4"}
BACKEND_KERNELS = {"pytorch-cpu": {16: "bf16", 8: "int8"}, "onnxruntime-cpu": {16: "fp32", 8: "int8", **_LOW_BITS},
                   "openvino-cpu": {16: "fp32", 8: "int8", **_LOW_BITS}}


CHAIN = 16  # tiny ops chained to measure the per-op overhead


def calibrate(*, threads: int = 1, backend: str = "pytorch-cpu", shapes: tuple[GemmShape, ...] | None = None,
              precisions: tuple[str, ...] | None = None, repeats: int = 20, copy_mb: int = 512) -> Calibration:
    """Run the micro-benchmarks on ``backend`` (each one a small module run as the backend runs a candidate: in
    PyTorch, or exported and run by the runtime) with ``threads`` threads; each number is a median over
    ``repeats``. The memory bandwidth is measured with a PyTorch copy whatever the backend (a fact of the machine).

    ``precisions`` defaults to the backend's (``BACKEND_PRECISIONS``); those this build cannot run, or the runtime
    cannot compile here, are left out of ``peak_gflops`` (their layers are then predicted as unpacked to fp32).
    ``shapes`` defaults to ``VIT_GEMMS`` in PyTorch, and to its widest and narrowest-output GEMMs (qkv, fc2) on a
    runtime, where each shape is an export of seconds.

    Raises:
        AutocompError: a backend that cannot be calibrated here (a GPU one), or whose runtime is not installed.
    """
    if backend not in BACKEND_PRECISIONS:
        raise AutocompError(f"autocomp profile calibrates CPU backends {list(BACKEND_PRECISIONS)}, not {backend!r}; "
                            "a GPU profile states its datasheet numbers, and the search corrects them with the "
                            "latencies it measures")
    timer = _Timer(backend=backend, threads=threads, repeats=repeats)
    timer.backend.require()
    details: dict[str, float] = {}
    peaks: dict[str, float] = {}
    if shapes is None:
        shapes = VIT_GEMMS if backend == "pytorch-cpu" else (VIT_GEMMS[0], VIT_GEMMS[3])
    for precision in precisions or BACKEND_PRECISIONS[backend]:
        for shape in shapes:
            layer = _gemm(precision, shape, backend)
            if layer is None:
                break
            # static int8 as a ViT runs it, on (images, tokens, features): ONNX Runtime fuses the quantized input
            # into its int8 GEMM for a MatMul, not for the Gemm a 2-D Linear exports to (3x slower than fp32 there)
            size = (1, shape.tokens, shape.in_features) if precision == INT8_STATIC else (shape.tokens,
                                                                                           shape.in_features)
            try:
                seconds = timer(layer, torch.randn(size))
            except ExportFailed as exc:  # e.g. OpenVINO's compressed-weight kernels under ONEDNN_MAX_CPU_ISA=AVX2
                details[f"gemm.{precision}.unavailable"] = 0.0
                peaks.pop(precision, None)
                warn(f"{backend} cannot run {precision} layers on this CPU; the profile leaves them out (the cost "
                     f"model predicts them as fp32): {exc}")
                break
            rate = 2 * shape.macs / seconds / 1e9
            details[f"gemm.{precision}.{shape.tokens}x{shape.in_features}x{shape.out_features}"] = rate
            peaks[precision] = max(peaks.get(precision, 0.0), rate)
    if backend == "pytorch-cpu":  # details only (no profile field): seconds of exports each on a runtime
        width, heads, tokens = shapes[0].in_features, 6, shapes[0].tokens
        seconds = timer(_Attention(), torch.randn(1, heads, tokens, width // heads))
        details["attention"] = 2 * 2 * heads * tokens * tokens * (width // heads) / seconds / 1e9
        seconds = timer(torch.nn.LayerNorm(width), torch.randn(tokens, width))
        details["layernorm"] = 2 * tokens * width * 4 / seconds / 1e9
        seconds = timer(_Softmax(), torch.randn(heads, tokens, tokens))
        details["softmax"] = 2 * heads * tokens * tokens * 4 / seconds / 1e9
    source = torch.ones(copy_mb * 2**20 // 4)
    target = torch.zeros_like(source)  # touched once here, so the timed copies pay no page faults
    times = time_models([lambda _: target.copy_(source)], torch.empty(0), warmup=1, repeats=max(3, repeats // 4),
                        threads=threads)
    bandwidth = 2 * source.numel() * 4 / statistics.median(times[0]) / 1e9
    # the per-op cost inside a forward pass: a chain of CHAIN tiny Linears against one, so that the cost of a call
    # into the runtime (large for OpenVINO) is not counted once per op
    one, chain = (timer(torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(n)]), torch.ones(1, 4))
                  for n in (1, CHAIN + 1))
    details["call_us"] = 1e6 * one
    overhead_us = max(1e6 * (chain - one) / CHAIN, 0.01)
    return Calibration(peak_gflops=peaks, memory_bandwidth_gbs=bandwidth, op_overhead_us=overhead_us,
                       details=details)


class _Attention(torch.nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, q, q)


class _Softmax(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.softmax(-1)


class _Timer:
    """Median seconds of one module on one input, prepared and timed by the backend as a candidate would be."""

    def __init__(self, *, backend: str, threads: int, repeats: int) -> None:
        self.profile = HardwareProfile(name="calibration", backend=backend, threads=threads, warmup=3,
                                       repeats=repeats)
        self.backend = backend_of(self.profile)

    def __call__(self, module: torch.nn.Module, x: torch.Tensor) -> float:
        profile = dataclasses.replace(self.profile, batch_size=len(x))
        prepared = self.backend.prepare(module.eval(), x, profile)
        return statistics.median(self.backend.time([prepared.run], x, profile)[0])


def _gemm(precision: str, shape: GemmShape, backend: str) -> torch.nn.Module | None:
    """A Linear of ``shape`` whose GEMM runs at ``precision`` on ``backend`` (the layer autocomp's quantize operator
    deploys), or None if it cannot run it there."""
    linear = torch.nn.Linear(shape.in_features, shape.out_features)
    if precision == "fp32":
        return linear
    bits = {"bf16": 16, "int8": 8, INT8_STATIC: 8, "int4": 4}.get(precision)
    if bits is None:
        return None
    if precision == INT8_STATIC:  # inputs of the timing are standard normal: a calibrated range of +-4
        if int8_static_range() is None and backend == "pytorch-cpu":
            return None  # no static int8 kernel in this PyTorch: the layer would be simulated, not timed
        top = activation_quant_max() if int8_static_range() is not None else 255  # as the quantize operator does
        return quantize_linear(linear, Quantize(weight_bits=8, act_bits=8), act=activation_qparams(-4.0, 4.0, top))
    layer = quantize_linear(linear, Quantize(weight_bits=bits, group_size=min(64, shape.in_features)))
    try:
        with torch.no_grad():
            layer(torch.randn(2, shape.in_features))
    except RuntimeError:  # e.g. no bf16 GEMM in this build
        return None
    return layer


# CPU features that decide which kernels PyTorch and oneDNN run (x86, then Arm)
_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
              "asimd", "asimddp", "i8mm", "bf16", "sve")
# what caps PyTorch's, oneDNN's and FBGEMM's (PyTorch's dynamic int8 Linear) kernels to a lesser CPU's
CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS")


def caps_set() -> list[str]:
    """The caps the environment sets, as ``NAME=value``: ``ONEDNN_MAX_CPU_ISA=ALL`` (oneDNN's own "no cap") and
    empty values are none."""
    values = {name: os.environ.get(name, "").strip() for name in CAPS}
    return [f"{name}={value}" for name, value in values.items() if value and value.upper() != "ALL"]


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
    caps = caps_set()
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
    data = calibrated_profile(calibrate(threads=template.threads, backend=template.backend), base=base,
                              threads=template.threads)
    try:
        write_profile(cached, data, header=f"Measured on first use of {path} by "
                                           "autocomp.measure.profiling.load_profile.")
    except OSError as exc:  # what was measured is used all the same
        if log is not None:
            log(f"warning: cannot cache the measured profile at {cached} ({exc.strerror or exc}); this run uses it, "
                "and the next one measures the CPU again: set AUTOCOMP_CACHE to a folder you can write")
        return from_mapping(data, source=f"{path} (measured now)")
    return read_profile(cached)


def profile_note(profile: HardwareProfile) -> str | None:
    """A warning when ``profile``'s latencies will not be its device's: its numbers were measured on another CPU
    than this one, or they describe a device of their own (a datasheet's) that is measured on this machine (no
    ``ray_resource`` naming the device's node); None when they were measured here, or on the device's node."""
    here = cpu_description()
    if profile.measured_on is None and profile.calibrate is None and profile.ray_resource is None \
            and profile.device == "cpu":
        return (f"hardware profile {profile.name!r} describes a CPU of its own (its figures were not measured here: "
                f"no calibrate, no measured_on) and names no ray_resource, so its candidates are timed where the "
                f"trials run, on {here}: the latencies are that CPU's, and only the cost model's predictions use the "
                "profile's figures; to time them on the device, run a Ray node there declaring a resource and name it "
                "in ray_resource (README, \"On a Ray cluster\"); to describe this CPU, set calibrate: on_first_use")
    if profile.measured_on is None or profile.measured_on == here:
        return None
    return (f"hardware profile {profile.name!r} was measured on {profile.measured_on}, but this is {here}: its "
            "numbers may not describe this CPU; measure it with autocomp profile, or use a profile with "
            "calibrate: on_first_use")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or a cgroup's share), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_note(threads: int, what: str) -> str | None:
    """A warning when ``what`` runs ``threads`` intra-op threads on fewer CPUs than that: they take turns, and
    the timings are slower and noisier than on a machine with as many cores; None otherwise."""
    cpus = usable_cpus()
    if threads <= cpus:
        return None
    return (f"{what} times with {threads} threads, but this machine gives this process {cpus} CPU(s): the threads "
            f"take turns, and the timings are slower and noisier than with {threads} cores; set threads to at most "
            f"{cpus} here, or time on a machine with {threads} cores")


CAPPED_IN_PART = {"onnxruntime-cpu": "ONNX Runtime reads none of them", "openvino-cpu": "OpenVINO follows "
                  "ONEDNN_MAX_CPU_ISA in part (its default precision and its CPU checks do not)"}


def cap_note(backend: str) -> str | None:
    """A note when the CPU capability is capped (to emulate a CPU without AVX-512 or VNNI) and ``backend`` runs
    kernels the caps do not hold for: their timings are this CPU's; None otherwise."""
    capped = caps_set()
    if not capped:
        return None
    # FBGEMM picks its kernels from the CPU itself (cpuinfo) unless told by its own variable: the input codes int8
    # layers are scored with (0..255 with VNNI, 0..127 without), on every backend, and an export's int8 form follow
    fbgemm = (torch.backends.quantized.engine in ("x86", "fbgemm")
              and not any(cap.startswith("FBGEMM_ENABLE_INSTRUCTIONS=") for cap in capped))
    codes = ("PyTorch's dynamic int8 Linear (quantized engine "
             f"{torch.backends.quantized.engine!r}: FBGEMM) reads only FBGEMM_ENABLE_INSTRUCTIONS (e.g. AVX2), "
             "which is not set")
    if backend in CAPPED_IN_PART:
        ignored, what = CAPPED_IN_PART[backend], f"{backend} latencies are"
        if fbgemm:
            ignored += f"; {codes}"
            what = f"{backend} latencies and the int8 layers' input codes (and so the export's int8 form) are"
    elif backend == "pytorch-cpu" and fbgemm:
        ignored, what = codes, "dynamic int8 layers' latencies and input codes (and the profile's int8 peak) are"
    else:
        return None
    return (f"{' and '.join(capped)} cap PyTorch's kernels; {ignored}, so {what} measured as this CPU runs them, "
            "not as the CPU the caps emulate (measure there for its figures)")


def _calibration_key(path: Path) -> str:
    """What a cached calibration depends on: this CPU, the runtime and the form of what it runs, and the profile
    file's own settings."""
    profile = read_profile(path)
    backend = backend_of(profile)
    runtime = backend.runtime_versions(besides_torch=True)  # torch is in the description
    measured = "measures " + ",".join(BACKEND_PRECISIONS.get(profile.backend, ()))  # a cache lacking one is stale
    return hashlib.sha256("\n".join(part for part in (cpu_description(), runtime, backend.export_forms(),
                                                       path.read_text(), measured) if part).encode()).hexdigest()[:12]


def write_profile(path: Path, data: Mapping[str, Any], *, header: str) -> None:
    """Write a profile file (validated first: never one that would not load), atomically."""
    from_mapping(data, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(dict(data), sort_keys=False,
                                                                                     width=1000)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


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
    sources["op_overhead_us"] = (f"{measured}: per op of a chain of {CHAIN} tiny nn.Linear modules, less one "
                                 "(the cost of calling the backend counted once)")
    sources["measured_on"] = f"{measured}: autocomp.measure.profiling.cpu_description()"
    if not data.get("memory_gb"):
        data["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
        sources["memory_gb"] = f"{measured}: physical memory (sysconf), not reduced for other users"
    backend = data.get("backend", "pytorch-cpu")
    if data.get("fast_weight_bits") is None:
        data["fast_weight_bits"] = dict(BACKEND_KERNELS[backend])
        sources["fast_weight_bits"] = (
            "autocomp.ops.quantize on pytorch-cpu: 16 bits run a bf16 GEMM, 8 bits the int8 dynamic kernel"
            if backend == "pytorch-cpu" else
            f"autocomp.runtimes export on {backend}: 16 bits run an fp32 GEMM, 8 bits the runtime's int8 kernel, 2-6 "
            "bits its low-bit weight kernel (measured as int4)") + (
            "; listed where that precision was measured, at its measured rate")
    # a kernel at a precision this machine could not run is gone
    data["fast_weight_bits"] = {bits: p for bits, p in data["fast_weight_bits"].items()
                                if p in calibration.peak_gflops}
    if data.get("fast_ops") is None and backend == "pytorch-cpu":
        data["fast_ops"] = ["fused_attention"] if pytorch_fuses_attention() else []
        sources["fast_ops"] = f"{measured}: which kernel scaled_dot_product_attention dispatches to"
    elif data.get("fast_ops") is None:
        data["fast_ops"] = []
        sources["fast_ops"] = "the ONNX export writes attention as MatMul, Softmax, MatMul: the scores are stored"
    if not sources.get("device"):
        sources["device"] = f"autocomp profile on {date} ran on this machine's CPU: {cpu_description()}"
    data["sources"] = sources
    return data


@functools.cache
def pytorch_fuses_attention() -> bool:
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
