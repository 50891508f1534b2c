"""Static against dynamic int8 activations on each CPU backend: measured and predicted latency, and accuracy.

    .venv/bin/python examples/fashion_mnist/train_teacher.py    # the demo teacher, if not cached yet
    .venv/bin/python benchmarks/static_activations.py [--rounds 2] [--profiles local_cpu.yaml ...]

The demo teacher with int8 weights in every block, its activations quantized per batch by the kernel (``w8``,
``act_bits: null``) or statically, one calibrated scale per layer input (``w8a8``, ``act_bits: 8``): what the
search's ``act_bits`` knob chooses between. Each candidate is measured as a trial measures it (exported and run by the
profile's runtime, interleaved with the uncompressed model: latency as a ratio to it), ``--rounds`` times, and
predicted by the cost model from the profile (calibrated on this CPU on first use: its ``int8_static`` rate is
measured apart from ``int8``). Accuracy is on the 5,000 validation images, before any distillation.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from autocomp import Recipe, compress
from autocomp.config import load_config
from autocomp.data import load_splits
from autocomp.measure import measure, num_threads
from autocomp.measure.backends import CHECK_IMAGES
from autocomp.measure.profiling import cpu_description, load_profile
from autocomp.models import create_model
from autocomp.search._screen import CostPredictor
from autocomp.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {"w8 (dynamic)": {"weight_bits": 8}, "w8a8 (static)": {"weight_bits": 8, "act_bits": 8}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profiles", nargs="+", default=["local_cpu.yaml", "onnxruntime_cpu.yaml",
                                                          "openvino_cpu.yaml"])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    config = load_config(ROOT / "examples" / "fashion_mnist" / "search.yaml")
    base = create_model(config.model)
    splits = load_splits(config.data, base)
    check = splits.val.subset(CHECK_IMAGES).tensors()[0]
    recipes = {label: Recipe.from_dict({"blocks": [{"quantize": q}] * len(base.blocks)})
               for label, q in CANDIDATES.items()}
    with torch.no_grad(), num_threads(1):
        models = {label: compress(base, recipe, calibration=splits.calib.x) for label, recipe in recipes.items()}
        accuracy = {label: evaluate(model, splits.val) for label, model in models.items()}
        reference = evaluate(base, splits.val)
    print(f"CPU: {cpu_description()}\nvalidation accuracy: fp32 {reference:.2f}, "
          + ", ".join(f"{label} {value:.2f}" for label, value in accuracy.items()))
    print("| profile (backend) | candidate | measured latency / fp32 | predicted | int8 / int8_static GOP/s |")
    print("|---|---|---|---|---|")
    for name in args.profiles:
        profile = load_profile(ROOT / "hardware_profiles" / name)
        predictor = CostPredictor(base=base, profile=profile, base_latency_ms=1.0)
        rates = " / ".join(f"{profile.peak_gflops[p]:.0f}" if p in profile.peak_gflops else "-"
                           for p in ("int8", "int8_static"))
        with torch.no_grad(), num_threads(profile.threads):
            for label, model in models.items():
                ratios = [measure(model, profile, example=splits.calib.x, reference=base, check=check).latency_ratio
                          for _ in range(args.rounds)]
                predicted = predictor.predict(recipes[label])["latency_ms"]
                print(f"| {name} ({profile.backend}) | {label} | {', '.join(f'{r:.3f}' for r in ratios)} | "
                      f"{predicted:.3f} | {rates} |", flush=True)


if __name__ == "__main__":
    main()
