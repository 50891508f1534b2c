"""The sources (Fashion-MNIST, scikit-learn's digits, image folders) and their deterministic, seeded split into
train / calibration / validation / test.

An image folder's held-out splits are drawn in an order each file's own path decides (a hash of it and the seed),
not by a permutation of the file list: with the same split sizes (a resumed search keeps its own), a training image
removed (a broken one) leaves validation, test and calibration as they were, and an added one changes them only
where it falls among them (the run records each split's files, :attr:`Splits.digests`, and compares them)."""

from __future__ import annotations

import gzip
import hashlib
import os
import unicodedata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autocomp.data._config import BUILTIN_PIXEL_MAX, FLOAT_PIXELS, DataConfig, Preprocessing, resolve_preprocessing
from autocomp.data._splits import FolderSplit, Splits, TensorSplit, unreadable
from autocomp.errors import AutocompError, warn

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_INSTALL = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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
        names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
        return _folder_splits(config, resolve_preprocessing(model, config), names=names)
    loader = {"fashion_mnist": _fashion_mnist, "digits": _digits}[config.dataset]
    train_x, train_y, test_x, test_y, classes = loader(config)
    generator = torch.Generator().manual_seed(config.seed)
    if test_x is None:  # no official test split: hold one out first
        test_idx, train_idx = _hold_out(torch.randperm(len(train_y), generator=generator), config.test_size,
                                        "data.test_size")
        test_x, test_y, train_x, train_y = train_x[test_idx], train_y[test_idx], train_x[train_idx], train_y[train_idx]
    val_idx, calib_idx, train_idx = _val_calib_train(torch.randperm(len(train_y), generator=generator), config)
    channels = train_x.shape[1]
    stats = train_x[train_idx]
    mean = config.mean or tuple(stats.mean(dim=(0, 2, 3)).tolist() if channels > 1 else [float(stats.mean())])
    std = config.std or tuple(stats.std(dim=(0, 2, 3)).tolist() if channels > 1 else [float(stats.std())])
    preprocessing = Preprocessing(image_size=train_x.shape[-1], channels=channels, mean=mean, std=std,
                                  interpolation="bilinear", crop_pct=1.0, pixel_max=BUILTIN_PIXEL_MAX[config.dataset])
    shift = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
    scale = torch.tensor(preprocessing.std).view(1, -1, 1, 1)

    def split(x: torch.Tensor, y: torch.Tensor) -> TensorSplit:
        return TensorSplit(x=((x - shift) / scale).contiguous(), y=y)

    return Splits(train=split(train_x[train_idx], train_y[train_idx]),
                  calib=split(train_x[calib_idx], train_y[calib_idx]),
                  val=split(train_x[val_idx], train_y[val_idx]), test=split(test_x, test_y),
                  classes=classes, preprocessing=preprocessing)


VAL_SIZE = 5000  # the most validation images a split takes unless data.val_size says otherwise
CALIB_SIZE = 256  # the most calibration images unless data.calib_size says otherwise
TEST_SIZE = 360  # the most test images held out of data without a test split unless data.test_size says otherwise


