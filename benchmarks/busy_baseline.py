"""The uncompressed model's latency, which every latency in ms of a search is a ratio times, timed as a search's
start times it (``autocomp.search._before.baseline_cost``) on a quiet machine, then beside processes that keep every
CPU busy: the wall-clock median against the figure the run takes (the CPU time of its passes where its thread was
starved), each as a multiple of the quiet one.

    python benchmarks/busy_baseline.py [--busy 3] [--profiles local_cpu,onnxruntime_cpu,openvino_cpu]

The demo teacher's architecture (random weights: its speed is what counts), at the profiles' batch of 16 and one
thread. A minute or two.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import types
from pathlib import Path

import torch

from autocomp.config import load_config
from autocomp.measure.profiling import load_profile
from autocomp.models import create_model
from autocomp.search._before import baseline_cost

ROOT = Path(__file__).resolve().parents[1]


def spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=3, help="processes that keep the CPUs busy")
    parser.add_argument("--profiles", default="local_cpu,onnxruntime_cpu,openvino_cpu")
    args = parser.parse_args()
    spec = load_config(ROOT / "examples" / "fashion_mnist" / "search.yaml", files_must_exist=False).model
    base = create_model(dataclasses.replace(spec, checkpoint=None)).eval()
    splits = types.SimpleNamespace(calib=types.SimpleNamespace(x=torch.randn(16, 1, 28, 28)))
    print(f"{'profile':<16} {'quiet ms':>9} {'busy: wall ms':>14} {'x quiet':>8} {'taken ms':>9} {'x quiet':>8} "
          f"{'CPU share':>10} {'timings':>8}")
    for name in args.profiles.split(","):
        profile = load_profile(ROOT / "hardware_profiles" / f"{name}.yaml")
        quiet = baseline_cost(base, profile, splits)
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
        for process in spinners:
            process.start()
        try:
            loaded = baseline_cost(base, profile, splits)
        finally:
            for process in spinners:
                process.terminate()
                process.join()
        print(f"{name:<16} {quiet['latency_ms']:>9.2f} {loaded['raw_latency_ms']:>14.2f} "
              f"{loaded['raw_latency_ms'] / quiet['latency_ms']:>8.2f} {loaded['latency_ms']:>9.2f} "
              f"{loaded['latency_ms'] / quiet['latency_ms']:>8.2f} {loaded['cpu_share']:>10.2f} "
              f"{loaded['timings']:>8}", flush=True)


if __name__ == "__main__":
    main()
