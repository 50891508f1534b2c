"""The quantized Linear layers: what each bit-width stores, and how it runs.

The class attribute ``kernel`` names how a layer runs, for the cost model:

========  ======================================================  ===============================================
bits      stored                                                  executed by
========  ======================================================  ===============================================
16        bf16 weight and bias                                    ``bf16_matmul``: bf16 GEMM (oneDNN, AMX/AVX512-BF16
                                                                  where the CPU has them), output cast to fp32
8         int8 weight, fp32 scale per output channel, fp32 bias   ``int8_dynamic``: ``quantized::linear_dynamic``
                                                                  (activations quantized per batch at run time)
8 + a8    the same + calibrated uint8 activation scale/zero/max   ``int8_static``: ``onednn::qlinear_pointwise``
6/4/3/2   codes packed densely (bits * in * out / 8 bytes), fp16  ``unpacked_fp32``: no kernel; the weight is
          scale per group of ``group_size`` inputs, fp32 bias     unpacked to fp32 at every call, then fp32 GEMM
========  ======================================================  ===============================================

``act_bits=8`` (static activations, calibrated on the calibration images) runs for real only with 8-bit weights on a
backend with oneDNN's int8 kernel; elsewhere the layer fake-quantizes its input before its own kernel and reports
``simulated = True``: such a layer shows accuracy, never speed (see
:func:`autocomp.ops.quantize.simulated_layers`). The choices were measured on this machine's CPU:
``benchmarks/quant_kernels.py``.

x86 int8 GEMMs are exact over the whole uint8 input range only where the CPU has VNNI or AMX (32-bit sums of u8 x s8
products). Without them (AVX2, AVX-512 without VNNI, older x86) pairs of products are summed in 16 bits and
saturate, so activations are quantized to ``0 .. 127`` there, as PyTorch's own x86 backends do with
``reduce_range``, and to ``0 .. 255`` where the kernel computes that exactly: :func:`int8_static_range` (oneDNN's
static kernel) and :func:`int8_linear_top_code` (the dynamic one) find out which by running the kernel on inputs that
would saturate. A static layer's range is saved with it, and a layer saved with the full range on a machine that
cannot run it exactly is simulated (and labelled) instead of computing wrong numbers; a dynamic layer quantizes its
input per call, with the range of the CPU it runs on.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import ClassVar

import torch
from torch import nn

from autocomp._timing import unpacking
from autocomp.errors import AutocompError
from autocomp.ops._qconfig import Quantize
from autocomp.ops._quantizers import (
    ActQuant,
    dequantize,
    levels,
    pack_codes,
    packed_nbytes,
    quantize_codes,
    search_scale,
    unpack_codes,
)

__all__ = ["QuantizedLinear", "Int8Linear", "Int8StaticLinear", "Bf16Linear", "PackedLinear", "quantize_linear",
           "stored_nbytes_for", "module_class", "int8_static_range", "int8_linear_top_code",
           "activation_quant_max"]

Spec = dict[str, tuple[tuple[int, ...], torch.dtype]]  # saved tensor name -> (shape, dtype)


class QuantizedLinear(nn.Module):
    """Base of the deployed quantized Linears: what they hold lives outside parameters and buffers (kernel-packed
    or bit-packed), is counted by :meth:`stored_nbytes`, and is saved as plain tensors.

    Subclasses set ``kernel`` and implement ``spec`` (name -> (shape, dtype) of each saved weight tensor),
    ``_quantize``, ``_state``, ``_set_state``, ``dequantized``, ``scales`` and ``_linear``.
    """

    kernel: ClassVar[str] = ""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 config: Quantize | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        self.config = config if config is not None else Quantize()
        self.act_qparams: ActQuant | None = ActQuant(1.0, 0) if self.config.act_bits else None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, config: Quantize, *,
                    scale: torch.Tensor | None = None, act: tuple | None = None) -> QuantizedLinear:
        """Quantize an fp32 ``weight`` (out, in); ``scale`` None: search it with ``config.scale``; ``act``: the
        calibrated input quantizer (an :class:`ActQuant` or its tuple), required with ``config.act_bits``."""
        if config.act_bits and act is None:
            raise AutocompError("act_bits=8 needs the calibrated input (scale, zero point); see quantize's apply")
        module = cls(weight.shape[1], weight.shape[0], bias=bias is not None, config=config)
        module._quantize(weight.detach().float(), None if bias is None else bias.detach().float(), scale)
        if act is not None:
            module.act_qparams = ActQuant(float(act[0]), int(act[1]), *(int(v) for v in act[2:]))
        return module

    @property
    def simulated(self) -> bool:
        """True when activation quantization is fake (no real kernel): this layer's latency is not a claim."""
        return self.act_qparams is not None and not self.executes_activations()

    def executes_activations(self) -> bool:
        """Whether a real kernel quantizes and computes this layer's input (static activations) exactly here."""
        return False

    @classmethod
    def spec(cls, in_features: int, out_features: int, *, bias: bool, config: Quantize) -> Spec:
        """Name -> (shape, dtype) of each tensor a layer of this shape holds and saves, activation ones included."""
        spec = cls._weight_spec(in_features, out_features, bias=bias, config=config)
        if config.act_bits:
            spec |= {"act_scale": ((), torch.float32), "act_zero_point": ((), torch.int32),
                     "act_quant_max": ((), torch.int32)}
        return spec

    def stored_nbytes(self) -> int:
        """Bytes of the tensors the module holds, exactly as saved (see :func:`stored_nbytes_for`)."""
        return _nbytes(self._spec())

    def _spec(self) -> Spec:
        return self.spec(self.in_features, self.out_features, bias=self.has_bias, config=self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_qparams is not None and not self.executes_activations():
            scale, zero_point, quant_max = self.act_qparams
            return self._simulated_linear(torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, quant_max))
        return self._linear(x)

    def _simulated_linear(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on an already fake-quantized input, where no kernel quantizes activations for real."""
        return self._linear(x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.config.tag()}, "
                f"kernel={self.kernel}" + (", simulated activations" if self.simulated else ""))

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - torch's signature
        """``.to(device)``, ``.cuda()``, ``.cpu()``: the tensors the layer holds (neither parameters nor buffers, so
        torch does not see them) move too. Their dtypes stay: a layer's storage is its format (``.half()`` leaves
        it as it is)."""
        super()._apply(fn, recurse)
        here = self._device()
        device = fn(torch.zeros((), device=here)).device  # where fn sends a tensor from here: a dtype change stays
        if device != here:
            self._move(device)
        return self

    def _device(self) -> torch.device:
        """Where the tensors the layer holds are (all on one device)."""
        return next(iter(self._state().values())).device

    def _move(self, device: torch.device) -> None:
        self._set_state({name: tensor.to(device) for name, tensor in self._state().items()})

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 - torch's signature
        for name, tensor in self._state().items():
            destination[prefix + name] = tensor
        if self.act_qparams is not None:
            destination[prefix + "act_scale"] = torch.tensor(self.act_qparams[0], dtype=torch.float32)
            destination[prefix + "act_zero_point"] = torch.tensor(self.act_qparams[1], dtype=torch.int32)
            destination[prefix + "act_quant_max"] = torch.tensor(self.act_qparams[2], dtype=torch.int32)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # noqa: ANN001 - torch's signature
        spec = self._spec()
        missing = [prefix + name for name in spec if prefix + name not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        state = {name: state_dict[prefix + name] for name in spec}
        bad = [f"{prefix}{name}: expected {tuple(shape)} {dtype}, got {tuple(state[name].shape)} {state[name].dtype}"
               for name, (shape, dtype) in spec.items()
               if tuple(state[name].shape) != tuple(shape) or state[name].dtype != dtype]
        if bad:
            error_msgs.append(f"quantized layer {type(self).__name__} ({self.config.tag()}): " + "; ".join(bad))
            return
        if self.act_qparams is not None:
            self.act_qparams = ActQuant(float(state.pop("act_scale")), int(state.pop("act_zero_point")),
                                        int(state.pop("act_quant_max")))
        self._set_state(state)


HALF = (torch.float16, torch.bfloat16)


def _nbytes(spec: Spec, *, widen_half: bool = False) -> int:
    return sum(math.prod(shape) * (4 if widen_half and dtype in HALF else dtype.itemsize)
               for shape, dtype in spec.values())


def _fp32_bias(out_features: int, bias: bool) -> Spec:
    return {"bias": ((out_features,), torch.float32)} if bias else {}


class Int8Linear(QuantizedLinear):
    """8-bit weights, per output channel, run by the int8 dynamic-quantization kernel, which quantizes the input per
    call to codes 0..255, or 0..127 (``reduce_range``) where full-range codes would saturate on this CPU
    (:func:`int8_linear_top_code`).

    The module holds only the kernel's packed weight; its state dict holds plain tensors (``weight_int8``,
    ``weight_scale``, ``bias``) so it saves to safetensors.
    """

    kernel = "int8_dynamic"

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 config: Quantize | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, config=config or Quantize(weight_bits=8))
        self._pack(torch.zeros(out_features, in_features, dtype=torch.int8), torch.ones(out_features),
                   torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: Quantize | None = None) -> Int8Linear:
        return cls.from_weight(linear.weight, linear.bias, config or Quantize(weight_bits=8))

    def _quantize(self, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None) -> None:
        if scale is None:
            scale = search_scale(weight, 8, None, self.config.scale)
        self._pack(quantize_codes(weight, scale.float(), 8, None).to(torch.int8), scale.float(), bias)

    def _pack(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        with warnings.catch_warnings():  # the quantized-tensor API is deprecated; its kernel is still the fastest
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(
                weight_int8, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self._reduce_range = int8_linear_top_code() != 255  # the packing engine's: a later switch leaves it packed

    def __setstate__(self, state: dict) -> None:  # unpickled (Ray, deepcopy): the engine here packed it anew
        super().__setstate__(state)
        self._reduce_range = int8_linear_top_code() != 255

    def unpacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(int8 weight, fp32 per-channel scale, fp32 bias or None)."""
        qweight, bias = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float(), bias

    @classmethod
    def _weight_spec(cls, in_features: int, out_features: int, *, bias: bool, config: Quantize) -> Spec:
        return {"weight_int8": ((out_features, in_features), torch.int8),
                "weight_scale": ((out_features,), torch.float32), **_fp32_bias(out_features, bias)}

    def _state(self) -> dict[str, torch.Tensor]:
        weight_int8, scale, bias = self.unpacked()
        return {"weight_int8": weight_int8, "weight_scale": scale, **({"bias": bias} if bias is not None else {})}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._pack(state["weight_int8"], state["weight_scale"], state.get("bias"))

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight_int8, scale, bias = self.unpacked()
        return weight_int8.float() * scale[:, None], bias

    def scales(self) -> torch.Tensor:
        return self.unpacked()[1]

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, self._reduce_range)

    def _device(self) -> torch.device:
        return torch.device("cpu")  # a CPU kernel's packed weight

    def _move(self, device: torch.device) -> None:
        raise AutocompError(f"{type(self).__name__} ({self.config.tag()}) cannot move to {device}: its int8 kernel "
                            "is a CPU kernel; search weight bits 16 or 2-6 for a GPU")


