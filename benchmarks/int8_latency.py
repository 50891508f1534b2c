"""INT8 weights vs fp32: latency ratio at batch 1, measured interleaved in one run, plus weight bytes.

    python benchmarks/int8_latency.py [--repeats 200] [--threads 1]

Models: the Fashion-MNIST teacher architecture (weights do not change latency, so it runs without the trained
checkpoint) and DeiT-Small at 224 px. Each row: fp32 and int8 copies of the same model, timed A, B, A, B, ...;
the ratio is the median of the per-pair ratios, so drift on a shared machine cancels.
"""

from __future__ import annotations

import argparse
import statistics

import timm
import torch
from torch import nn

from autocomp import Recipe, compress
from autocomp.measure import time_models, weight_nbytes
from autocomp.measure.profiling import cpu_description
from autocomp.ops import Int8Linear

MODELS = {
    "fashion teacher (28px, d96x6)": ("deit_tiny_patch16_224", dict(img_size=28, patch_size=4, in_chans=1,
                                                                    num_classes=10, embed_dim=96, depth=6,
                                                                    num_heads=6, mlp_ratio=2.0), (1, 1, 28, 28)),
    "deit_small_patch16_224": ("deit_small_patch16_224", {}, (1, 3, 224, 224)),
}


def linear_bytes(model: nn.Module) -> int:
    return sum(weight_nbytes(m) for m in model.blocks.modules() if isinstance(m, (nn.Linear, Int8Linear)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")
    print(f"batch 1, {args.threads} thread(s), {args.repeats} interleaved pairs, torch {torch.__version__}, "
          f"quantized engine {torch.backends.quantized.engine}")
    print(f"{'model':32} {'fp32 ms':>9} {'int8 ms':>9} {'int8/fp32 latency':>18} {'int8/fp32 linear bytes':>23}")
    for label, (name, kwargs, shape) in MODELS.items():
        torch.manual_seed(0)
        fp32 = timm.create_model(name, pretrained=False, **kwargs).eval()
        int8 = compress(fp32, Recipe.from_dict({"blocks": [{"quantize": {}}] * len(fp32.blocks)}))
        repeats = args.repeats if shape[-1] < 100 else max(20, args.repeats // 5)
        a, b = time_models([fp32, int8], torch.randn(shape), warmup=10, repeats=repeats, threads=args.threads)
        ratio = statistics.median(y / x for x, y in zip(a, b))
        print(f"{label:32} {1e3 * statistics.median(a):9.3f} {1e3 * statistics.median(b):9.3f} {ratio:18.3f} "
              f"{linear_bytes(int8) / linear_bytes(fp32):23.3f}")


if __name__ == "__main__":
    main()
