"""The data section of a job config, and the preprocessing that turns an image into a model input."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from autocomp.errors import AutocompError, warn

DATASETS = ("fashion_mnist", "digits", "imagefolder")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash", "border")  # timm's: see Preprocessing.crop_mode
BUILTIN_SIZES = {"fashion_mnist": 28, "digits": 8}  # the built-in data sets' images, in pixels (square, grayscale)
BUILTIN_PIXEL_MAX = {"fashion_mnist": 255, "digits": 16}  # their largest pixel value (sklearn's digits: 0..16)


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
        crop_mode: ``center``, ``squash`` or ``border`` (see :class:`Preprocessing`); None: the model's.
        workers: ``DataLoader`` worker processes decoding image-folder images (0: in the calling process).
    """

    dataset: str = "fashion_mnist"
    root: str | None = None
    val_size: int | None = None
    calib_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    image_size: int | None = None
    mean: tuple[float, ...] | float | None = None  # one number as written (every channel alike): a tuple once built
    std: tuple[float, ...] | float | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    crop_mode: str | None = None
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
        if isinstance(self.interpolation, str):  # BICUBIC as PIL names it is bicubic
            object.__setattr__(self, "interpolation", self.interpolation.lower())
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise AutocompError(f"data.interpolation must be one of {list(INTERPOLATIONS)}, got "
                                f"{self.interpolation!r}")
        if self.crop_pct is not None and not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1):
            raise AutocompError(f"data.crop_pct must be a fraction in (0, 1], got {self.crop_pct!r}")
        if self.crop_mode is not None and self.crop_mode not in CROP_MODES:
            raise AutocompError(f"data.crop_mode must be one of {list(CROP_MODES)}, got {self.crop_mode!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (int, float)):
                    value = (value,)
                value = tuple(float(v) for v in value)
                if not value:  # [] would fall back to the model's statistics unsaid
                    raise AutocompError(f"data.{name} is empty; give one value per input channel, or leave it out "
                                        "for the model's own")
                if not all(math.isfinite(v) for v in value):
                    raise AutocompError(f"data.{name} must be finite numbers, got {list(value)}")
                object.__setattr__(self, name, value)
                if any(abs(v) > 1 for v in value):  # pixels are scaled to [0, 1] first: 0..255 statistics never fit
                    raise AutocompError(f"data.{name} {list(value)} is on the 0..255 scale, but pixels are scaled "
                                        f"to [0, 1] before normalization; divide it by 255: "
                                        f"{[round(v / 255, 4) for v in value]}")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise AutocompError(f"data.std must be positive, got {list(self.std)}")
        resizing = [f"data.{name}" for name in ("image_size", "interpolation", "crop_pct", "crop_mode")
                    if getattr(self, name) is not None]
        if self.dataset != "imagefolder" and resizing:  # nothing resizes or crops them: the keys would be ignored
            raise AutocompError(f"{', '.join(resizing)}: for image folders only; {self.dataset} images are used as "
                                f"they come ({BUILTIN_SIZES[self.dataset]} px, no resize or crop): remove "
                                f"{'it' if len(resizing) == 1 else 'them'} (data.mean and data.std do apply)")


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
        crop_pct: with ``crop_mode`` center, resize the shorter side to ``image_size / crop_pct``, then
            centre-crop ``image_size``.
        crop_mode: ``center`` (as above), ``squash`` (resize both sides to ``image_size / crop_pct``, the aspect
            ratio not kept, then centre-crop: CLIP and SigLIP fine-tunes) or ``border`` (fit the longer side, pad
            with the mean); timm's, from the model's ``pretrained_cfg``.
        pixel_max: the images' largest pixel value, which scales them to [0, 1]: 255 (8-bit images), or 16 for
            sklearn's digits (values 0..16).
    """

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    pixel_max: int = 255

    def __post_init__(self) -> None:
        if isinstance(self.pixel_max, bool) or not isinstance(self.pixel_max, int) or self.pixel_max < 1:
            raise AutocompError(f"pixel_max must be the images' largest pixel value, a whole number >= 1 (255 for "
                                f"8-bit images), got {self.pixel_max!r}")
        if self.crop_mode not in CROP_MODES:
            raise AutocompError(f"crop_mode must be one of {list(CROP_MODES)}, got {self.crop_mode!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) == 1 and self.channels > 1:
                object.__setattr__(self, name, tuple(values) * self.channels)
            elif len(values) != self.channels:
                give = "one value" if self.channels == 1 else f"{self.channels} values or one"
                raise AutocompError(f"data.{name} has {len(values)} values but the model takes {self.channels} "
                                    f"channel{'s' if self.channels > 1 else ''}; give {give}")

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalized (C, H, W) tensor: timm's eval transform with these settings."""
        from timm.data import create_transform
        from torchvision import transforms

        config = self.timm_config()
        timm_transform = create_transform(input_size=config["input_size"], interpolation=self.interpolation,
                                          mean=config["mean"], std=config["std"], crop_pct=self.crop_pct,
                                          crop_mode=self.crop_mode, is_training=False)
        mode = "L" if self.channels == 1 else "RGB"
        return transforms.Compose([transforms.Lambda(lambda image: _to_8_bits(image).convert(mode)), timm_transform])

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "channels": self.channels, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation, "crop_pct": self.crop_pct,
                "crop_mode": self.crop_mode, **({} if self.pixel_max == 255 else {"pixel_max": self.pixel_max})}

    def steps(self) -> list[str]:
        """What :meth:`transform` does, in words, for a deployment without timm or torchvision (written beside
        the settings in ``preprocessing.json``)."""
        size, scaled = self.image_size, math.floor(self.image_size / self.crop_pct)
        how = f"{self.interpolation} interpolation, antialiased as PIL's resize is"
        crop = (f"crop the centre {size} x {size} px (from the left at round((width - {size}) / 2), the top at "
                f"round((height - {size}) / 2), halves rounded to even as Python's round)")
        resize = {"center": [f"resize the shorter side to {scaled} px, the longer to {scaled} x longer / shorter "
                             f"rounded down ({how})", crop],
                  "squash": [f"resize to {scaled} x {scaled} px, not keeping the aspect ratio ({how})", crop],
                  "border": [f"resize the longer side to {scaled} px, keeping the aspect ratio ({how})",
                             f"pad (with the mean colour) or crop the centre to {size} x {size} px"]}[self.crop_mode]
        mode = "8-bit grayscale (PIL mode L)" if self.channels == 1 else "8-bit RGB"
        return [f"convert the image to {mode} (16-bit images scaled to 8 bits first)", *resize,
                f"scale the pixels to [0, 1] (divide by {self.pixel_max}"
                + (")" if self.pixel_max == 255 else f": the images' values run 0..{self.pixel_max})"),
                f"per channel, subtract mean {list(self.mean)} and divide by std {list(self.std)}",
                f"batch as float32 (N, {self.channels}, {size}, {size}), channels first"]

    def timm_config(self) -> dict[str, Any]:
        """The same settings as timm's data config (``input_size``, ``mean`` ...), e.g. for ``pretrained_cfg``;
        timm divides pixels by 255, so images of another ``pixel_max`` have mean and std in that scale."""
        scale = self.pixel_max / 255
        return {"input_size": (self.channels, self.image_size, self.image_size),
                "mean": tuple(m * scale for m in self.mean), "std": tuple(s * scale for s in self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode}


FLOAT_PIXELS = "its pixels are 32-bit floats, whose range autocomp cannot know; save it as an 8- or 16-bit image"


def _to_8_bits(image: Any) -> Any:
    """A 16-bit grayscale image (PIL modes ``I;16*`` and ``I``) scaled to 8 bits: PIL's ``convert`` would clip
    every value over 255 to white. Float pixels (mode ``F``) have no fixed range: refused."""
    from PIL import Image

    if image.mode == "F":
        raise ValueError(FLOAT_PIXELS)
    if image.mode == "I" or image.mode.startswith("I;16"):
        import numpy as np

        pixels = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(pixels / 257), 0, 255).astype(np.uint8))
    return image


