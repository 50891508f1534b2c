from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from autocomp import AutocompError
from autocomp.data import DataConfig, load_splits


def test_digits_splits_are_deterministic_disjoint_and_sized():
    config = DataConfig(dataset="digits", val_size=200, calib_size=50, test_size=300, seed=3)
    a, b = load_splits(config), load_splits(config)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert (len(a.val), len(a.calib), len(a.test)) == (200, 50, 300)
    assert len(a.train) + 200 + 50 + 300 == 1797
    rows = lambda s: {tuple(r.tolist()) for r in s.x.flatten(1)}  # noqa: E731
    assert not rows(a.val) & rows(a.test)
    other = load_splits(DataConfig(dataset="digits", val_size=200, calib_size=50, test_size=300, seed=4))
    assert not torch.equal(a.val.y, other.val.y)


def _write_idx(path, array, header):
    with gzip.open(path, "wb") as handle:
        handle.write(bytes(header) + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 60), ("t10k", 20)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28)), [0] * 16)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10, [0] * 8)
    splits = load_splits(DataConfig(dataset="fashion_mnist", root=str(tmp_path), val_size=10, calib_size=5))
    assert splits.train.x.shape == (45, 1, 28, 28) and len(splits.test) == 20
    assert splits.test.y.tolist() == [i % 10 for i in range(20)]


def test_missing_fashion_mnist_names_the_install_line(tmp_path):
    with pytest.raises(AutocompError, match="apt-get install -y dataset-fashion-mnist"):
        load_splits(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))


def test_imagefolder(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(6):
            Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=8, channels=3,
                                    val_size=2, calib_size=2, test_size=2))
    assert splits.num_classes == 2 and splits.train.x.shape == (6, 3, 8, 8)


def test_too_large_holdout_is_refused():
    with pytest.raises(AutocompError, match="leaves no training images"):
        load_splits(DataConfig(dataset="digits", val_size=1500, calib_size=100, test_size=300))
