"""The ``pytorch-cuda`` backend on a real GPU: its tests, the cost model's fidelity, and a short search end to end.

    python benchmarks/cuda_backend.py --out runs/cuda [--profile hardware_profiles/nvidia_h200.yaml]
                                      [--steps tests,costmodel,search,scoring] [--samples 16] [--trials 6]
                                     [--sensitivity 32]

(each step at most ``--timeout`` seconds, 240 by default: where one call is bounded, as the lent GPU machines' 10
minutes, run ``--steps tests,costmodel,scoring`` and ``--steps search`` apart; the exit status is 1 if a step failed)

Needs a CUDA GPU (the machines the suite runs on have none). The model is timm's ``vit_small_patch16_224`` with
random weights and 3 classes, and the images are random noise written as PNG files to an image folder under
``--out`` (nothing to download): the cost model's fidelity and a search's mechanics (the latency pass timed on the
GPU, distillation on the trial's GPU, each candidate timed with CUDA events, the best exported) do not depend on the
weights, but the accuracies do, and here they are chance level.

- ``tests``: the suite's tests that run only where CUDA is (``-k cuda``).
- ``costmodel``: ``autocomp check-costmodel`` on ``--samples`` recipes of a GPU space (heads, MLP width, rank,
  tokens, 32-, 16- and 4-bit weights) with the profile, timing each model eager and then replaying a CUDA graph
  (``cuda_graphs``), the reports and plots to ``--out``, and a table of the two: the spread between two
  measurements of the same sample, and the cost model's error.
- ``search``: ``autocomp search`` for ``--trials`` trials under a latency budget of 0.7x, one GPU per trial, each
  model timed replaying a CUDA graph.
- ``scoring``: the time to score the model on 512 images (a job with a GPU scores its trials and sensitivity pass
  there) on this machine's CPU and on the GPU, side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SPACE = {"heads_keep": [0.5, 0.75, 1.0], "mlp_keep": [0.5, 0.75, 1.0], "rank": [0.25, 1.0], "tokens_keep": [0.7, 1.0],
         "weight_bits": [32, 16, 4], "token_method": "merge", "distill_steps": [20], "distill_alpha": [0.5]}


def image_folder(root: Path, per_class: int = 24, classes: int = 3, size: int = 224) -> Path:
    """train/ and val/ folders of ``classes`` class folders of random PNG images (made once)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in range(classes):
            folder = root / split / f"class{label}"
            if folder.is_dir():
                continue
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def job(out: Path, profile: Path, trials: int, *, graphs: bool = True, sensitivity: int = 32) -> Path:
    """The job config: the model, the image folder, the GPU space, the profile (its Ray resource left out: the GPU
    is this machine's; each model timed replaying a CUDA graph, or eager), a latency budget."""
    local = yaml.safe_load(profile.read_text())
    local["ray_resource"] = None
    local["cuda_graphs"] = graphs
    name = "" if graphs else "-eager"
    (out / f"profile{name}.yaml").write_text(yaml.safe_dump(local, sort_keys=False))
    (out / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    config = {"model": {"name": "vit_small_patch16_224", "kwargs": {"num_classes": 3}},
              "data": {"dataset": "imagefolder", "root": str(image_folder(out / "images")), "val_size": 72,
                       "calib_size": 16, "test_size": 16, "workers": 2},
              "search_space": "space.yaml", "hardware": f"profile{name}.yaml", "budget": {"latency": 0.7},
              "trials": trials, "workers": 1, "seed": 0, "resources": {"cpu": 4, "gpu": 1},
              "sensitivity": {"images": sensitivity}, "fidelity": None}  # 12 blocks x 8 settings, on the GPU
    path = out / f"job{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(step: str, command: list[str], timeout: float) -> int:
    """Run ``command`` (its output passes through), say how long it took and how it ended; past ``timeout`` it is
    stopped as Ctrl-C would (a search keeps its results and shuts its Ray down), then killed 30 s later."""
    print(f"\n=== {step}: {' '.join(command)}", flush=True)
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        code = 124
    print(f"=== {step}: exit {code} in {time.perf_counter() - began:.0f} s", flush=True)
    return code


def scoring(images: int = 512) -> None:
    """Seconds to score the model on ``images`` random images on the CPU (all its cores) and on the GPU, as a trial
    scores (:func:`autocomp.train.evaluate`)."""
    import timm

    from autocomp.data import TensorSplit
    from autocomp.train import evaluate

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=3).eval()
    split = TensorSplit(torch.randn(images, 3, 224, 224), torch.randint(0, 3, (images,)))
    seconds, accuracy = {}, {}
    for device in ("cpu", "cuda"):
        for _ in range(2):  # the first on each device warms it up
            began = time.perf_counter()
            accuracy[device] = evaluate(model, split, device=device)
            seconds[device] = time.perf_counter() - began
    print(f"scoring {images} images at 224 px: CPU ({torch.get_num_threads()} threads) {seconds['cpu']:.2f} s, "
          f"GPU {seconds['cuda']:.2f} s ({seconds['cpu'] / seconds['cuda']:.0f}x); top-1 {accuracy['cpu']:.2f}% "
          f"and {accuracy['cuda']:.2f}%", flush=True)


