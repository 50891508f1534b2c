"""The command line: ``autocomp search | pareto | export | profile | check-costmodel``. A user mistake prints one
line, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from autocomp._signals import Terminated, terminated_as_interrupted
from autocomp.errors import AutocompError, AutocompWarning

__all__ = ["main"]


NOTHING_WITHIN_BUDGET = 3  # the exit status of a search that ended with no candidate within budget


def _search(args: argparse.Namespace) -> int:
    import dataclasses

    # read by Ray when it is imported (below): an embedded Ray listens on this machine alone (not on its network
    # interface), and no Ray API called while the search stops (Ctrl-C) starts a new Ray once it is shut down
    if not args.ray_address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    from autocomp.config import load_config
    from autocomp.search import run_search

    config = load_config(args.config)
    overrides = {k: getattr(args, k) for k in ("trials", "workers") if getattr(args, k) is not None}
    config = dataclasses.replace(config, **overrides)
    summary = run_search(config, args.out, ray_address=args.ray_address, progress=not args.quiet)
    print()
    shown = _print_front(Path(args.out))
    if summary["met_budget"]:
        print(f"\nbest model within budget: {summary['best']['path']}  "
              f"(load it with autocomp.load({summary['best']['path']!r}))")
        return 0
    if shown:  # said again below the table; without one it is the line printed just before
        print(f"\n{summary['message']}")
    return NOTHING_WITHIN_BUDGET  # a script's `autocomp search ... && deploy` stops here


def _pareto(args: argparse.Namespace) -> None:
    _print_front(Path(args.run_dir))


def _print_front(run_dir: Path) -> bool:
    """Print the run's front as a table; False where it has none yet (said in a line instead)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    path = run_dir / "pareto.json"
    if not path.is_file():
        if (run_dir.parent / "pareto.json").is_file() and (run_dir / "recipe.yaml").is_file():  # a run's best/
            raise AutocompError(f"{run_dir} is a model folder, not a run folder; give its run: autocomp pareto "
                                f"{run_dir.parent}")
        raise AutocompError(f"{run_dir} has no pareto.json; run 'autocomp search CONFIG --out {run_dir}' first")
    data = json.loads(path.read_text())
    if not data["trials"]:
        print(f"no trial of {run_dir} has a full score, so there is no front: {_trial_counts(run_dir)}; "
              f"trials.csv lists each with its reason")
        return False
    limits = data.get("limits", {})
    title = "Pareto front" + (f" (budget: {', '.join(f'{k} <= {v:.3g}' for k, v in limits.items())})" if limits else "")
    try:  # the best candidates measured again before best/ was named (none while the search runs)
        again = {m["trial"]: m for m in json.loads((run_dir / "summary.json").read_text()).get("remeasured") or []}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):  # no summary yet, or one not of this form
        again = {}
    table = Table(title=title)
    weights = "weights_mb" in limits  # a limit on the weights alone: their MB beside the memory's
    for column in ["trial", "val acc %", "latency ms", "memory MB", *(["weights MB"] if weights else []),
                   "within budget"] + (["measured again"] if again else []) + ["recipe (per block)"]:
        table.add_column(column, overflow="fold")
    for row in data["trials"]:  # the recipe as written: w8[qkv,fc1] is no markup
        cells = [str(row["number"]), f"{row['accuracy']:.2f}", f"{row['latency_ms']:.3f}", f"{row['memory_mb']:.3f}",
                 *([f"{row['weights_mb']:.3f}" if row.get("weights_mb") is not None else "-"] if weights else []),
                 "yes" if row["feasible"] else "no"]
        if again:  # a trial within budget by its one measurement, over it measured again, is not best/
            second = again.get(row["number"])
            figures = [f"{second['remeasured_latency_ms']:.3f} ms"] if second is not None else []
            if second is not None and "memory_mb" in limits:  # which of the two is over
                figures.append(f"{second['remeasured_memory_mb']:.3f} MB")
            cells.append(", ".join(figures + ["within" if second["within_budget_again"] else "over"])
                         if second is not None else "-")
        table.add_row(*cells, Text(row["recipe_summary"]))
    Console(width=max(120, Console().width)).print(table)
    return True


