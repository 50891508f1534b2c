"""How a hardware profile's ``op_overhead_us`` moves the cost model's first predictions, on the samples of an
``autocomp check-costmodel`` report: each sample's roofline ratio to the uncompressed model, times the uncompressed
model's measured latency (a search's predictions before it has measured anything), against the sample's measured
latency, for each overhead given.

    python benchmarks/op_overhead_fit.py REPORT.json [--overheads 5,3,2,1,0.5]

REPORT.json: written by ``autocomp check-costmodel JOB --out REPORT.json`` (``benchmarks/cuda_backend.py --steps
costmodel`` writes ``fidelity-graphs.json`` and ``fidelity-eager.json``); the job and profile it names must still be
readable (the model is rebuilt from the job to describe it; its weights do not matter).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from autocomp.config import load_config
from autocomp.costmodel import CostModel
from autocomp.costmodel._describe import describe
from autocomp.hardware import read_profile
from autocomp.models import base_model
from autocomp.recipe import Recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--overheads", default="5,3,2,1,0.5", help="op_overhead_us values, comma-separated")
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    config = load_config(report["config"])
    description = describe(base_model(config.model))
    profile = read_profile(report["hardware"])
    measured_base = report["base"]["measured_latency_ms"]
    print(f"{report['samples']} samples of {report['config']} on {profile.name} (uncompressed {measured_base:.3f} ms; "
          f"the profile says op_overhead_us {profile.op_overhead_us:g})")
    for overhead in (float(value) for value in args.overheads.split(",")):
        model = CostModel(description=description, profile=dataclasses.replace(profile, op_overhead_us=overhead))
        identity = model.predict(Recipe.identity(len(description.num_heads))).latency_ms
        errors = [model.predict(Recipe.from_dict(row["recipe"])).latency_ms / identity * measured_base
                  / row["measured_latency_ms"] - 1 for row in report["rows"]]
        print(f"op_overhead_us {overhead:g}: anchored MAPE {100 * sum(map(abs, errors)) / len(errors):.1f}%, worst "
              f"{100 * max(errors):+.0f}% / {100 * min(errors):+.0f}%")


if __name__ == "__main__":
    main()
