"""Quiet timing: a candidate's latency ratio timed beside another trial's distillation, with and without quiet timing,
and on an idle machine, side by side in one run.

    python benchmarks/quiet_timing.py [--rounds 8] [--threads 1]

What a trial of a two-worker search on this machine sees: the demo model's shape (weights do not change latency, so it
runs without the trained checkpoint) and a candidate with 5 of 6 heads and int8 weights in every block, measured the
way a trial measures it (``autocomp.measure.measure``, the local CPU profile: batch 16, 30 interleaved pairs against
the uncompressed model) while a neighbour process distils a copy of the model with one thread through
``autocomp.distill``, as the other worker does. Each round measures three ways, in a shuffled order:

- ``idle``: the neighbour sleeps (what the deployed model sees on its own);
- ``busy``: the neighbour distils throughout (``quiet_timing: false``);
- ``quiet``: the neighbour distils, its steps passing through quiet timing (the default), so it pauses while the
  candidate is timed.

Printed per condition: the median, spread (standard deviation and range over rounds) of the measured ratio, and the
neighbour's distillation steps per second during the measurement (quiet timing's cost falls there: the paused
steps).
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import random
import statistics
import time
import uuid

import torch

DEMO = "examples/fashion_mnist/search.yaml"  # the demo job: its model's architecture (no trained weights needed)
SLEEP, DISTIL, DISTIL_QUIET = 0, 1, 2  # what the neighbour does
CHUNK = 4  # distillation steps per call: the neighbour reads what to do between calls


def demo_model() -> torch.nn.Module:
    from autocomp.config import load_config
    from autocomp.models import create_model

    torch.manual_seed(0)
    return create_model(load_config(DEMO).model, load_weights=False).eval()


def neighbour(mode, steps, key: str) -> None:
    """Distil a copy of the model with one thread, as a trial does (``autocomp.distill``, its steps passing through
    quiet timing when ``mode`` says so), or sleep; count the steps."""
    from autocomp import _quiet
    from autocomp.data import TensorSplit
    from autocomp.distill import distill
    from autocomp.recipe import Distill

    torch.set_num_threads(1)
    teacher = demo_model()
    student = copy.deepcopy(teacher)
    generator = torch.Generator().manual_seed(1)
    split = TensorSplit(x=torch.randn(256, 1, 28, 28, generator=generator),
                        y=torch.randint(0, 10, (256,), generator=generator))
    config = Distill(steps=CHUNK, alpha=0.5, batch_size=64)
    while mode.value >= 0:
        if mode.value == SLEEP:
            time.sleep(0.01)
            continue
        with _quiet.quiet_machine(key if mode.value == DISTIL_QUIET else None):
            student = distill(student, teacher, split, config)
        with steps.get_lock():
            steps.value += CHUNK


def main() -> None:
    from autocomp import Recipe, _quiet, compress
    from autocomp.measure import measure
    from autocomp.measure.profiling import cpu_description, load_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="the measurement's threads (the profile's: 1)")
    args = parser.parse_args()
    profile = load_profile("hardware_profiles/local_cpu.yaml", log=print)
    if args.threads != profile.threads:
        import dataclasses
        profile = dataclasses.replace(profile, threads=args.threads)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; profile {profile.name}: batch {profile.batch_size}, "
          f"{profile.threads} thread(s), {profile.repeats} interleaved pairs; {args.rounds} rounds")
    base = demo_model()
    example = torch.randn(16, 1, 28, 28)
    block = {"prune_heads": {"keep": 5, "importance": "weight_norm"}, "quantize": {"weight_bits": 8}}
    candidate = compress(base, Recipe.from_dict({"blocks": [block] * 6}), calibration=example).eval()

    key = uuid.uuid4().hex[:16]
    context = multiprocessing.get_context("spawn")
    mode, steps = context.Value("i", SLEEP), context.Value("l", 0)
    process = context.Process(target=neighbour, args=(mode, steps, key), daemon=True)
    process.start()
    results: dict[str, list[tuple[float, float, float]]] = {"idle": [], "busy": [], "quiet": []}
    sets = {"idle": SLEEP, "busy": DISTIL, "quiet": DISTIL_QUIET}
    order = random.Random(0)
    try:
        with _quiet.removed_after(key):
            for number in range(args.rounds):
                conditions = list(results)
                order.shuffle(conditions)
                for condition in conditions:
                    mode.value = sets[condition]
                    time.sleep(1.0)  # the neighbour is under way (or asleep)
                    before, began = steps.value, time.perf_counter()
                    with _quiet.quiet_machine(key if condition == "quiet" else None):
                        measured = measure(candidate, profile, example=example, reference=base)
                    took = time.perf_counter() - began
                    stepped = (steps.value - before) / took
                    results[condition].append((measured.latency_ratio, measured.latency_ms, stepped))
                print(f"round {number + 1}: " + ", ".join(f"{c} {results[c][-1][0]:.3f}" for c in results), flush=True)
    finally:
        mode.value = -1
        process.join(10)
    print(f"\n{'condition':10} {'median ratio':>13} {'sd':>7} {'min':>7} {'max':>7} {'median ms':>10} "
          f"{'neighbour steps/s':>18}")
    for condition, rows in results.items():
        ratios = [r[0] for r in rows]
        print(f"{condition:10} {statistics.median(ratios):13.3f} {statistics.stdev(ratios):7.3f} {min(ratios):7.3f} "
              f"{max(ratios):7.3f} {statistics.median(r[1] for r in rows):10.2f} "
              f"{statistics.median(r[2] for r in rows):18.1f}")
    idle = statistics.median(r[0] for r in results["idle"])
    for condition in ("busy", "quiet"):
        ratios = [r[0] for r in results[condition]]
        print(f"{condition}: median - idle median {statistics.median(ratios) - idle:+.3f}; "
              f"sd / idle sd {statistics.stdev(ratios) / statistics.stdev(r[0] for r in results['idle']):.2f}")


if __name__ == "__main__":
    main()
