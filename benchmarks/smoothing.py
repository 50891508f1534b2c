"""SmoothQuant folding (``quantize``'s ``smooth``) against plain int8 activations, on LayerNorm outlier channels.

    .venv/bin/python examples/fashion_mnist/train_teacher.py    # the demo teacher, if not cached yet
    .venv/bin/python benchmarks/smoothing.py [--factors 30 100] [--images 5000] [--layers]

Pretrained ViTs carry a few LayerNorm output channels tens of times larger than the rest (large LayerNorm weights);
one per-tensor activation scale (dynamic or static int8) then spends its range on them. The demo teacher, trained
from scratch, has none, and no pretrained ViT can be downloaded here, so the benchmark makes them: in every block two
channels of ``norm1`` and ``norm2`` get their weight and bias multiplied by ``factor`` and the matching input columns
of ``qkv`` and ``fc1`` divided by it. The float model computes the same function (its accuracy is printed); only the
activations the int8 kernels see change. Each model is quantized uniformly to 8-bit weights with dynamic and static
activations, static ones at the full uint8 range and at 0..127 (what CPUs without VNNI get), without and with
smoothing, and scored on validation images before any distillation.

``--layers`` adds, for each LayerNorm-fed Linear of the demo teacher (``qkv``, ``fc1``), the relative squared error of
its output (bias left out) with int8 weights (per output channel) and uint8 activations (one range) simulated, on
the tokens of the first 64 calibration images (which also give the ranges and the smoothing scales), unsmoothed and
at migration strengths 0.25, 0.5 and 0.75: does smoothing help a layer that has no outlier channels?
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
from autocomp.models import create_model, vit_blocks
from autocomp.ops import _qlayers
from autocomp.ops._quantizers import activation_qparams
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


ALPHAS = (None, 0.25, 0.5, 0.75)


def _simulated_error(x: torch.Tensor, weight: torch.Tensor, alpha: float | None) -> float:
    """Relative squared error of ``x @ weight.T`` with int8 weights per output channel and uint8 activations on the
    range of ``x``, after smoothing at ``alpha`` (None: none)."""
    act, top = x.abs().amax(dim=0), weight.abs().amax(dim=0)
    scale = torch.ones(x.shape[1]) if alpha is None else torch.where(
        (act > 0) & (top > 0), act.clamp(min=1e-5) ** alpha / top.clamp(min=1e-5) ** (1 - alpha), 1.0)
    x, w = x / scale, weight * scale
    act = activation_qparams(float(x.min()), float(x.max()))
    xq = (torch.clamp(torch.round(x / act.scale) + act.zero_point, 0, act.quant_max) - act.zero_point) * act.scale
    step = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
    wq = torch.round(w / step).clamp(-127, 127) * step
    reference = x @ w.t()
    return float((xq @ wq.t() - reference).pow(2).mean() / reference.pow(2).mean())


def layer_errors(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Print :func:`_simulated_error` of every LayerNorm-fed Linear of ``model`` at each of ``ALPHAS``."""
    readers = {f"{index}.{path}": block.get_submodule(path) for index, block in enumerate(vit_blocks(model))
               for path in ("attn.qkv", "mlp.fc1")}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(
        lambda layer, args, name=name: inputs.__setitem__(name, args[0].reshape(-1, args[0].shape[-1])))
        for name, layer in readers.items()]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    print("\n| layer | " + " | ".join("unsmoothed" if a is None else f"alpha {a}" for a in ALPHAS) + " |")
    print("|---|" + "---|" * len(ALPHAS))
    for name, layer in readers.items():
        errors = [_simulated_error(inputs[name], layer.weight.detach(), alpha) for alpha in ALPHAS]
        print(f"| {name} | " + " | ".join(f"{e:.2e}" for e in errors) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", type=float, nargs="+", default=[30.0, 100.0])
    parser.add_argument("--images", type=int, default=5000, help="validation images scored")
    parser.add_argument("--layers", action="store_true", help="each LayerNorm-fed layer's simulated int8 error")
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
        if args.layers:
            layer_errors(base, calib[:64])


if __name__ == "__main__":
    main()
