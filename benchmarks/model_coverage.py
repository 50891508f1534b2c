"""Which timm ViTs autocomp compresses: every timm name of the ViT families, built small, compressed with every
operator, exported to ONNX and run in ONNX Runtime.

    .venv/bin/python benchmarks/model_coverage.py [NAME ...]     # default: every vit/deit/deit3/flexivit/eva/eva02/
                                                                 # beit/beitv2/samvit/naflexvit/aimv2/vitamin/cait/xcit

Each model is built with random weights at 2 blocks of width 64 and 4 heads (a name whose architecture refuses
that is built at 2 blocks only, and one that refuses even that is reported as not built), then compressed with a
recipe that uses every operator: 2 of 4 heads, half the MLP, low rank, token merging and int8 weights with static
int8 activations in block 0, token pruning and 4-bit weights in block 1 (token pruning needs a class token: a model
without one takes merging there). A line per name says what happened:

- ``ok``: the compressed model gives logits of the right shape, and its ONNX file run in ONNX Runtime gives the
  same logits (the largest difference is printed);
- ``refused``: autocomp refuses the model, or an operator refuses it, with the printed reason (one line, the fix in
  it): what a user sees;
- ``BUG``: anything else (an exception autocomp did not explain): each one is a defect.

The last line counts each outcome. It takes about 10 minutes on a 2-core machine for all 339 names.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import warnings
from pathlib import Path

import torch

from autocomp import AutocompError, Recipe, compress
from autocomp.models import ModelSpec, create_model
from autocomp.runtimes import export_onnx
from autocomp.runtimes.ort import ort_session

FAMILIES = ("vit", "deit", "deit3", "flexivit", "eva", "eva02", "beit", "beitv2", "samvit", "naflexvit", "aimv2",
            "vitamin", "cait", "xcit")
SMALL = ({"depth": 2, "embed_dim": 64, "num_heads": 4, "num_classes": 5}, {"depth": 2, "num_classes": 5})


def recipe(class_token: bool) -> Recipe:
    method = "prune" if class_token else "merge"
    return Recipe.from_dict({"blocks": [
        {"prune_heads": {"keep": 2}, "prune_mlp": {"keep": 0.5}, "low_rank": {"rank": 0.5},
         "reduce_tokens": {"keep": 0.7}, "quantize": {"weight_bits": 8, "act_bits": 8}},
        {"reduce_tokens": {"keep": 0.7, "method": method}, "quantize": {"weight_bits": 4}}]})


def build(name: str) -> torch.nn.Module | None:
    """The model at the first of ``SMALL``'s sizes its architecture accepts; None when none is."""
    for kwargs in SMALL:
        try:
            return create_model(ModelSpec(name=name, kwargs=kwargs))
        except AutocompError as exc:
            if "timm could not build" not in str(exc):
                raise
    return None


def check(name: str, folder: Path) -> tuple[str, str]:
    """(outcome, what to print) for one timm name."""
    import timm

    try:
        model = build(name)
        if model is None:
            return "not built", "timm builds it at no small size tried"
        size = timm.data.resolve_model_data_config(model)["input_size"]
        images = torch.randn(8, *size)
        smaller = compress(model, recipe(getattr(model, "cls_token", None) is not None), calibration=images)
        with torch.no_grad():
            logits = smaller(images[:2])
        if logits.shape != (2, 5):
            return "BUG", f"compressed logits have shape {tuple(logits.shape)}"
        exported = export_onnx(smaller, images[:2], folder / "model.onnx")
        session = ort_session(exported.path)
        ort = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images[:2].numpy()})[0])
        difference = (ort - logits).abs().max().item()
        return "ok", f"{type(model).__name__}, input {tuple(size)}, ONNX Runtime vs PyTorch {difference:.1e}"
    except AutocompError as exc:
        return "refused", str(exc)
    except Exception as exc:  # noqa: BLE001 - what this benchmark looks for
        return "BUG", f"{type(exc).__name__}: {exc}".splitlines()[0]


def main() -> None:
    import timm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    names = args.names or [n for n in timm.list_models() if n.split("_")[0] in FAMILIES]
    counts = collections.Counter()
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            outcome, detail = check(name, Path(folder))
            counts[outcome] += 1
            print(f"{outcome:9} {name}: {detail}", flush=True)
    print(", ".join(f"{count} {outcome}" for outcome, count in counts.most_common()) + f" of {len(names)} names")


if __name__ == "__main__":
    main()
