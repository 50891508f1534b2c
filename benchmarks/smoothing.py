"""SmoothQuant folding (``quantize``'s ``smooth``) against plain int8 activations, on LayerNorm outlier channels.

    .venv/bin/python examples/fashion_mnist/train_teacher.py    # the demo teacher, if not cached yet
    .venv/bin/python benchmarks/smoothing.py [--factors 30 100] [--images 5000]

Pretrained ViTs carry a few LayerNorm output channels tens of times larger than the rest (large LayerNorm weights);
one per-tensor activation scale (dynamic or static int8) then spends its range on them. The demo teacher, trained
from scratch, has none, and no pretrained ViT can be downloaded here, so the benchmark makes them: in every block two
channels of ``norm1`` and ``norm2`` get their weight and bias multiplied by ``factor`` and the matching input columns
of ``qkv`` and ``fc1`` divided by it. The float model computes the same function (its accuracy is printed); only the
activations the int8 kernels see change. Each model is quantized uniformly to 8-bit weights with dynamic and static
activations, static ones at the full uint8 range and at 0..127 (what CPUs without VNNI get), without and with
smoothing, and scored on validation images before any distillation.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import torch

from autocomp import Recipe, compress
from autocomp.config import load_config
from autocomp.data import load_splits
from autocomp.measure import num_threads
from autocomp.measure.profiling import cpu_description
from autocomp.models import create_model
from autocomp.ops import _qlayers
from autocomp.train import evaluate

ROOT = Path(__file__).resolve().parents[1]


def with_outlier_channels(model: torch.nn.Module, factor: float, channels: int = 2) -> torch.nn.Module:
    """``model`` computing the same function, with ``channels`` LayerNorm output channels ``factor`` times larger."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.blocks:
            for norm, linear in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc1)):
                picked = torch.randperm(norm.weight.numel(), generator=generator)[:channels]
                norm.weight[picked] *= factor
                norm.bias[picked] *= factor
                linear.weight[:, picked] /= factor
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", type=float, nargs="+", default=[30.0, 100.0])
    parser.add_argument("--images", type=int, default=5000, help="validation images scored")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    config = load_config(ROOT / "examples" / "fashion_mnist" / "search.yaml")
    base = create_model(config.model).eval()
    splits = load_splits(config.data, base)
    val, calib = splits.val.subset(min(args.images, len(splits.val))), splits.calib.x
    models = {"demo teacher": base, **{f"outliers x{f:g}": with_outlier_channels(base, f) for f in args.factors}}
    columns = [("w8", {}), ("w8a8", {"act_bits": 8}), ("w8a8 0..127", {"act_bits": 8, "top": 127})]
    print(f"CPU: {cpu_description()}; {len(val)} validation images, before distillation")
    print("| model | fp32 | " + " | ".join(f"{label} / smoothed" for label, _ in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    kernel_top = _qlayers.activation_quant_max
    with torch.no_grad(), num_threads(2):
        for name, model in models.items():
            cells = []
            for _, settings in columns:
                settings = dict(settings)
                top = settings.pop("top", None)
                _qlayers.activation_quant_max = (lambda: top) if top else kernel_top
                scores = []
                for smooth in (None, 0.5):
                    recipe = Recipe.from_dict({"blocks": [{"quantize": {**settings, "smooth": smooth}}]
                                               * len(model.blocks)})
                    scores.append(evaluate(compress(model, recipe, calibration=calib), val))
                cells.append(" / ".join(f"{s:.2f}" for s in scores))
            _qlayers.activation_quant_max = kernel_top
            print(f"| {name} | {evaluate(model, val):.2f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