_NO_ZERO_POINT = torch.zeros(1, dtype=torch.long)  # symmetric weights; shared by all layers


class Int8StaticLinear(Int8Linear):
    """8-bit weights and static uint8 activations (calibrated scale and zero point), run by oneDNN's int8 GEMM
    with fp32 output. Same saved tensors as :class:`Int8Linear` plus ``act_scale``, ``act_zero_point`` and
    ``act_quant_max``.

    A layer whose saved range this CPU's kernel cannot compute exactly (255 where only 127 is exact) runs as a
    labelled simulation: fake-quantized input, dequantized weight, fp32 GEMM.
    """

    kernel = "int8_static"

    def executes_activations(self) -> bool:
        top = int8_static_range()
        return top is not None and self.act_qparams is not None and self.act_qparams.quant_max <= top

    def _pack(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        self._packed = torch.ops.onednn.qlinear_prepack(weight_int8.contiguous(), None)  # opaque, (in, out)
        self._scale = scale.float().contiguous()
        self._bias = None if bias is None else bias.float().contiguous()

    def unpacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return self._packed.to_dense().t().contiguous(), self._scale.clone(), self._bias

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero_point, quant_max = self.act_qparams
        with warnings.catch_warnings():  # deprecated API, but its fused quantize is the fast one
            warnings.simplefilter("ignore", UserWarning)
            qx = torch.quantize_per_tensor(x.contiguous(), scale, zero_point, torch.quint8).int_repr()
        if quant_max < 255:
            qx = qx.clamp_(max=quant_max)
        return torch.ops.onednn.qlinear_pointwise(qx, scale, zero_point, self._packed, self._scale, _NO_ZERO_POINT,
                                                  self._bias, 1.0, 0, torch.float32, "none", [], "")

    def _simulated_linear(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.dequantized()
        return nn.functional.linear(x, weight, bias)

    def __getstate__(self) -> dict:  # the opaque oneDNN tensor cannot be copied or pickled: keep plain tensors
        state = self.__dict__.copy()
        state["_packed"] = self._packed.to_dense()
        return state

    def __setstate__(self, state: dict) -> None:
        state["_packed"] = torch.ops.onednn.qlinear_prepack(state["_packed"].t().contiguous(), None)
        super().__setstate__(state)


class Bf16Linear(QuantizedLinear):
    """16-bit weights and bias in bf16, run by a bf16 GEMM (input cast to bf16, output cast back to fp32)."""

    kernel = "bf16_matmul"

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 config: Quantize | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, config=config or Quantize(weight_bits=16))
        self._weight = torch.zeros(out_features, in_features, dtype=torch.bfloat16)
        self._bias = torch.zeros(out_features, dtype=torch.bfloat16) if bias else None

    def _quantize(self, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None) -> None:
        self._weight = weight.to(torch.bfloat16)
        self._bias = None if bias is None else bias.to(torch.bfloat16)

    @classmethod
    def _weight_spec(cls, in_features: int, out_features: int, *, bias: bool, config: Quantize) -> Spec:
        spec = {"weight": ((out_features, in_features), torch.bfloat16)}
        return spec | ({"bias": ((out_features,), torch.bfloat16)} if bias else {})

    def _state(self) -> dict[str, torch.Tensor]:
        return {"weight": self._weight, **({"bias": self._bias} if self._bias is not None else {})}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._weight, self._bias = state["weight"].clone(), state["bias"].clone() if self.has_bias else None

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._weight.float(), None if self._bias is None else self._bias.float()

    def scales(self) -> None:
        return None

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(torch.bfloat16), self._weight, self._bias).float()


