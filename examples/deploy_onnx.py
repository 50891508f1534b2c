"""Run an exported model where it is deployed: ONNX Runtime, PIL and numpy, no autocomp, torch or timm.

    autocomp export runs/x --out exported/best --format onnx
    python examples/deploy_onnx.py exported/best photo.jpg other.png      # the top class of each image
    python examples/deploy_onnx.py exported/best --folder data/val          # top-1 accuracy on class folders

The folder holds ``model.onnx``, ``preprocessing.json`` (how the search made each model input, as settings and as
``steps`` in words: this file follows them) and ``classes.json`` (the class of each output). The batch axis of the
file is dynamic: ``--batch`` sets how many images run at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# the files autocomp reads as images in a class folder (others are left out, as are hidden files and these)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IGNORED = ("thumbs.db", "desktop.ini")
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def load_record(folder: Path) -> tuple[dict, list[str]]:
    """``preprocessing.json``'s settings and ``classes.json``'s names."""
    record = json.loads((folder / "preprocessing.json").read_text())
    if record.get("crop_mode", "center") not in ("center", "squash"):
        raise SystemExit(f"{folder}: crop_mode {record['crop_mode']!r} is not written out here; follow the "
                         "preprocessing.json steps, or use autocomp.load_preprocessing(folder).transform()")
    return record, json.loads((folder / "classes.json").read_text())


def preprocess(image: Image.Image, record: dict) -> np.ndarray:
    """One image as the model's input (channels, size, size), float32: preprocessing.json's steps."""
    size, channels = record["image_size"], record["channels"]
    scaled = math.floor(size / record["crop_pct"])
    if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit: scaled to 8 bits first
        image = Image.fromarray(np.clip(np.round(np.asarray(image, np.float64) / 257), 0, 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    if record.get("crop_mode", "center") == "squash":
        resized = (scaled, scaled)
    elif width <= height:  # the shorter side to `scaled`, the longer in proportion, rounded down
        resized = (scaled, int(scaled * height / width))
    else:
        resized = (int(scaled * width / height), scaled)
    image = image.resize(resized, RESAMPLE[record["interpolation"]])
    left, top = round((resized[0] - size) / 2), round((resized[1] - size) / 2)
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32).reshape(size, size, channels)
    pixels = pixels / record.get("pixel_max", 255)
    pixels = (pixels - np.array(record["mean"], np.float32)) / np.array(record["std"], np.float32)
    return pixels.transpose(2, 0, 1).astype(np.float32)


def session(folder: Path):
    """The model in ONNX Runtime on the CPU."""
    import onnxruntime as ort

    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])


def predict(model, images: list[np.ndarray], batch: int) -> np.ndarray:
    """The top class of each preprocessed image."""
    name = model.get_inputs()[0].name
    return np.concatenate([model.run(None, {name: np.stack(images[i:i + batch])})[0].argmax(axis=1)
                           for i in range(0, len(images), batch)])


def arguments(description: str, format: str) -> argparse.ArgumentParser:  # noqa: A002 - autocomp's option
    """The command line both deployment examples take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("export", type=Path, help=f"the folder autocomp export wrote (--format {format})")
    parser.add_argument("images", nargs="*", type=Path, help="images to classify")
    parser.add_argument("--folder", type=Path, help="a folder of class folders (named as classes.json names them)")
    parser.add_argument("--batch", type=int, default=16)
    return parser


def class_images(folder: Path, classes: list[str]) -> tuple[list[Path], list[Path]]:
    """The images in ``folder``'s class folders at any depth, as autocomp reads them (folders linked in followed,
    each once, not one that holds the class folder; hidden files and folders left out), and the other files there,
    which are not images. Refused as autocomp refuses them: images beside the class folders, a folder read for two
    classes, a folder that cannot be read."""
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if loose:
        raise SystemExit(f"{folder} holds {len(loose)} image(s) beside its class folders ({', '.join(loose[:3])}): "
                         "they have no class; move each into its class's folder")

    def unreadable(error: OSError) -> None:
        raise SystemExit(f"cannot read folder {error.filename}: {error.strerror}")

    images, other, walked = [], [], {}  # walked: each real folder read -> its class
    for name in classes:
        top = os.path.realpath(folder / name)
        for current, folders, names in os.walk(folder / name, followlinks=True, onerror=unreadable):
            real = os.path.realpath(current)
            if walked.get(real) not in (None, name):
                raise SystemExit(f"the images of folder {real} are read for class {walked[real]!r} and for class "
                                 f"{name!r} (a link leads to it from both); an image has one label")
            if real in walked or (real != top and os.path.commonpath([real, top]) == real):  # read, or holds it
                folders[:] = []
                continue
            walked[real] = name
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            for file in sorted(f for f in names if not f.startswith(".") and f.lower() not in IGNORED):
                path = Path(current) / file
                (images if path.suffix.lower() in IMAGE_EXTENSIONS else other).append(path)
    return images, other


def inputs_of(paths: list[Path], record: dict) -> list[np.ndarray]:
    """Each image preprocessed; images that cannot be read are named, all at once, and nothing is run."""
    inputs, broken = [], []
    for path in paths:
        try:
            image = Image.open(path)
            image.load()  # decoded here: a truncated file fails now
        except (OSError, Image.DecompressionBombError) as exc:  # not an image, truncated, damaged, too large
            broken.append(f"{path} ({exc})")
            continue
        with image:
            inputs.append(preprocess(image, record))
    if broken:
        raise SystemExit(f"cannot read {len(broken)} image(s): {'; '.join(broken[:5])}"
                         + (f"; and {len(broken) - 5} more" if len(broken) > 5 else "") + "; remove or replace them")
    return inputs


def report(top_of, args: argparse.Namespace, record: dict, classes: list[str]) -> None:
    """Print the top-1 accuracy on ``args.folder``'s class folders, then each of ``args.images``' class;
    ``top_of(inputs)``: the top class of each preprocessed image."""
    if args.folder is not None:
        files, not_images = class_images(args.folder, classes)
        if not_images:  # notes, labels: left out, as the search leaves them out
            print(f"left out {len(not_images)} file(s) that are not images ("
                  + ", ".join(str(p.relative_to(args.folder)) for p in not_images[:3])
                  + f"{' ...' if len(not_images) > 3 else ''}); images are {', '.join(IMAGE_EXTENSIONS)}",
                  file=sys.stderr)
        other = sorted(p.name for p in args.folder.iterdir() if p.is_dir() and p.name not in classes)
        if other:  # their images were left out of the accuracy without a word (a class named "T-shirt/top")
            print(f"left out {len(other)} folder(s) not named as a class of classes.json: {other}; the classes are "
                  f"{classes}", file=sys.stderr)
        top = top_of(inputs_of(files, record))
        labels = [p.relative_to(args.folder).parts[0] for p in files]  # the class folder, at any depth below it
        right = sum(classes[k] == label for k, label in zip(top, labels))
        print(f"top-1 accuracy {100 * right / max(1, len(files)):.2f}% on {len(files)} images")
    if args.images:
        for path, k in zip(args.images, top_of(inputs_of(args.images, record))):
            print(f"{path}: {classes[k]}")


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0], "onnx").parse_intermixed_args()
    record, classes = load_record(args.export)
    model = session(args.export)
    report(lambda inputs: predict(model, inputs, args.batch), args, record, classes)


if __name__ == "__main__":
    main()
