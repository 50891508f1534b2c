"""A split's images and labels, held in memory (small data sets) or read from an image folder batch by batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from autocomp.data._config import Preprocessing
from autocomp.errors import AutocompError, AutocompTypeError

EVAL_BATCH_BYTES = 32 * 2**20  # evaluation batches of about this many input bytes (28 px: 512 images, 224 px: 55)


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

    def sample(self, count: int, seed: int = 0) -> Split:
        """``count`` items drawn at random (seeded), in their order here: a listed test/ folder is in class order,
        where its first items would be its first classes only."""
        if count >= len(self):
            return self
        return self.take(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count].sort().values)

    def take(self, indices: torch.Tensor) -> Split:
        """The items at ``indices``, in that order."""
        raise NotImplementedError

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images and labels as two tensors."""
        xs, ys = zip(*self.batches(256)) if len(self) else ((), ())
        return (torch.cat(xs) if xs else torch.empty(0)), (torch.cat(ys) if ys else torch.empty(0, dtype=torch.long))

    def input_numel(self) -> int:
        """Values in one preprocessed input image."""
        raise NotImplementedError

    def labels_only(self) -> torch.Tensor:
        """The labels (N,) int64, without decoding or holding an image."""
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

    def __post_init__(self) -> None:
        # what the caller gives from Python: a mistake here failed deep in training (float labels), or not at all
        # (200 images and 100 labels were taken as 100 images)
        if not isinstance(self.x, torch.Tensor) or self.x.dim() != 4 or not self.x.is_floating_point():
            got = (f"a {self.x.dim()}-D {self.x.dtype} tensor" if isinstance(self.x, torch.Tensor)
                   else type(self.x).__name__)
            raise AutocompTypeError(f"TensorSplit's x must be a float tensor of preprocessed images (N, C, H, W), got "
                                    f"{got}; torch.as_tensor(...).float() a NumPy array, unsqueeze(1) gray images")
        if not isinstance(self.y, torch.Tensor) or self.y.dim() != 1 or self.y.is_floating_point() \
                or self.y.dtype == torch.bool:
            got = (f"a {self.y.dim()}-D {self.y.dtype} tensor" if isinstance(self.y, torch.Tensor)
                   else type(self.y).__name__)
            raise AutocompTypeError(f"TensorSplit's y must be a 1-D tensor of class indices (int64), got {got}; "
                                    "labels.long() float labels, argmax(1) one-hot ones")
        if len(self.x) != len(self.y):
            raise AutocompError(f"TensorSplit has {len(self.x)} images (x) but {len(self.y)} labels (y): give one "
                                "label per image")
        if self.y.dtype != torch.int64:  # int32 or uint8 labels: the losses take int64
            object.__setattr__(self, "y", self.y.long())
        if self.x.dtype != torch.float32:  # float64 (NumPy's) or half images: the models' weights are float32
            object.__setattr__(self, "x", self.x.float())

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

    def take(self, indices: torch.Tensor) -> TensorSplit:
        return TensorSplit(x=self.x[indices], y=self.y[indices])

    def __repr__(self) -> str:  # not the tensors' values: pages of them
        return f"TensorSplit({len(self)} images of {tuple(self.x.shape[1:])}, labels {_label_range(self.y)})"

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def labels_only(self) -> torch.Tensor:
        return self.y

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
        loader = iter(torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                                  collate_fn=_collate))
        for batch, index in zip(loader, batches, strict=True):
            if isinstance(batch, _Unreadable):  # said here, in one line, not inside the loader's worker traceback
                found = list(batch.images)
                if len(self) <= READ_TO_THE_END:  # every broken image of the split named at once
                    found += [image for rest in loader if isinstance(rest, _Unreadable) for image in rest.images]
                raise AutocompError(unreadable(found))
            x, y = batch
            yield (x, y, torch.tensor(index)) if with_index else (x, y)

    def input_numel(self) -> int:  # known from the preprocessing: no image is decoded to size a batch
        return self.preprocessing.channels * self.preprocessing.image_size ** 2

    def labels_only(self) -> torch.Tensor:
        return torch.tensor(self.labels, dtype=torch.long)

    def subset(self, count: int) -> FolderSplit:
        return FolderSplit(root=self.root, files=self.files[:count], labels=self.labels[:count],
                           preprocessing=self.preprocessing, workers=self.workers)

    def take(self, indices: torch.Tensor) -> FolderSplit:
        chosen = indices.tolist()
        return FolderSplit(root=self.root, files=tuple(self.files[i] for i in chosen),
                           labels=tuple(self.labels[i] for i in chosen), preprocessing=self.preprocessing,
                           workers=self.workers)

    def __repr__(self) -> str:  # not every file name
        return f"FolderSplit({len(self)} images under {self.root}, labels {_label_range(self.labels)})"


def _label_range(labels: Any) -> str:
    """``0..9`` for a split's labels (``none`` for an empty one)."""
    labels = torch.as_tensor(labels)
    return f"{int(labels.min())}..{int(labels.max())}" if len(labels) else "none"


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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | _Unreadable:
        from PIL import Image

        path = self.root / self.files[index]
        try:
            with Image.open(path) as image:
                return self.transform(image), self.labels[index]
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated, corrupt, too large
            return _Unreadable(((str(path), str(exc)),))


@dataclass(frozen=True)
class _Unreadable:
    """Images that could not be read (path, error), passed back from a loader's worker to be raised in the caller."""

    images: tuple[tuple[str, str], ...]


def _collate(items: list[tuple[torch.Tensor, int] | _Unreadable]) -> tuple[torch.Tensor, torch.Tensor] | _Unreadable:
    broken = [image for item in items if isinstance(item, _Unreadable) for image in item.images]
    if broken:
        return _Unreadable(tuple(broken))
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


READ_TO_THE_END = 10_000  # a split of at most this many images is read to its end once one fails, to name them all
NAMED = 5  # unreadable images named in the message, at most


def unreadable(images: list[tuple[str, str]]) -> str:
    """The message for images that cannot be read, (path, error) each: one line, naming the first ``NAMED``."""
    if len(images) == 1:
        return f"cannot read image {images[0][0]}: {images[0][1]}; remove or replace the file"
    named = "; ".join(f"{path} ({error})" for path, error in images[:NAMED])
    more = f"; and {len(images) - NAMED} more" if len(images) > NAMED else ""
    return f"cannot read {len(images)} images: {named}{more}; remove or replace them"


@dataclass(frozen=True)
class Splits:
    """The four splits, the class names (label ``i`` is ``classes[i]``: an image folder's sorted class folders), the
    preprocessing that made their inputs, and (an image folder's) each split's identity: a digest of its files and
    labels, by split name (None for the built-in data sets, which the job's data settings decide), and where the
    train, val and test images come from (an image folder's: ``val/``, ``held out of train/`` ...; None for the
    built-in data sets)."""

    train: Split
    calib: TensorSplit
    val: Split
    test: Split
    classes: tuple[str, ...]
    preprocessing: Preprocessing | None = None
    digests: Mapping[str, str] | None = None
    origins: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.classes, int):  # a class count, as Splits took it before it named the classes
            object.__setattr__(self, "classes", tuple(str(label) for label in range(self.classes)))

    @property
    def num_classes(self) -> int:
        return len(self.classes)
