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
from autocomp.ops._base import CompressContext
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
    data_aware = [index for index, config in configs.items() if config.reads_calibration]
    inputs: dict[nn.Module, _Inputs] = {}
    if data_aware and not context.structure_only:
        if context.calibration is None:
            config = configs[data_aware[0]]
            what = "calibrates activation ranges" if config.act_bits else "smooths activations"
            raise AutocompError(f"block {data_aware[0]}: quantize {config.tag()} {what} on calibration images; "
                                "pass calibration= (the calibration split) to compress")
        inputs = _observe_inputs([blocks[index] for index in data_aware], model, context.calibration)
        for index in data_aware:
            if configs[index].smooth is not None:
                _smooth(blocks[index], [child for _, _, child in targets[index]], inputs, configs[index].smooth)
    for index, config in configs.items():
        cls = module_class(config)
        for parent, name, child in targets[index]:
            if context.structure_only:
                module = cls(child.in_features, child.out_features, bias=child.bias is not None, config=config)
            else:
                if config.act_bits and child not in inputs:
                    raise AutocompError(f"block {index}: {name} never ran on the calibration images, so its input "
                                        "range is unknown; leave act_bits out for this block")
                # simulated layers: an ideal kernel (_qlayers' own, so that a test or benchmark patches one place)
                top = _qlayers.activation_quant_max() if cls is Int8StaticLinear else 255
                seen = inputs.get(child)
                act = activation_qparams(float(seen.low.min()), float(seen.high.max()), top) if config.act_bits \
                    else None
                module = quantize_linear(child, config, act=act)
            setattr(parent, name, module)


class _Inputs:
    """What one forward pass showed of a Linear's input: per-channel (last axis) minimum and maximum, and the
    LayerNorm of its block whose output the input was at every call (None if not, or not always the same)."""

    def __init__(self, x: torch.Tensor, source: nn.Module | None) -> None:
        flat = x.reshape(-1, x.shape[-1])
        self.low, self.high, self.source = flat.amin(dim=0), flat.amax(dim=0), source

    def add(self, x: torch.Tensor, source: nn.Module | None) -> None:
        flat = x.reshape(-1, x.shape[-1])
        self.low, self.high = torch.minimum(self.low, flat.amin(dim=0)), torch.maximum(self.high, flat.amax(dim=0))
        if source is not self.source:
            self.source = None


def _norms(block: nn.Module) -> list[nn.Module]:
    """The block's LayerNorms a scale can be folded into: ``norm1`` and ``norm2`` with a per-channel weight."""
    return [norm for norm in (getattr(block, "norm1", None), getattr(block, "norm2", None))
            if isinstance(norm, nn.Module) and isinstance(getattr(norm, "weight", None), torch.Tensor)
            and norm.weight.dim() == 1]


def _observe_inputs(blocks: list[nn.Module], model: nn.Module, images: torch.Tensor) -> dict[nn.Module, _Inputs]:
    """One forward pass of ``images``: :class:`_Inputs` of every Linear of ``blocks`` that ran."""
    outputs: dict[nn.Module, torch.Tensor] = {}
    inputs: dict[nn.Module, _Inputs] = {}

    def record(layer: nn.Module, args: tuple, norms: list[nn.Module]) -> None:
        x = args[0].detach()
        source = next((norm for norm in norms if outputs.get(norm) is args[0]), None)
        if layer in inputs:
            inputs[layer].add(x, source)
        else:
            inputs[layer] = _Inputs(x, source)

    hooks = []
    try:
        for block in blocks:
            norms = _norms(block)
            hooks += [norm.register_forward_hook(lambda norm, args, out: outputs.__setitem__(norm, out))
                      for norm in norms]
            hooks += [layer.register_forward_pre_hook(lambda layer, args, norms=norms: record(layer, args, norms))
                      for layer in block.modules() if isinstance(layer, nn.Linear)]
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


def _smooth(block: nn.Module, targets: list[nn.Linear], inputs: dict[nn.Module, _Inputs], alpha: float) -> None:
    """SmoothQuant on ``block`` (see :class:`Quantize` ``smooth``): for each LayerNorm whose output feeds only
    Linears in ``targets``, divide its output channels by ``s`` and multiply those Linears' input columns by it;
    ``inputs`` is updated to the smoothed inputs."""
    for norm in _norms(block):
        fed = [layer for layer in block.modules() if isinstance(layer, nn.Linear)
               and layer in inputs and inputs[layer].source is norm]
        if not fed or any(layer not in targets for layer in fed):
            continue  # nothing to smooth, or a Linear left unquantized would see the divided input
        seen = inputs[fed[0]]
        act = torch.maximum(seen.low.abs(), seen.high.abs())
        weight = torch.stack([layer.weight.detach().abs().amax(dim=0) for layer in fed]).amax(dim=0)
        scale = torch.where((act > 0) & (weight > 0),
                            act.clamp(min=1e-5) ** alpha / weight.clamp(min=1e-5) ** (1 - alpha), 1.0)
        norm.weight.div_(scale)
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(scale)
        for layer in fed:
            layer.weight.mul_(scale)
            inputs[layer].low, inputs[layer].high = inputs[layer].low / scale, inputs[layer].high / scale


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
