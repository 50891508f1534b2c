"""Weight (and optionally activation) quantization of a block's Linear layers: the operator.

Its config is :class:`Quantize` (``_qconfig.py``); the layers it puts in place of each Linear, what each bit-width
stores and which kernel runs it, are in ``_qlayers.py``. Both are imported from here.
"""

from __future__ import annotations

import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp.models import vit_blocks
from autocomp.ops import _qlayers
from autocomp.ops._base import CompressContext, observe
from autocomp.ops._qconfig import ACT_BITS, MIN_GROUP_SIZE, WEIGHT_BITS, Quantize
from autocomp.ops._qlayers import (
    Bf16Linear,
    Int8Linear,
    Int8StaticLinear,
    PackedLinear,
    QuantizedLinear,
    activation_quant_max,
    int8_linear_top_code,
    int8_static_range,
    module_class,
    quantize_linear,
    stored_nbytes_for,
)
from autocomp.ops._quantizers import SCALE_METHODS, ActQuant, activation_qparams

__all__ = ["Quantize", "QuantizedLinear", "Int8Linear", "Int8StaticLinear", "Bf16Linear", "PackedLinear",
           "WEIGHT_BITS", "ACT_BITS", "SCALE_METHODS", "MIN_GROUP_SIZE", "ActQuant", "quantize_linear",
           "stored_nbytes_for", "simulated_layers", "activation_kernels", "module_class", "int8_static_range",
           "int8_linear_top_code", "activation_quant_max", "activation_qparams"]


def simulated_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose quantization is simulated; a model with any must make no latency claim."""
    return [name for name, module in model.named_modules() if getattr(module, "simulated", False)]


def activation_kernels(model: nn.Module) -> str | None:
    """How the layers with static 8-bit activations run, e.g. ``onednn-u8`` (full range), ``onednn-u7`` (0..127,
    a CPU without VNNI), ``simulated``, joined by ``+`` when they differ; None when no layer quantizes activations."""
    kinds = set()
    for module in model.modules():
        if isinstance(module, QuantizedLinear) and module.act_qparams is not None:
            bits = 8 if module.act_qparams.quant_max == 255 else 7
            kinds.add("simulated" if module.simulated else f"onednn-u{bits}")
    return "+".join(sorted(kinds)) or None


def apply(model: nn.Module, configs: dict[int, Quantize], context: CompressContext) -> None:
    blocks = vit_blocks(model)
    targets = {index: _targets(blocks[index], config, index) for index, config in configs.items()}
    calibrate = [index for index, config in configs.items() if config.act_bits]
    ranges: dict[nn.Module, list[float]] = {}
    if calibrate and not context.structure_only:
        if context.calibration is None:
            raise AutocompError(f"block {calibrate[0]}: quantize.act_bits=8 calibrates activation ranges on "
                                "calibration images; pass calibration= (the calibration split) to compress")
        ranges = _input_ranges(model, [child for index in calibrate for _, _, child in targets[index]],
                               context.calibration)
    for index, config in configs.items():
        cls = module_class(config)
        for parent, name, child in targets[index]:
            if context.structure_only:
                module = cls(child.in_features, child.out_features, bias=child.bias is not None, config=config)
            else:
                if config.act_bits and child not in ranges:
                    raise AutocompError(f"block {index}: {name} never ran on the calibration images, so its input "
                                        "range is unknown; leave act_bits out for this block")
                # simulated layers: an ideal kernel (_qlayers' own, so that a test or benchmark patches one place)
                top = _qlayers.activation_quant_max() if cls is Int8StaticLinear else 255
                act = activation_qparams(*ranges[child], top) if config.act_bits else None
                module = quantize_linear(child, config, act=act)
            setattr(parent, name, module)


def _input_ranges(model: nn.Module, layers: list[nn.Module], images: torch.Tensor) -> dict[nn.Module, list[float]]:
    """[min, max] of each layer's input over one forward pass of ``images``."""
    ranges: dict[nn.Module, list[float]] = {}

    def record(layer: nn.Module, inputs: torch.Tensor) -> None:
        low, high = float(inputs.min()), float(inputs.max())
        seen = ranges.setdefault(layer, [low, high])
        seen[0], seen[1] = min(seen[0], low), max(seen[1], high)

    observe(model, images, {layer: layer for layer in layers}, record)
    return ranges


def _targets(block: nn.Module, config: Quantize, index: int) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, Linear) of each Linear of ``block`` that ``config`` quantizes; an entry of
    ``config.layers`` that matches none is refused, naming the block's Linears."""
    linears = [(path, parent, path.rsplit(".", 1)[-1], child) for path, child in block.named_modules()
               if isinstance(child, nn.Linear)
               for parent in [block.get_submodule(path.rsplit(".", 1)[0]) if "." in path else block]]
    for entry in config.layers or ():
        if not any(Quantize(layers=(entry,)).targets(path) for path, *_ in linears):
            raise AutocompError(f"block {index}: quantize.layers entry {entry!r} matches no Linear of the block; "
                                f"its Linears: {[path for path, *_ in linears]}")
    return [(parent, name, child) for path, parent, name, child in linears if config.targets(path)]
