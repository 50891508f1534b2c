"""Datasets as in-memory tensors with deterministic, seeded train / calibration / validation / test splits.

Sources: Fashion-MNIST (from Debian's ``dataset-fashion-mnist`` files), scikit-learn's digits (bundled, for fast
tests) and an ImageFolder directory (a user's own images).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from autocomp.errors import AutocompError

__all__ = ["DataConfig", "Split", "Splits", "load_splits", "DATASETS"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_INSTALL = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
DATASETS = ("fashion_mnist", "digits", "imagefolder")


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how to split it.

    Attributes:
        dataset: one of ``fashion_mnist``, ``digits``, ``imagefolder``.
        root: folder of the files (Fashion-MNIST idx files; ImageFolder class folders); None for the default.
        image_size: images are resized to this (ImageFolder only; the others keep their native size).
        channels: 1 (grayscale) or 3 (RGB) (ImageFolder only).
        val_size: images held out of the training set to score candidates during search.
        calib_size: images taken from the training set for calibration (importance scores, quantization ranges).
        test_size: size of the test split for datasets without an official one (digits, ImageFolder).
        seed: seed of the split permutation.
    """

    dataset: str = "fashion_mnist"
    root: str | None = None
    image_size: int = 224
    channels: int = 3
    val_size: int = 5000
    calib_size: int = 256
    test_size: int = 360
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise AutocompError(f"unknown dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        for name in ("val_size", "calib_size"):
            if getattr(self, name) <= 0:
                raise AutocompError(f"data.{name} must be a positive number of images, got {getattr(self, name)}")


@dataclass(frozen=True)
class Split:
    """Normalized images ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            index = order[start:start + batch_size]
            yield self.x[index], self.y[index]


@dataclass(frozen=True)
class Splits:
    train: Split
    calib: Split
    val: Split
    test: Split
    num_classes: int


def load_splits(config: DataConfig) -> Splits:
    """Load the dataset and split it deterministically (same config, same splits)."""
    loader = {"fashion_mnist": _fashion_mnist, "digits": _digits, "imagefolder": _imagefolder}[config.dataset]
    train_x, train_y, test_x, test_y, num_classes = loader(config)
    generator = torch.Generator().manual_seed(config.seed)
    if test_x is None:  # no official test split: hold one out first
        if config.test_size >= len(train_y):
            raise AutocompError(f"data.test_size={config.test_size} leaves no training images")
        order = torch.randperm(len(train_y), generator=generator)
        test_x, test_y = train_x[order[:config.test_size]], train_y[order[:config.test_size]]
        train_x, train_y = train_x[order[config.test_size:]], train_y[order[config.test_size:]]
    held_out = config.val_size + config.calib_size
    if held_out >= len(train_y):
        raise AutocompError(
            f"data.val_size + data.calib_size = {held_out} leaves no training images out of {len(train_y)}; "
            "lower them")
    order = torch.randperm(len(train_y), generator=generator)
    val_idx, calib_idx, train_idx = (order[:config.val_size], order[config.val_size:held_out], order[held_out:])
    mean, std = train_x[train_idx].mean(), train_x[train_idx].std()

    def split(x: torch.Tensor, y: torch.Tensor) -> Split:
        return Split(x=((x - mean) / std).contiguous(), y=y)

    return Splits(train=split(train_x[train_idx], train_y[train_idx]),
                  calib=split(train_x[calib_idx], train_y[calib_idx]),
                  val=split(train_x[val_idx], train_y[val_idx]), test=split(test_x, test_y),
                  num_classes=num_classes)


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


def _fashion_mnist(config: DataConfig):
    root = Path(config.root) if config.root else FASHION_MNIST_DIR
    files = {part: root / f"{part}-{kind}-idx{dims}-ubyte.gz"
             for part, kind, dims in [("train", "images", 3), ("t10k", "images", 3)]}
    if not all(path.exists() for path in files.values()):
        raise AutocompError(f"Fashion-MNIST files not found in {root}; install them with: {FASHION_INSTALL}")

    def part(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
        labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 8)
        return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))

    train_x, train_y = part("train")
    test_x, test_y = part("t10k")
    return train_x, train_y, test_x, test_y, 10


def _digits(config: DataConfig):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return x, torch.from_numpy(digits.target.astype(np.int64)), None, None, 10


def _imagefolder(config: DataConfig):
    from torchvision import datasets, transforms

    if not config.root or not Path(config.root).is_dir():
        raise AutocompError(f"ImageFolder root {config.root!r} is not a directory; set data.root to a folder with "
                            "one sub-folder of images per class")
    steps = [transforms.Resize((config.image_size, config.image_size))]
    if config.channels == 1:
        steps.append(transforms.Grayscale())
    folder = datasets.ImageFolder(config.root, transform=transforms.Compose(steps + [transforms.ToTensor()]))
    if len(folder) == 0:
        raise AutocompError(f"no images found under {config.root}")
    x = torch.stack([image for image, _ in folder])
    y = torch.tensor(folder.targets, dtype=torch.int64)
    return x, y, None, None, len(folder.classes)
