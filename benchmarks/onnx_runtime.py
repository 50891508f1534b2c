"""ONNX Runtime against PyTorch eager on DeiT-Small: latency ratios, weight bytes and realization per operator.

    python benchmarks/onnx_runtime.py [--repeats 30] [--threads 1] [--model deit_small_patch16_224]

One random-weight model (no downloads here), batch 1. Every candidate is compressed by autocomp, exported with
``autocomp.runtimes.export_onnx``, and timed in ORT interleaved with the uncompressed model's ORT session (and, for
the PyTorch columns, the compressed PyTorch model interleaved with the uncompressed one). Ratios are medians of
per-round ratios, so drift on a shared machine cancels; absolute times are not comparable between runs.

realization = (1 - latency ratio) / (1 - MAC ratio): the share of the MACs removed that became time saved (1: all
of it). Quantization keeps the MACs, so it has no realization; its targets are latency and bytes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import timm
import torch

from autocomp import Recipe, compress
from autocomp.flops import count_macs
from autocomp.measure import time_models, weight_nbytes
from autocomp.measure.profiling import cpu_description
from autocomp.runtimes import OnnxExportConfig, export_onnx, op_types, ort_session, time_sessions


def candidates(depth: int) -> dict[str, tuple[Recipe, OnnxExportConfig | None]]:
    """Label -> (recipe, export settings or None for the default)."""
    every = lambda block: Recipe.from_dict({"blocks": [block] * depth})  # noqa: E731
    tokens = [{"reduce_tokens": {"keep": 0.8}} if 0 < i < depth - 1 else {} for i in range(depth)]
    return {
        "int8 (w8)": (every({"quantize": {"weight_bits": 8}}), None),
        "int8 + static a8 (w8a8)": (every({"quantize": {"weight_bits": 8, "act_bits": 8}}), None),
        "4-bit (w4g64; MatMulNBits fp32 compute)": (every({"quantize": {"weight_bits": 4, "group_size": 64}}),
                                                    None),
        "4-bit (w4g64; MatMulNBits accuracy_level 4)": (every({"quantize": {"weight_bits": 4, "group_size": 64}}),
                                                        OnnxExportConfig(nbits_accuracy_level=4)),
        "heads 3/6": (every({"prune_heads": {"keep": 3}}), None),
        "MLP width 0.5": (every({"prune_mlp": {"keep": 0.5}}), None),
        "low rank 0.25": (every({"low_rank": {"rank": 0.25}}), None),
        "tokens (merge 0.8, blocks 1-10)": (Recipe.from_dict({"blocks": tokens}), None),
    }


def realization(latency_ratio: float, mac_ratio: float) -> str:
    return "—" if mac_ratio > 0.999 else f"{(1 - latency_ratio) / (1 - mac_ratio):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help="run only candidates whose label contains this text")
    parser.add_argument("--no-openvino", action="store_true", help="leave the OpenVINO columns out")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import onnxruntime

    openvino = None if args.no_openvino else _openvino()
    torch.manual_seed(0)
    base = timm.create_model(args.model, pretrained=False).eval()
    size = base.default_cfg["input_size"]
    example = torch.randn(1, *size)
    calibration = torch.randn(16, *size, generator=torch.Generator().manual_seed(1))
    folder = Path(tempfile.mkdtemp(prefix="autocomp-onnx-bench-"))
    print(f"CPU: {cpu_description()}")
    print(f"{args.model}, random weights, batch 1, {args.threads} thread(s), {args.repeats} interleaved rounds, "
          f"onnxruntime {onnxruntime.__version__}"
          + (f", openvino {openvino.get_version()}" if openvino else "") + f", files in {folder}\n")
    kw = {"warmup": 5, "repeats": args.repeats, "threads": args.threads}
    reference = export_onnx(base, example, folder / "fp32.onnx")
    ref_session = ort_session(reference.path, threads=args.threads)
    base_macs = count_macs(base, example).total
    ort_vs_eager = time_sessions(ref_session, base, example, **kw)
    fp32 = (f"| fp32: ORT {ort_vs_eager.latency_ms:.1f} ms / PyTorch {ort_vs_eager.reference_ms:.1f} ms = "
            f"**{ort_vs_eager.ratio:.2f}**")
    if openvino:
        ov_ref = _ov_model(openvino, base, example, folder / "fp32.xml", args.threads)
        ov_vs_ort = time_sessions(ov_ref[0], ref_session, example, **kw)
        fp32 += f"; OpenVINO f32 / ORT = **{ov_vs_ort.ratio:.2f}**"
    rows = [fp32 + " | 1.00 | 1.00 | — | 1.000 | 1.00 | — | 1.000 |" + (" 1.00 | — | 1.000 |" if openvino else "")]
    for label, (recipe, config) in candidates(len(base.blocks)).items():
        if args.only and args.only not in label:
            continue
        start = time.perf_counter()
        model = compress(base, recipe, calibration=calibration)
        exported = export_onnx(model, example, folder / f"{len(rows)}.onnx", config=config)
        ort_timing = time_sessions(ort_session(exported.path, threads=args.threads), ref_session, example, **kw)
        eager, eager_ref = time_models([model, base], example, warmup=5, repeats=args.repeats, threads=args.threads)
        eager_ratio = float(torch.tensor([a / b for a, b in zip(eager, eager_ref)]).median())
        mac_ratio = count_macs(model, example).total / base_macs
        kernels = sorted(k for k in op_types(exported.path) if k in (
            "MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
            "com.microsoft.MatMulNBits"))
        row = (f"| {label} [{', '.join(kernels) or 'fp32'}] | {mac_ratio:.2f} | **{ort_timing.ratio:.2f}** | "
               f"{realization(ort_timing.ratio, mac_ratio)} | {exported.weight_nbytes / reference.weight_nbytes:.3f} "
               f"| {eager_ratio:.2f} | {realization(eager_ratio, mac_ratio)} | "
               f"{weight_nbytes(model) / weight_nbytes(base):.3f} |")
        if openvino:
            ov_model, ov_bytes = _ov_model(openvino, model, example, folder / f"{len(rows)}.xml", args.threads)
            ov_timing = time_sessions(ov_model, ov_ref[0], example, **kw)
            row += (f" **{ov_timing.ratio:.2f}** | {realization(ov_timing.ratio, mac_ratio)} | "
                    f"{ov_bytes / ov_ref[1]:.3f} |")
        rows.append(row)
        print(f"  {label}: {time.perf_counter() - start:.0f} s (ORT {ort_timing.latency_ms:.1f} ms vs "
              f"{ort_timing.reference_ms:.1f} ms)", flush=True)
    header = ["candidate [integer ops in the file]", "MAC ratio", "ORT latency ratio", "ORT realization",
              "ORT weight bytes ratio", "PyTorch latency ratio", "PyTorch realization", "PyTorch weight bytes ratio"]
    if openvino:
        header += ["OpenVINO latency ratio", "OpenVINO realization", "OpenVINO weight bytes ratio"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    print("\n".join(rows))


def _openvino():  # noqa: ANN202 - the module, or None where it is not installed
    try:
        import openvino
    except ImportError:
        print("openvino is not installed: no OpenVINO columns")
        return None
    return openvino


def _ov_model(openvino, model, example, path, threads):  # noqa: ANN001, ANN202 - benchmark plumbing
    """(OvModule compiled at batch 1, IR weight bytes) of ``model`` exported for OpenVINO."""
    from autocomp.runtimes.openvino import OvModule, export_openvino, ov_compiled

    exported = export_openvino(model, example, path)
    return OvModule(ov_compiled(exported.path, threads=threads, batch=1)), exported.weight_nbytes


if __name__ == "__main__":
    main()