def _hold_out(order: torch.Tensor, size: int | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` of ``order`` (indices of the images) and the rest."""
    count = len(order)
    if size is None:
        size = min(TEST_SIZE, count // 5)
        if size < 1:
            raise AutocompError(f"{count} images are too few to hold a test split out of them; add images or a "
                                "test/ folder")
    if size >= count:
        raise AutocompError(f"{name}={size} leaves no training images out of {count}; lower it")
    return order[:size], order[size:]


def _val_calib_train(order: torch.Tensor, config: DataConfig,
                     val_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validation, calibration and training indices: consecutive parts of ``order``."""
    count = len(order)
    calib_size = config.calib_size or min(CALIB_SIZE, max(1, count // 5))
    if val_size is None:
        val_size = config.val_size or min(VAL_SIZE, max(1, (count - calib_size) // 5))
    held_out = val_size + calib_size
    if held_out >= count:
        raise AutocompError(f"data.val_size + data.calib_size = {held_out} leaves no training images out of "
                            f"{count}; lower them")
    return order[:val_size], order[val_size:held_out], order[held_out:]


def _stable_order(files: list[str], root: Path, seed: int) -> torch.Tensor:
    """Indices of ``files`` ordered by a hash of the seed and each file's path under ``root``: where a file falls
    does not depend on the others."""
    keys = [hashlib.sha256(os.fsencode(f"{seed}/{os.path.relpath(f, root)}")).digest() for f in files]
    return torch.tensor(sorted(range(len(files)), key=keys.__getitem__), dtype=torch.int64)


def _digest(files: list[str], labels: list[int], root: Path) -> str:
    """A split's identity: its files (paths under ``root``) and labels."""
    listed = "\n".join(f"{os.path.relpath(f, root)}\t{label}" for f, label in zip(files, labels))
    return hashlib.sha256(os.fsencode(listed)).hexdigest()[:16]


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")  # labels 0-9, as the data set's authors name them


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
        return (torch.from_numpy(images.astype(np.float32) / BUILTIN_PIXEL_MAX["fashion_mnist"]),
                torch.from_numpy(labels.astype(np.int64)))

    train_x, train_y = part("train")
    test_x, test_y = part("t10k")
    return train_x, train_y, test_x, test_y, FASHION_MNIST_CLASSES


def _digits(config: DataConfig):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / BUILTIN_PIXEL_MAX["digits"]).unsqueeze(1)
    return x, torch.from_numpy(digits.target.astype(np.int64)), None, None, tuple(str(d) for d in range(10))


# -- image folders ----------------------------------------------------------------------------------------------

_IGNORED = ("thumbs.db", "desktop.ini")


def _classes(folder: Path, *, held_out: bool = False) -> dict[str, list[str]]:
    """Class name -> image paths, for a folder of class folders. ``held_out``: a val/ or test/ folder, where a class
    folder may be empty or missing (its classes are train/'s); in a training folder every class needs images."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise AutocompError(f"{folder} has no class folders; put each class's images in a folder of its own "
                            f"({folder}/<class>/<image>)")
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if loose:  # beside the class folders: no class, and not read
        raise AutocompError(f"{folder} holds {len(loose)} image(s) beside its class folders ({', '.join(loose[:3])}"
                            f"{' ...' if len(loose) > 3 else ''}); move each into its class's folder, or out of "
                            f"{folder}")
    found: dict[str, list[str]] = {}
    walked: dict[str, str] = {}  # each real folder read -> the class it was read for
    other: list[Path] = []  # files that are not images (notes, labels, annotations): left out, as torchvision does
    for name in classes:
        files = []
        paths, reals = _files_under(folder / name)
        for real in reals:
            if walked.setdefault(real, name) != name:  # a link: the same images would carry two labels
                raise AutocompError(f"the images of folder {real} are read for class {walked[real]!r} and for class "
                                    f"{name!r} (a link under {folder} leads to it from both); an image has one label: "
                                    "remove the link, or copy the images into the one class they belong to")
        for path in paths:
            if path.name.lower() in _IGNORED:
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                other.append(path)
                continue
            files.append(str(path))
        found[name] = files
    if other:
        shown = ", ".join(str(path.relative_to(folder)) for path in other[:3]) + (" ..." if len(other) > 3 else "")
        warn(f"{len(other)} file(s) in the class folders of {folder} are not images and are left out ({shown}); "
             f"images are {', '.join(IMAGE_EXTENSIONS)}: convert any other image format to one of them")
    empty = [name for name, files in found.items() if not files]
    if held_out:
        if len(empty) == len(found):
            raise AutocompError(f"{folder} holds no images; add images to its class folders, or remove it (then "
                                "images are held out of the training folder)")
        return {name: files for name, files in found.items() if files}
    if empty:
        raise AutocompError(f"class folder(s) {empty} under {folder} hold no images; add images or remove them")
    return found


def _files_under(folder: Path) -> tuple[list[Path], set[str]]:
    """The files under ``folder`` at any depth, in sorted order: folders linked into it followed (each once; not one
    that holds ``folder`` itself, whose other classes' images would take this one's label), hidden files and folders
    (``.ipynb_checkpoints``) left out; and the real paths of the folders read."""
    def unreadable_folder(error: OSError) -> None:
        raise AutocompError(f"cannot read folder {error.filename}: {error.strerror}; fix its permissions or move it "
                            "out of the class folders")

    top, files, seen = os.path.realpath(folder), [], set()
    for current, folders, names in os.walk(folder, followlinks=True, onerror=unreadable_folder):
        real = os.path.realpath(current)
        if real in seen or (real != top and os.path.commonpath([real, top]) == real):  # walked, or holds folder
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        files += [Path(current) / name for name in names if not name.startswith(".")]
    return sorted(files), seen


def _check_readable(paths: list[str]) -> None:
    """Open each file's header (fast: no decoding) so that broken files are named, all at once, before any trial
    runs."""
    from PIL import Image, UnidentifiedImageError

    broken = []
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.mode == "F":  # the header is the check
                    broken.append((path, FLOAT_PIXELS))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            broken.append((path, str(exc)))
    if broken:
        raise AutocompError(unreadable(broken))


def _warn_shared(splits: dict[str, list[str]], root: Path) -> None:
    """Warn where an image of one split is also one of another (the same file through a link, or a copy of its
    bytes), whether in split folders or drawn by autocomp from one folder that holds an image twice: a held-out split
    that shares images with training scores the models partly on images they learnt.

    Cheap where nothing is shared: only files of equal size are compared, by a 4 KiB block at their start, then at
    their middle and end, and read whole only where those agree."""
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for split, files in splits.items():
        for path in files:
            groups.setdefault((os.stat(path).st_size,), []).append((split, path))
    for part in (*_SAMPLES, None):
        narrowed: dict[tuple, list[tuple[str, str]]] = {}
        for key, group in groups.items():
            if len({split for split, _ in group}) > 1:  # equal files within one split are no leak
                for split, path in group:
                    narrowed.setdefault(key + (_contents(path, part),), []).append((split, path))
        groups = narrowed
    order = list(splits)
    shared: dict[tuple[str, str], dict[str, str]] = {}  # (split, an earlier split) -> {image: its twin there}
    for group in groups.values():
        first: dict[str, str] = {}
        for split, path in group:
            first.setdefault(split, path)
        for split, path in group:
            for other in order[:order.index(split)]:  # each pair once: val in train, test in train, test in val
                if other in first:
                    shared.setdefault((split, other), {})[path] = first[other]
    if not shared:
        return
    said = [f"{len(pairs)} of the {len(splits[split])} {split} images {'is a' if len(pairs) == 1 else 'are'} "
            f"{other} image{'' if len(pairs) == 1 else 's'} too" for (split, other), pairs in shared.items()]
    path, twin = next(iter(next(iter(shared.values())).items()))
    warn(f"{'; '.join(said)} (the same file through a link, or a copy of its bytes; e.g. "
         f"{os.path.relpath(path, root)} is {os.path.relpath(twin, root)}): accuracy on them reads higher than on "
         "new images; remove the copies and links, keeping one of each image")


_SAMPLES = ("start", "middle", "end")  # where a 4 KiB block of two files of equal size is compared first


def _contents(path: str, part: str | None, block: int = 4096) -> str:
    """A digest of a 4 KiB block of the file (``part``: at its start, middle or end), or of all of it (None)."""
    with open(path, "rb") as file:
        if part is None:
            return hashlib.file_digest(file, "sha1").hexdigest()
        size = os.fstat(file.fileno()).st_size
        file.seek({"start": 0, "middle": max(0, size // 2 - block // 2), "end": max(0, size - block)}[part])
        return hashlib.sha1(file.read(block)).hexdigest()


def _folder_root(config: DataConfig) -> Path:
    root = Path(config.root) if config.root else None
    if root is None or not root.is_dir():
        where = f" ({root.resolve()})" if root is not None and str(root.resolve()) != config.root else ""
        raise AutocompError(f"data.root: image folder {config.root!r}{where} is not a directory; set data.root to a "
                            "folder with train/ and val/ folders of class folders, or one folder of class folders")
    return root


def _folder_splits(config: DataConfig, preprocessing: Preprocessing, names: list[str] | None = None) -> Splits:
    root = _folder_root(config)
    split_dirs = _split_folders(root)

    def order(files: list[str]) -> torch.Tensor:
        return _stable_order(files, root, config.seed)

    if split_dirs:  # split folders: train/ is required, val/ and test/ are held out of it when missing
        if "train" not in split_dirs:
            raise AutocompError(f"{root} has {sorted(p.name for p in split_dirs.values())} but no train/ folder; add "
                                "train/ with one folder of images per class")
        parts = {name: _classes(path, held_out=name != "train") for name, path in split_dirs.items()}
        # as written in train/, sorted (a model trained with torchvision's ImageFolder), or as the model names them
        classes = _class_order(sorted(parts["train"]), names)
        parts = {name: _same_names(found, classes) for name, found in parts.items()}
        for name, found in parts.items():  # val/ and test/ may lack a rare class; none may add one
            if set(found) - set(classes):
                raise AutocompError(f"{split_dirs[name]} has classes {sorted(set(found) - set(classes))} that "
                                    f"{split_dirs['train']} has not ({classes}); the classes are train/'s: add "
                                    "them there or remove them here")
            if missing := [c for c in classes if c not in found]:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                warn(f"{split_dirs[name]} has no images of {len(missing)} of the {len(classes)} classes "
                     f"({shown}): its accuracy is over the others alone; add images of them there if they were "
                     "left out by mistake")
        listed = {name: _flatten(found, classes) for name, found in parts.items()}
        train_dir = f"{split_dirs['train'].name}/"
        origins = {name: f"{split_dirs[name].name}/" if name in listed else f"held out of {train_dir}"
                   for name in ("train", "calib", "val", "test")}
        train_files, train_labels = listed["train"]
        if "test" in listed:
            test_files, test_labels = listed["test"]
        else:
            test_idx, keep = _hold_out(order(train_files), config.test_size, "data.test_size")
            test_files, test_labels = _take(train_files, train_labels, test_idx)
            train_files, train_labels = _take(train_files, train_labels, keep)
        if "val" in listed:
            _, calib_idx, train_idx = _val_calib_train(order(train_files), config, val_size=0)
            val_order = order(listed["val"][0])[:config.val_size or VAL_SIZE]
            val_files, val_labels = _take(*listed["val"], val_order)
        else:
            val_idx, calib_idx, train_idx = _val_calib_train(order(train_files), config)
            val_files, val_labels = _take(train_files, train_labels, val_idx)
    else:
        origins = {"train": "the folder", "calib": "held out of the folder", "val": "held out of the folder",
                   "test": "held out of the folder"}
        found = _classes(root)
        classes = _class_order(sorted(found), names)
        files, labels = _flatten(found, classes)
        test_idx, keep = _hold_out(order(files), config.test_size, "data.test_size")
        test_files, test_labels = _take(files, labels, test_idx)
        train_files, train_labels = _take(files, labels, keep)
        val_idx, calib_idx, train_idx = _val_calib_train(order(train_files), config)
        val_files, val_labels = _take(train_files, train_labels, val_idx)
    calib_files, calib_labels = _take(train_files, train_labels, calib_idx)
    train_files, train_labels = _take(train_files, train_labels, train_idx)
    _check_readable(train_files + val_files + test_files + calib_files)
    _warn_shared({"train": train_files + calib_files, "val": val_files, "test": test_files}, root)

    def split(files: list[str], labels: list[int]) -> FolderSplit:
        return FolderSplit(root=str(root), files=tuple(os.path.relpath(f, root) for f in files),
                           labels=tuple(labels), preprocessing=preprocessing, workers=config.workers)

    calib_x, calib_y = split(calib_files, calib_labels).tensors()
    digests = {name: _digest(files, labels, root) for name, (files, labels) in {
        "train": (train_files, train_labels), "calib": (calib_files, calib_labels), "val": (val_files, val_labels),
        "test": (test_files, test_labels)}.items()}
    return Splits(train=split(train_files, train_labels), calib=TensorSplit(x=calib_x, y=calib_y),
                  val=split(val_files, val_labels), test=split(test_files, test_labels), classes=tuple(classes),
                  preprocessing=preprocessing, digests=digests, origins=origins)


# the folder names a split may have under an image folder's root (as torchvision's and Hugging Face's data sets name
# them)
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def _split_folders(root: Path) -> dict[str, Path]:
    """Split name -> its folder under ``root``, for the splits that have one (its name in any case).

    Raises:
        AutocompError: two folders name the same split (``val/`` and ``validation/``).
    """
    found = {}
    folders = sorted(path for path in root.iterdir() if path.is_dir())  # Val/ and VALIDATION/ too
    for split, names in SPLIT_FOLDERS.items():
        there = sorted((path for path in folders if path.name.lower() in names),
                       key=lambda path: (names.index(path.name.lower()), path.name))  # noqa: B023 - sorted at once
        if len(there) > 1:
            raise AutocompError(f"{root} has {', '.join(p.name + '/' for p in there)}: each is a {split} split; keep "
                                "one of them (or move the other out of the root)")
        if there:
            found[split] = there[0]
    return found


def _class_order(folders: list[str], names: list[str] | None) -> list[str]:
    """The class folders (sorted) in the order of the model's outputs where the model names them (transformers'
    id2label, the classes of a model autocomp saved) with the folders' names; else as they are, with a warning where
    the names and the folders are partly the same (output i is then the i-th folder, which the names may contradict)."""
    if not names:
        return folders
    form = {unicodedata.normalize("NFC", name): name for name in folders}  # a folder copied from macOS: NFD
    named = [form.get(unicodedata.normalize("NFC", str(name))) for name in names]
    if None not in named and sorted(named) == folders:
        return named
    if set(form) & {unicodedata.normalize("NFC", str(name)) for name in names}:
        warn(f"the model names its outputs {list(names)} (its label names), which are not the class folders "
             f"{folders}: output i is taken as the i-th class folder in sorted order; name the folders as the model "
             "names its classes, or give the model the folders' names")
    return folders


def _same_names(found: dict[str, list[str]], classes: list[str]) -> dict[str, list[str]]:
    """``found`` with its class names written as ``classes`` writes them where they are the same text in another
    Unicode form: a folder copied from macOS names ``é`` as ``e`` and a combining accent, one made elsewhere as one
    character; the two print alike."""
    import unicodedata

    form = {unicodedata.normalize("NFC", name): name for name in classes}
    named: dict[str, list[str]] = {}
    for name, files in found.items():
        named.setdefault(name if name in classes else form.get(unicodedata.normalize("NFC", name), name),
                         []).extend(files)
    return named


def _flatten(found: dict[str, list[str]], classes: list[str]) -> tuple[list[str], list[int]]:
    """Files and their labels, a class's label its index in ``classes`` (a split may lack some of them)."""
    files = [path for name in classes for path in found.get(name, [])]
    labels = [index for index, name in enumerate(classes) for _ in found.get(name, [])]
    return files, labels


def _take(files: list[str], labels: list[int], index: torch.Tensor) -> tuple[list[str], list[int]]:
    picked = index.tolist()
    return [files[i] for i in picked], [labels[i] for i in picked]
