"""Train (or reuse) the Fashion-MNIST reference teacher and report its accuracy, size, memory and latency.

    python examples/fashion_mnist/train_teacher.py                    # the demo's teacher (teacher.yaml)
    python examples/fashion_mnist/train_teacher.py teacher_wide.yaml  # the benchmark's second model

The checkpoint is cached under ~/.cache/autocomp/teachers/ ($AUTOCOMP_CACHE overrides); later runs reuse it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

from autocomp._paths import resolve_path
from autocomp.data import DataConfig, load_splits
from autocomp.errors import AutocompError
from autocomp.measure import measure
from autocomp.measure.profiling import load_profile
from autocomp.models import ModelSpec
from autocomp.train import TrainConfig, evaluate, train_or_reuse

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    config = yaml.safe_load((HERE / (argv[0] if argv else "teacher.yaml")).read_text())
    checkpoint = resolve_path(config["model"]["checkpoint"], what="checkpoint", must_exist=False)
    spec = ModelSpec(name=config["model"]["name"], kwargs=config["model"]["kwargs"])
    splits = load_splits(DataConfig(**config["data"]))
    started = time.perf_counter()
    model, trained = train_or_reuse(spec, splits, TrainConfig(**config["train"]), checkpoint)
    took = time.perf_counter() - started
    profile = load_profile(HERE.parents[1] / "hardware_profiles" / "local_cpu.yaml", log=print)
    cost = measure(model, profile, example=splits.calib.x)
    params = sum(p.numel() for p in model.parameters())
    print(f"teacher {'trained in %.1f min' % (took / 60) if trained else 'reused'}: {checkpoint}")
    print(f"  test accuracy {evaluate(model, splits.test):.2f}%   val accuracy {evaluate(model, splits.val):.2f}%")
    print(f"  parameters {params:,}   weights {cost.weights_mb:.2f} MB   peak activations {cost.activations_mb:.2f} MB"
          f" (batch {profile.batch_size})")
    print(f"  latency {cost.latency_ms:.2f} ms median (IQR {cost.latency_iqr_ms:.2f} ms) at batch "
          f"{profile.batch_size}, {profile.threads} thread(s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except AutocompError as exc:
        print(f"autocomp: error: {exc}", file=sys.stderr)
        sys.exit(2)
