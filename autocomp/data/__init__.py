"""Data: deterministic, seeded train / calibration / validation / test splits, and the one preprocessing that turns
images into model inputs.

Sources: Fashion-MNIST (Debian's ``dataset-fashion-mnist`` files) and scikit-learn's digits, small enough to be held
as tensors; and image folders of any size, read from disk and decoded by ``DataLoader`` workers as batches are
needed (only the calibration images are ever held as one tensor). An image folder is either a root with ``train/``
and ``val/`` (optional ``test/``; also named ``training/``, ``valid/`` or ``validation/``, ``testing/``) folders of
class folders, or a root of class folders split deterministically.

Preprocessing (:class:`Preprocessing`) comes from the model: timm's data config (resize, centre crop, interpolation,
per-channel mean and std) unless the job config sets ``data.image_size``, ``mean``, ``std``, ``interpolation`` or
``crop_pct``. Tensor datasets keep their native size and are normalized by the training split's own mean and std
unless ``mean``/``std`` are set (the demo teacher was trained that way).

The package: ``_config`` (what the job config says, and the preprocessing it resolves to), ``_splits`` (a split's
images in memory or on disk, and how they are batched) and ``_load`` (the sources, and their deterministic split).
"""

from __future__ import annotations

from autocomp.data._config import (BUILTIN_PIXEL_MAX, DATASETS, DataConfig, Preprocessing, preprocessing_source,
                                   resolve_preprocessing)
from autocomp.data._load import CALIB_SIZE, IMAGE_EXTENSIONS, TEST_SIZE, VAL_SIZE, load_splits
from autocomp.data._splits import FolderSplit, Split, Splits, TensorSplit

__all__ = ["DataConfig", "Preprocessing", "Split", "TensorSplit", "FolderSplit", "Splits", "load_splits",
           "resolve_preprocessing", "preprocessing_source", "DATASETS", "BUILTIN_PIXEL_MAX", "IMAGE_EXTENSIONS",
           "VAL_SIZE", "CALIB_SIZE", "TEST_SIZE"]
