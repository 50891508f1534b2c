"""Where one measurement of a demo candidate in ONNX Runtime spends its time: the whole measurement as a trial calls
it, and the export alone; with and without token merging.

    .venv/bin/python examples/fashion_mnist/train_teacher.py    # the demo teacher, if not cached yet
    .venv/bin/python benchmarks/measure_split.py [--rounds 3]

The candidates are the demo teacher with 4 heads of 6, MLP 0.75 and int8 weights in every block, then the same with
token merging to 0.85 of the tokens after every block (the spaces of ``search.yaml`` and ``search_onnxruntime.yaml``
differ by that knob); the measurement is :func:`autocomp.measure.measure` with the ONNX Runtime profile, the
uncompressed model as its reference and the check images a trial uses. Each line also gives the exported graph's
node count. Run it on an idle machine: a search runs two trials at once, and quiet timing makes one wait while the
other exports.
"""

from __future__ import annotations

import argparse
import tempfile
import time
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
from autocomp.runtimes import export_onnx, op_types

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    config = load_config(ROOT / "examples" / "fashion_mnist" / "search_onnxruntime.yaml")
    profile = load_profile(config.hardware)
    base = create_model(config.model)
    splits = load_splits(config.data, base)
    block = {"prune_heads": {"keep": 4}, "prune_mlp": {"keep": 0.75}, "quantize": {"weight_bits": 8}}
    recipes = [Recipe.from_dict({"blocks": [dict(block, **extra)] * len(base.blocks)})
               for extra in ({}, {"reduce_tokens": {"keep": 0.85}})]
    check = splits.val.subset(CHECK_IMAGES).tensors()[0]
    print(f"CPU: {cpu_description()}\n{len(check)} check images, batch {profile.batch_size}")
    folder = Path(tempfile.mkdtemp(prefix="autocomp-measure-split-"))
    with torch.no_grad(), num_threads(profile.threads):
        for recipe in recipes:
            print(recipe.summary())
            model = compress(base, recipe, calibration=splits.calib.x)
            for _ in range(args.rounds):
                started = time.perf_counter()
                measured = measure(model, profile, example=splits.calib.x, reference=base, check=check)
                whole = time.perf_counter() - started
                started = time.perf_counter()
                exported = export_onnx(model, splits.calib.x[:profile.batch_size], folder / "model.onnx")
                export = time.perf_counter() - started
                print(f"  measurement {whole:.2f} s (latency ratio {measured.latency_ratio:.3f}); the export alone "
                      f"{export:.2f} s ({100 * export / whole:.0f}%), {sum(op_types(exported.path).values())} "
                      "nodes", flush=True)


if __name__ == "__main__":
    main()
