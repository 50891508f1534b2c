"""Hardware profiles: the facts about a target device, from ``hardware_profiles/*.yaml``, in a frozen dataclass.

Hardware numbers live only in those YAML files, never in code. A profile says how to measure on the device
(threads, batch size, repeats) and what the cost model needs to predict it (peak throughput per precision, memory
bandwidth and capacity, per-op overhead, which weight bit-widths and ops have fast kernels).

A profile built in code may leave the device facts out (a timing-only profile for :func:`autocomp.measure.measure`);
a profile *file* must state them all, and the cost model refuses a profile without them, except a profile that says
``calibrate: on_first_use``: its device facts are measured on the machine that uses it, once per CPU
(:func:`autocomp.measure.profiling.load_profile`, which callers use; :func:`read_profile` here only reads the file).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from autocomp._loader import build, read_yaml
from autocomp.errors import AutocompError

__all__ = ["HardwareProfile", "read_profile", "from_mapping", "DEVICES", "BACKENDS", "PRECISIONS", "INT8_STATIC",
           "WEIGHT_BITS",
           "FAST_OPS", "REQUIRED_IN_FILE", "CALIBRATE", "BACKEND_DEVICES"]

DEVICES = ("cpu", "gpu", "npu")
# How a candidate is run and timed (autocomp.measure.backends), with the device kind each runs on; any other name is
# refused, so that a typo (pytorch_cpu) does not pass unnoticed. A new backend adds its name here and its class there.
BACKEND_DEVICES = {"pytorch-cpu": "cpu", "onnxruntime-cpu": "cpu", "openvino-cpu": "cpu", "pytorch-cuda": "gpu"}
BACKENDS = tuple(BACKEND_DEVICES)
# Arithmetic precisions a peak throughput can be given for; unquantized layers run at fp32.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4")
# The int8 GEMM with static (calibrated) activations, where its rate is known apart from the dynamic one's (which
# finds each batch's range as it runs): a peak_gflops key beside the precisions, never a fast_weight_bits kernel.
INT8_STATIC = "int8_static"
# Weight bit-widths a quantize recipe may ask for (32 is the unquantized model itself).
WEIGHT_BITS = (16, 8, 6, 4, 3, 2)
FAST_OPS = (
    "fused_attention",    # q@k, softmax and @v run as one kernel: the N x N scores never go to memory
    "fused_elementwise",  # bias, GELU and residual adds are fused into the neighbouring GEMMs (compiled backends)
)
# What a profile file must state: the cost model cannot guess any of it (unless it is measured on first use).
REQUIRED_IN_FILE = ("name", "device", "backend", "peak_gflops", "memory_bandwidth_gbs", "memory_gb")
CALIBRATE = ("on_first_use",)  # values of ``calibrate``: when the device facts are measured on the machine itself


@dataclass(frozen=True)
class HardwareProfile:
    """A target device, how to measure on it, and what the cost model needs to predict it.

    Attributes:
        name: a short name, e.g. ``local-cpu``.
        device: the kind of device, one of ``DEVICES`` (``cpu``, ``gpu``, ``npu``).
        backend: how candidates are run and timed, one of ``BACKENDS`` (``pytorch-cpu``, ``onnxruntime-cpu``,
            ``openvino-cpu``, ``pytorch-cuda``; see :mod:`autocomp.measure.backends`).
        threads: intra-op threads used when timing (the peak numbers below are for this many threads).
        batch_size: images per forward pass when timing, counting activation memory and predicting.
        warmup: untimed forward passes before timing.
        repeats: timed forward passes (the median is reported).
        peak_gflops: precision (from ``PRECISIONS``) -> dense peak throughput in GFLOP/s (GOP/s for integers),
            counting a multiply-add as 2 operations as vendors do; must include ``fp32``. ``int8_static``, where
            given, is the rate of int8 GEMMs whose activations are quantized statically (``act_bits: 8``), each
            with its input's quantization; without it they are predicted at ``int8`` plus a quantize op.
        memory_bandwidth_gbs: memory bandwidth in GB/s (1e9 bytes per second).
        memory_gb: memory capacity in GB (1e9 bytes) available to the model.
        op_overhead_us: fixed cost of launching one operator (dispatch, kernel launch), in microseconds.
        fast_weight_bits: weight bits (from ``WEIGHT_BITS``) -> the precision its real kernel computes at, e.g.
            ``{8: int8}`` for int8 GEMMs, ``{4: fp16}`` for a weight-only int4 kernel. Bit-widths not listed are
            stored packed but unpacked to fp32 before an fp32 GEMM: they save memory, not time.
        fast_ops: ops with fused kernels, from ``FAST_OPS``.
        ray_resource: the Ray custom resource that marks the node holding this device, or None for any node.
        cuda_graphs: backend ``pytorch-cuda`` only: time each model captured once in a CUDA graph and replayed
            (:func:`autocomp.runtimes.cuda.cuda_graphed`, as a deployment that cares about latency runs it), where
            False times PyTorch eager, whose kernel launches from Python can outlast a small model's kernels.
        calibrate: ``on_first_use``: the device facts are measured on the CPU that uses the profile, once, and
            cached per CPU (see :mod:`autocomp.measure.profiling`); None: the file states them.
        measured_on: the CPU the device facts were measured on (:func:`autocomp.measure.profiling.cpu_description`), or
            None for numbers from a datasheet.
        sources: where each number came from (field, or ``field.key``, -> source).
    """

    name: str
    device: str = "cpu"
    backend: str = "pytorch-cpu"
    threads: int = 1
    batch_size: int = 1
    warmup: int = 5
    repeats: int = 30
    peak_gflops: Mapping[str, float] = dataclasses.field(default_factory=dict)
    memory_bandwidth_gbs: float | None = None
    memory_gb: float | None = None
    op_overhead_us: float = 0.0
    fast_weight_bits: Mapping[int, str] = dataclasses.field(default_factory=dict)
    fast_ops: tuple[str, ...] = ()
    ray_resource: str | None = None
    cuda_graphs: bool = False
    calibrate: str | None = None
    measured_on: str | None = None
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise AutocompError(f"name must be a non-empty string, got {self.name!r}")
        if self.device not in DEVICES:
            raise AutocompError(f"device must be one of {list(DEVICES)}, got {self.device!r}")
        if self.backend not in BACKENDS:
            near = difflib.get_close_matches(str(self.backend), BACKENDS, n=1, cutoff=0.6)
            raise AutocompError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}"
                                + (f"; did you mean {near[0]!r}?" if near else ""))
        if BACKEND_DEVICES[self.backend] != self.device:
            fitting = [b for b, d in BACKEND_DEVICES.items() if d == self.device]
            raise AutocompError(f"backend {self.backend} runs on a {BACKEND_DEVICES[self.backend]}, but the profile "
                                f"says device: {self.device}; set device: {BACKEND_DEVICES[self.backend]}, or a "
                                f"{self.device} backend: {fitting or 'none is built yet'}")
        for name in ("threads", "batch_size", "repeats"):
            _check_whole(name, getattr(self, name), minimum=1)
        _check_whole("warmup", self.warmup, minimum=0)
        self._check_peaks()
        for name in ("memory_bandwidth_gbs", "memory_gb"):
            value = getattr(self, name)
            if value is not None:
                _check_positive(name, value)
        if _not_number(self.op_overhead_us) or self.op_overhead_us < 0:
            raise AutocompError(f"op_overhead_us must be a number of microseconds >= 0, got {self.op_overhead_us!r}")
        self._check_kernels()
        if self.ray_resource is not None and (not isinstance(self.ray_resource, str) or not self.ray_resource):
            raise AutocompError(f"ray_resource must be a Ray resource name or null, got {self.ray_resource!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise AutocompError(f"cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        if self.cuda_graphs and self.backend != "pytorch-cuda":
            raise AutocompError(f"cuda_graphs: true is how backend pytorch-cuda times a model, and this profile's "
                                f"backend is {self.backend}; remove cuda_graphs, or set backend: pytorch-cuda")
        if self.calibrate is not None:
            if self.calibrate not in CALIBRATE:
                raise AutocompError(f"calibrate must be one of {list(CALIBRATE)} or null, got {self.calibrate!r}")
            if self.device != "cpu":
                raise AutocompError(f"calibrate: {self.calibrate} measures this machine's CPU; it needs device: cpu "
                                    f"and a CPU backend, got {self.device} and {self.backend}")
        if self.measured_on is not None and (not isinstance(self.measured_on, str) or not self.measured_on):
            raise AutocompError(f"measured_on must describe a CPU (a string) or be null, got {self.measured_on!r}")
        self._check_sources()

    def _check_peaks(self) -> None:
        if not isinstance(self.peak_gflops, Mapping):
            raise AutocompError(f"peak_gflops must be a mapping precision -> GFLOP/s, got {self.peak_gflops!r}")
        unknown = sorted(str(p) for p in self.peak_gflops if p not in (*PRECISIONS, INT8_STATIC))
        if unknown:
            raise AutocompError(f"peak_gflops: unknown precision(s) {unknown}; allowed: "
                                f"{list((*PRECISIONS, INT8_STATIC))}")
        for precision, value in self.peak_gflops.items():
            _check_positive(f"peak_gflops.{precision}", value)
        if self.peak_gflops and "fp32" not in self.peak_gflops:
            raise AutocompError("peak_gflops must give fp32: unquantized layers and unpacked weights run at fp32")
        object.__setattr__(self, "peak_gflops", {p: float(v) for p, v in self.peak_gflops.items()})

    def _check_kernels(self) -> None:
        if not isinstance(self.fast_weight_bits, Mapping):
            raise AutocompError(f"fast_weight_bits must be a mapping bits -> precision, e.g. {{8: int8}}, "
                                f"got {self.fast_weight_bits!r}")
        for bits, precision in self.fast_weight_bits.items():
            if bits not in WEIGHT_BITS:
                raise AutocompError(f"fast_weight_bits: {bits!r} is not a weight bit-width; allowed: "
                                    f"{list(WEIGHT_BITS)}")
            if precision not in PRECISIONS:
                raise AutocompError(f"fast_weight_bits.{bits}: unknown precision {precision!r}; allowed: "
                                    f"{list(PRECISIONS)}")
            if self.peak_gflops and precision not in self.peak_gflops:
                raise AutocompError(f"fast_weight_bits.{bits} computes at {precision} but peak_gflops has no "
                                    f"{precision}; add peak_gflops.{precision}")
        object.__setattr__(self, "fast_weight_bits", dict(self.fast_weight_bits))
        if isinstance(self.fast_ops, str) or not isinstance(self.fast_ops, (list, tuple)):
            raise AutocompError(f"fast_ops must be a list from {list(FAST_OPS)}, got {self.fast_ops!r}")
        unknown = [op for op in self.fast_ops if op not in FAST_OPS]
        if unknown:
            raise AutocompError(f"fast_ops: unknown op(s) {unknown}; allowed: {list(FAST_OPS)}")
        object.__setattr__(self, "fast_ops", tuple(self.fast_ops))

    def _check_sources(self) -> None:
        if not isinstance(self.sources, Mapping):
            raise AutocompError(f"sources must be a mapping field -> where its number came from, got "
                                f"{self.sources!r}")
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(str(k) for k in self.sources if str(k).split(".")[0] not in fields)
        if unknown:
            raise AutocompError(f"sources: unknown field(s) {unknown}; keys name a field, e.g. 'memory_gb' or "
                                "'peak_gflops.int8'")

    def kernel_precision(self, weight_bits: int) -> str | None:
        """The precision a real kernel for ``weight_bits`` computes at; None: unpacked and computed in fp32."""
        return "fp32" if weight_bits == 32 else self.fast_weight_bits.get(weight_bits)

    def missing_device_facts(self) -> list[str]:
        """The cost-model fields this profile leaves out (empty when it can be used to predict)."""
        return [name for name in ("peak_gflops", "memory_bandwidth_gbs", "memory_gb") if not getattr(self, name)]


def _not_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)


def _check_whole(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AutocompError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if _not_number(value) or value <= 0 or math.isinf(value):
        raise AutocompError(f"{name} must be a positive number, got {value!r}")


def read_profile(path: str | Path) -> HardwareProfile:
    """Read and validate a hardware profile file as it is (a ``calibrate: on_first_use`` profile comes back
    without device facts); errors name the file and the field."""
    return from_mapping(read_yaml(path, what="hardware profile"), source=str(path))


_EMPTY_AS_NONE = ("peak_gflops", "fast_weight_bits", "sources")  # an empty YAML mapping reads as None


def from_mapping(data: Any, *, source: str) -> HardwareProfile:
    """Validate the dict form of a profile file (:func:`autocomp._loader.build`), then that it states the device
    facts (unless they are measured on first use)."""
    where = f"hardware profile {source}"
    if isinstance(data, Mapping):
        data = {k: v for k, v in data.items() if not (k in _EMPTY_AS_NONE and v is None)}
    profile = build(HardwareProfile, data, where=where)
    required = REQUIRED_IN_FILE if profile.calibrate is None else ("name",)
    missing = [name for name in required if data.get(name) in (None, "", {})]
    if missing:
        raise AutocompError(f"{where}: missing key(s) {missing}; a profile file states the device facts the cost "
                            "model uses (see hardware_profiles/x86_server_vnni.yaml), or says "
                            "calibrate: on_first_use to measure them on this CPU")
    return profile
