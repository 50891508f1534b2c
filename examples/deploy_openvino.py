"""Run an OpenVINO export where it is deployed: OpenVINO, PIL and numpy, no autocomp, torch or timm.

    autocomp export runs/x --out exported/best --format openvino
    python examples/deploy_openvino.py exported/best photo.jpg other.png      # the top class of each image
    python examples/deploy_openvino.py exported/best --folder data/val          # top-1 accuracy on class folders

The folder holds ``model.xml``/``model.bin``, ``preprocessing.json``, ``classes.json`` and ``export.json``. The IR is
compiled as autocomp checked and measured it: in f32 (OpenVINO's CPU plugin runs bf16 by default on CPUs with
AVX512_BF16 or AMX: another model than the one scored). ``--static-batch N`` reshapes it to a fixed batch, which the
plugin runs faster, with the properties ``export.json`` names for it (``static_batch_properties``: a block with as
many heads as tokens computes wrongly in the plugin's fused attention at a static batch otherwise). The image
preprocessing is ``deploy_onnx.py``'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# the example beside this one: preprocessing.json's steps, the command line, what is printed
from deploy_onnx import arguments, load_record, report


def compiled(folder: Path, static_shape: list[int] | None = None):
    """The IR compiled for this machine's CPU, as autocomp checked it; reshaped to ``static_shape`` (batch,
    channels, height, width) where one is given."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(folder / "model.xml"))
    properties = {"INFERENCE_PRECISION_HINT": "f32"}
    if static_shape is not None:
        model.reshape({model.input(0): static_shape})
        export = folder / "export.json"
        properties.update(json.loads(export.read_text()).get("static_batch_properties", {}) if export.is_file()
                          else {})
    return core.compile_model(model, "CPU", properties)


def predict(model, images: list[np.ndarray], batch: int) -> np.ndarray:
    """The top class of each preprocessed image; at a static batch, the last batch is padded to it."""
    tops = []
    for i in range(0, len(images), batch):
        chunk = np.stack(images[i:i + batch])
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        tops.append(np.asarray(model(padded)[0]).argmax(axis=1)[:len(chunk)])
    return np.concatenate(tops)


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0], "openvino")
    parser.add_argument("--static-batch", action="store_true", help="compile at a fixed batch of --batch images")
    args = parser.parse_intermixed_args()
    record, classes = load_record(args.export)
    size = record["image_size"]
    model = compiled(args.export, [args.batch, record["channels"], size, size] if args.static_batch else None)
    report(lambda inputs: predict(model, inputs, args.batch), args, record, classes)


if __name__ == "__main__":
    main()
