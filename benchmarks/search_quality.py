"""Does the joint per-block search beat single techniques, uniform settings and random search? Side by side.

    .venv/bin/python benchmarks/search_quality.py --quick          # a reduced grid: a quarter of an hour
    .venv/bin/python benchmarks/search_quality.py                  # every method x budget x 3 seeds: hours

Every method searches the same model with the same number of trials, budget and seeds:

- ``joint``: autocomp as it ships (sensitivity and latency pass, starting points, a coarse stage with every block
  alike, then multivariate TPE per block and local moves from the best trial within budget, multi-fidelity);
- ``joint_tpe``: the same without local moves (the per-block TPE draws every recipe after the coarse stage);
- ``joint_gp``: the same with Optuna's Gaussian-process sampler in the per-block TPE's place;
- ``joint_nsga2``: the same with NSGA-II as the sampler, without the coarse stage and local moves (the sampler
  is chosen by this comparison);
- ``random``: random search over the same space (no sensitivity pass, no starting points, no cost model screen:
  every candidate distilled fully);
- ``uniform``: the same knobs, one setting for every block, chosen by the same search;
- ``heads``, ``mlp``, ``rank``, ``tokens``, ``bits``: one technique alone, per block, by the same search.

Per method and budget it prints the best validation accuracy within budget (mean and sd over seeds), the test
accuracy of that model, the hypervolume of the (accuracy, latency) front against a fixed reference point (latency at
the uncompressed model's, accuracy 20 points below it), the same of the candidates within budget only, bounded at
the latency limit (the part of the front a user with that budget can take; under a memory budget, at the
uncompressed model's latency), the trials and wall time until the first model within budget and within 1 point of
the uncompressed model (a dash: never), the trials measured over budget, the trials multi-fidelity stopped early,
and the search's own overhead (the share of the trial loop's wall time the workers spent outside trials). Below the
table: the standard error of one validation accuracy, and joint against each other method with Welch's t-test over
seeds, on validation (what each search maximised, so biased upwards by the number of candidates scored near the
best) and on test (the held-out score of the model each search named).

One embedded Ray serves every search of the benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


from autocomp.budget import Budget
from autocomp.config import JobConfig, SensitivityConfig, load_config
from autocomp.errors import AutocompError
from autocomp.measure.profiling import cpu_description
from autocomp.results import load_run_study, trial_rows
from autocomp.search import load_space, run_search

ROOT = Path(__file__).resolve().parents[1]
KNOBS = {"heads": "heads_keep", "mlp": "mlp_keep", "rank": "rank", "tokens": "tokens_keep", "bits": "weight_bits"}
METHODS = ("joint", "joint_tpe", "joint_gp", "joint_nsga2", "random", "uniform", *KNOBS)
REFERENCE_DROP = 20.0  # accuracy points below the uncompressed model: the hypervolume's reference point


def method_config(base: JobConfig, method: str, space_dir: Path) -> JobConfig:
    """``base`` searched the way ``method`` says."""
    space = load_space(base.search_space)
    if method == "random":
        return dataclasses.replace(base, sampler="random", start_points=False, skip_margin=None,
                                   sensitivity=SensitivityConfig(images=0), fidelity=None)
    if method == "joint_nsga2":
        return dataclasses.replace(base, sampler="nsga2")
    if method == "joint_gp":
        return dataclasses.replace(base, sampler="gp")
    if method == "joint_tpe":
        return dataclasses.replace(base, local=0.0)
    if method == "uniform":
        space = dataclasses.replace(space, uniform=True)
    elif method in KNOBS:
        keep = KNOBS[method]
        alone = {knob: (1.0,) if knob != "weight_bits" else (32,) for knob in KNOBS.values() if knob != keep}
        if keep != "weight_bits":  # static activations are a choice of 8-bit blocks: none left
            alone["act_bits"] = (None,)
        space = dataclasses.replace(space, **alone)
        if len(getattr(space, keep)) < 2:
            raise SystemExit(f"{base.search_space} does not search {keep}: '{method}' has nothing to search")
    path = space_dir / f"{method}.yaml"
    path.write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in vars(space).items()}))
    return dataclasses.replace(base, search_space=path)


def hypervolume(points: list[tuple[float, float]], *, latency_ref: float, accuracy_ref: float) -> float:
    """Area dominated by (latency down, accuracy up) points, bounded by the reference point."""
    area, best = 0.0, accuracy_ref
    for latency, accuracy in sorted(p for p in points if p[0] < latency_ref and p[1] > accuracy_ref):
        if accuracy > best:  # sweeping latency upwards: only points that raise the accuracy reached add area
            area += (latency_ref - latency) * (accuracy - best)
            best = accuracy
    return area


def score(run: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's figures for one finished search."""
    study = load_run_study(run)
    rows = trial_rows(study, list(summary["limits"]))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    base = summary["baseline"]
    points = [(r.latency_ms / base["latency_ms"], r.accuracy) for r in rows if r.final]
    within = [(r.latency_ms / base["latency_ms"], r.accuracy) for r in rows if r.final and r.feasible]
    latency_limit = summary["limits"].get("latency_ms")
    close, started = None, min((t.datetime_start for t in trials.values() if t.datetime_start), default=None)
    for row in sorted((r for r in rows if r.feasible and r.final), key=lambda r: r.number):
        if row.accuracy >= base["val_accuracy"] - 1.0:
            done = trials[row.number].datetime_complete
            close = (row.number + 1, (done - started).total_seconds())
            break
    best = summary.get("best") or {}
    loop = summary.get("overhead") or {}
    return {"val": best.get("val_accuracy"), "test": best.get("test_accuracy"),
            "hypervolume": hypervolume(points, latency_ref=1.0, accuracy_ref=base["val_accuracy"] - REFERENCE_DROP),
            "hypervolume_within": hypervolume(
                within, latency_ref=latency_limit / base["latency_ms"] if latency_limit else 1.0,
                accuracy_ref=base["val_accuracy"] - REFERENCE_DROP),
            "first_close": close, "stopped": summary["early_stopped"]["stopped"],
            "over": sum(r.complete and not r.feasible for r in rows),
            "overhead": loop.get("share"), "engine": loop.get("engine_share"), "proposals": summary.get("proposals")}


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "fashion_mnist" / "search_eager.yaml")
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "vit_all.yaml",
                        help="the joint space; the other methods are cut from it")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budgets", default="latency=0.5,latency=0.65,latency=0.8,memory=0.5")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--quick", action="store_true",
                        help="methods joint,random,uniform,heads; budget latency=0.8; 1 seed; 8 trials")
    parser.add_argument("--out", type=Path, default=None, help="keep the run folders here (default: discarded)")
    args = parser.parse_args()
    if args.quick:
        args.methods, args.budgets, args.seeds, args.trials = "joint,random,uniform,heads", "latency=0.8", 1, 8
    print(f"CPU: {cpu_description()}")
    # the searches are compared, not the recovery of the model each names best afterwards
    base = dataclasses.replace(load_config(args.config), trials=args.trials, search_space=args.space,
                               final_distill_steps=0)
    budgets = [tuple(item.split("=")) for item in args.budgets.split(",")]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    images = {"val": 0}
    import ray

    ray.init(address="local", num_cpus=max(base.workers, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for kind, fraction in budgets:
            for method in args.methods.split(","):
                for seed in range(args.seeds):
                    name = f"{method}-{kind}{fraction}-s{seed}"
                    config = dataclasses.replace(method_config(base, method, Path(tmp)), seed=seed,
                                                 budget=Budget(**{kind: float(fraction)}))
                    started = time.perf_counter()
                    try:
                        summary = run_search(config, root / name, log=lambda _: None, progress=False)
                    except AutocompError as exc:  # e.g. a technique alone that cannot reach the budget at all
                        print(f"{name}: refused: {exc}", flush=True)
                        break  # the other seeds would be refused alike
                    images = summary["images"]
                    figures = {**score(root / name, summary), "wall_s": time.perf_counter() - started}
                    results.setdefault((method, f"{kind} {fraction}x"), []).append(figures)
                    print(f"{name}: {figures}", flush=True)
    # overhead: the workers' time outside trials; of it, the engine's (sampler and screen while a slot waits, Ray,
    # results writing, each worker's start), the rest slots left without a trial (a worker waiting for the last to end)
    print("\n| budget | method | best val within budget | its test | hypervolume | hypervolume within budget | "
          "trials to close | seconds to close | over budget | stopped early | overhead (the engine's) | wall s |\n"
          + "|---" * 12 + "|")
    for (method, budget), runs in results.items():
        close = [r["first_close"] for r in runs if r["first_close"] is not None]
        within = [r["val"] for r in runs if r["val"] is not None]
        print(f"| {budget} | {method} | {_mean_sd(within)} ({len(within)}/{len(runs)}) | "
              f"{_mean_sd([r['test'] for r in runs if r['test'] is not None])} | "
              f"{_mean_sd([r['hypervolume'] for r in runs])} | {_mean_sd([r['hypervolume_within'] for r in runs])} | "
              f"{_mean_sd([c[0] for c in close]) if close else '-'} ({len(close)}/{len(runs)}) | "
              f"{_mean_sd([c[1] for c in close]) if close else '-'} | {_mean_sd([r['over'] for r in runs])} | "
              f"{_mean_sd([r['stopped'] for r in runs])} | "
              f"{_mean_sd([100 * r['overhead'] for r in runs if r['overhead'] is not None])}% "
              f"({_mean_sd([100 * r['engine'] for r in runs if r['engine'] is not None])}%) | "
              f"{_mean_sd([r['wall_s'] for r in runs])} |")
    _print_noise(results, val_images=images["val"])


def _print_noise(results: dict[tuple[str, str], list[dict[str, Any]]], *, val_images: int) -> None:
    """How far apart two methods' best validation accuracies must be to mean anything. One accuracy measured on n
    images has a binomial standard error; and a method that evaluates more candidates near the best takes the
    maximum of more noisy measurements. Joint against each other method: the difference of means and Welch's
    t-test over the seeds (a p-value; nan when a side has fewer than 2 runs within budget)."""
    import scipy.stats  # the benchmark's statistics only

    accuracies = [r["val"] for runs in results.values() for r in runs if r["val"] is not None]
    if not accuracies or not val_images:
        return
    p = statistics.mean(accuracies) / 100
    print(f"\nOne validation accuracy near {100 * p:.1f}% on {val_images} images: standard error "
          f"{100 * (p * (1 - p) / val_images) ** 0.5:.2f} points.")
    for (method, budget), runs in results.items():
        if method == "joint":
            continue
        for split in ("val", "test"):  # test: the held-out score of the model each search named, unbiased
            joint = [r[split] for r in results.get(("joint", budget), []) if r[split] is not None]
            other = [r[split] for r in runs if r[split] is not None]
            if not joint or not other:
                continue
            welch = scipy.stats.ttest_ind(joint, other, equal_var=False) if min(len(joint), len(other)) > 1 else None
            print(f"{budget}, {split}: joint - {method} = {statistics.mean(joint) - statistics.mean(other):+.2f} "
                  f"points (Welch p = {welch.pvalue if welch is not None else float('nan'):.2f})")


if __name__ == "__main__":
    main()
