"""Kill the demo search (PyTorch eager) with SIGKILL at random moments, rerun it, count what was lost or recomputed.

    .venv/bin/python benchmarks/kill_resume.py                 # 5 kills, seed 0
    .venv/bin/python benchmarks/kill_resume.py --kills 5 --seed 1 --config job.yaml

The search runs in its own process group; at each kill the whole group (driver and its Ray) gets SIGKILL at a moment
drawn uniformly within ``--spread`` seconds of that run's start, and the same command is run again on the same
folder. After the last kill the rerun goes to the end. Before each kill the finished trials are read from the run's
study. At the end:

- lost: a trial finished before some kill that is missing or changed (values or recipe) at the end (target 0);
- recomputed: a recipe that had finished evaluated again by a later trial that is not a retry (target 0);
- complete: the finished trials against the trials asked for.
Exits non-zero unless lost and recomputed are 0 and complete equals the trials asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from autocomp.results import read_trials

ROOT = Path(__file__).resolve().parents[1]


def finished(run: Path) -> dict[int, tuple[tuple[float, ...], str, int | None]]:
    """number -> (values, recipe, the trial it reruns) of the COMPLETE trials, read while (or after) a driver
    writes the study."""
    return {t.number: (tuple(t.values), json.dumps(t.user_attrs.get("recipe"), sort_keys=True),
                       t.user_attrs.get("retry_of")) for t in read_trials(run)
            if t.state == optuna.trial.TrialState.COMPLETE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "fashion_mnist" / "search_eager.yaml")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spread", type=float, default=150.0, help="seconds after each start a kill is drawn in")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    asked = yaml.safe_load(args.config.read_text())["trials"]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "autocomp.cli", "search", str(args.config), "--out", str(run), "--quiet"]
        seen: dict[int, tuple] = {}
        started = time.monotonic()
        print("| kill | at s of its run | finished trials before it |\n|---|---|---|")
        for kill in range(1, args.kills + 2):
            driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
            if kill > args.kills:
                _, err = driver.communicate()
                break
            at = rng.uniform(10.0, args.spread)
            began = time.monotonic()
            while time.monotonic() - began < at and driver.poll() is None:
                time.sleep(0.2)
            if driver.poll() is not None:
                sys.exit(f"the search ended before kill {kill} ({driver.returncode}): {driver.stderr.read()}")
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
            now = finished(run)
            seen.update({n: t for n, t in now.items() if n not in seen})
            print(f"| {kill} | {at:.0f} | {len(now)} |", flush=True)
        wall = time.monotonic() - started
        end = finished(run)
    lost = [n for n, trial in seen.items() if end.get(n, (None, None))[:2] != trial[:2]]
    done_recipes = {trial[1]: n for n, trial in sorted(seen.items())}
    recomputed = [n for n, trial in end.items() if n not in seen and trial[2] is None
                  and trial[1] in done_recipes]
    print(f"\nfinal run exit code {driver.returncode}{': ' + err.strip() if driver.returncode else ''}")
    print(f"kills {args.kills}; finished trials seen before kills {len(seen)}; lost {len(lost)} {lost}; "
          f"recomputed {len(recomputed)} {recomputed}; complete {len(end)} of {asked} asked; wall {wall:.0f} s")
    if lost or recomputed or len(end) != asked or driver.returncode != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
