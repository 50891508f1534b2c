"""Every operator on the Fashion-MNIST teacher: accuracy before/after distillation, size, MACs, latency ratio.

    python benchmarks/ops.py [--steps 300] [--repeats 30]

Needs the teacher (``python examples/fashion_mnist/train_teacher.py``). Each row compresses the teacher with one
uniform setting (or a combination), distils it for ``--steps`` steps against the teacher, and times it interleaved
with the teacher at the local profile's batch size and threads (the ratio is the median of per-pair ratios).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from autocomp import Recipe, compress
from autocomp._paths import resolve_path
from autocomp.data import DataConfig, load_splits
from autocomp.distill import distill
from autocomp.flops import count_macs, count_params
from autocomp.measure import time_models, weight_nbytes
from autocomp.measure.profiling import cpu_description, load_profile
from autocomp.models import ModelSpec, create_model
from autocomp.recipe import Distill
from autocomp.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
DEPTH = 6
ALL = list(range(DEPTH))

# name -> ({operator: settings} per block, blocks it applies to)
SETTINGS = {
    "int8 weights": ({"quantize": {"weight_bits": 8}}, ALL),
    "4-bit weights (g32, mse)": ({"quantize": {"weight_bits": 4, "group_size": 32, "scale": "mse"}}, ALL),
    "bf16 weights": ({"quantize": {"weight_bits": 16}}, ALL),
    "heads 3/6": ({"prune_heads": {"keep": 3}}, ALL),
    "heads 4/6": ({"prune_heads": {"keep": 4}}, ALL),
    "MLP width 0.5": ({"prune_mlp": {"keep": 0.5}}, ALL),
    "MLP width 0.75": ({"prune_mlp": {"keep": 0.75}}, ALL),
    "rank 0.5 (qkv, fc1, fc2)": ({"low_rank": {"rank": 0.5, "layers": ["qkv", "fc1", "fc2"]}}, ALL),
    "rank 0.5 whitened (qkv, fc1, fc2)": ({"low_rank": {"rank": 0.5, "layers": ["qkv", "fc1", "fc2"],
                                                        "method": "whitened"}}, ALL),
    "tokens merge 0.7 after blocks 1, 3": ({"reduce_tokens": {"keep": 0.7}}, [1, 3]),
    "tokens prune 0.7 after blocks 1, 3": ({"reduce_tokens": {"keep": 0.7, "method": "prune"}}, [1, 3]),
    "heads 4/6 + MLP 0.75 + int8": ({"prune_heads": {"keep": 4}, "prune_mlp": {"keep": 0.75},
                                     "quantize": {"weight_bits": 8}}, ALL),
    "tokens merge 0.7 (1, 3) + int8": (None, None),
}


def recipe_of(name: str) -> Recipe:
    if name == "tokens merge 0.7 (1, 3) + int8":
        blocks = [{"quantize": {"weight_bits": 8}, **({"reduce_tokens": {"keep": 0.7}} if i in (1, 3) else {})}
                  for i in ALL]
        return Recipe.from_dict({"blocks": blocks})
    settings, where = SETTINGS[name]
    return Recipe.from_dict({"blocks": [settings if i in where else {} for i in ALL]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="distillation steps per row")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved timing pairs per row")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "examples/fashion_mnist/teacher.yaml").read_text())
    checkpoint = resolve_path(config["model"]["checkpoint"], what="teacher checkpoint (train it first)")
    teacher = create_model(ModelSpec(name=config["model"]["name"], kwargs=config["model"]["kwargs"],
                                     checkpoint=str(checkpoint)))
    splits = load_splits(DataConfig(**config["data"]))
    profile = load_profile(ROOT / "hardware_profiles/local_cpu.yaml")
    batch = splits.calib.x[:profile.batch_size]
    one = splits.calib.x[:1]
    base = {"acc": evaluate(teacher, splits.val), "params": count_params(teacher), "bytes": weight_nbytes(teacher),
            "macs": count_macs(teacher, one).total}
    print(f"CPU: {cpu_description()}")
    print(f"teacher: val {base['acc']:.2f}%  params {base['params']:,}  weights {base['bytes'] / 1e6:.3f} MB  "
          f"MACs {base['macs'] / 1e6:.2f} M/image;  distillation {args.steps} steps, alpha 0.5, T 4; latency at "
          f"batch {profile.batch_size}, {profile.threads} thread(s), {args.repeats} interleaved pairs")
    print("| setting | val acc | acc after KD | params | weight bytes | MACs | latency ratio | "
          "(1 - latency) / (1 - MACs) |")
    print("|" + "---|" * 8)
    for name in SETTINGS:
        started = time.perf_counter()
        recipe = recipe_of(name)
        student = compress(teacher, recipe, calibration=splits.calib.x)
        before = evaluate(student, splits.val)
        params, nbytes, macs = count_params(student), weight_nbytes(student), count_macs(student, one).total
        a, b = time_models([teacher, student], batch, warmup=profile.warmup, repeats=args.repeats,
                           threads=profile.threads)
        ratio = statistics.median(y / x for x, y in zip(a, b))
        student = distill(student, teacher, splits.train, Distill(steps=args.steps, alpha=0.5))
        after = evaluate(student, splits.val)
        mac_ratio = macs / base["macs"]
        efficiency = (1 - ratio) / (1 - mac_ratio) if mac_ratio < 0.99 else float("nan")
        print(f"| {name} | {before:.2f} | {after:.2f} | {params / base['params']:.3f} | "
              f"{nbytes / base['bytes']:.3f} | {mac_ratio:.3f} | {ratio:.3f} | {efficiency:.2f} |"
              f"  <!-- {time.perf_counter() - started:.0f} s -->", flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
