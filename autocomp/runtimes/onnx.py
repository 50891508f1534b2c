"""Export a compressed candidate to ONNX: the file and its weight bytes (running it in ONNX Runtime, the agreement
with the PyTorch model and the timing are :mod:`autocomp.runtimes.ort`'s).

Structural changes need nothing special: pruned heads and MLP neurons, low-rank factors and per-block token counts
are plain shapes and ops of the traced model (``torch.onnx.export(dynamo=True)``), so the graph is the smaller one.
Quantized layers are written in the op patterns ONNX Runtime has integer kernels for, with autocomp's own numbers:
:mod:`autocomp.runtimes.onnx_layers` says which pattern each layer becomes and why.
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
from autocomp.ops.quantize import QuantizedLinear
from autocomp.runtimes.onnx_layers import (INT8_WEIGHT_FORMS, NBITS_BLOCK_SIZES, LayerExport, export_form,
                                           int8_weight_form)

__all__ = ["OnnxExportConfig", "LayerExport", "OnnxExport", "export_onnx", "onnx_weight_nbytes", "op_types",
           "int8_weight_form", "NBITS_BLOCK_SIZES", "INT8_WEIGHT_FORMS"]


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
            input codes 0..255, as ``Int8Linear`` takes them on CPUs with AVX512-VNNI or AMX; saturating on x86
            without VNNI), ``matmul_integer_reduce_range`` (input codes 0..127, quantized in the graph as
            ``Int8Linear`` quantizes them on other x86 CPUs, then the same kernel: exact on every CPU),
            ``matmul_integer_u8`` (input codes 0..255, the weights as uint8, code + 128 with zero point 128: ORT's
            u8 x u8 kernel, exact on every CPU, slower), ``auto`` (the scored model's input codes:
            :func:`~autocomp.runtimes.onnx_layers.int8_weight_form`) or ``dequantize_linear`` (DequantizeLinear ->
            MatMul: the compressed-weight pattern OpenVINO runs fast; ORT would not).
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
            stand_in, info = export_form(name, module, int8_weights=config.int8_weights,
                                         nbits_accuracy_level=config.nbits_accuracy_level)
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
    _drop_intermediate_shapes(program.model)
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


def _drop_intermediate_shapes(model: Any) -> None:
    """No shapes or types (``value_info``) for the values between nodes, as torch's legacy exporter writes none (the
    graph's inputs, outputs and initializers keep theirs; ONNX Runtime infers the rest when it loads the file). With
    them ORT 1.32 ran the uncompressed model 1.02-1.10x as long as the legacy export (one thread;
    ``benchmarks/onnx_exporters.py``, which prints each file's time per op type): they let it fuse the last
    residual Add, the fc2 bias and the final norm into ``SkipLayerNormalization``, a slower CPU kernel than the
    nodes it replaces. Every search ratio is against this file."""
    for graph in (model.graph, *model.functions.values()):
        keep = {*graph.inputs, *graph.outputs, *getattr(graph, "initializers", {}).values()}
        for node in graph:  # the top level: a subgraph's outputs keep their types
            for value in node.outputs:
                if value not in keep:
                    value.shape = None
                    value.type = None


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
