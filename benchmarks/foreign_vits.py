"""torchvision's and transformers' ViTs rebuilt as timm's (``autocomp.models.timm_equivalent``): for each model, the
time the rebuild takes, the largest difference between the two models' outputs (logits) on random images, whether
their top-1 agree, their weight bytes, and their batch-1 latency in PyTorch eager measured interleaved (median of
``--repeats``).

    python benchmarks/foreign_vits.py [--models vit_b_16 vit_b_32 vit_l_16 vit_l_32 vit_h_14 hf_vit_base hf_deit_base]
        [--repeats 5]

``vit_*``: torchvision's builders; ``hf_vit_base``: transformers' ViTForImageClassification at ViT-B/16's sizes
(google/vit-base-patch16-224's config, 1000 labels); ``hf_deit_base``: transformers'
DeiTForImageClassificationWithTeacher at DeiT-B's sizes (facebook/deit-base-distilled-patch16-224's config).
Random weights (torchvision builds its head as zeros: it is drawn too, or every output would be 0). Each model
takes about half a minute on 2 cores; vit_h_14 needs ~6 GB.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.models import vision_transformer as tv

from autocomp.models import timm_equivalent


def source_model(name: str) -> torch.nn.Module:
    """The library's model of that name, random weights, in eval mode."""
    if name == "hf_vit_base":
        from transformers import ViTConfig, ViTForImageClassification

        return ViTForImageClassification(ViTConfig(num_labels=1000)).eval()
    if name == "hf_deit_base":
        from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

        return DeiTForImageClassificationWithTeacher(DeiTConfig(num_labels=1000)).eval()
    model = getattr(tv, name)().eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.02)
    return model


def logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    return out if isinstance(out, torch.Tensor) else out.logits  # transformers' ImageClassifierOutput


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def latencies(models: list[torch.nn.Module], images: torch.Tensor, repeats: int) -> list[float]:
    """Median seconds of one forward per model, the models timed in turn (the machine's drift shared)."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            logits(model, images)  # warm-up
        for _ in range(repeats):
            for index, model in enumerate(models):
                start = time.perf_counter()
                logits(model, images)
                times[index].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_b_16", "vit_b_32", "hf_vit_base", "hf_deit_base"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{'model':12} {'rebuild s':>9} {'max |diff|':>10} {'top-1 agree':>11} {'MB theirs':>9} {'MB timm':>7} "
          f"{'ms theirs':>9} {'ms timm':>7} {'timm/theirs':>11}")
    for name in args.models:
        source = source_model(name)
        start = time.perf_counter()
        rebuilt = timm_equivalent(source)
        took = time.perf_counter() - start
        size = rebuilt.patch_embed.img_size[0]
        images = torch.randn(4, 3, size, size)
        with torch.no_grad():
            expected, got = logits(source, images), rebuilt(images)
        difference = (expected - got).abs().max().item()
        agree = (expected.argmax(1) == got.argmax(1)).float().mean().item()
        ms_theirs, ms_timm = (1000 * t for t in latencies([source, rebuilt], images[:1], args.repeats))
        print(f"{name:12} {took:9.2f} {difference:10.2e} {agree:11.0%} {weight_bytes(source) / 1e6:9.1f} "
              f"{weight_bytes(rebuilt) / 1e6:7.1f} {ms_theirs:9.1f} {ms_timm:7.1f} {ms_timm / ms_theirs:11.2f}")


if __name__ == "__main__":
    main()
