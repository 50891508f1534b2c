"""The demo teacher's training step on this CPU: images per second at several batch sizes, eager and compiled.

    python benchmarks/teacher_step.py [--batches 128,256,512] [--compile]

The first ``make demo`` spends most of its time training the teacher (``examples/fashion_mnist/teacher.yaml``). This
asks whether fewer, larger steps or ``torch.compile`` would make an epoch cheaper on this machine: one AdamW step of
the teacher's architecture (every patch, all of this machine's threads, as ``autocomp.train`` runs it) timed at each
batch size, rounds interleaved so that drift of a shared machine falls on all alike. With ``--compile``, the compiled
step at the first batch size too, and the compile time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

DEMO = "examples/fashion_mnist/search.yaml"  # the demo job: its model is the teacher (weights do not matter here)
IMAGES = 2048  # per timed stretch, whatever the batch size


def stepper(model: torch.nn.Module, batch: int):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def run(steps: int) -> float:
        began = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - began

    return run


def teacher() -> torch.nn.Module:
    from autocomp.config import load_config
    from autocomp.models import create_model

    return create_model(load_config(DEMO).model, load_weights=False).train()


def main() -> None:
    from autocomp.measure.profiling import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="128,256,512")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; {torch.get_num_threads()} threads; {IMAGES} images "
          f"per timed stretch, {args.rounds} rounds")
    torch.manual_seed(0)
    runs = {f"eager, batch {b}": stepper(teacher(), b) for b in batches}
    if args.compile:
        compiled = torch.compile(teacher())
        run = stepper(compiled, batches[0])
        print(f"compile and first 2 steps: {run(2):.1f} s")
        runs[f"compiled, batch {batches[0]}"] = run
    for run in runs.values():
        run(2)  # warm-up
    rates: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(args.rounds):
        for label, run in runs.items():
            batch = int(label.rsplit(" ", 1)[1])
            steps = max(2, IMAGES // batch)
            rates[label].append(steps * batch / run(steps))
    first = statistics.median(rates[next(iter(rates))])
    print(f"{'step':24} {'images/s':>9} {'vs first':>9}")
    for label, values in rates.items():
        print(f"{label:24} {statistics.median(values):9.0f} {statistics.median(values) / first:9.2f}")


if __name__ == "__main__":
    main()
