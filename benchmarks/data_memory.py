"""Peak memory of a search on an image folder of N images: it must not grow with N (images are streamed).

    .venv/bin/python benchmarks/data_memory.py --images 2000 20000

For each N: writes a folder of N generated 32-px PNGs (10 classes, cached under the cache folder), runs the same
search on it in a child process (a 32-px ViT, 2 trials, heads and int8, validation capped at 500 images), and samples
the resident memory of the whole process tree (driver, Ray's processes, trial workers, DataLoader workers) every
0.2 s. Prints the peak per N and the ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import yaml
from safetensors.torch import save_file

from autocomp._paths import cache_dir
from autocomp.measure.profiling import cpu_description

ROOT = Path(__file__).resolve().parents[1]
KWARGS = {"img_size": 32, "patch_size": 8, "num_classes": 10, "embed_dim": 64, "depth": 2, "num_heads": 4}


def make_folder(root: Path, count: int) -> Path:
    from PIL import Image

    folder = root / f"folder{count}"
    if (folder / ".done").is_file():
        return folder
    rng = np.random.default_rng(0)
    for index in range(count):
        label = index % 10
        path = folder / f"class{label}" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(rng.normal(25 * label, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)
    (folder / ".done").write_text("")
    return folder


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, read from /proc (Linux)."""
    parents, rss = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            fields = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(pid, 0) for pid in tree)


def peak_rss(command: list[str]) -> tuple[float, float]:
    """(peak MB of the process tree's resident memory, wall seconds) of a command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(process.stderr.read().decode()[-2000:])
    return peak / 1e6, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 20000])
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")
    data_root = cache_dir() / "bench_folders"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **KWARGS)
        save_file(model.state_dict(), str(tmp / "model.safetensors"))
        (tmp / "space.yaml").write_text("heads_keep: [0.5, 1.0]\nweight_bits: [32, 8]\n")
        peaks = {}
        for count in args.images:
            folder = make_folder(data_root, count)
            job = {"model": {"name": "vit_tiny_patch16_224", "kwargs": KWARGS,
                             "checkpoint": str(tmp / "model.safetensors")},
                   "data": {"dataset": "imagefolder", "root": str(folder), "val_size": 500, "calib_size": 64,
                            "test_size": 200, "workers": 1},
                   "search_space": str(tmp / "space.yaml"), "hardware": str(ROOT / "hardware_profiles/local_cpu.yaml"),
                   "budget": {"memory": 0.99}, "trials": 2, "workers": 1, "seed": 0}
            (tmp / f"job{count}.yaml").write_text(yaml.safe_dump(job))
            command = [sys.executable, "-m", "autocomp.cli", "search", str(tmp / f"job{count}.yaml"), "--out",
                       str(tmp / f"run{count}"), "--quiet"]
            peaks[count], seconds = peak_rss(command)
            print(f"{count:6d} images: peak resident memory of the search's process tree {peaks[count]:.0f} MB "
                  f"({seconds:.0f} s)")
        low, high = min(args.images), max(args.images)
        print(f"peak({high}) / peak({low}) = {peaks[high] / peaks[low]:.3f}")


if __name__ == "__main__":
    main()