class PackedLinear(QuantizedLinear):
    """6/4/3/2-bit weights: codes ``w / scale + L`` bit-packed densely into uint8 (``weight_packed``, row-major over
    (out, in)), one fp16 scale per group (``weight_scale``, (out, groups)), fp32 ``bias``. No low-bit kernel is
    used: each call unpacks to a temporary fp32 weight (nothing is cached) and runs the fp32 GEMM."""

    kernel = "unpacked_fp32"

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 config: Quantize | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, config=config or Quantize(weight_bits=4))
        if self.config.weight_bits >= 8:
            raise AutocompError(f"PackedLinear holds 2..6-bit weights, got weight_bits={self.config.weight_bits}")
        spec = self._spec()
        self._codes = torch.zeros(spec["weight_packed"][0], dtype=torch.uint8)
        self._scale = torch.ones(spec["weight_scale"][0], dtype=torch.float16)
        self._bias = torch.zeros(out_features) if bias else None

    def _quantize(self, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None) -> None:
        bits, group = self.config.weight_bits, self.config.group_size
        if scale is None:
            scale = search_scale(weight, bits, group, self.config.scale)
        codes = quantize_codes(weight, scale.float(), bits, group) + levels(bits)
        self._codes = pack_codes(codes.to(torch.int32), bits)
        self._scale = scale.half()
        self._bias = bias

    @classmethod
    def _weight_spec(cls, in_features: int, out_features: int, *, bias: bool, config: Quantize) -> Spec:
        codes = packed_nbytes(out_features * in_features, config.weight_bits)
        groups = math.ceil(in_features / config.group_size)
        return {"weight_packed": ((codes,), torch.uint8), "weight_scale": ((out_features, groups), torch.float16),
                **_fp32_bias(out_features, bias)}

    def _state(self) -> dict[str, torch.Tensor]:
        state = {"weight_packed": self._codes, "weight_scale": self._scale}
        return state | ({"bias": self._bias} if self._bias is not None else {})

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._codes, self._scale = state["weight_packed"].clone(), state["weight_scale"].clone()
        self._bias = state["bias"].clone() if self.has_bias else None

    def codes(self) -> torch.Tensor:
        """Signed integer codes (out, in), int32."""
        bits = self.config.weight_bits
        flat = unpack_codes(self._codes, bits, self.out_features * self.in_features)
        return flat.to(torch.int32).view(self.out_features, self.in_features) - levels(bits)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._weight(), self._bias

    def scales(self) -> torch.Tensor:
        return self._scale.clone()

    def _weight(self) -> torch.Tensor:
        bits = self.config.weight_bits
        with unpacking():  # a runtime computes on the packed codes: not what it allocates (see peak_activation_nbytes)
            flat = unpack_codes(self._codes, bits, self.out_features * self.in_features)
            codes = flat.view(self.out_features, self.in_features).float() - levels(bits)
            return dequantize(codes, self._scale, self.config.group_size)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self._weight(), self._bias)


