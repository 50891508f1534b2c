"""Knowledge distillation: after compression, fine-tune the student against the uncompressed teacher.

The loss is ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``
(Hinton et al. 2015; the ``T^2`` keeps the soft term's gradients on the scale of the hard one), plus, optionally,
``feature_weight`` times the MSE between the two models' block outputs.

Its settings (:class:`autocomp.recipe.Distill`) are part of the recipe. Quantized layers train in their fake-quant
form (:func:`autocomp.ops.qat.trainable`: fp32 master weights, forward through the layer's quantizer,
straight-through gradients) and are packed again at the end (:func:`autocomp.ops.qat.deployed`), so the returned
model has the same structure and weight bytes as the compressed one it was given.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from autocomp import _quiet
from autocomp._timeout import check_time
from autocomp._timing import weight_nbytes
from autocomp.data import Split, TensorSplit
from autocomp.errors import AutocompError, AutocompTypeError, shown, warn
from autocomp._foreign import is_foreign_vit, library_model
from autocomp.models import model_images, timm_equivalent, vit_blocks
from autocomp.ops.qat import deployed, trainable
from autocomp.recipe import Distill

__all__ = ["WARMUP_FRACTION", "TeacherCache", "distill", "distillation_loss"]

# Linear warm-up over this fraction of the steps, then cosine decay to 0. Fine-tuning starts from trained weights, so
# a short warm-up suffices: it only keeps AdamW's first, badly normalised updates from knocking the student about.
WARMUP_FRACTION = 0.1


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      alpha: float, temperature: float) -> torch.Tensor:
    """``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher/T || student/T)``, both terms batch means."""
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.log_softmax(teacher_logits / temperature, dim=-1), log_target=True, reduction="batchmean")
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


@dataclass(frozen=True)
class TeacherCache:
    """The teacher's logits on every batch a distillation draws, computed once per run and reused by every trial.

    The batches depend only on the split, ``batch_size`` and ``seed`` (a shorter distillation draws a prefix of
    them; ``alpha`` and the temperature do not change them), and the teacher's output on an image is the same in any
    batch (to float rounding: an eval-mode ViT computes each image apart), so the teacher runs once on each image the
    batches draw, however many times they draw it (100 steps of 64 from 1,024 images: 6.25x fewer forward passes),
    and a student distilled from the cache gets the weights it would get from the teacher itself.

    Attributes:
        batch_size: images per step of the distillations it serves.
        seed: their batch-order seed.
        outputs: the teacher's logits, one tensor per step.
    """

    batch_size: int
    seed: int
    outputs: tuple[torch.Tensor, ...]

    @staticmethod
    def drawn(count: int, config: Distill) -> list[torch.Tensor]:
        """The indices of the first ``config.steps`` batches ``distill`` draws from a split of ``count`` items, as
        :func:`_batches` draws them (each pass over the split reshuffled by the seeded generator)."""
        generator, steps = torch.Generator().manual_seed(config.seed), []
        while count and len(steps) < config.steps:
            order = torch.randperm(count, generator=generator)  # as Split.batches(shuffle=True) orders a pass
            steps += [order[start:start + config.batch_size]
                      for start in range(0, count, config.batch_size)][:config.steps - len(steps)]
        return steps

    @classmethod
    def build(cls, teacher: nn.Module, split: Split, config: Distill,
              progress: Callable[[int], None] | None = None, *, device: str = "cpu") -> TeacherCache:
        """Run the teacher once on each image of the first ``config.steps`` batches ``distill`` would draw for
        ``config``, in batches of ``config.batch_size``, on ``device`` (a copy of the teacher goes there; the logits
        are kept on the CPU); ``progress`` gets the number of teacher batches done after each (the images drawn
        apart, in batches of ``config.batch_size``)."""
        drawn = cls.drawn(len(split), config)
        images = torch.unique(torch.cat(drawn)) if drawn else torch.zeros(0, dtype=torch.long)  # sorted
        was_training = teacher.training
        teacher.eval()
        on_device = teacher if device == "cpu" else copy.deepcopy(teacher).to(device)
        logits: torch.Tensor | None = None
        try:
            with torch.no_grad():
                for done, (x, _, index) in enumerate(split.take(images).batches(config.batch_size, with_index=True)):
                    out = on_device(x.to(device)).cpu()
                    if logits is None:  # a row per image drawn, in the order of ``images``
                        logits = out.new_zeros((len(images), *out.shape[1:]))
                    logits[index] = out
                    if progress is not None:
                        progress(done + 1)
        finally:
            teacher.train(was_training)
        return cls(batch_size=config.batch_size, seed=config.seed,
                   outputs=tuple(logits[torch.searchsorted(images, index)] for index in drawn)
                   if logits is not None else ())

    def serves(self, config: Distill) -> bool:
        """Whether ``config`` draws a prefix of the cached batches (feature distillation needs the teacher run)."""
        return (config.batch_size, config.seed) == (self.batch_size, self.seed) and config.steps <= len(
            self.outputs) and config.feature_weight == 0


def distill(student: nn.Module, teacher: nn.Module, split: Split, config: Distill, *,
            cache: TeacherCache | None = None, device: str = "cpu",
            log: Callable[[str], None] | None = None,
            pause: tuple[int, Callable[[nn.Module], bool]] | None = None) -> nn.Module:
    """Fine-tune ``student`` (in place) against ``teacher`` on ``split`` for ``config.steps`` AdamW steps.

    The teacher runs in eval mode without gradients; the student trains in train mode (timm's dropout and drop-path
    rates default to 0). Deterministic for a given ``config.seed`` (and thread count); the global RNG is left as it
    was.

    ``pause``: ``(step, go_on)``: after that step, ``go_on`` gets a deployed, eval-mode copy of the student (on the
    CPU) and says whether to finish the schedule; False stops there (the student keeps the steps it took). The copy
    changes nothing: with or without a pause that goes on, the student comes out the same.

    ``cache``: the teacher's logits precomputed for these batches (:class:`TeacherCache`); used when it serves
    ``config``, else the teacher runs. ``device``: where the training runs (``cuda`` on a trial's GPU); the
    student comes back to the CPU, packed (a copy of the teacher goes to the device; the given one stays put).

    Returns:
        ``student`` in eval mode, quantized layers packed again; untouched when ``config.steps`` is 0.

    Raises:
        AutocompError: the split is empty, or the two models do not match (class count; depth or width with
            feature distillation).
    """
    if not isinstance(config, Distill):
        raise AutocompTypeError(f"distill's config must be an autocomp.Distill, e.g. autocomp.Distill(steps=200, "
                                f"alpha=0.9), got {type(config).__name__} {shown(config)}"
                                + ("; a recipe without a distill section has recipe.distill None" if config is None
                                   else ""))
    if not isinstance(split, Split):
        raise AutocompTypeError(f"distill's split must be an autocomp.data split of training images, e.g. "
                                f"TensorSplit(x=images, y=labels), got {type(split).__name__} {shown(split)}")
    if config.steps == 0:
        return student.eval()
    if student is teacher:  # before the teacher is rebuilt (a torchvision or transformers ViT is a new module then)
        raise AutocompError("distill's student and teacher are the same module: the student is the compressed "
                            "model, trained in place, the teacher the uncompressed one it was compressed from")
    if is_foreign_vit(student):  # a teacher of another library is rebuilt; a student is compress's output
        raise AutocompError(f"distill's student is {library_model(student)}: the student is the compressed model "
                            "autocomp.compress returned (timm's), trained in place; the teacher is the uncompressed "
                            "one (were they given the other way round? distill(student, teacher, ...))")
    teacher = timm_equivalent(teacher)  # torchvision's or transformers' ViT: timm's (transformers' gives no tensor)
    _check_inputs(student, teacher, split, config)
    cached = cache.outputs if cache is not None and cache.serves(config) else None
    on_device = teacher if device == "cpu" or cached is not None else copy.deepcopy(teacher).to(device)
    features = _FeatureMatch(student, on_device) if config.feature_weight > 0 else None
    teacher_was_training = teacher.training
    teacher.eval()
    on_device.eval()
    try:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device != "cpu" else []):
            torch.manual_seed(config.seed)
            _train(trainable(student).to(device), on_device, split, config, features, cached, device, log, pause)
    finally:  # even on failure the student goes back to its packed, exportable form, on the CPU
        deployed(student.to("cpu"))
        teacher.train(teacher_was_training)
        if features is not None:
            features.remove()
    return student.eval()


def _train(student: nn.Module, teacher: nn.Module, split: Split, config: Distill, features: _FeatureMatch | None,
           cached: tuple[torch.Tensor, ...] | None, device: str, log: Callable[[str], None] | None,
           pause: tuple[int, Callable[[nn.Module], bool]] | None = None) -> None:
    for parameter in student.parameters():  # compress() may hand over frozen or no-grad-built parameters
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config.steps))
    every = max(1, config.steps // 5)
    running, last = torch.zeros((), device=device), 0
    student.train()
    for step, (x, y) in enumerate(_batches(split, config), start=1):
        check_time()
        with _quiet.step():  # waits while another trial on this machine times its candidate
            x, y = x.to(device), y.to(device)
            if cached is not None:
                teacher_logits = cached[step - 1].to(device)
            else:
                with torch.no_grad():
                    teacher_logits = teacher(x)
            loss = distillation_loss(student(x), teacher_logits, y, config.alpha, config.temperature)
            if features is not None:
                loss = loss + config.feature_weight * features.loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if log is not None:
            running += loss.detach()
            if step % every == 0 or step == config.steps:
                log(f"distill step {step}/{config.steps}: loss {running.item() / (step - last):.4f}")
                running.zero_()
                last = step
        if pause is not None and step == pause[0] and step < config.steps:
            probe = deployed(copy.deepcopy(student).to("cpu")).eval()
            probe.zero_grad(set_to_none=True)
            if not pause[1](probe):
                break
    optimizer.zero_grad(set_to_none=True)  # the returned model holds no gradient buffers


def _lr_factor(step: int, steps: int) -> float:
    """Learning-rate multiplier at ``step`` of ``steps``: linear warm-up, then cosine decay to 0."""
    warmup = max(1, round(WARMUP_FRACTION * steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _batches(split: Split, config: Distill) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``config.steps`` shuffled batches, reshuffled after each pass over ``split``."""
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    while True:
        for batch in split.batches(config.batch_size, shuffle=True, generator=generator):
            if step == config.steps:
                return
            step += 1
            yield batch


def _check_inputs(student: nn.Module, teacher: nn.Module, split: Split, config: Distill) -> None:
    if len(split) == 0:
        raise AutocompError("distillation needs training images but the split is empty; lower data.val_size or "
                            "data.calib_size, or set distill steps to 0")
    classes = getattr(student, "num_classes", None), getattr(teacher, "num_classes", None)
    if None not in classes and classes[0] != classes[1]:
        raise AutocompError(f"the student predicts {classes[0]} classes but the teacher {classes[1]}; distil from "
                            "the model the student was compressed from")
    if isinstance(split, TensorSplit):  # the caller's tensors (image folders are made as the model takes them)
        model_images(teacher, split.x, "distill's split images")
        if classes[1] is not None and len(split) and (int(split.y.min()) < 0 or int(split.y.max()) >= classes[1]):
            raise AutocompError(f"distill's split has labels {int(split.y.min())}..{int(split.y.max())}, but the "
                                f"models predict {classes[1]} classes (labels 0..{classes[1] - 1}): give each image "
                                "its class index among the model's outputs")
    sizes = weight_nbytes(student), weight_nbytes(teacher)
    if sizes[1] < sizes[0]:
        warn(f"distill's teacher holds fewer weight bytes ({sizes[1] / 1e6:.2f} MB) than the student "
             f"({sizes[0] / 1e6:.2f} MB), which is trained in place: were they given the other way round? "
             "distill(student, teacher, ...) takes the compressed model first")
    if config.feature_weight == 0:
        return
    depths = len(vit_blocks(student)), len(vit_blocks(teacher))
    widths = getattr(student, "embed_dim", None), getattr(teacher, "embed_dim", None)
    if depths[0] != depths[1] or widths[0] != widths[1]:
        raise AutocompError(f"feature distillation matches block outputs one to one, but the student has "
                            f"{depths[0]} blocks of width {widths[0]} and the teacher {depths[1]} of width "
                            f"{widths[1]}; set feature_weight to 0")


class _FeatureMatch:
    """Forward hooks recording, at every block of both models, the token the classifier reads: the class token
    (``global_pool='token'``) or else the mean of the non-prefix tokens.

    Why not all tokens: token reduction leaves the student fewer (merged) tokens than the teacher, with no one-to-one
    correspondence; the class token exists in both at every depth and is what the head finally reads. Block outputs
    keep the embedding width whatever heads or MLP neurons were pruned, so the two features always align.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        self.student: list[torch.Tensor] = []
        self.teacher: list[torch.Tensor] = []
        self.hooks = [block.register_forward_hook(self._recorder(store, model))
                      for model, store in ((student, self.student), (teacher, self.teacher))
                      for block in vit_blocks(model)]

    @staticmethod
    def _recorder(store: list[torch.Tensor], model: nn.Module) -> Callable:
        prefix = getattr(model, "num_prefix_tokens", 0)
        if getattr(model, "global_pool", "token") == "token":
            return lambda module, args, out: store.append(out[:, 0])
        return lambda module, args, out: store.append(out[:, prefix:].mean(dim=1))

    def loss(self) -> torch.Tensor:
        """Mean over blocks of the MSE between the recorded features; clears the records."""
        loss = sum(F.mse_loss(s, t) for s, t in zip(self.student, self.teacher)) / len(self.student)
        self.student.clear()
        self.teacher.clear()
        return loss

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
