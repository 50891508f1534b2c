"""The teacher's outputs a search computes once for all distillations: run on every batch the distillations draw (as
before session 56) against once on each image drawn (``autocomp.distill.TeacherCache.build``), timed side by side
on a training split smaller than the draws (100 steps of 64 draw 6,400 images: a folder of 1,024 draws each about 6
times; from 6,400 images or more, each is drawn once and both do the same work).

    python benchmarks/teacher_outputs.py [--threads 2]

Random weights and images (the work, not the numbers, is compared): the demo teacher's architecture at 28 px on
1,024 images, and a 4-block deit_tiny at 224 px on 256 images with 25 steps (the same 6.25 draws per image). A
minute or two.
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from autocomp.data import TensorSplit
from autocomp.distill import TeacherCache, _batches
from autocomp.recipe import Distill

CASES = {"demo 28 px": (dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6,
                             num_heads=6, mlp_ratio=2.0), (1, 28), 1024, 100),
         "deit_tiny 224 px, 4 blocks": (dict(num_classes=4, depth=4), (3, 224), 256, 25)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'case':<28} {'images':>7} {'draws':>6} {'every draw s':>13} {'once each s':>12} {'ratio':>6}")
    for name, (kwargs, (channels, size), images, steps) in CASES.items():
        teacher = timm.create_model("deit_tiny_patch16_224", pretrained=False, **kwargs).eval()
        split = TensorSplit(x=torch.randn(images, channels, size, size), y=torch.zeros(images, dtype=torch.long))
        plan = Distill(steps=steps, alpha=0.5)
        started = time.perf_counter()
        with torch.no_grad():
            every = [teacher(x) for x, _ in _batches(split, plan)]
        every_s = time.perf_counter() - started
        started = time.perf_counter()
        once = TeacherCache.build(teacher, split, plan)
        once_s = time.perf_counter() - started
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(every, once.outputs, strict=True))
        print(f"{name:<28} {images:>7} {steps * plan.batch_size:>6} {every_s:>13.1f} {once_s:>12.1f} "
              f"{every_s / once_s:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