@functools.cache
def int8_static_range() -> int | None:
    """The largest uint8 input code oneDNN's static int8 Linear computes exactly on this CPU, or None without it.

    255 where u8 x s8 products are summed in 32 bits (VNNI, AMX); 127 where pairs of them are summed in 16 bits and
    saturate (e.g. AVX2 without VNNI, or oneDNN capped by ``ONEDNN_MAX_CPU_ISA``): found by running the kernel on
    the worst case, all inputs at the top code against weights of 127, and comparing with the exact sum.
    """
    width = 64
    try:
        packed = torch.ops.onednn.qlinear_prepack(torch.full((4, width), 127, dtype=torch.int8), None)
        for top in (255, 127):
            out = torch.ops.onednn.qlinear_pointwise(torch.full((2, width), top, dtype=torch.uint8), 1.0, 0, packed,
                                                     torch.ones(4), torch.zeros(4, dtype=torch.long), None, 1.0, 0,
                                                     torch.float32, "none", [], "")
            if torch.all(out == float(top * 127 * width)):
                return top
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    return None


def int8_linear_top_code() -> int:
    """The top code ``Int8Linear`` quantizes its input to, with PyTorch's quantized engine on this CPU: 255 where
    the engine's dynamic int8 kernel sums u8 x s8 products of full-range codes exactly (32-bit sums: FBGEMM with
    AVX512-VNNI or AMX; QNNPACK), 127 where pairs of them are summed in 16 bits and saturate (other x86 CPUs,
    AVX-VNNI alone included), the ``reduce_range`` PyTorch's x86 engines offer for it. Found by running the kernel
    on the worst case, all inputs at the top code against weights of 127, once per engine: FBGEMM picks its kernels
    from the CPU (or ``FBGEMM_ENABLE_INSTRUCTIONS``), oneDNN under ``ONEDNN_MAX_CPU_ISA``. A layer keeps the answer
    of the engine that packed it."""
    return _int8_linear_top_code(torch.backends.quantized.engine)


