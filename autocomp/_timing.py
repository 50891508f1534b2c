"""Measurement plumbing shared by every backend: the bytes a model holds, the peak bytes its forward pass allocates,
the thread count, and the one interleaved timing loop.

Latency is a median over repeats; models timed together run interleaved, in alternating order (A, B, B, A, A, B ...):
slow drift on a shared machine cancels within a pair, the alternation cancels the bias of always running second
(under a competing load the scheduler tends to preempt the same position of a round), and the median of per-pair
ratios discards the pairs a preemption hit.
"""

from __future__ import annotations

import time
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from autocomp._timeout import check_time

__all__ = ["weight_nbytes", "peak_activation_nbytes", "unpacking", "num_threads", "time_models"]


def weight_nbytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers the model holds; packed layers report their own ``stored_nbytes``."""
    total = 0
    for module in model.modules():
        if hasattr(module, "stored_nbytes"):
            total += module.stored_nbytes()
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


_UNPACKING: ContextVar[bool] = ContextVar("unpacking", default=False)  # in an unpacking() block (this thread's)


@contextmanager
def unpacking() -> Iterator[None]:
    """Mark the body as unpacking stored weights to a temporary form (PyTorch's 2-6 bit layers, which have no
    kernel): what it allocates is not counted where the model deploys on a runtime that computes on the packed
    weights (``peak_activation_nbytes(..., count_unpacking=False)``)."""
    token = _UNPACKING.set(True)
    try:
        yield
    finally:
        _UNPACKING.reset(token)


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensors that ops allocate, and frees them when the tensors die; ``count_unpacking``
    False: not those allocated in :func:`unpacking` blocks."""

    def __init__(self, *, count_unpacking: bool = True) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.count_unpacking = count_unpacking

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        out = func(*args, **(kwargs or {}))
        if func.is_view or func._schema.is_mutable or (_UNPACKING.get() and not self.count_unpacking):
            return out  # views and in-place ops allocate nothing new
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor._base is None:
                nbytes = tensor.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._release, nbytes)
        return out


@torch.no_grad()
def peak_activation_nbytes(model: nn.Module, example: torch.Tensor, *, count_unpacking: bool = True) -> int:
    """Peak bytes of live tensors allocated during one forward pass (the input and weights not counted).
    ``count_unpacking`` False: without the temporary weights PyTorch's packed layers unpack to (:func:`unpacking`),
    as a runtime that computes on the packed weights runs the model."""
    counter = _LiveTensorBytes(count_unpacking=count_unpacking)
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
def time_models(models: Sequence[Callable[[torch.Tensor], object]], example: torch.Tensor, *, warmup: int,
                repeats: int, threads: int) -> list[list[float]]:
    """Time each model (a module, or any callable on the example, such as a runtime session) ``repeats`` times,
    interleaved round by round, the order reversed every other round; returns seconds per model per round."""
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