TRAINED_WITH = "autocomp_trained_with"  # a model's attribute: the preprocessing its checkpoint's training args give
# a model's attribute: the other library's ViT it was rebuilt from, and that library's preprocessing, in words
REBUILT_FROM = "autocomp_rebuilt_from"  # (autocomp._foreign: model, preprocessing, defaults)


def trained_with(args: Any) -> dict[str, Any]:
    """The preprocessing a training script's arguments hold (timm's train.py saves them in its checkpoints, an
    ``argparse.Namespace`` or a dict under ``args``): ``mean``, ``std``, ``crop_pct``, ``interpolation`` and
    ``crop_mode`` where set (None or '' is the model's default there, as train.py reads them) and valid."""
    values = vars(args) if hasattr(args, "__dict__") and not isinstance(args, dict) else args
    if not isinstance(values, dict):
        return {}
    found: dict[str, Any] = {}
    for name in ("mean", "std"):
        value = values.get(name)
        if isinstance(value, (list, tuple)) and len(value) in (1, 3) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 1 for v in value):
            found[name] = tuple(float(v) for v in value)
    crop = values.get("crop_pct")
    if isinstance(crop, (int, float)) and not isinstance(crop, bool) and 0 < crop <= 1:
        found["crop_pct"] = float(crop)
    if values.get("interpolation") in INTERPOLATIONS:
        found["interpolation"] = values["interpolation"]
    if values.get("crop_mode") in CROP_MODES:
        found["crop_mode"] = values["crop_mode"]
    return found


