"""Weight (and optionally activation) quantization of a block's Linear layers: the operator.

Its config is :class:`Quantize` (``_qconfig.py``); the layers it puts in place of each Linear, what each bit-width
stores and which kernel runs it, are in ``_qlayers.py``. Both are imported from here.
"""

from __future__ import annotations

import torch
from timm.layers import RmsNorm
from timm.models.vision_transformer import Block
from torch import nn

from autocomp.errors import AutocompError
from autocomp.models import vit_blocks
from autocomp.ops import _qlayers
from autocomp.ops.lowrank import LowRankLinear
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
           "int8_linear_top_code", "activation_quant_max", "activation_qparams", "check_layers"]


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
            what, fix = (("calibrates activation ranges", "") if config.act_bits else
                         ("smooths activations", ", or set smooth: null in its quantize entries (no smoothing)"))
            raise AutocompError(f"block {data_aware[0]}: quantize {config.tag()} {what} on calibration images; "
                                f"pass calibration= (the calibration split) to compress{fix}")
        inputs = _observe_inputs(model, [blocks[index] for index in data_aware], context.calibration)
        for index in data_aware:
            if configs[index].smooths:
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


class _Seen(Exception):
    """Raised after the last observed block: the rest of the model has nothing to show."""


def _norm_fed(block: nn.Module) -> list[tuple[nn.Module, nn.Linear]]:
    """(LayerNorm, the Linear that reads its output) pairs a smoothing scale can be folded into: in a block that
    runs timm's ``Block.forward`` (``attn(norm1(x))``, ``mlp(norm2(x))``), ``norm1`` feeds ``attn.qkv`` and only it,
    ``norm2`` feeds ``mlp.fc1``; the reader is that Linear, or the first factor of its low-rank form. Other blocks,
    norms (not a LayerNorm or RmsNorm with a per-channel weight) and readers (already quantized) give none."""
    if type(block).forward is not Block.forward:
        return []
    pairs = []
    for norm_name, path in (("norm1", "attn.qkv"), ("norm2", "mlp.fc1")):
        norm, reader = getattr(block, norm_name, None), block.get_submodule(path)
        if isinstance(reader, LowRankLinear):
            reader = reader.first
        if (isinstance(norm, (nn.LayerNorm, RmsNorm)) and isinstance(getattr(norm, "weight", None), torch.Tensor)
                and type(reader) is nn.Linear):
            pairs.append((norm, reader))
    return pairs


@torch.no_grad()
def _observe_inputs(model: nn.Module, blocks: list[nn.Module], images: torch.Tensor) -> dict[nn.Module, _Inputs]:
    """A forward pass of ``images`` up to the last of ``blocks``: :class:`_Inputs` of every Linear of ``blocks``
    that ran, each checked against the output of the LayerNorm that should feed it (:func:`_norm_fed`)."""
    blocks = list({id(block): block for block in blocks}.values())
    # runs of these blocks in a forward pass (a model may run one block module at two places)
    calls = sum(any(block is seen for seen in blocks) for block in vit_blocks(model))
    outputs: dict[nn.Module, torch.Tensor] = {}
    inputs: dict[nn.Module, _Inputs] = {}
    finished = []

    def record(layer: nn.Module, args: tuple, norms: list[nn.Module]) -> None:
        source = next((norm for norm in norms if outputs.get(norm) is args[0]), None)
        if layer in inputs:
            inputs[layer].add(args[0], source)
        else:
            inputs[layer] = _Inputs(args[0], source)

    def done(block: nn.Module, norms: list[nn.Module]) -> None:
        for norm in norms:  # one block's activations held at a time, not every block's
            outputs.pop(norm, None)
        finished.append(block)
        if len(finished) == calls:
            raise _Seen

    hooks = []
    try:
        for block in blocks:
            norms = [norm for norm, _ in _norm_fed(block)]
            hooks += [norm.register_forward_hook(lambda norm, args, out: outputs.__setitem__(norm, out))
                      for norm in norms]
            hooks += [layer.register_forward_pre_hook(lambda layer, args, norms=norms: record(layer, args, norms))
                      for layer in block.modules() if isinstance(layer, nn.Linear)]
            hooks.append(block.register_forward_hook(lambda block, args, out, norms=norms: done(block, norms)))
        model(images)
    except _Seen:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


@torch.no_grad()
def _smooth(block: nn.Module, targets: list[nn.Linear], inputs: dict[nn.Module, _Inputs], alpha: float) -> None:
    """SmoothQuant on ``block`` (see :class:`Quantize` ``smooth``): for each LayerNorm whose reader is in
    ``targets`` and was seen reading its output, divide the norm's output channels by ``s`` and multiply the
    reader's input columns by it; ``inputs`` is updated to the smoothed inputs."""
    for norm, reader in _norm_fed(block):
        seen = inputs.get(reader)
        if reader not in targets or seen is None or seen.source is not norm:
            continue
        if any(layer is not reader and observed.source is norm for layer, observed in inputs.items()):
            continue  # another Linear reads it too (a gated attention's gate): it would see the divided input
        act = torch.maximum(seen.low.abs(), seen.high.abs())
        weight = reader.weight.abs().amax(dim=0)
        scale = torch.where((act > 0) & (weight > 0),
                            act.clamp(min=1e-5) ** alpha / weight.clamp(min=1e-5) ** (1 - alpha), 1.0)
        norm.weight.div_(scale)
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(scale)
        reader.weight.mul_(scale)
        seen.low, seen.high = seen.low / scale, seen.high / scale


def check_layers(block: nn.Module, config: Quantize, index: int = 0) -> None:
    """Refuse ``config.layers`` where an entry matches no Linear of ``block`` (as :func:`apply` would), naming the
    block's Linears: what a search space checks against the model before its passes."""
    _targets(block, config, index)


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
