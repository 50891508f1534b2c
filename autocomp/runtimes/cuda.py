"""A model on a CUDA GPU captured once in a CUDA graph and replayed: each call launches the whole forward pass as one
graph, where PyTorch eager launches every kernel from Python.

On a GPU, a small ViT's forward pass in eager PyTorch is a few hundred kernels of a few microseconds each; the
Python that launches them can take longer than the kernels run, so the GPU waits and the time depends on the CPU's
load. A deployment that cares about latency replays a graph (``torch.compile(mode="reduce-overhead")`` does this
too); the ``pytorch-cuda`` backend times a candidate that way where its profile says ``cuda_graphs: true``, and this
module is how to deploy it as it was timed::

    model = autocomp.load("runs/demo/best").cuda().eval()
    run = cuda_graphed(model, torch.randn(64, 3, 224, 224))  # the batch size you deploy at
    logits = run(images)  # images of that shape; the result is overwritten by the next call: clone it to keep it
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["cuda_graphed"]

WARMUP = 3  # eager passes on a side stream before the capture: cuBLAS and cuDNN pick their kernels there


def cuda_graphed(model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` (on the GPU, in eval mode) captured for inputs of ``example``'s shape and type; the callable copies
    its input into the graph's own input tensor, replays the graph, and returns the graph's output tensor (the same
    tensor every call, overwritten by the next). An input of another shape runs eagerly.

    Raises:
        RuntimeError: the forward pass cannot be captured (it synchronizes with the CPU, e.g. ``.item()``, or
            makes shapes that depend on the data).
    """
    device = next((p.device for p in model.parameters()), torch.device("cuda"))
    static_input = example.to(device).clone()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(WARMUP):
            model(static_input)
    torch.cuda.current_stream(device).wait_stream(side)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.current_stream(device)
    try:
        with torch.no_grad(), torch.cuda.graph(graph):
            static_output = model(static_input)
    except RuntimeError:  # a failed capture's end raises too, and leaves the capture's stream current: put back
        torch.cuda.set_stream(stream)
        raise

    def run(images: torch.Tensor) -> torch.Tensor:
        if images.shape != static_input.shape or images.dtype != static_input.dtype:
            with torch.no_grad():
                return model(images.to(device))
        static_input.copy_(images, non_blocking=True)
        graph.replay()
        return static_output

    return run  # holds the graph, and with it the memory the capture allocated
