"""Real measurement: latency by running the model, memory from the bytes it really holds and allocates.

Latency is a median over repeats; when a reference model is given, the two are timed interleaved, in alternating
order (A, B, B, A, A, B ...), and the ratio is the median of the per-pair ratios: slow drift on a shared machine
cancels within a pair, the alternation cancels the bias of always running second (under a competing load the
scheduler tends to preempt the same position of a round), and the median discards the pairs a preemption hit.
"""

from __future__ import annotations

import statistics
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from autocomp._timeout import check_time
from autocomp.hardware import HardwareProfile

__all__ = ["MB", "Measurement", "measure", "num_threads", "weight_nbytes", "peak_activation_nbytes", "time_models"]

MB = 1e6


@dataclass(frozen=True)
class Measurement:
    """What one model costs on the local device.

    Attributes:
        latency_ms: median forward latency at the profile's batch size and threads.
        latency_iqr_ms: interquartile range of the timed repeats (the spread).
        latency_ratio: median of per-pair latency ratios against the reference (None without one).
        weights_mb: bytes of the weights the model holds, in MB (1e6 bytes).
        activations_mb: peak bytes of live activation tensors during one forward pass, in MB.
    """

    latency_ms: float
    latency_iqr_ms: float
    latency_ratio: float | None
    weights_mb: float
    activations_mb: float

    @property
    def memory_mb(self) -> float:
        """Weights plus peak activations."""
        return self.weights_mb + self.activations_mb


def weight_nbytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers the model holds; packed layers report their own ``stored_nbytes``."""
    total = 0
    for module in model.modules():
        if hasattr(module, "stored_nbytes"):
            total += module.stored_nbytes()
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensors that ops allocate, and frees them when the tensors die."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        out = func(*args, **(kwargs or {}))
        if func.is_view or func._schema.is_mutable:
            return out  # views and in-place ops allocate nothing new
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor._base is None:
                nbytes = tensor.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._release, nbytes)
        return out


@torch.no_grad()
def peak_activation_nbytes(model: nn.Module, example: torch.Tensor) -> int:
    """Peak bytes of live tensors allocated during one forward pass (the input and weights not counted)."""
    counter = _LiveTensorBytes()
    with counter:
        output = model(example)
    del output
    return counter.peak


@contextmanager
def num_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def time_models(models: list[nn.Module], example: torch.Tensor, *, warmup: int, repeats: int,
                threads: int) -> list[list[float]]:
    """Time each model ``repeats`` times, interleaved round by round, the order reversed every other round;
    returns seconds per model per round."""
    times: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    with num_threads(threads):
        for model in models:
            for _ in range(warmup):
                model(example)
        for round_ in range(repeats):
            check_time()
            for index in (order if round_ % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                models[index](example)
                times[index].append(time.perf_counter() - start)
    return times


def measure(model: nn.Module, profile: HardwareProfile, *, example: torch.Tensor,
            reference: nn.Module | None = None) -> Measurement:
    """Measure latency and memory of ``model`` at the profile's batch size and thread count.

    Args:
        model: the model to measure (in eval mode).
        profile: batch size, threads, warm-up and repeats.
        example: one input image batch of any size; it is repeated or cut to the profile's batch size.
        reference: timed interleaved with ``model`` to give a drift-free ratio.
    """
    batch = _batch(example, profile.batch_size)
    models = [model] + ([reference] if reference is not None else [])
    times = time_models(models, batch, warmup=profile.warmup, repeats=profile.repeats, threads=profile.threads)
    own = sorted(times[0])
    quartiles = statistics.quantiles(own, n=4) if len(own) > 1 else [own[0]] * 3
    ratio = statistics.median(a / b for a, b in zip(times[0], times[1])) if reference is not None else None
    return Measurement(latency_ms=1e3 * statistics.median(own), latency_iqr_ms=1e3 * (quartiles[2] - quartiles[0]),
                       latency_ratio=ratio, weights_mb=weight_nbytes(model) / MB,
                       activations_mb=peak_activation_nbytes(model, batch) / MB)


def _batch(example: torch.Tensor, size: int) -> torch.Tensor:
    repeats = -(-size // len(example))
    return example.repeat(repeats, *([1] * (example.dim() - 1)))[:size].contiguous()