@functools.cache
def _int8_linear_top_code(engine: str) -> int:
    with warnings.catch_warnings():  # the quantized-tensor API is deprecated; QNNPACK warns about reduce_range
        warnings.simplefilter("ignore")
        for rows, width, outputs in ((2, 64, 4), (64, 256, 32)):  # a few rows and a ViT's tokens' many
            try:
                weight = torch.quantize_per_channel(
                    torch.ones(outputs, width), torch.full((outputs,), 1 / 127, dtype=torch.double),
                    torch.zeros(outputs, dtype=torch.long), 0, torch.qint8)
                packed = torch.ops.quantized.linear_prepack(weight, None)
                out = torch.ops.quantized.linear_dynamic(torch.ones(rows, width), packed, False)  # codes 255
            except (RuntimeError, NotImplementedError):
                return 127
            if not torch.allclose(out, torch.full_like(out, float(width)), rtol=1e-3):
                return 127
    return 255


def activation_quant_max() -> int:
    """The top activation code layers calibrated here get: what this CPU's int8 kernel computes exactly (255
    where there is no such kernel: those layers are simulated, as for an ideal uint8 kernel)."""
    return int8_static_range() or 255


def module_class(config: Quantize) -> type[QuantizedLinear]:
    """The deployed class for ``config`` on this backend."""
    if config.weight_bits == 16:
        return Bf16Linear
    if config.weight_bits == 8:
        return Int8StaticLinear if config.act_bits and int8_static_range() is not None else Int8Linear
    return PackedLinear


def stored_nbytes_for(in_features: int, out_features: int, *, bias: bool, config: Quantize,
                      widen_half: bool = False) -> int:
    """Bytes a Linear of this shape holds once quantized with ``config`` (what the cost model should count);
    ``widen_half``: its fp16 and bf16 tensors at 4 bytes, as a CPU runtime holds them once it loads the file
    (``Backend.widens_half``)."""
    return _nbytes(module_class(config).spec(in_features, out_features, bias=bias, config=config),
                   widen_half=widen_half)


def quantize_linear(linear: nn.Linear, config: Quantize, *, act: tuple | None = None) -> QuantizedLinear:
    """The deployed, really quantized form of ``linear``."""
    return module_class(config).from_weight(linear.weight, linear.bias, config, act=act)