def _trial_counts(run_dir: Path) -> str:
    """How a run's trials ended, from its trials.csv: e.g. ``3 stopped at their short score, 1 failed``."""
    import csv

    if not (run_dir / "trials.csv").is_file():
        return "no trials.csv"
    counts: dict[str, int] = {}
    with (run_dir / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # columns added later are missing from an older run's file
        if row["state"] == "COMPLETE":
            what = "stopped at their short score" if row.get("fidelity") == "short" else "scored in full"
        elif row["state"] == "PRUNED":
            what = "not run (drawn again)" if row.get("duplicate_of") else "skipped by the cost model"
        else:
            what = {"FAIL": "failed", "RUNNING": "running"}.get(row["state"], row["state"].lower())
        counts[what] = counts.get(what, 0) + 1
    return ", ".join(f"{n} {what}" for what, n in counts.items()) or "no trials yet"


def _trial_number(text: str) -> int | str:
    if text == "best":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a trial number or 'best', got {text!r}") from None


def _export(args: argparse.Namespace) -> None:
    from autocomp.search import export_trial

    export_trial(Path(args.run_dir), args.trial, Path(args.out), format=args.format, int8_weights=args.int8_weights)


def _output_file(out: str, example: str) -> Path:
    """``--out`` of a command that writes one file, refused before any measurement where no file can be written."""
    path = Path(out)
    if path.is_dir():
        raise AutocompError(f"--out {out} is a folder; give the file to write, e.g. {path / example}")
    if path.parent.exists() and not path.parent.is_dir():
        raise AutocompError(f"--out {out}: {path.parent} is a file, not a folder; give a path in a folder")
    return path


def _profile(args: argparse.Namespace) -> None:
    import datetime

    import yaml

    from autocomp.hardware import read_profile
    from autocomp.measure.profiling import (VIT_GEMMS, calibrate, calibrated_profile, cap_note, cpu_description,
                                            threads_note, write_profile)

    out = _output_file(args.out, "my_cpu.yaml")
    base: dict[str, Any] | None = None
    backend = args.backend or "pytorch-cpu"
    if args.base:
        profile = read_profile(args.base)  # validated, with its own messages
        if profile.device != "cpu":
            raise AutocompError(f"autocomp profile measures this machine's CPU, but --base {args.base} is a "
                                f"{profile.backend} profile; pass a CPU profile such as hardware_profiles/"
                                "local_cpu.yaml or onnxruntime_cpu.yaml, or no --base")
        base = yaml.safe_load(Path(args.base).read_text())
        backend = args.backend or profile.backend
        base["backend"] = backend
    elif backend != "pytorch-cpu":
        base = {"name": f"local-{backend}", "device": "cpu", "backend": backend, "warmup": 5, "repeats": 30}
    threads = args.threads if args.threads is not None else (base or {}).get("threads", 1)
    if threads < 1:
        raise AutocompError(f"--threads must be a whole number >= 1, got {threads}")
    if args.batch_size is not None and args.batch_size < 1:
        raise AutocompError(f"--batch-size must be a whole number >= 1, got {args.batch_size}")
    if args.batch_size is not None or "batch_size" not in (base or {}):  # the batch searches time at, and whence
        base = dict(base or {"name": "local-cpu", "device": "cpu", "backend": backend, "warmup": 5, "repeats": 30})
        base["batch_size"] = args.batch_size or 1
        base["sources"] = {**(base.get("sources") or {}), "batch_size": (
            f"autocomp profile --batch-size {args.batch_size}" if args.batch_size else
            "autocomp profile's default, one image per forward pass; --batch-size sets the batch you serve")}
    if (note := cap_note(backend)) is not None:  # the profile's measured_on names the caps: they do not hold here
        print(f"note: {note}")
    if (note := threads_note(threads, "autocomp profile")) is not None:  # peaks measured so are not the device's
        print(f"warning: {note}")
    if args.base and not args.name:
        print(f"note: the profile keeps the name {base.get('name')!r} of --base {args.base}, but its figures are "
              f"this CPU's ({cpu_description()}, its measured_on); --name gives it one of its own")
    settings = {"shapes": VIT_GEMMS[:1], "repeats": 5, "copy_mb": 64} if args.quick else {}
    calibration = calibrate(threads=threads, backend=backend, **settings)
    data = calibrated_profile(calibration, base=base, threads=threads, name=args.name,
                              copy_mb=settings.get("copy_mb", 512))
    details = "\n".join(f"  {key}: {value:.4g}" for key, value in calibration.details.items())
    write_profile(out, data, header=f"Measured by autocomp profile on {datetime.date.today()} with {threads} "
                  f"thread(s) on {backend}"
                  + (f", other fields from {args.base}" if args.base else "")
                  + ". Benchmarks (GEMMs in GFLOP/s, attention in GFLOP/s, layernorm and softmax in GB/s):\n"
                  + details)
    print(f"profile {data['name']!r} ({backend}) written to {out}: peak GFLOP/s "
          + ", ".join(f"{k} {v:.0f}" for k, v in data["peak_gflops"].items())
          + f"; memory bandwidth {data['memory_bandwidth_gbs']:.1f} GB/s; op overhead {data['op_overhead_us']:.3g} us")


def _measure(args: argparse.Namespace) -> None:
    """What the job's uncompressed model costs on its target, measured ``--repeats`` times as a search measures it
    first: the figures an absolute budget (ms, MB) is chosen from, with their spread."""
    import statistics

    from autocomp.config import load_config, named
    from autocomp.data import load_splits
    from autocomp.measure import busy, measure
    from autocomp.measure.profiling import load_profile
    from autocomp.models import base_model

    if args.repeats < 1:
        raise AutocompError(f"--repeats must be a whole number >= 1, got {args.repeats}")
    config = load_config(args.config)
    profile = load_profile(config.hardware, log=print)
    if profile.ray_resource is not None:  # measured where that node is, not here
        raise AutocompError(f"{named(config, 'hardware')} measures on the Ray node holding {profile.ray_resource!r}; "
                            "a search measures the uncompressed model there first (its log's 'uncompressed:' line)")
    base = base_model(config.model)
    calib = load_splits(config.data, base).calib.x
    readings = []
    for index in range(args.repeats):
        cost = measure(base, profile, example=calib, cached=True)  # exported once (runtimes), as a search does
        readings.append(cost)
        print(f"{index + 1} of {args.repeats}: latency {cost.latency_ms:.4g} ms (IQR {cost.latency_iqr_ms:.2g} ms)  "
              f"memory {cost.memory_mb:.4g} MB (weights {cost.weights_mb:.4g}, peak activations "
              f"{cost.activations_mb:.4g})" + ("" if cost.cpu_share is None or profile.threads != 1 else
                                               f"  CPU {cost.cpu_share:.0%} of one while timing"))
    latencies = [r.latency_ms for r in readings]
    print(f"the uncompressed model on {profile.name}, per batch of {profile.batch_size}: latency "
          f"{statistics.median(latencies):.4g} ms (median of {len(latencies)}, {min(latencies):.4g} to "
          f"{max(latencies):.4g}), memory {readings[-1].memory_mb:.4g} MB (weights {readings[-1].weights_mb:.4g} MB, "
          f"activations the rest); measured with {readings[-1].runtime}")
    if noisy := [str(index + 1) for index, cost in enumerate(readings) if busy(cost, profile.threads)]:
        print(f"note: the machine was busy during reading {', '.join(noisy)} (its repeats spread over more than a "
              "quarter of their median, or its thread got less than 80% of a CPU): the fastest reading is the "
              "closest to what this CPU does alone")
    print("a search measures it again as it starts and judges a limit in ms against that reading (a busy machine "
          "moves it): budget.latency (a fraction) follows the machine; budget.latency_ms, memory_mb and weights_mb are "
          "absolute")


def _check_costmodel(args: argparse.Namespace) -> None:
    from autocomp.config import load_config
    from autocomp.costmodel.check import LEGEND, check_costmodel

    out = _output_file(args.out, "costmodel.json")
    report = check_costmodel(load_config(args.config), samples=args.samples, out=out)
    print()
    for key in ("latency", "memory"):
        for stage in report[key]:
            stats = report[key][stage]
            rho = "n/a" if stats["spearman"] is None else f"{stats['spearman']:.3f}"
            print(f"{key:8s} {stage:8s}  Spearman {rho}  MAPE {100 * stats['mape']:.1f}%  "
                  f"within ±10% {100 * stats['within_10pct']:.0f}%")
    print("\nSpearman: rank agreement with the measurements (1: the same order, what a search needs most); MAPE: "
          "mean error; within ±10%: the share of samples predicted that close. Latency predicted as")
    for stage, meaning in LEGEND.items():
        print(f"  {stage:8s}  {meaning}")
    print("memory is counted (the bytes the model holds and allocates), not fitted: before and after are the same")
    print("\n" + "\n".join(f"verdict: {line}" for line in report["verdict"]))
    if report.get("note"):
        print(f"note: {report['note']}")
    print(f"\nreport written to {args.out}, plot to {report['plot']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autocomp", epilog="e.g. autocomp search examples/fashion_mnist/search.yaml --out runs/demo",
        description="Find the best compressed Vision Transformer for a device budget (search), then print its "
                    "Pareto front, export a model, measure the uncompressed model, calibrate a hardware profile or "
                    "check the cost model.")
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="search compressed models within a budget",
                                 epilog=f"exit status: 0 with a best model within budget, {NOTHING_WITHIN_BUDGET} when "
                                        "no candidate met the budget (the run folder holds the trials), 2 for a "
                                        "mistake in the input, 130 interrupted (Ctrl-C) and 143 terminated (SIGTERM): "
                                        "rerun to resume")
    search.add_argument("config", help="job config YAML")
    search.add_argument("--out", required=True, help="run folder (results, study.journal); reusing it resumes")
    search.add_argument("--ray-address", default=None, help="join an existing Ray cluster (default: embedded)")
    search.add_argument("--trials", type=int, default=None, help="override the config's trial count")
    search.add_argument("--workers", type=int, default=None, help="override the config's worker count")
    search.add_argument("--quiet", action="store_true", help="no progress display")
    search.set_defaults(run=_search)
    pareto = commands.add_parser("pareto", help="print a run's Pareto front")
    pareto.add_argument("run_dir", help="a search's run folder (its --out)")
    pareto.set_defaults(run=_pareto)
    export = commands.add_parser("export", help="write the best model, or any trial's, for loading or deployment")
    export.add_argument("run_dir", help="a search's run folder (its --out)")
    export.add_argument("--trial", type=_trial_number, default="best",
                        help="a trial number (autocomp pareto lists them), or best (default): the run's best/ model, "
                             "after any final distillation")
    export.add_argument("--out", required=True, help="folder to write the model to")
    export.add_argument("--format", choices=("pytorch", "onnx", "openvino"), default="pytorch",
                        help="pytorch: a folder autocomp.load reads (always written); onnx: also model.onnx (ONNX "
                             "Runtime); openvino: also model.xml/.bin (OpenVINO IR); both checked against PyTorch")
    export.add_argument("--int8-weights", default="auto",
                        choices=("auto", "matmul_integer", "matmul_integer_reduce_range", "matmul_integer_u8",
                                 "dequantize_linear"),
                        help="onnx only: how int8 weights are written. auto (default): the scored model's input codes "
                             "(matmul_integer on x86 with AVX512-VNNI or AMX, matmul_integer_reduce_range on other "
                             "x86); "
                             "matmul_integer: input codes 0..255 (ONNX Runtime's u8 x s8 kernel: fastest, saturates "
                             "on x86 without VNNI); matmul_integer_reduce_range: input codes 0..127 (the same kernel "
                             "and a few more nodes, exact on every CPU); matmul_integer_u8: uint8 weights + zero "
                             "point 128 (u8 x u8 kernel: "
                             "exact on every CPU, slower); dequantize_linear: DequantizeLinear -> MatMul (fp32 "
                             "compute)")
    export.set_defaults(run=_export)
    profile = commands.add_parser("profile", help="calibrate a hardware profile on this machine")
    profile.add_argument("--out", required=True, help="profile YAML to write")
    profile.add_argument("--threads", type=int, default=None,
                         help="intra-op threads to measure with (default: the base profile's, else 1)")
    profile.add_argument("--base", default=None,
                         help="profile YAML whose other fields (name, batch size, memory, kernels, ray_resource) "
                              "are kept")
    profile.add_argument("--name", default=None, help="name of the written profile")
    profile.add_argument("--batch-size", type=int, default=None,
                         help="images per forward pass when searches time candidates (default: the base profile's, "
                              "else 1)")
    profile.add_argument("--backend", default=None, choices=("pytorch-cpu", "onnxruntime-cpu", "openvino-cpu"),
                         help="whose kernels to measure (default: the base profile's, else pytorch-cpu)")
    profile.add_argument("--quick", action="store_true", help="fewer shapes and repeats: seconds, rougher numbers")
    profile.set_defaults(run=_profile)
    cost = commands.add_parser("measure", help="measure the job's uncompressed model on its target: what an "
                                                "absolute budget (ms, MB) is chosen from")
    cost.add_argument("config", help="job config YAML (model, data, hardware profile)")
    cost.add_argument("--repeats", type=int, default=3, help="measurements, one after the other (default 3): "
                                                             "their spread is the machine's noise")
    cost.set_defaults(run=_measure)
    check = commands.add_parser("check-costmodel", help="predict and measure random recipes of a job's search "
                                                         "space; report the cost model's fidelity")
    check.add_argument("config", help="job config YAML (model, data, search space, hardware profile)")
    check.add_argument("--samples", type=int, default=20, help="random recipes to measure (default 20), each "
                                                               "twice: the second measurement is the noise floor")
    check.add_argument("--out", required=True, help="report JSON; the plot is written next to it (.png)")
    check.set_defaults(run=_check_costmodel)
    return parser


_PACKAGE = str(Path(__file__).resolve().parent) + os.sep


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' signature
    """autocomp's own warnings as one line for the user (a library's keep Python's form, with their source)."""
    if issubclass(category, AutocompWarning) or str(Path(filename).resolve()).startswith(_PACKAGE):
        return f"warning: {message}\n"
    return _python_format(message, category, filename, lineno, line)


_python_format = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
        with terminated_as_interrupted(ctrl_c=True):
            status = args.run(args)
    except AutocompError as exc:
        print(f"autocomp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"autocomp: {stopped}; results written so far are kept (rerun the same command to resume)",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
