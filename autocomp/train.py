"""Training and evaluation loops (teacher training, accuracy)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from timm.layers import PatchDropout
from torch.nn import functional as F

from autocomp import _quiet
from autocomp._timeout import check_time
from autocomp.data import Split
from autocomp.errors import AutocompError

if TYPE_CHECKING:
    from autocomp.data import Splits
    from autocomp.models import ModelSpec

__all__ = ["TrainConfig", "train", "evaluate", "train_or_reuse"]


@dataclass(frozen=True)
class TrainConfig:
    """Supervised training settings.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step.
        lr: peak AdamW learning rate (linear warm-up, then cosine decay).
        weight_decay: AdamW weight decay.
        warmup_steps: steps of linear warm-up.
        label_smoothing: cross-entropy label smoothing.
        hflip: random horizontal flips as augmentation.
        seed: seed of shuffling and initialisation-independent randomness.
        patch_drop: share of the patch tokens each training image leaves out, at random (timm's ``PatchDropout``;
            a timm ViT's ``patch_drop`` only), or a list of shares, one per epoch (e.g. ``[0.75, 0.5, 0]``). It
            makes each step cheaper by about that share; the trained model is the same architecture and sees every
            token at evaluation. 0: off.
        patch_drop_epochs: with one share, how many of the first epochs drop patches (None: all of them); the last
            ones then train on every token, as the model is evaluated.
    """

    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    label_smoothing: float = 0.1
    hflip: bool = True
    seed: int = 0
    patch_drop: float | tuple[float, ...] = 0.0
    patch_drop_epochs: int | None = None

    def __post_init__(self) -> None:
        shares = self.patch_drop if isinstance(self.patch_drop, (list, tuple)) else [self.patch_drop]
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0.0 <= s < 1.0 for s in shares):
            raise AutocompError(f"train.patch_drop must be a share in [0, 1) or a list of them, got "
                                f"{self.patch_drop!r}")
        if isinstance(self.patch_drop, (list, tuple)):
            if len(self.patch_drop) != self.epochs:
                raise AutocompError(f"train.patch_drop lists {len(self.patch_drop)} shares for {self.epochs} epochs; "
                                    "give one per epoch")
            if self.patch_drop_epochs is not None:
                raise AutocompError("train.patch_drop_epochs goes with a single patch_drop share; a list already "
                                    "gives each epoch its own (0 for every token)")
            object.__setattr__(self, "patch_drop", tuple(float(s) for s in self.patch_drop))
        if self.patch_drop_epochs is not None and not 0 <= self.patch_drop_epochs <= self.epochs:
            raise AutocompError(f"train.patch_drop_epochs must be between 0 and epochs ({self.epochs}), got "
                                f"{self.patch_drop_epochs!r}")

    def epoch_patch_drop(self) -> list[float]:
        """The share of patches dropped in each epoch."""
        if isinstance(self.patch_drop, tuple):
            return list(self.patch_drop)
        dropping = self.epochs if self.patch_drop_epochs is None else self.patch_drop_epochs
        return [self.patch_drop if epoch < dropping else 0.0 for epoch in range(self.epochs)]


def train(model: nn.Module, split: Split, config: TrainConfig,
          log: Callable[[str], None] | None = None) -> nn.Module:
    """Train ``model`` on ``split`` with AdamW and a warm-up + cosine schedule."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(split) / config.batch_size)
    total = config.epochs * steps_per_epoch

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    keep_tokens = getattr(model, "patch_drop", None)
    drops = config.epoch_patch_drop()
    if any(drops) and keep_tokens is None:
        raise AutocompError(f"train.patch_drop needs a timm ViT (a model with a patch_drop layer); "
                            f"{type(model).__name__} has none: set patch_drop to 0")
    model.train()
    start = time.perf_counter()
    try:
        for epoch, share in enumerate(drops):
            if keep_tokens is not None:  # the model's own layer for epochs on every token, and after
                model.patch_drop = (PatchDropout(share, num_prefix_tokens=model.num_prefix_tokens) if share
                                    else keep_tokens)
            running = 0.0
            for x, y in split.batches(config.batch_size, shuffle=True, generator=generator):
                if config.hflip:
                    flip = torch.rand(len(x), generator=generator) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += loss.item()
            if log:
                log(f"epoch {epoch + 1}/{config.epochs}: loss {running / steps_per_epoch:.4f} "
                    f"({time.perf_counter() - start:.0f} s)")
    finally:
        if keep_tokens is not None:
            model.patch_drop = keep_tokens
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, batch_size: int | None = None, device: str = "cpu") -> float:
    """Top-1 accuracy in percent; batches of ``split.eval_batch_size()`` unless ``batch_size`` is given.

    ``device``: where the model runs (``cuda``: a trial's GPU, 23x faster than 16 CPU threads on an H200 for a
    224-px ViT-S: ``benchmarks/cuda_backend.py --steps scoring``); a model holding CPU-only layers (autocomp's int8
    kernels) runs on the CPU wherever asked. The model is on the CPU again after."""
    if device != "cpu" and cpu_only(model):
        device = "cpu"
    was_training = model.training
    model.eval().to(device)
    correct = 0
    try:
        for x, y in split.batches(batch_size or split.eval_batch_size()):
            check_time()
            with _quiet.step():  # waits while another trial on this machine times its candidate
                correct += (model(x.to(device)).argmax(-1).cpu() == y).sum().item()
    finally:
        model.to("cpu").train(was_training)  # no copy where it is there already
    return 100.0 * correct / max(1, len(split))


def scoring_device(gpus: float) -> str:
    """Where a job with ``gpus`` GPUs per trial distils and scores: ``cuda`` where it asks for one and this process
    sees one, else ``cpu``."""
    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


def release_gpu() -> None:
    """Hand the GPU memory PyTorch's allocator keeps cached in this process back to the device (where a driver's
    passes used the GPU its trials share)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def cpu_only(model: nn.Module) -> bool:
    """Whether ``model`` holds layers that run on the CPU alone: autocomp's int8 layers (CPU kernels)."""
    from autocomp.ops.quantize import Int8Linear

    return any(isinstance(module, Int8Linear) for module in model.modules())


def train_or_reuse(spec: "ModelSpec", splits: "Splits", config: TrainConfig, checkpoint: str | Path,
                   log: Callable[[str], None] = print) -> tuple[nn.Module, bool]:
    """The model of ``spec`` with weights from ``checkpoint`` if it exists, else trained on ``splits.train`` and
    saved there (safetensors). Returns (model, trained_now)."""
    import dataclasses

    from autocomp._io import write_safetensors
    from autocomp.models import create_model

    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        return create_model(dataclasses.replace(spec, checkpoint=str(checkpoint))), False
    torch.manual_seed(config.seed)
    model = create_model(dataclasses.replace(spec, checkpoint=None))
    log(f"training {spec.name} {dict(spec.kwargs)} for {config.epochs} epochs -> {checkpoint}")
    train(model, splits.train, config, log=log)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(checkpoint, model.state_dict())
    return model, True