def fidelity_table(out: Path) -> None:
    """The two check-costmodel reports side by side: how far a second measurement of each sample lands from its
    first (the noise floor), and how far the corrected cost model's prediction does."""
    print(f"{'timing':8} {'base ms':>8} {'base IQR':>9} {'repeat MAPE':>12} {'repeat rho':>11} {'model MAPE':>11} "
          f"{'model rho':>10}")
    for name in ("eager", "graphs"):
        path = out / f"fidelity-{name}.json"
        if not path.is_file():
            print(f"{name:8} (no report)")
            continue
        report = json.loads(path.read_text())
        base, latency = report["base"], report["latency"]
        repeat, model = latency["repeat"], latency["after"]
        print(f"{name:8} {base['measured_latency_ms']:8.2f} {base['latency_iqr_ms']:9.3f} "
              f"{_percent(repeat['mape']):>12} {_number(repeat['spearman']):>11} {_percent(model['mape']):>11} "
              f"{_number(model['spearman']):>10}", flush=True)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", type=Path, default=ROOT / "hardware_profiles" / "nvidia_h200.yaml")
    parser.add_argument("--steps", default="tests,costmodel,search,scoring")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--sensitivity", type=int, default=32, help="images the search's sensitivity pass scores "
                                                                       "each setting on (0 skips it)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds for each step (one device call of at "
                                                                     "most 10 minutes: run the steps in two)")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the steps run from the repository's root
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this benchmark runs the pytorch-cuda backend")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    config = job(args.out, args.profile.resolve(), args.trials, sensitivity=args.sensitivity)
    cli = [sys.executable, "-m", "autocomp.cli"]
    ended = {}
    for step in args.steps.split(","):
        if step == "tests":
            ended[step] = run(step, [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k",
                                     "cuda or gpu", "tests/test_distill.py", "tests/test_measure_backends.py",
                                     "tests/test_search_sensitivity.py"],
                              args.timeout)
        elif step == "costmodel":  # the same samples timed eager, then replaying CUDA graphs
            for graphs, name in ((False, "eager"), (True, "graphs")):
                ended[f"{step}-{name}"] = run(f"{step} ({name})", [
                    *cli, "check-costmodel", str(job(args.out, args.profile.resolve(), args.trials, graphs=graphs)),
                    "--samples", str(args.samples), "--out", str(args.out / f"fidelity-{name}.json")], args.timeout)
            fidelity_table(args.out)
        elif step == "search":
            ended[step] = run(step, [*cli, "search", str(config), "--out", str(args.out / "run")], args.timeout)
        elif step == "scoring":
            scoring()
            ended[step] = 0
        else:
            raise SystemExit(f"unknown step {step!r}: tests, costmodel, search or scoring")
    print(json.dumps(ended))
    sys.exit(1 if any(ended.values()) else 0)


if __name__ == "__main__":
    main()
