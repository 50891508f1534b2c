"""The sensitivity pass on a 224-px ViT reading an image folder: scored from each block's input against the whole
model run for every setting, side by side.

    python benchmarks/sensitivity_pass.py [--model deit_tiny_patch16_224] [--images 128] [--rounds 2]

A setting on block ``b`` leaves the blocks before it as they are, so the pass keeps the validation images' input to
block ``b`` and runs blocks ``b..`` only, and decodes the images once (``autocomp.search._sensitivity.BlockInputs``);
the other way runs the whole model, images decoded, for every setting (``BLOCK_INPUTS_BYTES = 0``). The image
folder is Fashion-MNIST images written as PNG and JPEG files of several sizes, resized to the model's 224 px by its
own preprocessing; the model has random weights (only the time is compared, and the two ways' scores are checked to
be the same). Rounds alternate the two ways so that drift of a shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from autocomp.data import DataConfig, load_splits
from autocomp.measure.profiling import cpu_description
from autocomp.models import vit_blocks
from autocomp.search import _sensitivity
from autocomp.space import SearchSpace

FASHION = Path("/usr/share/datasets/fashion-mnist")


def image_folder(root: Path, count: int) -> None:
    """``count`` Fashion-MNIST images as files in class folders, sized 48-120 px, half PNG and half JPEG."""
    images = np.frombuffer(gzip.open(FASHION / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    for index in range(count):
        folder = root / f"class{labels[index]}"
        folder.mkdir(parents=True, exist_ok=True)
        side = (48, 64, 96, 120)[index % 4]
        image = Image.fromarray(images[index * 784:(index + 1) * 784].reshape(28, 28)).convert("RGB")
        image.resize((side, side)).save(folder / f"{index}.{'png' if index % 2 else 'jpg'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--images", type=int, default=128, help="validation images each setting is scored on")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import timm

    print(f"CPU: {cpu_description()}; {torch.get_num_threads()} threads")
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10).eval()
    heads = [block.attn.num_heads for block in vit_blocks(model)]
    space = SearchSpace(heads_keep=(0.5, 1.0), mlp_keep=(0.5, 1.0), weight_bits=(32, 8))
    with tempfile.TemporaryDirectory() as tmp:
        image_folder(Path(tmp), args.images + 64)
        splits = load_splits(DataConfig(dataset="imagefolder", root=tmp, val_size=args.images, calib_size=16,
                                        test_size=24, workers=0), model)
        calib = splits.calib.x
        times: dict[str, list[float]] = {"from the block's input": [], "whole model": []}
        results = {}
        full = _sensitivity.BLOCK_INPUTS_BYTES
        for _ in range(args.rounds):
            for way, limit in (("from the block's input", full), ("whole model", 0)):
                _sensitivity.BLOCK_INPUTS_BYTES = limit
                began = time.perf_counter()
                results[way] = _sensitivity.sensitivity_pass(model, space, heads, val=splits.val, calib=calib,
                                                             predictor=None, threads=torch.get_num_threads())
                times[way].append(time.perf_counter() - began)
    fast, slow = (statistics.median(t) for t in times.values())
    settings = len(results["whole model"])
    print(f"{args.model}, {len(heads)} blocks, {settings} settings, {args.images} validation images, "
          f"{args.rounds} rounds")
    for way, seconds in times.items():
        print(f"  {way}: median {statistics.median(seconds):.1f} s ({', '.join(f'{s:.1f}' for s in seconds)})")
    print(f"  speed-up {slow / fast:.2f}x; same scores: {results['whole model'] == results[next(iter(times))]}")


if __name__ == "__main__":
    main()
