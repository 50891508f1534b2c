"""Export a compressed candidate to ONNX: the file and its weight bytes (running it in ONNX Runtime, the agreement
with the PyTorch model and the timing are :mod:`autocomp.runtimes.ort`'s).

Structural changes need nothing special: pruned heads and MLP neurons, low-rank factors and per-block token counts
are plain shapes and ops of the traced model (``torch.onnx.export(dynamo=True)``), so the graph is the smaller one.
Quantized layers are exported with autocomp's own numbers (codes, scales, calibrated activation quantizers), in the
op patterns ONNX Runtime has integer kernels for:

============================  ==================================================  ==================================
autocomp layer                ONNX (initializers)                                 ORT CPU runs it as
============================  ==================================================  ==================================
``Int8Linear`` (w8)           DynamicQuantizeLinear -> MatMulInteger -> Cast ->   ``DynamicQuantizeMatMul`` (fused
                              Mul -> Add (int8 [in, out], fp32 scale, bias)       by ORT): u8 x s8 GEMM
w8 where u8 x s8 saturates    the input's range, scale and zero point computed    ``MatMulIntegerToFloat`` (fused by
                              in the graph for codes 0..127 (PyTorch's            ORT): u8 x s8 GEMM, exact with
                              ``reduce_range``), QuantizeLinear, MatMulInteger    these codes (see below)
                              with the int8 weights, Cast, Mul, Add
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
127 (autocomp's calibration on such CPUs) are clipped before QuantizeLinear. Weights-only int8 is exported in the
form this CPU runs exactly (``int8_weights="auto"``): :func:`ort_u8s8_exact` runs ORT's kernel on the worst case,
and where it saturates the input is quantized to codes 0..127 in the graph, whose pair sums fit in 16 bits: the
grid ``Int8Linear`` itself computes on (PyTorch's dynamic int8 Linear quantizes its input with ``reduce_range`` on
x86, with FBGEMM or oneDNN), so the file computes the scored model's numbers (but for a rare code rounded the other
way), on the u8 x s8 kernel. On an AVX2 EPYC that form ran ViT-S/16 at 0.67-0.72x of fp32 against 0.73-0.77x for
the exact u8 x u8 kernel with codes 0..255 (``matmul_integer_u8``), and moved the demo model's logits by 0.06 at
most against 0.22 (BENCHMARKS.md, session 31).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp._timing import weight_nbytes
from autocomp.ops.qat import FakeQuantLinear
from autocomp.ops.quantize import Bf16Linear, Int8Linear, PackedLinear, QuantizedLinear
from autocomp.runtimes.ort import ort_u8s8_exact

__all__ = ["OnnxExportConfig", "LayerExport", "OnnxExport", "export_onnx", "onnx_weight_nbytes", "op_types",
           "int8_weight_form", "NBITS_BLOCK_SIZES", "INT8_WEIGHT_FORMS"]

NBITS_BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits takes powers of two >= 16; these are the ones tried
SMALL_SCALE = 6.1e-5  # FBGEMM's smallest dynamic activation scale (SMALL_SCALE_THRESHOLD): PyTorch's int8 Linear
INT8_WEIGHT_FORMS = ("auto", "matmul_integer", "matmul_integer_reduce_range", "matmul_integer_u8", "dequantize_linear")
_STORAGE_BITS = {2: 2, 3: 4, 4: 4, 6: 8}  # autocomp bits -> the MatMulNBits width that holds them (2, 4, 8 exist)


@dataclass(frozen=True)
class OnnxExportConfig:
    """How a candidate is exported.

    Attributes:
        opset: version of the default ONNX domain (20: what ``torch.onnx`` writes by default). 18 to 22 export
            and run in ORT 1.32; from 23 attention becomes the ONNX ``Attention`` op, whose ORT CPU kernel refuses
            the broadcast key mask token merging passes (``attn_mask`` (B, 1, 1, N)).
        dynamic_batch: the batch axis is dynamic, so one file serves every batch size.
        nbits_accuracy_level: ``MatMulNBits.accuracy_level``. 0 (unset): fp32 compute on the dequantized weight,
            autocomp's numbers exactly. 4: ORT quantizes the input per block to int8 and runs its int8 kernel,
            which pays for one row at a time (0.28x fp32 at M=1 on a Xeon with AMX) but loses to fp32 GEMM from
            a few rows on (1.4-1.6x at M=16..197, a ViT's tokens; ``benchmarks/onnx_runtime.py``). A per-device
            choice: it belongs with the hardware profile.
        int8_weights: how 8-bit weights without static activations are written: ``matmul_integer``
            (DynamicQuantizeLinear -> MatMulInteger with int8 weights: ORT fuses it into its u8 x s8 kernel;
            input codes 0..255), ``matmul_integer_reduce_range`` (input codes 0..127, quantized in the graph as
            ``Int8Linear`` quantizes them on x86, then the same kernel: exact on every CPU, and the scored model's
            own numbers), ``matmul_integer_u8`` (input codes 0..255, the weights as uint8, code + 128 with zero point
            128: ORT's u8 x u8 kernel, exact on every CPU, slower), ``auto`` (the first where
            :func:`ort_u8s8_exact` says this CPU computes it exactly, else the second) or ``dequantize_linear``
            (DequantizeLinear -> MatMul: the compressed-weight pattern OpenVINO runs fast; ORT would not).
    """

    opset: int = 20
    dynamic_batch: bool = True
    nbits_accuracy_level: int = 0
    int8_weights: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not 18 <= self.opset <= 22:
            raise AutocompError(f"opset must be a whole number in 18..22 (the opsets that export and run in ORT "
                                f"1.32 with every operator), got {self.opset!r}")
        if self.nbits_accuracy_level not in (0, 1, 4):
            raise AutocompError(f"nbits_accuracy_level must be 0 (unset), 1 (fp32) or 4 (int8 compute), got "
                                f"{self.nbits_accuracy_level!r}")
        if self.int8_weights not in INT8_WEIGHT_FORMS:
            raise AutocompError(f"int8_weights must be one of {list(INT8_WEIGHT_FORMS)}, got {self.int8_weights!r}")


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


@dataclass(frozen=True)
class OnnxExport:
    """An exported candidate.

    Attributes:
        path: the ``.onnx`` file.
        layers: one entry per quantized layer.
        weight_nbytes: bytes of the file's initializers and constants (:func:`onnx_weight_nbytes`).
        torch_weight_nbytes: what autocomp counts for the PyTorch model (``autocomp.measure.weight_nbytes``).
    """

    path: Path
    layers: tuple[LayerExport, ...]
    weight_nbytes: int
    torch_weight_nbytes: int

    @property
    def weight_ratio(self) -> float:
        """File weight bytes over autocomp's count (1.0: the same bytes)."""
        return self.weight_nbytes / self.torch_weight_nbytes


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


def _stand_in(name: str, layer: QuantizedLinear, config: OnnxExportConfig) -> tuple[nn.Module, LayerExport]:
    """The export form of one quantized layer, and what it is."""
    tag = layer.config.tag()
    act = " after QuantizeLinear/DequantizeLinear" if layer.act_qparams is not None else ""
    if isinstance(layer, Int8Linear):  # Int8StaticLinear too
        weight, scale, _ = layer.unpacked()
        tensors = {"weight_int8": weight.t(), "weight_scale": scale.float(), **_bias(layer)}
        if layer.act_qparams is not None or config.int8_weights == "dequantize_linear":
            return _OnnxLinear(layer, "int8_qdq", tensors), LayerExport(
                name, tag, "DequantizeLinear(int8, per channel) -> MatMul" + act)
        form = int8_weight_form(config.int8_weights)
        if form == "matmul_integer":
            return _OnnxLinear(layer, "int8_dynamic", tensors), LayerExport(
                name, tag, "DynamicQuantizeLinear -> MatMulInteger(int8)")
        if form == "matmul_integer_reduce_range":
            return _OnnxLinear(layer, "int8_reduce_range", tensors), LayerExport(
                name, tag, "QuantizeLinear(codes 0..127, as Int8Linear's) -> MatMulInteger(int8)",
                "ORT's u8 x s8 kernel saturates on this CPU with codes up to 255: the input takes 0..127, as in "
                "the scored model" if config.int8_weights == "auto" else "")
        tensors["weight_uint8"] = (tensors.pop("weight_int8").to(torch.int16) + 128).to(torch.uint8)
        tensors["weight_zero_point"] = torch.tensor(128, dtype=torch.uint8)
        return _OnnxLinear(layer, "int8_dynamic", tensors), LayerExport(
            name, tag, "DynamicQuantizeLinear -> MatMulInteger(uint8 = int8 + 128, zero point 128)")
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
        if config.nbits_accuracy_level:
            attrs["accuracy_level"] = config.nbits_accuracy_level
        notes = ([f"{bits}-bit codes stored in {storage} bits"] if storage != bits else []) + (
            [f"block {block} for group {group}: each group's scale repeated per block"]
            if block < min(group, layer.in_features) else []) + (
            [f"row of {layer.in_features} padded to {blocks * block}"] if blocks * block > layer.in_features else [])
        return _OnnxLinear(layer, "nbits", tensors, attrs), LayerExport(
            name, tag, f"MatMulNBits(bits={storage}, block_size={block})" + act, "; ".join(notes))
    raise AutocompError(f"{name}: no ONNX form for {type(layer).__name__}; known: Int8Linear, Int8StaticLinear, "
                        "Bf16Linear, PackedLinear")


def _export_model(model: nn.Module, config: OnnxExportConfig) -> tuple[nn.Module, list[LayerExport]]:
    """A copy of ``model`` with every quantized layer replaced by its export form."""
    trained = [name for name, module in model.named_modules() if isinstance(module, FakeQuantLinear)]
    if trained:
        raise AutocompError(f"{trained[0]} is in its training form (FakeQuantLinear); call "
                            "autocomp.ops.qat.deployed(model) before exporting")
    model = copy.deepcopy(model).eval()
    if isinstance(model, QuantizedLinear):  # a lone layer: give it a parent to be replaced in
        model = nn.Sequential(model).eval()
    layers = []
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedLinear):
            parent_name, _, attr = name.rpartition(".")
            stand_in, info = _stand_in(name, module, config)
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, stand_in)
            layers.append(info)
    return model, layers


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *,
                config: OnnxExportConfig | None = None) -> OnnxExport:
    """Export a (compressed) model to ``path`` (``.onnx``, weights inside).

    Args:
        model: a timm ViT-family model as ``autocomp.compress`` leaves it (eval mode, deployed quantized layers).
        example: one image batch of the input shape (only its shape matters).
        path: the file to write.
        config: export settings; default :class:`OnnxExportConfig`.

    Raises:
        AutocompError: the model holds layers in their training form, or a layer has no ONNX form.
    """
    config = config or OnnxExportConfig()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stand_in, layers = _export_model(model, config)
    if config.dynamic_batch and len(example) < 2:  # a batch of 1 would be specialised to 1 by torch.export
        example = example.expand(2, *example.shape[1:])
    shapes = ({0: torch.export.Dim("batch")},) if config.dynamic_batch else None
    with torch.no_grad():
        program = torch.onnx.export(stand_in, (example.contiguous(),), dynamo=True, opset_version=config.opset,
                                    dynamic_shapes=shapes, input_names=["images"], output_names=["logits"],
                                    optimize=False, verbose=False)
    _optimize(program.model)
    _strip_export_notes(program.model)
    program.save(str(path), external_data=False)
    return OnnxExport(path=path, layers=tuple(layers), weight_nbytes=onnx_weight_nbytes(path),
                      torch_weight_nbytes=weight_nbytes(model))


