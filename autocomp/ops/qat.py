"""The training form of quantized layers: fp32 master weights that train through the layer's own quantizer with a
straight-through estimator, then turn back into the packed, really quantized layers. Simulation for training only:
nothing here is deployed or measured."""

from __future__ import annotations

import torch
from torch import nn

from autocomp.ops._quantizers import dequantize, quantize_codes, search_scale
from autocomp.ops.quantize import Quantize, QuantizedLinear, module_class

__all__ = ["FakeQuantLinear", "trainable_layer", "trainable", "deployed"]


class FakeQuantLinear(nn.Linear):
    """Training form of a quantized Linear: fp32 master weights, forward through the same quantizer (bits, group
    size, fixed scales, activation quantizer) with a straight-through estimator (gradients pass the rounding
    unchanged). Simulation for training only; :meth:`deployed` turns it back into the packed layer.

    ``minmax`` scales follow the weights (recomputed at every call, as cheap as the rounding). Searched scales
    (``percentile``, ``mse``) are frozen in the buffer ``weight_scale`` when the layer is made (copied from the packed
    layer, or searched by :meth:`from_weight`): searching at every step would cost ~40 passes over the weight, and a
    search over already-quantized weights would not find the same clipping again. Either way ``deployed()`` right
    after ``trainable()`` rebuilds the same codes and scales exactly.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 config: Quantize | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.config = config if config is not None else Quantize()
        if self.frozen_scale:
            group = self.config.weight_group
            shape = (out_features,) if group is None else (out_features, -(-in_features // group))
            self.register_buffer("weight_scale", torch.ones(shape, dtype=torch.float32 if group is None
                                                            else torch.float16))
        if self.config.act_bits:
            self.register_buffer("act_scale", torch.tensor(1.0))
            self.register_buffer("act_zero_point", torch.tensor(0, dtype=torch.int32))
            self.register_buffer("act_quant_max", torch.tensor(255, dtype=torch.int32))

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, config: Quantize, *,
                    scale: torch.Tensor | None = None, act: tuple | None = None) -> FakeQuantLinear:
        module = cls(weight.shape[1], weight.shape[0], bias=bias is not None, config=config)
        with torch.no_grad():
            module.weight.copy_(weight)
            if bias is not None:
                module.bias.copy_(bias)
            if module.frozen_scale:
                module.weight_scale.copy_(scale if scale is not None else
                                          search_scale(weight, config.weight_bits, config.weight_group, config.scale))
            if config.act_bits and act is not None:
                module.act_scale.fill_(act[0])
                module.act_zero_point.fill_(act[1])
                module.act_quant_max.fill_(act[2] if len(act) > 2 else 255)
        return module

    @property
    def bits(self) -> int:
        return self.config.weight_bits

    @property
    def frozen_scale(self) -> bool:
        """Whether the scales are fixed buffers (searched ones) rather than recomputed from the weights (minmax)."""
        return self.config.weight_bits <= 8 and self.config.scale != "minmax"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.act_bits:
            x = torch.fake_quantize_per_tensor_affine(x, float(self.act_scale), int(self.act_zero_point), 0,
                                                      int(self.act_quant_max))
        bias = self.bias
        if self.config.weight_bits == 16:
            quantized = self.weight.to(torch.bfloat16).float()
            x = x + (x.to(torch.bfloat16).float() - x).detach()
            bias = None if bias is None else bias + (bias.to(torch.bfloat16).float() - bias).detach()
        else:
            bits, group = self.config.weight_bits, self.config.weight_group
            scale = self.weight_scale.float() if self.frozen_scale else search_scale(self.weight, bits, group, "minmax")
            quantized = dequantize(quantize_codes(self.weight.detach(), scale, bits, group), scale, group)
        weight = self.weight + (quantized - self.weight).detach()  # straight-through estimator
        return nn.functional.linear(x, weight, bias)

    def deployed(self) -> QuantizedLinear:
        act = ((float(self.act_scale), int(self.act_zero_point), int(self.act_quant_max)) if self.config.act_bits
               else None)
        scale = self.weight_scale if self.frozen_scale else None
        return module_class(self.config).from_weight(self.weight, self.bias, self.config, scale=scale, act=act)


def trainable_layer(layer: QuantizedLinear) -> FakeQuantLinear:
    """The training form of a deployed quantized layer: an fp32 copy (dequantized weights, the same scales and
    input quantizer); its :meth:`~FakeQuantLinear.deployed` gives the same layer back."""
    weight, bias = layer.dequantized()
    return FakeQuantLinear.from_weight(weight, bias, layer.config, scale=layer.scales(), act=layer.act_qparams)


def trainable(model: nn.Module) -> nn.Module:
    """Swap every packed quantized layer of ``model`` (in place) for its trainable fake-quant form."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantizedLinear):
                setattr(parent, name, trainable_layer(child))
    return model


def deployed(model: nn.Module) -> nn.Module:
    """Swap every fake-quant layer of ``model`` (in place) back to its packed, really quantized form."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FakeQuantLinear):
                setattr(parent, name, child.deployed())
    return model
