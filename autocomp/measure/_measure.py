"""Real measurement: latency by running the model on the profile's backend, memory from the bytes it really holds and
allocates.

When a reference model is given, the two are timed interleaved (:func:`autocomp.measure.time_models`) and the
latency ratio is the median of the per-pair ratios, which a slow drift of a shared machine does not move.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autocomp import _quiet
from autocomp.hardware import HardwareProfile
from autocomp._timing import peak_activation_nbytes
from autocomp.measure.backends import backend_of

__all__ = ["COUNTING", "MB", "Measurement", "busy", "measure", "spread_warning", "starved"]

MB = 1e6
# How measure() counts: raised when a change makes the same model's figures differ from an earlier version's, so
# that a search resumed across it says so. 2: an OpenVINO IR holds bf16 weights as bf16 (version 1 kept them fp32).
# 3: a runtime backend counts bf16 weights and fp16 scales as the fp32 the runtime holds once loaded (2: the file's).
COUNTING = 3
NOISY_SPREAD = 0.25  # a timing whose repeats spread over more than this share of their median: a busy machine
# a one-thread timing whose process got less than this share of a CPU's time while it timed: other processes took the
# rest (steady contention slows every repeat alike, so the spread does not show it)
BUSY_SHARE = 0.8


def busy(measurement: "Measurement", threads: int) -> bool:
    """Whether ``measurement`` was timed on a busy machine: its repeats spread widely, or it was :func:`starved`."""
    return _noisy(measurement.latency_ms, measurement.latency_iqr_ms) or starved(measurement, threads)


def starved(measurement: "Measurement", threads: int) -> bool:
    """Whether a one-thread timing's process got less than ``BUSY_SHARE`` of a CPU's time while it timed: other
    processes took the rest, and its wall times are stretched by about 1 / ``cpu_share``."""
    return _starved(measurement.cpu_share, threads)


def _noisy(latency_ms: float, iqr_ms: float) -> bool:
    return latency_ms > 0 and iqr_ms > NOISY_SPREAD * latency_ms


def _starved(cpu_share: float | None, threads: int) -> bool:
    return threads == 1 and cpu_share is not None and cpu_share < BUSY_SHARE


def spread_warning(what: str, latency_ms: float, iqr_ms: float, *, cpu_share: float | None = None,
                   threads: int = 1, absolute: bool = False, cpu_ms: float | None = None) -> str | None:
    """A warning for a timing on a busy machine (:func:`busy`): its repeats spread over more than ``NOISY_SPREAD``
    of their median (``latency_ms``), or its one thread got less than ``BUSY_SHARE`` of a CPU (``cpu_share``). The
    latencies reported in ms are ratios times this figure, or ``cpu_ms`` (the CPU time of its passes) where that was
    taken instead, so they share its error; ``absolute``: a budget in ms is judged against them. None for a quiet
    timing."""
    noisy, short = _noisy(latency_ms, iqr_ms), _starved(cpu_share, threads)
    if not noisy and not short:
        return None
    how = " and ".join(part for part, said in (
        (f"with repeats spread over {iqr_ms:.3g} ms (IQR)", noisy),
        (f"while other processes took the CPU (its thread got {cpu_share or 0:.0%} of one)", short)) if said)
    taken = "this figure" if cpu_ms is None else (f"the CPU time of its passes, {cpu_ms:.3g} ms (about what it takes "
                                                  "alone; other processes' use of the caches still slows it)")
    fix = ("; a budget in ms (latency_ms) is judged against them, so it may be refused or barely constrain: rerun "
           "on a quieter machine, or give it as a fraction (latency: 0.6)") if absolute else \
        ": rerun on a quieter machine for absolute figures"
    return (f"warning: {what} was timed at {latency_ms:.3g} ms {how}: the machine is busy; latencies in ms are ratios "
            f"(timed interleaved, robust) times {taken}, and share its error{fix}")


@dataclass(frozen=True)
class Measurement:
    """What one model costs on the target.

    Attributes:
        latency_ms: median forward latency at the profile's batch size and threads.
        latency_iqr_ms: interquartile range of the timed repeats (the spread).
        latency_ratio: median of per-pair latency ratios against the reference (None without one).
        weights_mb: bytes of the weights the deployed model holds, in MB (1e6 bytes): PyTorch's tensors, or the
            exported file's for a runtime backend.
        activations_mb: peak bytes of live activation tensors during one PyTorch forward pass, in MB (the runtimes
            do not report theirs; for a runtime backend, without the temporary weights PyTorch's 2-6 bit layers
            unpack to, since the runtime computes on the packed ones).
        runtime: the backend, its version, device and options (:meth:`autocomp.measure.backends.Backend.describe`).
        agreement: top-1 agreement of the exported model with the PyTorch one on the check images (None: no
            export, or no images).
        max_logit_diff: the largest absolute logit difference there (None likewise).
        cpu_share: the CPU time the process used while timing, over the timing's wall time times the profile's
            threads: about 1 where the timing had its CPUs to itself, less where other processes took them (None on
            a GPU, and where its cgroup's CPU quota held it back while it timed: then the share says nothing of
            other processes).
    """

    latency_ms: float
    latency_iqr_ms: float
    latency_ratio: float | None
    weights_mb: float
    activations_mb: float
    runtime: str = ""
    agreement: float | None = None
    max_logit_diff: float | None = None
    cpu_share: float | None = None

    @property
    def memory_mb(self) -> float:
        """Weights plus peak activations."""
        return self.weights_mb + self.activations_mb


def measure(model: nn.Module, profile: HardwareProfile, *, example: torch.Tensor,
            reference: nn.Module | None = None, check: torch.Tensor | None = None,
            keep: Path | None = None, cached: bool = False) -> Measurement:
    """Measure latency and memory of ``model`` on the profile's backend, at its batch size and thread count.

    Args:
        model: the model to measure (in eval mode, on the CPU; it is not changed).
        profile: backend, batch size, threads, warm-up and repeats.
        example: one input image batch of any size; it is repeated or cut to the profile's batch size.
        reference: timed interleaved with ``model`` to give a drift-free ratio.
        check: images a runtime backend compares its exported model on (``agreement``); None: no check.
        keep: a folder where a runtime backend keeps its export of ``model``, or reads it from if an earlier
            measurement of the same model kept it there (``model`` itself is still needed: activation memory is
            counted in PyTorch); ignored where the folder's parent does not exist (a Ray node that does not see the
            caller's files). None: the export goes to a temporary folder.
        cached: ``model`` is one measured again and again as it is (the uncompressed model): a runtime backend
            exports it once, to the cache, where every trial's reference is read from too (``keep`` is ignored).

    Raises:
        autocomp.measure.backends.ExportFailed: a runtime backend could not export or run the model as PyTorch
            does.
        AutocompTypeError: an argument of another type (a DataLoader for ``example``, a profile's path: load it
            with ``autocomp.measure.profiling.load_profile``).
        AutocompError: images of other channels or another size than the model takes.
    """
    example, check = _checked(model, profile, example, check)
    backend = backend_of(profile)
    batch = _batch(example, profile.batch_size)
    with _quiet.step():  # exports and checks are compute: not while another trial of the run times (if set up)
        candidate = (backend.prepare_reference(model, batch, profile) if cached else
                     backend.prepare(model, batch, profile, keep=keep if keep is not None and keep.parent.is_dir()
                                     else None))
        agreement = backend.check(model, candidate, check, profile) if check is not None else None
        runs = [candidate.run] + ([backend.prepare_reference(reference, batch, profile).run]
                                  if reference is not None else [])
    with _quiet.timing():  # and the run's other trials on this machine hold still while this one times
        wall, cpu, held = time.perf_counter(), time.process_time(), throttled_ns()
        times = backend.time(runs, batch, profile)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        quota = held is not None and (throttled_ns() or 0) > held  # its cgroup's CPU quota held it back: the
        # share says nothing of other processes (a container of half a CPU runs the model that slowly)
    with _quiet.step():
        activations = peak_activation_nbytes(model, batch, count_unpacking=not backend.exports)
    own = sorted(times[0])
    quartiles = statistics.quantiles(own, n=4) if len(own) > 1 else [own[0]] * 3
    ratio = statistics.median(a / b for a, b in zip(times[0], times[1])) if reference is not None else None
    return Measurement(latency_ms=1e3 * statistics.median(own), latency_iqr_ms=1e3 * (quartiles[2] - quartiles[0]),
                       latency_ratio=ratio, weights_mb=candidate.weight_nbytes / MB,
                       activations_mb=activations / MB,
                       runtime=(backend.describe(profile) + f"; weights counted in the {candidate.weights_from}, "
                                "activations in PyTorch" + (" (packed weights not unpacked, as the runtime runs them)"
                                                            if backend.exports else "")),
                       agreement=None if agreement is None else agreement.top1,
                       max_logit_diff=None if agreement is None else agreement.max_logit_diff,
                       cpu_share=(cpu / (wall * profile.threads) if backend.device == "cpu" and wall > 0 and not quota
                                  else None))


# where a cgroup's CPU statistics say how long its quota has held its processes back: v2, v1, v1 with both
# controllers mounted together (the key, and its unit in ns)
_THROTTLED = (("/sys/fs/cgroup/cpu.stat", "throttled_usec", 1000), ("/sys/fs/cgroup/cpu/cpu.stat", "throttled_time", 1),
              ("/sys/fs/cgroup/cpu,cpuacct/cpu.stat", "throttled_time", 1))


def throttled_ns() -> int | None:
    """Nanoseconds this process's cgroup has been held back by a CPU quota so far; None where no cgroup says."""
    for path, key, ns in _THROTTLED:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value) * ns
    return None


