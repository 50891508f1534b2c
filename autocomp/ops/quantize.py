"""Weight quantization of a block's Linear layers.

8-bit: weights stored as int8 with one fp32 scale per output channel (symmetric), executed by PyTorch's int8
dynamic-quantization CPU kernel (``quantized::linear_dynamic``: fbgemm/oneDNN on x86, qnnpack on ARM), which
quantizes activations per batch on the fly. Memory and latency both really drop.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp.models import vit_blocks
from autocomp.ops._registry import CompressContext, register

__all__ = ["Quantize", "Int8Linear", "WEIGHT_BITS"]

WEIGHT_BITS = (8,)


@dataclass(frozen=True)
class Quantize:
    """Quantize every Linear of a block.

    Attributes:
        weight_bits: bits per weight; allowed values are ``WEIGHT_BITS``.
    """

    weight_bits: int = 8

    def __post_init__(self) -> None:
        if self.weight_bits not in WEIGHT_BITS:
            raise AutocompError(f"weight_bits must be one of {list(WEIGHT_BITS)}, got {self.weight_bits!r}")

    def tag(self) -> str:
        return f"w{self.weight_bits}"


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 per output channel, run by the int8 dynamic-quantization kernel.

    The module holds only the kernel's packed weight; its state dict holds plain tensors (``weight_int8``,
    ``weight_scale``, ``bias``) so it saves to safetensors.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        self._pack(torch.zeros(out_features, in_features, dtype=torch.int8), torch.ones(out_features),
                   torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
        weight_int8 = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        module._pack(weight_int8, scale, bias)
        return module

    def _pack(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        with warnings.catch_warnings():  # the quantized-tensor API is deprecated; its kernel is still the fastest
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(
                weight_int8, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def unpacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(int8 weight, fp32 per-channel scale, fp32 bias or None)."""
        qweight, bias = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float(), bias

    def stored_nbytes(self) -> int:
        """Bytes of what the module holds: int8 weights, fp32 scales, fp32 bias."""
        return self.out_features * self.in_features + 4 * self.out_features * (1 + int(self.has_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, True)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 - torch's signature
        weight_int8, scale, bias = self.unpacked()
        destination[prefix + "weight_int8"] = weight_int8
        destination[prefix + "weight_scale"] = scale
        if bias is not None:
            destination[prefix + "bias"] = bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # noqa: ANN001 - torch's signature
        names = ["weight_int8", "weight_scale"] + (["bias"] if self.has_bias else [])
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        self._pack(state_dict[prefix + "weight_int8"], state_dict[prefix + "weight_scale"],
                   state_dict[prefix + "bias"] if self.has_bias else None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8"


@register("quantize", Quantize, order=90)
def apply(model: nn.Module, configs: dict[int, Quantize], context: CompressContext) -> None:
    blocks = vit_blocks(model)
    for index in configs:
        for parent in list(blocks[index].modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear.from_linear(child))