def crop_pct_for(size: int, resize: int) -> float:
    """The crop_pct that resizes to ``resize`` px before a ``size``-px crop as timm rounds it
    (``floor(size / crop_pct)``): ``size / resize``, or the float just below it where that divides back to just under
    ``resize`` (20 / (20 / 29) = 28.999...)."""
    return size / resize if math.floor(size / (size / resize)) == resize else math.nextafter(size / resize, 0)


def resolve_preprocessing(model: nn.Module, config: DataConfig) -> Preprocessing:
    """The model's timm data config with the job config's overrides (image folders). The input size and channels
    are those the model was built with (a timm model made at ``img_size=32`` keeps its pretrained config's 224)."""
    from timm.data import resolve_model_data_config

    # the checkpoint's training arguments over the model's timm config, the job's keys over both
    trained = dict(getattr(model, TRAINED_WITH, None) or {})
    timm_config = {**resolve_model_data_config(model), **trained}
    channels, height, width = timm_config["input_size"]
    embed = getattr(model, "patch_embed", None)  # what the model really takes, if it was built at another size
    if getattr(embed, "img_size", None) is not None:
        height, width = embed.img_size
    # timm's dynamic_img_size is the model's (its patch embedding then takes any size: strict_img_size False)
    dynamic = bool(getattr(model, "dynamic_img_size", False)) or not getattr(embed, "strict_img_size", True)
    fixed = getattr(embed, "img_size", None) is not None and not dynamic
    if height != width and (fixed or config.image_size is None):
        raise AutocompError(f"the model takes {height}x{width} images, and autocomp's preprocessing makes square "
                            "ones; build it with a square img_size (or dynamic_img_size=True and set "
                            "data.image_size)")
    if fixed and config.image_size is not None and config.image_size != height:
        raise AutocompError(f"data.image_size is {config.image_size} but the model was built for {height}x{width} "
                            f"images (patch_embed.img_size); remove data.image_size, or build the model with "
                            f"img_size={config.image_size} (or dynamic_img_size=True)")
    channels = _input_channels(embed) or channels
    if channels not in (1, 3):
        raise AutocompError(f"the model takes {channels}-channel images, and autocomp reads images as grayscale "
                            "(1 channel) or RGB (3); give it a model with in_chans 1 or 3")
    for name in ("mean", "std"):
        if getattr(config, name) is None and len(timm_config[name]) not in (1, channels):
            raise AutocompError(f"the model takes {channels} channel(s) but its timm config gives {name} "
                                f"{list(timm_config[name])}; set data.mean and data.std to {channels} value(s) "
                                "each (the statistics the model was trained with)")
    preprocessing = Preprocessing(
        image_size=config.image_size or height, channels=channels, mean=config.mean or tuple(timm_config["mean"]),
        std=config.std or tuple(timm_config["std"]),
        interpolation=config.interpolation or timm_config.get("interpolation", "bicubic"),
        crop_pct=config.crop_pct or timm_config.get("crop_pct", 1.0),
        crop_mode=config.crop_mode or timm_config.get("crop_mode") or "center")
    guessed = {name: list(getattr(preprocessing, name)) for name in ("mean", "std")
               if getattr(config, name) is None and name not in trained}
    tag_size, timm_made = timm_config["input_size"][1], bool(getattr(model, "pretrained_cfg", None))
    if timm_made and fixed and height != tag_size and config.crop_pct is None and "crop_pct" not in trained and \
            preprocessing.crop_pct < 1:
        # a timm name built at another size keeps its pretrained tag's settings, which a model trained at this
        # size from scratch rarely had: a crop it never saw costs such a model accuracy
        others = "".join(f", {name} {value}" for name, value in guessed.items())
        warn(f"the model was built for {height}-px images, but its timm data config is its pretrained "
                      f"weights', for {tag_size} px: crop_pct {preprocessing.crop_pct:g} (the centre "
                      f"{preprocessing.crop_pct:.0%} of each image){others}; if it was trained otherwise, set "
                      + ", ".join(["data.crop_pct (1.0: the whole image)"] + [f"data.{name}" for name in guessed])
                      + " to what it was trained with")
    size, scaled = preprocessing.image_size, preprocessing.image_size / preprocessing.crop_pct
    if config.crop_pct is not None and math.floor(scaled) != math.floor(scaled + 1e-3):  # a rounded 32 / 36
        near = math.floor(scaled) + 1
        exact = crop_pct_for(size, near)
        warn(f"data.crop_pct {config.crop_pct!r} resizes to {math.floor(scaled)} px before the {size}-px crop "
             f"({size} / {config.crop_pct!r} = {scaled:.10g}, rounded down as timm rounds it); for {near} px, give "
             f"crop_pct {exact!r} ({size} / {near})")
    if config.image_size is None and getattr(embed, "img_size", None) is None:  # nothing in the model says it
        guessed["image_size"] = preprocessing.image_size
    rebuilt = getattr(model, REBUILT_FROM, None)  # its library's weights' preprocessing, which the user's may not be
    if rebuilt and rebuilt.get("read"):  # its own file's (a transformers model's preprocessor_config.json)
        rebuilt = None
    elif rebuilt or not (getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)):
        # a module not made by timm.create_model: timm falls back to ImageNet's settings without a word, a crop of
        # the centre 87.5% among them (a model trained on whole images loses points to it)
        guessed.update({name: getattr(preprocessing, name) for name in ("crop_pct", "interpolation")
                        if getattr(config, name) is None and name not in trained})
        if guessed:
            crop = "crop_pct" in guessed
            made = (f"the model is {rebuilt['model']}, whose images are made as {rebuilt['preprocessing']}"
                    if rebuilt else "the model has no timm data config (pretrained_cfg), so its images are "
                    "made with timm's defaults")
            warn(f"{made}: " + ", ".join(f"{name} {value}" + (f" (the centre {value:.1%} of each image)"
                                                              if name == "crop_pct" else "")
                                         for name, value in guessed.items())
                 + f"; set {', '.join(f'data.{name}' for name in guessed)} to what it was trained with"
                 + (" (data.crop_pct 1.0: the whole image)" if crop else ""))
    return preprocessing


