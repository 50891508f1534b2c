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
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from autocomp.errors import AutocompError

__all__ = ["DataConfig", "Preprocessing", "Split", "TensorSplit", "FolderSplit", "Splits", "load_splits",
           "resolve_preprocessing", "DATASETS", "IMAGE_EXTENSIONS"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_INSTALL = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
DATASETS = ("fashion_mnist", "digits", "imagefolder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
EVAL_BATCH_BYTES = 32 * 2**20  # evaluation batches of about this many input bytes (28 px: 512 images, 224 px: 55)


@dataclass(frozen=True)
class DataConfig:
    """Which data, how to split it, and how to preprocess it (where the model's own preprocessing is not wanted).

    Attributes:
        dataset: one of ``fashion_mnist``, ``digits``, ``imagefolder``.
        root: folder of the files (Fashion-MNIST idx files; the image folder); None for the default.
        val_size: images held out of the training set to score candidates (an image folder's ``val/``: at most this
            many of it); None: a fifth of the training images left after calibration, at most ``VAL_SIZE`` (all of
            ``val/`` up to ``VAL_SIZE``).
        calib_size: images taken from the training set for calibration (importance scores, quantization ranges);
            None: a fifth of the training images, at most ``CALIB_SIZE``.
        test_size: images held out for the test split when the data has none (digits, an image folder without
            ``test/``); None: a fifth of the images, at most ``TEST_SIZE``.
        seed: seed of the split permutation.
        image_size: model input size in pixels; None: the model's.
        mean: per-channel normalization mean; None: the model's (image folders) or the training split's.
        std: per-channel normalization std; None: as ``mean``.
        interpolation: resize interpolation (``bicubic``, ``bilinear`` ...); None: the model's.
        crop_pct: centre-crop fraction (resize to ``image_size / crop_pct``, then crop); None: the model's.
        workers: ``DataLoader`` worker processes decoding image-folder images (0: in the calling process).
    """

    dataset: str = "fashion_mnist"
    root: str | None = None
    val_size: int | None = None
    calib_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise AutocompError(f"unknown dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        for name in ("val_size", "calib_size", "test_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise AutocompError(f"data.{name} must be a positive number of images or null (a fifth of them, "
                                    f"up to a limit), got {value!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise AutocompError(f"data.workers must be a whole number >= 0 (0: decode in the trial itself), got "
                                f"{self.workers!r}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 1):
            raise AutocompError(f"data.image_size must be a number of pixels >= 1 or null (the model's), got "
                                f"{self.image_size!r}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise AutocompError(f"data.interpolation must be one of {list(INTERPOLATIONS)}, got "
                                f"{self.interpolation!r}")
        if self.crop_pct is not None and not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1):
            raise AutocompError(f"data.crop_pct must be a fraction in (0, 1], got {self.crop_pct!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (int, float)):
                    value = (value,)
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.std is not None and any(v <= 0 for v in self.std):
            raise AutocompError(f"data.std must be positive, got {list(self.std)}")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input: the one used for the teacher's score, calibration, distillation,
    evaluation and the measurement input, recorded in the summary and next to a saved model.

    Attributes:
        image_size: the model's input size (square), in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel std divided by.
        interpolation: resize interpolation.
        crop_pct: resize the shorter side to ``image_size / crop_pct``, then centre-crop ``image_size``.
    """

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) == 1 and self.channels > 1:
                object.__setattr__(self, name, tuple(values) * self.channels)
            elif len(values) != self.channels:
                raise AutocompError(f"data.{name} has {len(values)} values but the model takes {self.channels} "
                                    f"channel(s); give {self.channels} values or one")

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalized (C, H, W) tensor: timm's eval transform with these settings."""
        from timm.data import create_transform
        from torchvision import transforms

        timm_transform = create_transform(input_size=(self.channels, self.image_size, self.image_size),
                                          interpolation=self.interpolation, mean=self.mean, std=self.std,
                                          crop_pct=self.crop_pct, is_training=False)
        mode = "L" if self.channels == 1 else "RGB"
        return transforms.Compose([transforms.Lambda(lambda image: image.convert(mode)), timm_transform])

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "channels": self.channels, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    def timm_config(self) -> dict[str, Any]:
        """The same settings as timm's data config (``input_size``, ``mean`` ...), e.g. for ``pretrained_cfg``."""
        return {"input_size": (self.channels, self.image_size, self.image_size), "mean": self.mean, "std": self.std,
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}


def resolve_preprocessing(model: nn.Module, config: DataConfig) -> Preprocessing:
    """The model's timm data config with the job config's overrides (image folders). The input size and channels
    are those the model was built with (a timm model made at ``img_size=32`` keeps its pretrained config's 224)."""
    from timm.data import resolve_model_data_config

    timm_config = resolve_model_data_config(model)
    channels, height, _ = timm_config["input_size"]
    embed = getattr(model, "patch_embed", None)  # what the model really takes, if it was built at another size
    if getattr(embed, "img_size", None) is not None and not getattr(embed, "dynamic_img_size", False):
        height = embed.img_size[0]
    channels = _input_channels(embed) or channels
    for name in ("mean", "std"):
        if getattr(config, name) is None and len(timm_config[name]) not in (1, channels):
            raise AutocompError(f"the model takes {channels} channel(s) but its timm config gives {name} "
                                f"{list(timm_config[name])}; set data.mean and data.std to {channels} value(s) "
                                "each (the statistics the model was trained with)")
    return Preprocessing(image_size=config.image_size or height, channels=channels,
                         mean=config.mean or tuple(timm_config["mean"]), std=config.std or tuple(timm_config["std"]),
                         interpolation=config.interpolation or timm_config.get("interpolation", "bicubic"),
                         crop_pct=config.crop_pct or timm_config.get("crop_pct", 1.0))


def _input_channels(embed: nn.Module | None) -> int | None:
    """The image channels a patch embedding takes: its ``in_chans``, or the first convolution's input channels (the
    stem of a hybrid ViT's CNN, whose ``proj`` takes the CNN's features, not the image); None when it has neither."""
    if isinstance(getattr(embed, "in_chans", None), int):
        return embed.in_chans
    for module in embed.modules() if isinstance(embed, nn.Module) else ():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


class Split:
    """Images and labels of one split: :meth:`batches` streams them; :meth:`tensors` loads all (small splits)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                with_index: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches ``(x, y)`` in order, or shuffled by ``generator``; ``with_index`` adds each item's index."""
        raise NotImplementedError

    def subset(self, count: int) -> Split:
        """The first ``count`` items (the splits are already shuffled)."""
        raise NotImplementedError

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images and labels as two tensors."""
        xs, ys = zip(*self.batches(256)) if len(self) else ((), ())
        return (torch.cat(xs) if xs else torch.empty(0)), (torch.cat(ys) if ys else torch.empty(0, dtype=torch.long))

    def input_numel(self) -> int:
        """Values in one preprocessed input image."""
        raise NotImplementedError

    def eval_batch_size(self) -> int:
        """A throughput-friendly batch size: about ``EVAL_BATCH_BYTES`` of fp32 input, at most 512 images."""
        return max(1, min(512, EVAL_BATCH_BYTES // (max(1, self.input_numel()) * 4)))


def _order(count: int, shuffle: bool, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randperm(count, generator=generator) if shuffle else torch.arange(count)


@dataclass(frozen=True)
class TensorSplit(Split):
    """Normalized images ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64, in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                with_index: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        order = _order(len(self), shuffle, generator)
        for start in range(0, len(self), batch_size):
            index = order[start:start + batch_size]
            yield (self.x[index], self.y[index], index) if with_index else (self.x[index], self.y[index])

    def subset(self, count: int) -> TensorSplit:
        return TensorSplit(x=self.x[:count], y=self.y[:count])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def input_numel(self) -> int:
        return self.x[0].numel() if len(self) else 0


@dataclass(frozen=True)
class FolderSplit(Split):
    """Image files and their labels, decoded and preprocessed batch by batch by ``DataLoader`` workers.

    Attributes:
        root: the image folder (checked before reading, so a node without it says so).
        files: paths relative to ``root``.
        labels: class index of each file.
        preprocessing: how a decoded image becomes an input.
        workers: ``DataLoader`` worker processes (0: decode in the calling process).
    """

    root: str
    files: tuple[str, ...]
    labels: tuple[int, ...]
    preprocessing: Preprocessing
    workers: int = 2

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                with_index: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        if not Path(self.root).is_dir():
            raise AutocompError(f"image folder {self.root} does not exist on {_node()}; put the data at the same "
                                "path on every node of the cluster (or on a shared file system)")
        order = _order(len(self), shuffle, generator).tolist()
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        dataset = _Images(self.root, self.files, self.labels, self.preprocessing)
        workers = min(self.workers, len(batches))
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                             collate_fn=_collate)
        for (x, y), index in zip(loader, batches, strict=True):
            yield (x, y, torch.tensor(index)) if with_index else (x, y)

    def input_numel(self) -> int:  # known from the preprocessing: no image is decoded to size a batch
        return self.preprocessing.channels * self.preprocessing.image_size ** 2

    def subset(self, count: int) -> FolderSplit:
        return FolderSplit(root=self.root, files=self.files[:count], labels=self.labels[:count],
                           preprocessing=self.preprocessing, workers=self.workers)


def _node() -> str:
    """This machine as a Ray user knows it: the Ray node id when running in Ray, else the host name."""
    import socket

    try:
        import ray

        if ray.is_initialized():
            return f"Ray node {ray.get_runtime_context().get_node_id()} ({socket.gethostname()})"
    except ImportError:
        pass
    return f"host {socket.gethostname()}"


class _Images(torch.utils.data.Dataset):
    def __init__(self, root: str, files: tuple[str, ...], labels: tuple[int, ...],
                 preprocessing: Preprocessing) -> None:
        self.root, self.files, self.labels = Path(root), files, labels
        self.transform = preprocessing.transform()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.root / self.files[index]
        try:
            with Image.open(path) as image:
                return self.transform(image), self.labels[index]
        except (OSError, ValueError) as exc:
            raise AutocompError(f"cannot read image {path}: {exc}; remove or replace the file") from None


def _collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


@dataclass(frozen=True)
class Splits:
    """The four splits, the class count and the preprocessing that made their inputs."""

    train: Split
    calib: TensorSplit
    val: Split
    test: Split
    num_classes: int
    preprocessing: Preprocessing | None = None


def load_splits(config: DataConfig, model: nn.Module | None = None) -> Splits:
    """Load the dataset and split it deterministically (same config, same splits).

    Args:
        config: the data section of the job config.
        model: the base model, whose timm data config gives an image folder's preprocessing (required for
            ``imagefolder``).
    """
    if config.dataset == "imagefolder":
        if model is None:
            raise AutocompError("an image folder is preprocessed as the model expects; pass the model to "
                                "load_splits")
        _folder_root(config)  # a wrong path is the first thing to say, before anything about the model
        return _folder_splits(config, resolve_preprocessing(model, config))
    loader = {"fashion_mnist": _fashion_mnist, "digits": _digits}[config.dataset]
    train_x, train_y, test_x, test_y, num_classes = loader(config)
    generator = torch.Generator().manual_seed(config.seed)
    if test_x is None:  # no official test split: hold one out first
        test_idx, train_idx = _hold_out(len(train_y), config.test_size, generator, "data.test_size")
        test_x, test_y, train_x, train_y = train_x[test_idx], train_y[test_idx], train_x[train_idx], train_y[train_idx]
    val_idx, calib_idx, train_idx = _val_calib_train(len(train_y), config, generator)
    channels = train_x.shape[1]
    stats = train_x[train_idx]
    mean = config.mean or tuple(stats.mean(dim=(0, 2, 3)).tolist() if channels > 1 else [float(stats.mean())])
    std = config.std or tuple(stats.std(dim=(0, 2, 3)).tolist() if channels > 1 else [float(stats.std())])
    preprocessing = Preprocessing(image_size=train_x.shape[-1], channels=channels, mean=mean, std=std,
                                  interpolation=config.interpolation or "bilinear", crop_pct=1.0)
    shift = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
    scale = torch.tensor(preprocessing.std).view(1, -1, 1, 1)

    def split(x: torch.Tensor, y: torch.Tensor) -> TensorSplit:
        return TensorSplit(x=((x - shift) / scale).contiguous(), y=y)

    return Splits(train=split(train_x[train_idx], train_y[train_idx]),
                  calib=split(train_x[calib_idx], train_y[calib_idx]),
                  val=split(train_x[val_idx], train_y[val_idx]), test=split(test_x, test_y),
                  num_classes=num_classes, preprocessing=preprocessing)


VAL_SIZE = 5000  # the most validation images a split takes unless data.val_size says otherwise
CALIB_SIZE = 256  # the most calibration images unless data.calib_size says otherwise
TEST_SIZE = 360  # the most test images held out of data without a test split unless data.test_size says otherwise


def _hold_out(count: int, size: int | None, generator: torch.Generator, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None:
        size = min(TEST_SIZE, count // 5)
        if size < 1:
            raise AutocompError(f"{count} images are too few to hold a test split out of them; add images or a "
                                "test/ folder")
    if size >= count:
        raise AutocompError(f"{name}={size} leaves no training images out of {count}; lower it")
    order = torch.randperm(count, generator=generator)
    return order[:size], order[size:]


def _val_calib_train(count: int, config: DataConfig, generator: torch.Generator,
                     val_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    calib_size = config.calib_size or min(CALIB_SIZE, max(1, count // 5))
    if val_size is None:
        val_size = config.val_size or min(VAL_SIZE, max(1, (count - calib_size) // 5))
    held_out = val_size + calib_size
    if held_out >= count:
        raise AutocompError(f"data.val_size + data.calib_size = {held_out} leaves no training images out of "
                            f"{count}; lower them")
    order = torch.randperm(count, generator=generator)
    return order[:val_size], order[val_size:held_out], order[held_out:]


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


def _fashion_mnist(config: DataConfig):
    root = Path(config.root) if config.root else FASHION_MNIST_DIR
    files = {part: root / f"{part}-{kind}-idx{dims}-ubyte.gz"
             for part, kind, dims in [("train", "images", 3), ("t10k", "images", 3)]}
    if not all(path.exists() for path in files.values()):
        if config.root:  # the user's folder: the path is what to fix
            raise AutocompError(f"data.root: Fashion-MNIST files not found in {root.resolve()} (train-images-idx3-"
                                f"ubyte.gz, t10k-images-idx3-ubyte.gz and their labels); fix data.root, or leave it "
                                f"out to use {FASHION_MNIST_DIR} (sudo apt-get install -y dataset-fashion-mnist)")
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


# -- image folders ----------------------------------------------------------------------------------------------

_IGNORED = ("thumbs.db", "desktop.ini")


def _classes(folder: Path) -> dict[str, list[str]]:
    """Class name -> image paths relative to ``folder``'s parent set, for a folder of class folders."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise AutocompError(f"{folder} has no class folders; put each class's images in a folder of its own "
                            f"({folder}/<class>/<image>)")
    found: dict[str, list[str]] = {}
    for name in classes:
        files = []
        for path in sorted((folder / name).rglob("*")):
            if path.is_dir() or path.name.startswith(".") or path.name.lower() in _IGNORED:
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise AutocompError(f"{path} is not an image ({', '.join(IMAGE_EXTENSIONS)}); remove it or move it "
                                    "out of the class folders")
            files.append(str(path))
        found[name] = files
    empty = [name for name, files in found.items() if not files]
    if empty:
        raise AutocompError(f"class folder(s) {empty} under {folder} hold no images; add images or remove them")
    return found


def _check_readable(paths: list[str]) -> None:
    """Open each file's header (fast: no decoding) so that a broken file is named before any trial runs."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - reading the header is the check
        except (OSError, UnidentifiedImageError) as exc:
            raise AutocompError(f"cannot read image {path}: {exc}; remove or replace the file") from None


def _folder_root(config: DataConfig) -> Path:
    root = Path(config.root) if config.root else None
    if root is None or not root.is_dir():
        where = f" ({root.resolve()})" if root is not None else ""
        raise AutocompError(f"data.root: image folder {config.root!r}{where} is not a directory; set data.root to a "
                            "folder with train/ and val/ folders of class folders, or one folder of class folders")
    return root


def _folder_splits(config: DataConfig, preprocessing: Preprocessing) -> Splits:
    root = _folder_root(config)
    generator = torch.Generator().manual_seed(config.seed)
    split_dirs = _split_folders(root)
    if split_dirs:  # split folders: train/ is required, val/ and test/ are held out of it when missing
        if "train" not in split_dirs:
            raise AutocompError(f"{root} has {sorted(p.name for p in split_dirs.values())} but no train/ folder; add "
                                "train/ with one folder of images per class")
        parts = {name: _classes(path) for name, path in split_dirs.items()}
        classes = sorted(parts["train"])
        for name, found in parts.items():
            if sorted(found) != classes:
                raise AutocompError(f"{split_dirs[name]} has classes {sorted(found)} but {split_dirs['train']} has "
                                    f"{classes}; every split needs the same class folders")
        listed = {name: _flatten(found, classes) for name, found in parts.items()}
        train_files, train_labels = listed["train"]
        if "test" in listed:
            test_files, test_labels = listed["test"]
        else:
            test_idx, keep = _hold_out(len(train_files), config.test_size, generator, "data.test_size")
            test_files, test_labels = _take(train_files, train_labels, test_idx)
            train_files, train_labels = _take(train_files, train_labels, keep)
        if "val" in listed:
            _, calib_idx, train_idx = _val_calib_train(len(train_files), config, generator, val_size=0)
            val_order = torch.randperm(len(listed["val"][0]), generator=generator)[:config.val_size or VAL_SIZE]
            val_files, val_labels = _take(*listed["val"], val_order)
        else:
            val_idx, calib_idx, train_idx = _val_calib_train(len(train_files), config, generator)
            val_files, val_labels = _take(train_files, train_labels, val_idx)
    else:
        found = _classes(root)
        classes = sorted(found)
        files, labels = _flatten(found, classes)
        test_idx, keep = _hold_out(len(files), config.test_size, generator, "data.test_size")
        test_files, test_labels = _take(files, labels, test_idx)
        train_files, train_labels = _take(files, labels, keep)
        val_idx, calib_idx, train_idx = _val_calib_train(len(train_files), config, generator)
        val_files, val_labels = _take(train_files, train_labels, val_idx)
    calib_files, calib_labels = _take(train_files, train_labels, calib_idx)
    train_files, train_labels = _take(train_files, train_labels, train_idx)
    _check_readable(train_files + val_files + test_files + calib_files)

    def split(files: list[str], labels: list[int]) -> FolderSplit:
        return FolderSplit(root=str(root), files=tuple(os.path.relpath(f, root) for f in files),
                           labels=tuple(labels), preprocessing=preprocessing, workers=config.workers)

    calib_x, calib_y = split(calib_files, calib_labels).tensors()
    return Splits(train=split(train_files, train_labels), calib=TensorSplit(x=calib_x, y=calib_y),
                  val=split(val_files, val_labels), test=split(test_files, test_labels), num_classes=len(classes),
                  preprocessing=preprocessing)


# the folder names a split may have under an image folder's root (as torchvision's and Hugging Face's data sets name
# them)
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def _split_folders(root: Path) -> dict[str, Path]:
    """Split name -> its folder under ``root``, for the splits that have one.

    Raises:
        AutocompError: two folders name the same split (``val/`` and ``validation/``).
    """
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        there = [root / name for name in names if (root / name).is_dir()]
        if len(there) > 1:
            raise AutocompError(f"{root} has {', '.join(p.name + '/' for p in there)}: each is a {split} split; keep "
                                "one of them (or move the other out of the root)")
        if there:
            found[split] = there[0]
    return found


def _flatten(found: dict[str, list[str]], classes: list[str]) -> tuple[list[str], list[int]]:
    files = [path for name in classes for path in found[name]]
    labels = [index for index, name in enumerate(classes) for _ in found[name]]
    return files, labels


def _take(files: list[str], labels: list[int], index: torch.Tensor) -> tuple[list[str], list[int]]:
    picked = index.tolist()
    return [files[i] for i in picked], [labels[i] for i in picked]
