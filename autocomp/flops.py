"""MAC and parameter counting of a (compressed) model, in one place.

Convention (fvcore's): one multiply-add counts as one "flop", so every number here is in **MACs**; vendors' FLOP/s
count a multiply-add as 2, and the cost model converts. Only matrix products are counted (Linear, convolution,
matmul, attention, and the int8/packed Linear kernels): norms, softmax, GELU, adds and the unpacking of packed
weights are memory-bound and counted as bytes by the cost model instead.

Why not ``fvcore.nn.FlopCountAnalysis`` itself: it traces with ``torch.jit``, which cannot trace a compressed model
(``Int8Linear`` holds its weights in a packed ``ScriptObject`` that the tracer refuses, and token reduction computes
Python ``int`` token counts that the tracer turns into tensors). This counter sees the same ATen ops at dispatch time,
so Python control flow and packed weights are fine, and keeps fvcore's interface idea: a dict of per-op handlers
that a caller may extend or override (``handlers=``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["MacCount", "count_macs", "count_params", "DEFAULT_HANDLERS", "Handler", "attention_macs"]

# handler(tensor inputs, tensor outputs) -> MACs; tensors are shape-bearing torch.Tensors in op-argument order.
Handler = Callable[[list[torch.Tensor], list[torch.Tensor]], int]


def attention_macs(batch_heads: int, queries: int, keys: int, qk_dim: int, v_dim: int) -> int:
    """MACs of ``softmax(q @ k^T) @ v``: ``q @ k^T`` plus ``attn @ v`` (the softmax is not a MAC)."""
    return batch_heads * queries * keys * (qk_dim + v_dim)


def _mm(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> int:
    a, b = inputs[-2], inputs[-1]  # addmm/baddbmm carry the added tensor first
    return a.shape[:-1].numel() * a.shape[-1] * b.shape[-1]


def _convolution(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> int:
    weight = inputs[1]
    return outputs[0].numel() * weight.shape[1:].numel()  # each output: in_channels/groups x kernel MACs


def _sdpa(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> int:
    q, k, v = inputs[:3]
    return attention_macs(q.shape[:-2].numel(), q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1])


def _packed_linear(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> int:
    """``quantized::linear_dynamic``, oneDNN's ``qlinear_pointwise`` and friends: the weight is packed, so its shape
    comes from the output."""
    return inputs[0].numel() * outputs[0].shape[-1]


def _default_handlers() -> dict[Any, Handler]:
    aten, handlers = torch.ops.aten, {}
    for op in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm):
        handlers[op] = _mm
    handlers[aten.convolution] = _convolution
    for name in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention"):
        if hasattr(aten, name):
            handlers[getattr(aten, name)] = _sdpa
    for namespace, name in (("quantized", "linear_dynamic"), ("quantized", "linear_dynamic_fp16"),
                            ("quantized", "linear"), ("onednn", "qlinear_pointwise")):
        try:
            handlers[getattr(getattr(torch.ops, namespace), name)] = _packed_linear
        except (AttributeError, RuntimeError):  # not in this build of PyTorch
            continue
    return handlers


DEFAULT_HANDLERS: Mapping[Any, Handler] = _default_handlers()


@dataclass(frozen=True)
class MacCount:
    """MACs of one forward pass.

    Attributes:
        total: all counted MACs.
        by_op: op name (``aten.addmm``) -> MACs.
        by_module: qualified name of the innermost module running the op (``blocks.0.attn.qkv``; ``""`` for the
            top level) -> MACs.
    """

    total: int
    by_op: dict[str, int]
    by_module: dict[str, int]


class _Counter(TorchDispatchMode):
    def __init__(self, handlers: Mapping[Any, Handler]) -> None:
        super().__init__()
        self.handlers = handlers
        self.stack: list[str] = [""]
        self.by_op: dict[str, int] = defaultdict(int)
        self.by_module: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        out = func(*args, **(kwargs or {}))
        handler = self.handlers.get(func.overloadpacket, self.handlers.get(func))
        if handler is not None:
            inputs = [t for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
            outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            macs = int(handler(inputs, outputs))
            self.by_op[str(func.overloadpacket)] += macs
            self.by_module[self.stack[-1]] += macs
        return out


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor, *,
               handlers: Mapping[Any, Handler] | None = None) -> MacCount:
    """Count the MACs of ``model(example)`` (the whole batch).

    Args:
        model: any module; compressed layers (int8, packed, low-rank, token reduction) are fine.
        example: the input batch.
        handlers: op (``torch.ops.aten.mm`` or an overload) -> handler; merged over ``DEFAULT_HANDLERS``.
    """
    counter = _Counter({**DEFAULT_HANDLERS, **(handlers or {})})
    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: counter.stack.append(name)))
        hooks.append(module.register_forward_hook(lambda m, a, o: counter.stack.pop() and None))  # None: keep output
    try:
        with counter:
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return MacCount(total=sum(counter.by_op.values()), by_op=dict(counter.by_op), by_module=dict(counter.by_module))


def count_params(model: nn.Module) -> int:
    """Logical parameter count: every weight once, whatever its storage.

    A packed quantized layer (one with ``stored_nbytes``, like ``Int8Linear``) counts ``in x out`` weights plus its
    bias, not the bytes it packs them into; all other parameters count their elements. Buffers are not parameters.
    """
    total = 0
    packed: set[str] = set()
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in packed):
            continue
        if hasattr(module, "stored_nbytes"):
            packed.add(name)
            has_bias = getattr(module, "has_bias", getattr(module, "bias", None) is not None)
            total += module.in_features * module.out_features + (module.out_features if has_bias else 0)
            continue
        total += sum(math.prod(p.shape) for p in module.parameters(recurse=False))
    return total
