"""The ONNX form of each quantized autocomp layer: a stand-in that, during ``torch.onnx.export``, emits the op
pattern ONNX Runtime has an integer kernel for, filled with autocomp's own numbers (codes, scales, calibrated
activation quantizers). :func:`autocomp.runtimes.onnx.export_onnx` swaps the stand-ins in:

============================  ==================================================  ==================================
autocomp layer                ONNX (initializers)                                 ORT CPU runs it as
============================  ==================================================  ==================================
``Int8Linear`` (w8)           DynamicQuantizeLinear (codes 0..255) ->             ``DynamicQuantizeMatMul`` (fused
(``auto`` where its codes     MatMulInteger -> Cast -> Mul -> Add (int8 [in,      by ORT): u8 x s8 GEMM
are 0..255: AVX512-VNNI, AMX) out], fp32 scale, bias): ``matmul_integer``
``Int8Linear`` (w8)           the input's range, scale and zero point computed    ``MatMulIntegerToFloat`` (fused by
(``auto`` where its codes     in the graph for codes 0..127 (PyTorch's            ORT): u8 x s8 GEMM, exact with
are 0..127: other x86)        ``reduce_range``), QuantizeLinear, MatMulInteger    these codes on every CPU (see
                              with the int8 weights, Cast, Mul, Add               below)
w8 + static a8                QuantizeLinear/DequantizeLinear on the input (the   QDQ fusion: int8 GEMM with fp32
                              calibrated scale, zero point), DequantizeLinear of  output
                              the int8 weight per channel, MatMul, Add
``PackedLinear`` (w2..w6)     com.microsoft ``MatMulNBits``, ``block_size`` =     ``MatMulNBits`` (fp32 compute, or
                              the group size (codes + 2^(bits-1), fp16 scales     int8 with ``accuracy_level`` 4); 3 and
                              cast to fp32 in the graph, fp32 bias)               6 bits stored in 4 and 8 (exact)
``Bf16Linear`` (w16)          bf16 initializers cast to fp32 (folded by ORT)      fp32 GEMM (ORT CPU has no bf16 one)
any layer with static a8      QuantizeLinear/DequantizeLinear before its form     (Clip first where codes stop at 127)
============================  ==================================================  ==================================

Why not ORT's own quantizers (``quantize_dynamic``, ``quantize_static``, ``MatMulNBitsQuantizer``): each computes its
own scales and grid (e.g. ``MatMulNBits`` round-to-nearest maps to [-8, 7], autocomp's to [-7, 7]; the static
calibrators their own activation ranges), so they would deploy numbers the search never evaluated. The patterns
above are the ones those tools write, filled with autocomp's tensors; ORT's graph optimizer then fuses them.

A group size ``MatMulNBits`` cannot express (not a multiple of 16) falls back to an fp32 MatMul on the dequantized
weight: exact numbers, no speed or size gain; :class:`LayerExport` says so for each layer.

On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) ORT's u8 x s8 kernels sum pairs of products in 16 bits
and saturate with full-range codes (ORT advises ``reduce_range`` there). Static activations saved with codes up to
127 (autocomp's calibration on such CPUs) are clipped before QuantizeLinear. Weights-only int8 is exported with the
scored model's own input codes (``int8_weights="auto"``, :func:`int8_weight_form`). ``Int8Linear`` quantizes its
input to codes 0..255 where PyTorch's kernel computes them exactly (AVX512-VNNI, AMX) and to 0..127 elsewhere
(:func:`~autocomp.ops.quantize.int8_linear_top_code`). Full codes are ORT's own DynamicQuantizeLinear, fused with
the GEMM (``matmul_integer``: the scored layer's numbers but for a rare code rounded the other way); the
reduced codes are quantized in the graph as FBGEMM quantizes them, and their pair sums fit in 16 bits, so that
file computes the scored model's numbers on the u8 x s8 kernel of any CPU (``matmul_integer_reduce_range``), at
the cost of a few more graph nodes per layer. The forms compared on the demo model's 96-wide layers, as ratios to
fp32 in ORT: 0.755-0.763 for ``matmul_integer`` against 0.84-0.89 for the reduce-range form on a Xeon with AMX
(session 42), 0.66-0.67 against 0.71-0.74 on an AVX-512/VNNI EPYC; ViT-S/16 at 0.43-0.45 against 0.44-0.46 there; on an
AVX2 EPYC ViT-S/16 at 0.67-0.72x for the reduce-range form against 0.73-0.77x for the exact u8 x u8 kernel with
codes 0..255 (``matmul_integer_u8``). The scored model's codes move the demo model's logits by 0.04-0.07 at
most, the other codes by 0.2-0.3 (BENCHMARKS.md, sessions 31, 41 and 42).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp.ops.quantize import Bf16Linear, Int8Linear, PackedLinear, QuantizedLinear, int8_linear_top_code
from autocomp.runtimes.ort import ort_u8s8_exact

__all__ = ["LayerExport", "export_form", "int8_weight_form", "NBITS_BLOCK_SIZES",
           "INT8_WEIGHT_FORMS"]

NBITS_BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits takes powers of two >= 16; these are the ones tried
SMALL_SCALE = 6.1e-5  # FBGEMM's smallest dynamic activation scale (SMALL_SCALE_THRESHOLD): PyTorch's int8 Linear
INT8_WEIGHT_FORMS = ("auto", "matmul_integer", "matmul_integer_reduce_range", "matmul_integer_u8", "dequantize_linear")
_STORAGE_BITS = {2: 2, 3: 4, 4: 4, 6: 8}  # autocomp bits -> the MatMulNBits width that holds them (2, 4, 8 exist)



@dataclass(frozen=True)
class LayerExport:
    """How one quantized layer went into the file.

    Attributes:
        name: its path in the model, e.g. ``blocks.0.attn.qkv``.
        tag: autocomp's config tag, e.g. ``w4g64``.
        onnx: the ONNX form, e.g. ``MatMulNBits(bits=4, block_size=64)``.
        note: why the file differs from autocomp's storage (wider codes, repeated scales, no kernel), or ''.
    """

    name: str
    tag: str
    onnx: str
    note: str = ""


class _OnnxLinear(nn.Module):
    """Stand-in for a quantized layer during export: its tensors are buffers (they become initializers named by
    the layer's path) and ``forward`` emits the ONNX form. Outside an export it runs the autocomp layer itself."""

    def __init__(self, layer: QuantizedLinear, form: str, tensors: dict[str, torch.Tensor],
                 attrs: dict[str, int] | None = None) -> None:
        super().__init__()
        self.form, self.attrs = form, attrs or {}
        self.in_features, self.out_features = layer.in_features, layer.out_features  # as the layer it stands for
        self._layer = [layer]  # a list: not a registered child, so its tensors stay out of the export
        for key, tensor in tensors.items():
            self.register_buffer(key, tensor.contiguous())
        act = layer.act_qparams
        if act is not None:
            self.register_buffer("act_scale", torch.tensor(act.scale, dtype=torch.float32))
            self.register_buffer("act_zero_point", torch.tensor(act.zero_point, dtype=torch.uint8))
            if act.quant_max < 255:  # the kernel's codes stop at quant_max: clip the input to what it covers
                self.register_buffer("act_low", torch.tensor(-act.zero_point * act.scale, dtype=torch.float32))
                self.register_buffer("act_high", torch.tensor((act.quant_max - act.zero_point) * act.scale,
                                                              dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return self._layer[0](x)
        if hasattr(self, "act_scale"):
            x = self._quantize_input(x)
        return getattr(self, f"_{self.form}")(x)

    def _out_shape(self, x: torch.Tensor) -> tuple:
        return (*x.shape[:-1], self.out_features)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "act_low"):
            x = _op("Clip", (x, self.act_low, self.act_high), dtype=torch.float32, shape=x.shape)
        q = _op("QuantizeLinear", (x, self.act_scale, self.act_zero_point), dtype=torch.uint8, shape=x.shape)
        return _op("DequantizeLinear", (q, self.act_scale, self.act_zero_point), dtype=torch.float32, shape=x.shape)

    def _int8_dynamic(self, x: torch.Tensor) -> torch.Tensor:
        q, scale, zero = torch.onnx.ops.symbolic_multi_out(
            "::DynamicQuantizeLinear", (x,), {}, dtypes=(torch.uint8, torch.float32, torch.uint8),
            shapes=(x.shape, (), ()))
        # int8 weights (zero point 0, implied), or uint8 ones with their zero point of 128
        weight = (self.weight_uint8, zero, self.weight_zero_point) if hasattr(self, "weight_uint8") else \
            (self.weight_int8, zero)
        y = _op("MatMulInteger", (q, *weight), dtype=torch.int32, shape=self._out_shape(x))
        return self._add_bias(y.to(torch.float32) * (scale * self.weight_scale))

    def _int8_reduce_range(self, x: torch.Tensor) -> torch.Tensor:
        # the input's qparams as PyTorch's dynamic int8 Linear chooses them with reduce_range (FBGEMM's
        # ChooseQuantizationParams): the range widened to hold 0, over codes 0..127 (the top one may round to 128:
        # u8 x s8 pair sums still fit in 16 bits), a scale of at least SMALL_SCALE, the zero point from the range
        low = torch.clamp(_op("ReduceMin", (x,), {"keepdims": 0}, dtype=torch.float32, shape=()), max=0.0)
        high = torch.clamp(_op("ReduceMax", (x,), {"keepdims": 0}, dtype=torch.float32, shape=()), min=0.0)
        step = (high - low) / 127
        scale = torch.clamp(step, min=SMALL_SCALE)
        zero = torch.clamp(torch.round(-low / torch.clamp(step, min=torch.finfo(torch.float32).tiny)), 0, 127)
        zero = zero.to(torch.uint8)
        q = _op("QuantizeLinear", (x, scale, zero), dtype=torch.uint8, shape=x.shape)
        y = _op("MatMulInteger", (q, self.weight_int8, zero), dtype=torch.int32, shape=self._out_shape(x))
        return self._add_bias(y.to(torch.float32) * (scale * self.weight_scale))

    def _int8_qdq(self, x: torch.Tensor) -> torch.Tensor:
        weight = _op("DequantizeLinear", (self.weight_int8, self.weight_scale), {"axis": 1}, dtype=torch.float32,
                     shape=self.weight_int8.shape)
        return self._add_bias(torch.matmul(x, weight))

    def _nbits(self, x: torch.Tensor) -> torch.Tensor:
        inputs = [x, self.weight_packed, self.weight_scale.to(torch.float32)]  # fp16 in the file, as autocomp's
        if hasattr(self, "bias"):
            inputs += [None, None, self.bias]
        return torch.onnx.ops.symbolic("com.microsoft::MatMulNBits", inputs, self.attrs, dtype=torch.float32,
                                       shape=self._out_shape(x), version=1)

    def _bf16(self, x: torch.Tensor) -> torch.Tensor:
        # autocomp's bf16 weight and bias, computed in fp32: rounding the input and output to bf16 as PyTorch's
        # bf16 GEMM does would add four elementwise passes per layer and buy nothing on ORT's CPU provider
        y = torch.matmul(x, self.weight.to(torch.float32))
        return y + self.bias.to(torch.float32) if hasattr(self, "bias") else y

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.bias if hasattr(self, "bias") else y


def _op(name: str, inputs: tuple, attrs: dict | None = None, *, dtype: torch.dtype, shape: Any) -> torch.Tensor:
    """One default-domain ONNX node."""
    return torch.onnx.ops.symbolic(f"::{name}", inputs, attrs or {}, dtype=dtype, shape=shape)


def _nbits_block(group: int, in_features: int, bits: int) -> int | None:
    """The MatMulNBits block size that reproduces autocomp's groups: the group size itself where it is a supported
    block and the row holds more than one group; else the supported block that stores the fewest bytes among those
    lying each in one group (dividing the group, or any when the row is one group). None if none fits."""
    if in_features > group:
        if group in NBITS_BLOCK_SIZES:
            return group
        fits = [b for b in NBITS_BLOCK_SIZES if group % b == 0]
    else:
        fits = list(NBITS_BLOCK_SIZES)
    if not fits:
        return None
    nbytes = lambda b: math.ceil(in_features / b) * (b * bits // 8 + 2)  # noqa: E731 - codes + fp16 scale per block
    return min(reversed(fits), key=nbytes)  # ties: the larger block


def _pack_nbits(codes: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """Signed codes (out, in) as MatMulNBits' B: unsigned ``code + 2^(bits-1)``, (out, blocks, block*bits/8)
    uint8, the first code of each byte in its low bits; the padding holds the zero point (dequantizes to 0)."""
    out_features, in_features = codes.shape
    blocks = math.ceil(in_features / block)
    unsigned = torch.full((out_features, blocks * block), 2 ** (bits - 1), dtype=torch.int32)
    unsigned[:, :in_features] = codes.to(torch.int32) + 2 ** (bits - 1)
    per_byte = 8 // bits
    unsigned = unsigned.view(out_features, blocks, block // per_byte, per_byte)
    packed = sum(unsigned[..., i] << (i * bits) for i in range(per_byte))
    return packed.to(torch.uint8)


def _bias(layer: QuantizedLinear, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    bias = layer.state_dict().get("bias")
    return {} if bias is None else {"bias": bias.to(dtype)}


def export_form(name: str, layer: QuantizedLinear, *, int8_weights: str = "auto",
                nbits_accuracy_level: int = 0) -> tuple[nn.Module, LayerExport]:
    """The export form of one quantized layer, and what it is (``int8_weights``, ``nbits_accuracy_level``: as
    :class:`autocomp.runtimes.onnx.OnnxExportConfig` says)."""
    tag = layer.config.tag()
    act = " after QuantizeLinear/DequantizeLinear" if layer.act_qparams is not None else ""
    if isinstance(layer, Int8Linear):  # Int8StaticLinear too
        weight, scale, _ = layer.unpacked()
        tensors = {"weight_int8": weight.t(), "weight_scale": scale.float(), **_bias(layer)}
        if layer.act_qparams is not None or int8_weights == "dequantize_linear":
            return _OnnxLinear(layer, "int8_qdq", tensors), LayerExport(
                name, tag, "DequantizeLinear(int8, per channel) -> MatMul" + act)
        form = int8_weight_form(int8_weights)
        if form == "matmul_integer":
            return _OnnxLinear(layer, "int8_dynamic", tensors), LayerExport(
                name, tag, "DynamicQuantizeLinear -> MatMulInteger(int8)", _codes_note(form))
        if form == "matmul_integer_reduce_range":
            return _OnnxLinear(layer, "int8_reduce_range", tensors), LayerExport(
                name, tag, "QuantizeLinear(codes 0..127, as Int8Linear's with reduce_range) -> MatMulInteger(int8)",
                _codes_note(form))
        tensors["weight_uint8"] = (tensors.pop("weight_int8").to(torch.int16) + 128).to(torch.uint8)
        tensors["weight_zero_point"] = torch.tensor(128, dtype=torch.uint8)
        return _OnnxLinear(layer, "int8_dynamic", tensors), LayerExport(
            name, tag, "DynamicQuantizeLinear -> MatMulInteger(uint8 = int8 + 128, zero point 128)",
            _codes_note(form))
    if isinstance(layer, Bf16Linear):
        tensors = {"weight": layer.state_dict()["weight"].t(), **_bias(layer, torch.bfloat16)}
        return _OnnxLinear(layer, "bf16", tensors), LayerExport(
            name, tag, "bf16 weight cast to fp32 -> MatMul" + act, "ORT's CPU provider has no bf16 GEMM: runs fp32")
    if isinstance(layer, PackedLinear):
        bits, group = layer.config.weight_bits, layer.config.group_size
        storage = _STORAGE_BITS[bits]
        block = _nbits_block(group, layer.in_features, storage)
        if block is None:
            weight, bias = layer.dequantized()
            linear = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None)
            linear.weight.data.copy_(weight)
            if bias is not None:
                linear.bias.data.copy_(bias)
            return linear, LayerExport(name, tag, "MatMul on the dequantized fp32 weight",
                                       f"group_size {group} is not a multiple of 16: no MatMulNBits block fits")
        blocks = math.ceil(layer.in_features / block)
        scale = layer.scales()[:, torch.arange(blocks) * block // group]  # fp16, one per block
        tensors = {"weight_packed": _pack_nbits(layer.codes(), storage, block), "weight_scale": scale,
                   **_bias(layer)}
        attrs = {"K": layer.in_features, "N": layer.out_features, "bits": storage, "block_size": block}
        if nbits_accuracy_level:
            attrs["accuracy_level"] = nbits_accuracy_level
        notes = ([f"{bits}-bit codes stored in {storage} bits"] if storage != bits else []) + (
            [f"block {block} for group {group}: each group's scale repeated per block"]
            if block < min(group, layer.in_features) else []) + (
            [f"row of {layer.in_features} padded to {blocks * block}"] if blocks * block > layer.in_features else [])
        return _OnnxLinear(layer, "nbits", tensors, attrs), LayerExport(
            name, tag, f"MatMulNBits(bits={storage}, block_size={block})" + act, "; ".join(notes))
    raise AutocompError(f"{name}: no ONNX form for {type(layer).__name__}; known: Int8Linear, Int8StaticLinear, "
                        "Bf16Linear, PackedLinear")


def _codes_note(form: str) -> str:
    """Why a layer exported in ``form`` computes other numbers than the scored ``Int8Linear``, or ''."""
    if form == "matmul_integer" and not ort_u8s8_exact():
        return "input codes 0..255 on a u8 x s8 kernel that saturates on this CPU: its outputs are wrong here"
    full = _full_codes_scored()
    if full == (form == "matmul_integer_reduce_range"):
        scored, written = ("0..255", "0..127") if full else ("0..127", "0..255")
        return f"input codes {written} where the scored Int8Linear's are {scored}: its outputs differ a little"
    return ""


def _full_codes_scored() -> bool:
    return int8_linear_top_code() == 255


def int8_weight_form(int8_weights: str = "auto", *, top: int | None = None) -> str:
    """The form ``OnnxExportConfig.int8_weights`` writes weights-only int8 layers in on this machine; any form but
    ``auto`` as it is.

    ``auto`` is the scored model's input codes as this machine computes them
    (:func:`~autocomp.ops.quantize.int8_linear_top_code`): where ``Int8Linear`` quantizes its input to 0..255 (x86
    with AVX512-VNNI or AMX; QNNPACK), ``matmul_integer`` reproduces them where ONNX Runtime's u8 x s8 kernel computes
    them exactly (:func:`ort_u8s8_exact`), and ``matmul_integer_u8`` elsewhere; where it takes 0..127
    (``reduce_range``: other x86 CPUs),
    ``matmul_integer_reduce_range``, which every CPU computes exactly. ``top``: the scored model's top code where
    it was scored elsewhere (a run's record), instead of this machine's."""
    if int8_weights != "auto":
        return int8_weights
    if not (_full_codes_scored() if top is None else top == 255):
        return "matmul_integer_reduce_range"
    return "matmul_integer" if ort_u8s8_exact() else "matmul_integer_u8"
