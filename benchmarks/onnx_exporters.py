"""autocomp's ONNX export (``torch.onnx.export(dynamo=True)`` and onnxscript's clean-up) against torch's legacy
TorchScript exporter, on the same uncompressed model, timed in ONNX Runtime as ``onnxruntime_cpu.yaml`` runs it (one
thread, sequential, no spinning), interleaved; then the kernel time per op type from ORT's profiler.

    python benchmarks/onnx_exporters.py [--cases tiny8,deit_tiny224]

``tiny8``: an 8-px, 4-block ViT of width 64 at batch 16 (a user's digits model); ``deit_tiny224``: timm's
deit_tiny_patch16_224 at batch 1. Random weights (the graphs, not the numbers, are compared). A minute or two.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm
import torch

from autocomp.runtimes import export_onnx

CASES = {"tiny8": (dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4,
                        mlp_ratio=2.0), 16, 300),
         "deit_tiny224": ({}, 1, 60)}


def session(path: Path, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = profile
    options.profile_file_prefix = str(path.with_suffix("")) + "_profile"  # beside the file, in a temporary folder
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def kernel_times(path: Path, feed: np.ndarray, runs: int) -> dict[str, float]:
    """Microseconds per run spent in each op type's kernels."""
    profiled = session(path, profile=True)
    for _ in range(runs):
        profiled.run(None, {"images": feed})
    events = json.loads(Path(profiled.end_profiling()).read_text())
    times: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"] / runs
    return dict(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    for name in args.cases.split(","):
        kwargs, batch, repeats = CASES[name]
        torch.manual_seed(0)
        model = timm.create_model("deit_tiny_patch16_224", **kwargs).eval()
        images = torch.randn(batch, *model.pretrained_cfg["input_size"]) if not kwargs else \
            torch.randn(batch, kwargs["in_chans"], kwargs["img_size"], kwargs["img_size"])
        paths = {"autocomp": folder / f"{name}_autocomp.onnx", "legacy": folder / f"{name}_legacy.onnx"}
        export_onnx(model, images, paths["autocomp"])
        torch.onnx.export(model, (images,), str(paths["legacy"]), dynamo=False, opset_version=20,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        sessions = {kind: session(path) for kind, path in paths.items()}
        feed = images.numpy()
        outputs = {kind: s.run(None, {"images": feed})[0] for kind, s in sessions.items()}
        times: dict[str, list[float]] = collections.defaultdict(list)
        for _ in range(5):
            for s in sessions.values():
                s.run(None, {"images": feed})
        for _ in range(repeats):
            for kind, s in sessions.items():
                started = time.perf_counter()
                s.run(None, {"images": feed})
                times[kind].append(time.perf_counter() - started)
        median = {kind: 1e3 * statistics.median(values) for kind, values in times.items()}
        print(f"{name} (batch {batch}, {repeats} interleaved pairs): autocomp's export {median['autocomp']:.3f} ms, "
              f"legacy {median['legacy']:.3f} ms: {median['autocomp'] / median['legacy']:.3f}x; outputs differ by "
              f"{np.abs(outputs['autocomp'] - outputs['legacy']).max():.1e}")
        for kind, path in paths.items():
            kernels = kernel_times(path, feed, repeats)
            top = ", ".join(f"{op} {us:.0f}" for op, us in sorted(kernels.items(), key=lambda t: -t[1])[:8])
            print(f"  {kind}: kernels {sum(kernels.values()):.0f} us per run ({top})")


if __name__ == "__main__":
    main()