def _optimize(model: Any) -> None:
    """The exporter's graph clean-up (constant folding, dead code, common subexpressions), except that a Cast of
    an initializer stays a Cast: folding it would store the fp16 scales and bf16 weights as fp32 in the file. ORT
    folds those casts itself when it loads the file."""
    import onnxscript.optimizer

    def should_fold(node: Any) -> bool | None:
        if node.op_type == "Cast" and node.inputs and node.inputs[0] is not None and node.inputs[0].is_initializer():
            return False
        return None

    onnxscript.optimizer.optimize_ir(model, should_fold=should_fold)


def _strip_export_notes(model: Any) -> None:
    """The exporter's notes on the graph, every node and every value (stack traces, source paths of the exporting
    machine, FX names): most of a small model's file, in a file meant for deployment. What
    the graph computes is unchanged."""
    for graph in (model.graph, *model.functions.values()):  # a function has no initializers of its own
        values = [*graph.inputs, *graph.outputs, *getattr(graph, "initializers", {}).values()]
        for node in graph.all_nodes():
            values += node.outputs
        for item in (graph, *graph.all_nodes(), *values):
            item.metadata_props.clear()


def _tensor_nbytes(tensor: Any, *, loaded: bool = False) -> int:
    import onnx

    count = math.prod(tensor.dims)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return math.ceil(count / 2)
    if loaded and tensor.data_type in (onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16):
        return 4 * count  # cast to fp32 as the runtime loads the file
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def onnx_weight_nbytes(path: str | Path, *, loaded: bool = False) -> int:
    """Bytes of the tensors an ONNX file holds: its initializers plus ``Constant`` node values (at their
    element size; 4-bit types packed two to a byte). ``loaded``: the bytes a CPU runtime holds once it loads the
    file instead, bf16 and fp16 tensors at 4 bytes (their ``Cast`` to fp32 is folded at load: ONNX Runtime's and
    OpenVINO's CPU kernels run fp32)."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = [attr.t for node in graph.node if node.op_type == "Constant" for attr in node.attribute
                 if attr.name == "value"]
    return sum(_tensor_nbytes(tensor, loaded=loaded) for tensor in list(graph.initializer) + constants)


def op_types(path: str | Path) -> dict[str, int]:
    """How many nodes of each type the file's graph has, ``domain.op`` for non-default domains."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        key = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts


def int8_weight_form(int8_weights: str = "auto") -> str:
    """The form ``OnnxExportConfig.int8_weights`` writes weights-only int8 layers in on this machine: ``auto``
    resolved by :func:`ort_u8s8_exact`, any other form as it is."""
    if int8_weights != "auto":
        return int8_weights
    return "matmul_integer" if ort_u8s8_exact() else "matmul_integer_reduce_range"
