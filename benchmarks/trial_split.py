"""Where a trial's time goes on a 224-px DeiT-Tiny-shaped model: compress, measure, distill, evaluate, engine.

    .venv/bin/python benchmarks/trial_split.py            # 4 trials, 10 distillation steps

Makes a random-weight ``deit_tiny_patch16_224`` (10 classes) and a generated train/ + val/ JPEG folder (120 + 100
images at 256 px), searches heads, MLP width and int8 with 10 distillation steps (batch 64, one thread per trial,
profile batch 1), and prints the summary's ``time_split`` (means over the trials) with the engine's share.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
import yaml
from safetensors.torch import save_file

from autocomp.measure.profiling import cpu_description

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10)
        save_file(model.state_dict(), str(tmp / "deit_tiny.safetensors"))
        rng = np.random.default_rng(0)
        for split, per_class in (("train", 12), ("val", 10)):
            for label in range(10):
                folder = tmp / "data" / split / f"c{label}"
                folder.mkdir(parents=True)
                for index in range(per_class):
                    pixels = np.clip(rng.normal(25 * label, 40, (256, 256, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).save(folder / f"{index}.jpg")
        (tmp / "space.yaml").write_text(f"heads_keep: [0.67, 1.0]\nmlp_keep: [0.5, 1.0]\nweight_bits: [32, 8]\n"
                                        f"distill_steps: [{args.steps}]\ndistill_alpha: [0.5]\n")
        profile = yaml.safe_load((ROOT / "hardware_profiles" / "local_cpu.yaml").read_text())
        (tmp / "hw.yaml").write_text(yaml.safe_dump({**profile, "batch_size": 1, "repeats": 10, "warmup": 2}))
        job = {"model": {"name": "deit_tiny_patch16_224", "kwargs": {"num_classes": 10},
                         "checkpoint": str(tmp / "deit_tiny.safetensors")},
               "data": {"dataset": "imagefolder", "root": str(tmp / "data"), "val_size": 100, "calib_size": 16,
                        "test_size": 20, "workers": 1},
               "search_space": str(tmp / "space.yaml"), "hardware": str(tmp / "hw.yaml"),
               "budget": {"memory": 0.9}, "trials": args.trials, "workers": 1, "seed": 0, "skip_margin": 0.1}
        (tmp / "job.yaml").write_text(yaml.safe_dump(job))
        subprocess.run([sys.executable, "-m", "autocomp.cli", "search", str(tmp / "job.yaml"), "--out",
                        str(tmp / "run"), "--quiet"], check=True, stdout=subprocess.DEVNULL)
        split = json.loads((tmp / "run" / "summary.json").read_text())["time_split"]
        print("mean seconds per trial: " + ", ".join(f"{k} {v:.2f}" for k, v in split.items() if k != "engine_share"))
        print(f"engine share of a trial: {100 * split['engine_share']:.1f}%")


if __name__ == "__main__":
    main()
