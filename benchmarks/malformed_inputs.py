"""Malformed user inputs, each given to the real command line: what autocomp says about them (issue #11).

    .venv/bin/python benchmarks/malformed_inputs.py [--jobs 2] [--timeout 120] [--all]

Covers the four kinds of files a user writes: job configs and search spaces (``autocomp search``,
``autocomp check-costmodel``), hardware profiles (``autocomp search``, ``autocomp profile --base``) and recipes. No
command reads a recipe file, so recipes go through the Python API a user calls (``Recipe.load`` then ``compress``) in
a child process that prints an :class:`~autocomp.AutocompError` as the command line does and lets any other
exception end in a traceback. Each case runs in its own process with one thread, on files written to a temporary
folder; a valid job around the broken part uses a 2-block ViT on 8-px digits, random weights, and a hardware
profile that states its device facts (no calibration), so that every case fails before any search work.

The default cases take about 3 minutes on 2 idle cores, 7 on a busy one (each is a fresh process importing torch);
``--all`` adds 22 more values of the same kinds of mistake. In the messages, ``<case>`` is the case's folder (where
its files are) and ``<cwd>`` the working directory the command ran in.

Prints a Markdown table: kind, what is wrong, exit code, one line? (exactly one stderr line, ``autocomp: error:
...``, and no traceback anywhere), and the message. Exits 1 if any case printed a traceback, more than one error
line, or exited 0.

The impossible budget (0.001 MB) is refused after the uncompressed model is measured, before any trial: the case
takes longer than the others (the baseline is measured first).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TINY = {"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 32, "depth": 2, "num_heads": 4}
JOB = {
    "model": {"name": "deit_tiny_patch16_224", "kwargs": TINY},
    "data": {"dataset": "digits", "val_size": 300, "calib_size": 64, "test_size": 300},
    "search_space": "space.yaml",
    "hardware": "hw.yaml",
    "budget": {"latency": 0.5},
    "trials": 2,
    "workers": 1,
    "sensitivity": {"images": 0},
}
PROFILE = {
    "name": "tiny-cpu", "device": "cpu", "backend": "pytorch-cpu", "threads": 1, "batch_size": 1, "warmup": 1,
    "repeats": 3, "peak_gflops": {"fp32": 50.0, "int8": 100.0}, "memory_bandwidth_gbs": 10.0, "memory_gb": 4.0,
    "fast_weight_bits": {8: "int8"},
}
SPACE = {"heads_keep": [0.5, 1.0], "weight_bits": [32, 8]}
RECIPE = {"blocks": [{"prune_heads": {"keep": 2}}, {"quantize": {"weight_bits": 8}}]}
# A user's script applying a recipe file to their model: user errors end in one line, anything else in a traceback.
RECIPE_DRIVER = f"""
import sys
import timm
from autocomp import AutocompError, Recipe, compress
try:
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, **{TINY!r})
    compress(model, Recipe.load(sys.argv[1]))
except AutocompError as exc:
    print(f"autocomp: error: {{exc}}", file=sys.stderr)
    sys.exit(2)
