"""int8 weights on this CPU: the forms ONNX Runtime can run them in, and PyTorch's activation range against ORT's.

    python benchmarks/int8_forms.py [--config examples/fashion_mnist/search.yaml] [--runs 3] [--images 512]
    python benchmarks/int8_forms.py --model vit_small_patch16_224 --batch 1 --images 64

The job's teacher (or ``--model``: a timm model with random weights, on random images) with int8 weights in every
block. First, each ``OnnxExportConfig.int8_weights`` form exported and timed in ORT interleaved with the
uncompressed export (``--batch`` images, one thread; ``runs`` ratios of 30 pairs each), with its top-1 agreement and
largest logit difference with the PyTorch model; whether ORT's u8 x s8 kernel is exact on this CPU (``matmul_integer``
saturates where it is not; ``auto`` is the scored model's input codes: ``matmul_integer`` with AVX512-VNNI or AMX,
``matmul_integer_reduce_range`` on other x86).
Second, with a job only: validation accuracy of PyTorch's dynamic int8 Linear with activations
quantized to 0..127 (``reduce_range``, as ``Int8Linear`` runs on most x86 CPUs) and to 0..255 (as it runs with
AVX512-VNNI or AMX, and ORT's ``DynamicQuantizeLinear``), and of the ORT file itself.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import timm
import torch

from autocomp import Recipe, compress
from autocomp.config import load_config
from autocomp.data import load_splits
from autocomp.measure.profiling import cpu_description
from autocomp.models import create_model
from autocomp.ops.quantize import Int8Linear, int8_linear_top_code
from autocomp.runtimes import OnnxExportConfig, export_onnx, ort_session, time_sessions
from autocomp.runtimes.onnx import INT8_WEIGHT_FORMS, int8_weight_form
from autocomp.runtimes.ort import OrtModule, compare_outputs, ort_u8s8_exact
from autocomp.train import evaluate


@contextlib.contextmanager
def input_codes(top: int):
    """Int8Linear with its input quantized to codes 0..top (127: ``reduce_range``; 255), while the block runs."""
    shipped = Int8Linear._linear
    Int8Linear._linear = lambda self, x: torch.ops.quantized.linear_dynamic(x, self._packed, top == 127)
    try:
        yield
    finally:
        Int8Linear._linear = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/fashion_mnist/search.yaml")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--model", help="a timm model name, random weights and images (no accuracy section)")
    parser.add_argument("--batch", type=int, default=16, help="images per timed run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.model:
        base, splits = timm.create_model(args.model, pretrained=False).eval(), None
        torch.manual_seed(0)
        images = torch.randn(max(args.images, args.batch), *base.pretrained_cfg["input_size"])
        calib = images
    else:
        job = load_config(args.config)
        base = create_model(job.model).eval()
        splits = load_splits(job.data, base)
        calib = splits.calib.tensors()[0]
        images = splits.val.tensors()[0][:args.images]
    model = compress(base, Recipe.from_dict({"blocks": [{"quantize": {"weight_bits": 8}}] * len(base.blocks)}),
                     calibration=calib)
    print(cpu_description())
    print(f"ORT's u8 x s8 kernel exact on this CPU: {ort_u8s8_exact()}")
    folder = Path(tempfile.mkdtemp())
    reference = ort_session(export_onnx(base, calib[:2], folder / "fp32.onnx").path)
    print("| int8_weights | latency ratio | top-1 agreement (largest logit difference) |\n| --- | --- | --- |")
    for form in (f for f in INT8_WEIGHT_FORMS if f != "auto"):
        path = export_onnx(model, calib[:2], folder / f"{form}.onnx",
                           config=OnnxExportConfig(int8_weights=form)).path
        session = ort_session(path)
        agreement = compare_outputs(model, session, images)
        ratios = [time_sessions(session, reference, calib[:args.batch], repeats=30).ratio for _ in range(args.runs)]
        print(f"| {form} | {min(ratios):.3f}-{max(ratios):.3f} | {100 * agreement.top1:.2f}% "
              f"({agreement.max_logit_diff:.3f}) |", flush=True)
    if splits is None:
        return
    accuracy, agreement = {}, {}
    auto = OrtModule(ort_session(export_onnx(model, calib[:2], folder / "auto.onnx").path))
    with torch.no_grad():
        ort_top1 = auto(images).argmax(1)
    for top in (127, 255):
        with input_codes(top), torch.no_grad():
            accuracy[top] = evaluate(model, splits.val)
            agreement[top] = (model(images).argmax(1) == ort_top1).float().mean().item()
    print(f"validation accuracy: fp32 {evaluate(base, splits.val):.2f}%, PyTorch int8 with activations 0..127 "
          f"{accuracy[127]:.2f}%, 0..255 {accuracy[255]:.2f}% (Int8Linear here: 0..{int8_linear_top_code()}), the ORT "
          f"file (auto form, {int8_weight_form()}) {evaluate(auto, splits.val):.2f}%")
    print(f"top-1 agreement with the ORT file on {len(images)} images: 0..127 {100 * agreement[127]:.2f}%, "
          f"0..255 {100 * agreement[255]:.2f}%")

if __name__ == "__main__":
    main()