def preprocessing_source(model: nn.Module, config: DataConfig) -> str:
    """Where the preprocessing's values came from, in words (the log, summary.json): the job's ``data:`` keys set,
    those a checkpoint's training arguments give (:func:`trained_with`), and for the rest the model's timm data
    config (its pretrained tag named: a checkpoint fine-tuned from another tag's weights may want that tag's mean and
    std), timm's defaults, or a built-in data set's own statistics."""
    names = ("image_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
    given = [f"data.{name}" for name in names if getattr(config, name) is not None]
    trained = getattr(model, TRAINED_WITH, None) or {}
    from_args = [name for name in names if getattr(config, name) is None and name in trained] \
        if config.dataset == "imagefolder" else []
    if config.dataset != "imagefolder":
        rest = "the training split's statistics (mean and std) at the data set's own size"
    elif rebuilt := getattr(model, REBUILT_FROM, None):
        rest = f"{rebuilt['defaults']} (the model is {rebuilt['model']})"
    elif cfg := getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None):
        tag = ".".join(str(part) for part in (cfg.get("architecture"), cfg.get("tag")) if part)
        rest = f"the model's timm data config{f' ({tag})' if tag else ''}"
    else:
        rest = "timm's defaults (the model has no timm data config)"
    parts = ([f"{', '.join(given)} from the job"] if given else []) + \
        ([f"{', '.join(from_args)} from the checkpoint's training arguments (its args)"] if from_args else [])
    return f"{', '.join(parts)}, the rest from {rest}" if parts else f"from {rest}"


def _input_channels(embed: nn.Module | None) -> int | None:
    """The image channels a patch embedding takes: its ``in_chans``, or the first convolution's input channels (the
    stem of a hybrid ViT's CNN, whose ``proj`` takes the CNN's features, not the image); None when it has neither."""
    if isinstance(getattr(embed, "in_chans", None), int):
        return embed.in_chans
    for module in embed.modules() if isinstance(embed, nn.Module) else ():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None
