"""What the study's storage costs a search per trial: SQLite (autocomp before 2026-11-29) against Optuna's journal
file (now), side by side.

    .venv/bin/python benchmarks/study_storage.py                # 30 trials, the wide model's space, 3 rounds each

The search controller (``OptunaController``) asks for each recipe and is told a result, as in a search: the shipped
sampler (multivariate TPE, half the trials drawn coarse first), every parameter, user attr and constraint a trial
writes. Only the trial's own work is left out, so the time is what the driver spends per trial between two trials.
Rounds alternate between the storages, each in a fresh folder; it prints the median milliseconds per trial of each
and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from autocomp.results import STUDY_NAME, study_storage
from autocomp.search import load_space
from autocomp.search._controller import DIRECTIONS, RECORDED, OptunaController

ROOT = Path(__file__).resolve().parents[1]


def per_trial_ms(storage: str | optuna.storages.BaseStorage, *, space_path: Path, blocks: int, trials: int) -> float:
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, directions=list(DIRECTIONS),
                                sampler=optuna.samplers.TPESampler(seed=0, multivariate=True,
                                                                   n_startup_trials=max(4, trials // 5)))
    controller = OptunaController(study=study, space=load_space(space_path), heads_per_block=[4] * blocks,
                                  n_trials=trials, coarse=trials // 2, seed=0)
    started = time.perf_counter()
    for number in range(trials):
        config = controller.suggest(str(number))
        result = {key: 0.0 for key in RECORDED} | {
            "accuracy": 80.0 + number % 7, "latency_ms": 5.0 + number % 5, "memory_mb": 3.0 + number % 3,
            "measured_on": "bench", "runtime": "bench", "fidelity": "full", "trial_seconds": 1.0,
            "violation:latency_ms": -0.1 + 0.05 * (number % 5)}
        assert config["trial_number"] == number
        controller.on_trial_complete(str(number), result)
    return (time.perf_counter() - started) * 1000 / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "vit_all.yaml")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    times: dict[str, list[float]] = {"sqlite": [], "journal": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in times:
                run = Path(tmp) / f"{name}{round_}"
                run.mkdir()
                storage = f"sqlite:///{run / 'study.db'}" if name == "sqlite" else study_storage(run, writer=True)
                times[name].append(per_trial_ms(storage, space_path=args.space, blocks=args.blocks,
                                                trials=args.trials))
    print(f"{args.trials} trials of {args.space.name}, {args.blocks} blocks; {args.rounds} alternated rounds\n")
    print("| storage | ms per trial (median) | rounds |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")
    print(f"\nSQLite / journal: {statistics.median(times['sqlite']) / statistics.median(times['journal']):.1f}x")


if __name__ == "__main__":
    main()