def _checked(model: nn.Module, profile: HardwareProfile, example: torch.Tensor,
             check: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What a caller gives from Python, checked before anything runs (a DataLoader failed as "'DataLoader' object
    has no attribute 'repeat'"); ``example`` and ``check`` as the model takes them (its weights' float type)."""
    from autocomp.errors import AutocompTypeError, shown
    from autocomp.models import model_images

    if not isinstance(model, nn.Module):
        raise AutocompTypeError(f"measure's model must be the nn.Module to measure, got {type(model).__name__} "
                                f"{shown(model)}")
    if not isinstance(profile, HardwareProfile):
        fix = (f"load it first: autocomp.measure.profiling.load_profile({str(profile)!r}) (which calibrates a "
               "profile that asks for it)" if isinstance(profile, (str, Path)) else
               "autocomp.measure.profiling.load_profile('hardware_profiles/local_cpu.yaml') loads one")
        raise AutocompTypeError(f"measure's profile must be a HardwareProfile, got {type(profile).__name__} "
                                f"{shown(profile)}: {fix}")
    if not isinstance(example, torch.Tensor) or example.dim() == 0 or not example.is_floating_point() \
            or len(example) == 0:
        got = (f"a {example.dim()}-D {example.dtype} tensor of shape {tuple(example.shape)}"
               if isinstance(example, torch.Tensor) else f"{type(example).__name__} {shown(example)}")
        raise AutocompTypeError(f"measure's example must be a float tensor of preprocessed images (N, C, H, W), "
                                f"got {got}; e.g. a batch of your validation images, or torch.randn(1, 3, 224, 224)")
    if hasattr(model, "patch_embed") and example.dim() != 4:  # a ViT: images
        raise AutocompTypeError(f"measure's example must be a batch of images (N, C, H, W) for a ViT, got a "
                                f"{example.dim()}-D tensor of shape {tuple(example.shape)}"
                                + ("; one image: example.unsqueeze(0)" if example.dim() == 3 else ""))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    # a ViT's images against its channels and size (any float batch for other modules)
    example = model_images(model, example, "measure's example images", dtype=dtype) if example.dim() == 4 \
        else example.to(dtype)
    if isinstance(check, torch.Tensor) and check.dim() == 4 and check.is_floating_point():
        check = model_images(model, check, "measure's check images", dtype=dtype)
    return example, check


def _batch(example: torch.Tensor, size: int) -> torch.Tensor:
    repeats = -(-size // len(example))
    return example.repeat(repeats, *([1] * (example.dim() - 1)))[:size].contiguous()
