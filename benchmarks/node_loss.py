"""A worker node killed mid-search: which trials the loss failed, where they ran again, whether the search finished.

    .venv/bin/python benchmarks/node_loss.py                      # the demo job in PyTorch eager, 12 trials
    .venv/bin/python benchmarks/node_loss.py --config job.yaml --trials 30

Starts a two-node Ray cluster on loopback (``ray.cluster_utils.Cluster``: a head and a worker node, one CPU each),
runs ``autocomp search CONFIG --ray-address`` against it with two workers, and once a trial has finished on the
worker node and another runs there, removes that node as if its machine died. Prints one row per trial (state,
node, error, the trial it reruns) and a summary: trials asked, completed, failed by the loss and rerun, wall time.
Exits non-zero unless every trial asked for completed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from autocomp.results import load_run_study, read_trials

ROOT = Path(__file__).resolve().parents[1]


def _job(config: Path, trials: int, out: Path) -> Path:
    """The job at ``config`` with ``trials`` trials, two workers, one CPU each, its paths made absolute."""
    values = yaml.safe_load(config.read_text())
    for key in ("search_space", "hardware"):
        values[key] = str((config.parent / values[key]).resolve())
    checkpoint = values["model"].get("checkpoint")
    if checkpoint and "{cache}" not in checkpoint:
        values["model"]["checkpoint"] = str((config.parent / checkpoint).resolve())
    values.update(trials=trials, workers=2, resources={"cpu": 1})
    path = out / "job.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def _states(run: Path) -> list[tuple[str, str | None]]:
    """(state, node) of each trial, read while the driver writes the study."""
    return [(t.state.name, t.user_attrs.get("node")) for t in read_trials(run)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "fashion_mnist" / "search_eager.yaml")
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    names = {cluster.head_node.node_id: "head", worker.node_id: "worker"}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        started = time.monotonic()
        command = [sys.executable, "-m", "autocomp.cli", "search", str(_job(args.config, args.trials, Path(tmp))),
                   "--out", str(run), "--ray-address", cluster.address, "--quiet"]
        search = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        try:
            while True:
                states = _states(run)
                on_worker = [state for state, node in states if node and worker.node_id in node]
                if "COMPLETE" in on_worker and sum(state == "RUNNING" for state, _ in states) == 2:
                    break
                if search.poll() is not None:
                    sys.exit(f"the search ended before the worker node could be removed: {search.stderr.read()}")
                time.sleep(0.2)
            killed_at = time.monotonic() - started
            cluster.remove_node(worker, allow_graceful=False)
            _, err = search.communicate()
        finally:
            if search.poll() is None:
                os.killpg(search.pid, signal.SIGKILL)
            cluster.shutdown()
        wall = time.monotonic() - started
        trials = load_run_study(run).get_trials()

    print(f"worker node removed at {killed_at:.0f} s of {wall:.0f} s; search exit code {search.returncode}"
          + (f": {err.strip()}" if search.returncode else ""))
    print("\n| trial | state | node | reruns trial | error |\n|---|---|---|---|---|")
    for t in trials:
        print(f"| {t.number} | {t.state.name} | {names.get(t.user_attrs.get('node'), '-')} | "
              f"{t.user_attrs.get('retry_of', '')} | {t.user_attrs.get('error', '')} |")
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    rerun = [f for f in failed if any(t.user_attrs.get("retry_of") == f.number for t in complete)]
    print(f"\ntrials asked {args.trials}, completed {len(complete)}, failed by the loss {len(failed)}, "
          f"rerun and completed {len(rerun)}; wall {wall:.0f} s")
    if search.returncode != 0 or len(complete) != args.trials or len(rerun) != len(failed):
        sys.exit(1)


if __name__ == "__main__":
    main()