"""
Edit = Callable[[dict[str, Any]], Any]
PREFIX = "autocomp: error: "


@dataclass(frozen=True)
class Case:
    """One malformed input.

    Attributes:
        kind: which file the user got wrong: recipe, job config, hardware profile, search space.
        wrong: what is wrong with it.
        setup: writes the case's files into the given folder and returns the command's arguments.
        extra: run only with ``--all``.
    """

    kind: str
    wrong: str
    setup: Callable[[Path], list[str]]
    extra: bool = False


def extra(kind: str, wrong: str, setup: Callable[[Path], list[str]]) -> Case:
    """A case run only with ``--all``: another value of a kind of mistake the default cases already cover."""
    return Case(kind, wrong, setup, extra=True)


@dataclass(frozen=True)
class Outcome:
    code: int | None  # None: timed out
    traceback: bool
    error_lines: list[str]

    @property
    def one_line(self) -> bool:
        return (not self.traceback and len(self.error_lines) == 1 and self.error_lines[0].startswith(PREFIX))

    @property
    def ok(self) -> bool:
        return self.one_line and self.code not in (0, None)

    def message(self, width: int = 120) -> str:
        text = " / ".join(self.error_lines) if self.error_lines else "(nothing on stderr)"
        text = text.removeprefix(PREFIX)
        return text if len(text) <= width else text[:width - 3] + "..."


def _dump(path: Path, content: Mapping[str, Any] | list | str) -> Path:
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def _edited(data: Mapping[str, Any], edit: Edit | None) -> dict[str, Any]:
    copy = yaml.safe_load(yaml.safe_dump(dict(data)))  # deep copy
    if edit is not None:
        edit(copy)
    return copy


def _job(folder: Path, *, job: Edit | str | None = None, profile: Edit | str | None = None,
         space: Edit | str | None = None) -> Path:
    """A valid job (its profile and space next to it) with one part replaced by raw text or changed by an edit."""
    for name, data, change in (("hw.yaml", PROFILE, profile), ("space.yaml", SPACE, space)):
        _dump(folder / name, change if isinstance(change, str) else _edited(data, change))
    return _dump(folder / "job.yaml", job if isinstance(job, str) else _edited(JOB, job))


def search(**parts: Edit | str) -> Callable[[Path], list[str]]:
    return lambda folder: ["search", str(_job(folder, **parts)), "--out", str(folder / "run"), "--quiet"]


def check_costmodel(samples: int = 5, **parts: Edit | str) -> Callable[[Path], list[str]]:
    return lambda folder: ["check-costmodel", str(_job(folder, **parts)), "--samples", str(samples),
                           "--out", str(folder / "report.json")]


def profile_base(change: Edit | str, *extra: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        base = _dump(folder / "base.yaml", change if isinstance(change, str) else _edited(PROFILE, change))
        return ["profile", "--base", str(base), "--out", str(folder / "out.yaml"), "--quick", *extra]
    return setup


def recipe(change: Edit | str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        path = _dump(folder / "recipe.yaml", change if isinstance(change, str) else _edited(RECIPE, change))
        return ["--recipe", str(path)]
    return setup


def rgb_folder(**job: Any) -> Callable[[Path], list[str]]:
    """A search on a small image folder of RGB PNGs (2 classes) with the 1-channel model and ``job`` changes."""
    def setup(folder: Path) -> list[str]:
        from PIL import Image

        for label, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
            (folder / "images" / label).mkdir(parents=True)
            for index in range(12):
                Image.new("RGB", (8, 8), colour).save(folder / "images" / label / f"{index}.png")
        data = {"dataset": "imagefolder", "root": str(folder / "images"), "val_size": 4, "calib_size": 4,
                "test_size": 4, "workers": 0, **job}
        return search(job=_set("data", data))(folder)
    return setup


def _set(path: str, value: Any) -> Edit:
    """An edit setting ``a.b.c`` to ``value``."""
    *parents, key = path.split(".")

    def edit(data: dict[str, Any]) -> None:
        for name in parents:
            data = data.setdefault(name, {}) if isinstance(data, dict) else data[int(name)]
        data[int(key) if isinstance(data, list) else key] = value
    return edit


def _drop(key: str) -> Edit:
    return lambda data: data.pop(key)


CASES = [
    # -- job configs --------------------------------------------------------------------------------------------
    Case("job config", "missing required field (budget)", search(job=_drop("budget"))),
    extra("job config", "missing required field (model)", search(job=_drop("model"))),
    Case("job config", "string where a number is expected (trials: ten)", search(job=_set("trials", "ten"))),
    extra("job config", "string where a number is expected (budget.latency: half)",
         search(job=_set("budget.latency", "half"))),
    Case("job config", "unknown key, a typo (trails)", search(job=lambda d: d.update(trails=d.pop("trials")))),
    extra("job config", "unknown nested key (budget.latency_msec)", search(job=_set("budget", {"latency_msec": 5}))),
    Case("job config", "zero budget (latency: 0)", search(job=_set("budget.latency", 0))),
    Case("job config", "negative workers", search(job=_set("workers", -1))),
    extra("job config", "model given as a bare string", search(job=_set("model", "deit_tiny_patch16_224"))),
    Case("job config", "invalid YAML syntax", search(job="model: [unclosed\n")),
    Case("job config", "empty file", search(job="")),
    Case("job config", "a YAML list instead of a mapping", search(job="- model: deit_tiny_patch16_224\n")),
    Case("job config", "wrong model name", search(job=_set("model.name", "deit_tiny_patch16_22"))),
    extra("job config", "model kwarg timm does not take", search(job=_set("model.kwargs.embed_dimm", 32))),
    Case("job config", "missing dataset folder (imagefolder)",
         search(job=_set("data", {"dataset": "imagefolder", "root": "no_such_folder"}))),
    Case("job config", "missing dataset folder (fashion_mnist root)",
         search(job=_set("data", {"dataset": "fashion_mnist", "root": "no_such_folder"}))),
    Case("job config", "1-channel model, RGB image folder, no data.mean", rgb_folder()),
    extra("job config", "unknown dataset", search(job=_set("data.dataset", "cifar10"))),
    Case("job config", "more held-out images than the dataset has", search(job=_set("data.val_size", 5000))),
    Case("job config", "missing search-space file path", search(job=_set("search_space", "no_such_space.yaml"))),
    Case("job config", "missing hardware-profile file path", search(job=_set("hardware", "no_such_hw.yaml"))),
    Case("job config", "missing checkpoint path", search(job=_set("model.checkpoint", "no_such.safetensors"))),
    Case("job config", "missing config file", lambda folder: ["search", str(folder / "no_such_job.yaml"),
                                                              "--out", str(folder / "run")]),
    extra("job config", "both latency_ms and latency in budget",
         search(job=_set("budget", {"latency": 0.5, "latency_ms": 3}))),
    extra("job config", "check-costmodel with too few samples", check_costmodel(samples=1)),
    # -- hardware profiles --------------------------------------------------------------------------------------
    Case("hardware profile", "missing required field (peak_gflops)", search(profile=_drop("peak_gflops"))),
    Case("hardware profile", "string where a number is expected (memory_gb: lots)",
         search(profile=_set("memory_gb", "lots"))),
    Case("hardware profile", "unknown key, a typo (thread)",
         search(profile=lambda d: d.update(thread=d.pop("threads")))),
    Case("hardware profile", "zero threads", search(profile=_set("threads", 0))),
    extra("hardware profile", "negative bandwidth", search(profile=_set("memory_bandwidth_gbs", -10))),
    Case("hardware profile", "unknown backend (typo pytorch_cpu)", search(profile=_set("backend", "pytorch_cpu"))),
    extra("hardware profile", "unknown device (tpu)", search(profile=_set("device", "tpu"))),
    extra("hardware profile", "unknown fast weight bit-width (5)",
         search(profile=_set("fast_weight_bits", {5: "int8"}))),
    Case("hardware profile", "invalid YAML syntax", search(profile="name: x\npeak_gflops: {fp32: 50\n")),
    Case("hardware profile", "empty file", search(profile="")),
    Case("hardware profile", "a YAML list instead of a mapping", search(profile="- name: tiny-cpu\n")),
    Case("hardware profile", "profile --base: missing file path",
         lambda folder: ["profile", "--base", str(folder / "no_such.yaml"), "--out", str(folder / "out.yaml")]),
    Case("hardware profile", "profile --base: a GPU profile", profile_base(
        lambda d: d.update(device="gpu", backend="tensorrt"))),
    extra("hardware profile", "profile --base: zero repeats", profile_base(_set("repeats", 0))),
    # -- search spaces ------------------------------------------------------------------------------------------
    Case("search space", "unknown key, a typo (bits)", search(space="heads_keep: [0.5, 1.0]\nbits: [8]\n")),
    Case("search space", "string where numbers are expected (heads_keep: half)",
         search(space=_set("heads_keep", "half"))),
    Case("search space", "a number where a list is expected (heads_keep: 0.5)", search(space=_set("heads_keep", 0.5))),
    Case("search space", "zero fraction (heads_keep: [0, 1])", search(space=_set("heads_keep", [0, 1.0]))),
    extra("search space", "negative fraction (mlp_keep: [-0.5])", search(space=_set("mlp_keep", [-0.5]))),
    Case("search space", "unsupported bit-width (weight_bits: [32, 5])", search(space=_set("weight_bits", [32, 5]))),
    extra("search space", "distill_alpha out of [0, 1]", search(space=lambda d: d.update(
        distill_steps=[10], distill_alpha=[1.5]))),
    extra("search space", "unknown head importance", search(space=_set("head_importance", "magnitude"))),
    Case("search space", "invalid YAML syntax", search(space="heads_keep: [0.5, 1.0\n")),
    Case("search space", "empty file", search(space="")),
    Case("search space", "a YAML list instead of a mapping", search(space="- heads_keep: [0.5]\n")),
    Case("search space", "check-costmodel: unknown key", check_costmodel(space=_set("token_keep", [0.5]))),
    # -- recipes (Python API: Recipe.load, compress) ------------------------------------------------------------
    Case("recipe", "missing required field (distill.alpha)", recipe(_set("distill", {"steps": 10}))),
    extra("recipe", "missing required field (prune_heads.keep)", recipe(_set("blocks.0.prune_heads", {}))),
    extra("recipe", "no blocks list", recipe(_drop("blocks"))),
    Case("recipe", "string where a number is expected (keep: two)", recipe(_set("blocks.0.prune_heads.keep", "two"))),
    Case("recipe", "unknown key, a typo (kept)", recipe(_set("blocks.0.prune_heads", {"kept": 2}))),
    Case("recipe", "unknown operator (prune_head)", recipe(_set("blocks.0", {"prune_head": {"keep": 2}}))),
    extra("recipe", "unknown top-level key (distil)", recipe(_set("distil", {"steps": 10, "alpha": 0.5}))),
    Case("recipe", "zero heads kept", recipe(_set("blocks.0.prune_heads.keep", 0))),
    Case("recipe", "more heads kept than the block has", recipe(_set("blocks.0.prune_heads.keep", 5))),
    Case("recipe", "unsupported bit-width (weight_bits: 5)", recipe(_set("blocks.1.quantize.weight_bits", 5))),
    extra("recipe", "one bit (weight_bits: 1)", recipe(_set("blocks.1.quantize.weight_bits", 1))),
    extra("recipe", "distill alpha out of [0, 1]", recipe(_set("distill", {"steps": 10, "alpha": 2}))),
    Case("recipe", "more blocks than the model has", recipe(lambda d: d["blocks"].append({}))),
    extra("recipe", "a block that is a list", recipe(_set("blocks.0", ["prune_heads"]))),
    Case("recipe", "invalid YAML syntax", recipe("blocks: [{prune_heads: {keep: 2}\n")),
    Case("recipe", "empty file", recipe("")),
    Case("recipe", "a YAML list instead of a mapping", recipe("- prune_heads: {keep: 2}\n")),
    Case("recipe", "missing file path", lambda folder: ["--recipe", str(folder / "no_such_recipe.yaml")]),
    # -- run folders ----------------------------------------------------------------------------------------------
    extra("job config", "export from a folder that is no run",
         lambda folder: ["export", str(folder), "--trial", "0", "--out", str(folder / "x")]),
]
IMPOSSIBLE = Case("job config", "impossible budget (memory_mb: 0.001)",
                  search(job=_set("budget", {"memory_mb": 0.001})))


def _command(args: list[str]) -> list[str]:
    if args[0] == "--recipe":
        return [sys.executable, "-c", RECIPE_DRIVER, args[1]]
    script = Path(sys.executable).with_name("autocomp")
    return ([str(script)] if script.is_file() else [sys.executable, "-m", "autocomp.cli"]) + args


def run(case: Case, folder: Path, env: Mapping[str, str], timeout: float) -> Outcome:
    folder.mkdir()
    try:
        done = subprocess.run(_command(case.setup(folder)), cwd=folder.parent, env=dict(env), capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = "".join(s.decode() if isinstance(s, bytes) else s or "" for s in (exc.stdout, exc.stderr))
        return Outcome(code=None, traceback="Traceback" in out, error_lines=[f"(timed out after {timeout:g} s)"])
    def short(text: str) -> str:  # the case's folder, and the working directory above it
        return text.replace(str(folder), "<case>").replace(str(folder.parent), "<cwd>")

    lines = [short(line) for line in done.stderr.splitlines() if line.strip()]
    said = [short(line) for line in done.stdout.splitlines() if line.strip()]
    if not lines and said:
        lines = [f"(nothing on stderr; stdout ends: {said[-1]})"]
    return Outcome(code=done.returncode, traceback="Traceback" in done.stdout + done.stderr, error_lines=lines)


def table(rows: list[tuple[Case, Outcome]]) -> str:
    out = ["| kind | what is wrong | exit code | one line? | message |", "|---|---|---|---|---|"]
    for case, outcome in rows:
        code = "timeout" if outcome.code is None else str(outcome.code)
        message = outcome.message().replace("|", "\\|")
        out.append(f"| {case.kind} | {case.wrong} | {code} | {'yes' if outcome.one_line else 'no'} | {message} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per case (default 120)")
    parser.add_argument("--all", action="store_true", help=f"also the {sum(c.extra for c in CASES)} extra cases")
    args = parser.parse_args()
    cases = [c for c in CASES if args.all or not c.extra] + [IMPOSSIBLE]
    with tempfile.TemporaryDirectory(prefix="autocomp-malformed-") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "AUTOCOMP_CACHE": str(Path(tmp) / "cache")}

        def one(index: int) -> Outcome:
            outcome = run(cases[index], Path(tmp) / f"case{index:02d}", env, args.timeout)
            print(f"{cases[index].kind}: {cases[index].wrong}: {'ok' if outcome.ok else 'BAD'}", file=sys.stderr,
                  flush=True)
            return outcome

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(zip(cases, pool.map(one, range(len(cases)))))
    print(table(rows))
    bad = [case for case, outcome in rows if not outcome.ok]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} cases end in one error line without a traceback"
          + (f"; not: {', '.join(f'{c.kind}: {c.wrong}' for c in bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
