"""What the search measures on each backend: latency ratio, realization and weight bytes per operator, through
``autocomp.measure.measure`` (the function every trial calls), side by side for pytorch-cpu, onnxruntime-cpu and
openvino-cpu.

    python benchmarks/backend_realization.py --model demo      # the Fashion-MNIST demo teacher, batch 16
    python benchmarks/backend_realization.py --model deit_s    # DeiT-Small shape, random weights, batch 1

Each candidate is compressed once, then measured on each backend interleaved with the uncompressed model prepared by
that backend (the ratio is the median of per-round ratios: drift cancels). The export check (top-1 agreement with
PyTorch) runs on 64 calibration images. realization = (1 - latency ratio) / (1 - MAC ratio): the share of the MACs
removed that became time saved. Quantization keeps the MACs: no realization, its targets are latency and bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from pathlib import Path

import timm
import torch

from autocomp import Recipe, compress
from autocomp.flops import count_macs
from autocomp.hardware import HardwareProfile
from autocomp.measure import measure
from autocomp.measure.profiling import cpu_description

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("pytorch-cpu", "onnxruntime-cpu", "openvino-cpu")


def candidates(depth: int, heads: int) -> dict[str, Recipe]:
    every = lambda block: Recipe.from_dict({"blocks": [block] * depth})  # noqa: E731
    inner = lambda block: Recipe.from_dict({"blocks": [block if 0 < i < depth - 1 else {}  # noqa: E731
                                                       for i in range(depth)]})
    return {
        "int8 (w8)": every({"quantize": {"weight_bits": 8}}),
        "4-bit (w4g32)": every({"quantize": {"weight_bits": 4, "group_size": 32}}),
        f"heads {heads // 2}/{heads}": every({"prune_heads": {"keep": heads // 2}}),
        "MLP width 0.5": every({"prune_mlp": {"keep": 0.5}}),
        "low rank 0.25": every({"low_rank": {"rank": 0.25}}),
        "tokens (merge 0.8, inner blocks)": inner({"reduce_tokens": {"keep": 0.8}}),
    }


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor, int, str]:
    """(model, calibration images, batch size, description)."""
    if name == "demo":
        from autocomp.config import load_config
        from autocomp.data import load_splits
        from autocomp.models import create_model

        config = load_config(ROOT / "examples" / "fashion_mnist" / "search.yaml")
        model = create_model(config.model).eval()
        return model, load_splits(config.data, model).calib.x, 16, "demo teacher (trained), batch 16"
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    images = torch.randn(64, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    return model, images, 1, "deit_small_patch16_224 (random weights), batch 1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("demo", "deit_s"), default="demo")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    base, images, batch, description = _model(args.model)
    backends = args.backends.split(",")
    example = images[:batch]
    profile = HardwareProfile(name="bench", batch_size=batch, threads=args.threads, repeats=args.repeats, warmup=5)
    print(f"CPU: {cpu_description()}\n{description}, {args.threads} thread(s), {args.repeats} interleaved rounds")
    for backend in backends:
        result = measure(base, dataclasses.replace(profile, backend=backend), example=images)
        print(f"  uncompressed on {result.runtime}: {result.latency_ms:.2f} ms, weights {result.weights_mb:.3f} MB")
    base_macs = count_macs(base, example).total
    header = ["candidate", "MAC ratio"] + [f"{b}: latency ratio / realization / weight bytes ratio / top-1 agreement"
                                           for b in backends]
    rows = []
    base_bytes = {b: measure(base, dataclasses.replace(profile, backend=b, repeats=1), example=images).weights_mb
                  for b in backends}
    for label, recipe in candidates(len(base.blocks), base.blocks[0].attn.num_heads).items():
        started = time.perf_counter()
        model = compress(base, recipe, calibration=images)
        macs = count_macs(model, example).total / base_macs
        cells = [label, f"{macs:.2f}"]
        for backend in backends:
            result = measure(model, dataclasses.replace(profile, backend=backend), example=images, reference=base,
                             check=images)
            real = "—" if macs > 0.999 else f"{(1 - result.latency_ratio) / (1 - macs):.2f}"
            agree = "—" if result.agreement is None else f"{100 * result.agreement:.1f}%"
            cells.append(f"**{result.latency_ratio:.2f}** / {real} / {result.weights_mb / base_bytes[backend]:.3f} "
                         f"/ {agree}")
        rows.append("| " + " | ".join(cells) + " |")
        print(f"  {label}: {time.perf_counter() - started:.0f} s", flush=True)
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
