"""What the check for images in two splits costs beside the header check every image folder already gets.

    .venv/bin/python benchmarks/shared_images.py --images 20000

Writes a train/ and val/ folder of generated 32x32 JPEGs (80% / 20%, 10 classes, cached under the cache folder;
noise JPEGs of one size take few distinct byte sizes, so nearly every file has a twin in size and is read: the
check's worst case short of real copies), then times, one after the other on a warm page cache, the header check
(``_check_readable``) and the shared-images check (``_warn_shared``) on all of them, and prints both and the ratio.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from autocomp._paths import cache_dir
from autocomp.data import _load


def make_folder(root: Path, count: int) -> Path:
    from PIL import Image

    folder = root / f"shared{count}"
    if (folder / ".done").is_file():
        return folder
    rng = np.random.default_rng(0)
    for split, share in (("train", 0.8), ("val", 0.2)):
        for index in range(int(count * share)):
            path = folder / split / f"c{index % 10}" / f"{index}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path, quality=90)
    (folder / ".done").touch()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    args = parser.parse_args()
    folder = make_folder(cache_dir() / "bench", args.images)
    files = {split: sorted(str(p) for p in (folder / split).rglob("*.jpg")) for split in ("train", "val")}
    every = files["train"] + files["val"]
    _load._check_readable(every)  # the page cache warm for both
    started = time.perf_counter()
    _load._check_readable(every)
    header = time.perf_counter() - started
    started = time.perf_counter()
    _load._warn_shared({"train": files["train"], "val": files["val"], "test": []}, folder)
    shared = time.perf_counter() - started
    sizes = len({os.path.getsize(path) for path in every})
    print(f"{len(every)} images ({sizes} distinct byte sizes): header check {header:.2f} s, shared-images check "
          f"{shared:.2f} s ({shared / header:.2f}x)")


if __name__ == "__main__":
    main()
