"""The command line: ``autocomp search | pareto | export``. A user mistake prints one line, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from autocomp.errors import AutocompError

__all__ = ["main"]


def _search(args: argparse.Namespace) -> None:
    import dataclasses

    from autocomp.config import load_config
    from autocomp.search import run_search

    config = load_config(args.config)
    overrides = {k: getattr(args, k) for k in ("trials", "workers") if getattr(args, k) is not None}
    config = dataclasses.replace(config, **overrides)
    summary = run_search(config, args.out, ray_address=args.ray_address, progress=not args.quiet)
    print()
    _print_front(Path(args.out))
    if summary["met_budget"]:
        print(f"\nbest model within budget: {summary['best']['path']}  "
              f"(load it with autocomp.load({summary['best']['path']!r}))")
    else:
        print(f"\n{summary['message']}")


def _pareto(args: argparse.Namespace) -> None:
    _print_front(Path(args.run_dir))


def _print_front(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    path = run_dir / "pareto.json"
    if not path.is_file():
        raise AutocompError(f"{run_dir} has no pareto.json; run 'autocomp search CONFIG --out {run_dir}' first")
    data = json.loads(path.read_text())
    limits = data.get("limits", {})
    title = "Pareto front" + (f" (budget: {', '.join(f'{k} <= {v:.3g}' for k, v in limits.items())})" if limits else "")
    table = Table(title=title)
    for column in ("trial", "val acc %", "latency ms", "memory MB", "within budget", "recipe (per block)"):
        table.add_column(column, overflow="fold")
    for row in data["trials"]:
        table.add_row(str(row["number"]), f"{row['accuracy']:.2f}", f"{row['latency_ms']:.3f}",
                      f"{row['memory_mb']:.3f}", "yes" if row["feasible"] else "no", row["recipe_summary"])
    Console(width=max(120, Console().width)).print(table)


def _export(args: argparse.Namespace) -> None:
    from autocomp.search.export import export_trial

    path = export_trial(Path(args.run_dir), args.trial, Path(args.out))
    print(f"trial {args.trial} written to {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocomp", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="search compressed models within a budget")
    search.add_argument("config", help="job config YAML")
    search.add_argument("--out", required=True, help="run folder (results, study.db); reusing it resumes")
    search.add_argument("--ray-address", default=None, help="join an existing Ray cluster (default: embedded)")
    search.add_argument("--trials", type=int, default=None, help="override the config's trial count")
    search.add_argument("--workers", type=int, default=None, help="override the config's worker count")
    search.add_argument("--quiet", action="store_true", help="no progress display")
    search.set_defaults(run=_search)
    pareto = commands.add_parser("pareto", help="print a run's Pareto front")
    pareto.add_argument("run_dir")
    pareto.set_defaults(run=_pareto)
    export = commands.add_parser("export", help="write any trial's compressed model")
    export.add_argument("run_dir")
    export.add_argument("--trial", type=int, required=True)
    export.add_argument("--out", required=True)
    export.set_defaults(run=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except AutocompError as exc:
        print(f"autocomp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autocomp: interrupted; results written so far are kept (rerun the same command to resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
