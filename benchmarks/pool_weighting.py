"""Token merging on an average-pooled ViT whose LayerNorm sits before the pool (``fc_norm=False``, as timm's
``*_gap_*`` models): each merged token weighed by the patches it stands for (``PoolWeighted``) against each token
counted once (as before), before any distillation, on Fashion-MNIST validation.

    python benchmarks/pool_weighting.py [--epochs 3]

Trains (or reuses, under ``$AUTOCOMP_CACHE/teachers/``) a 6-block ViT of width 96 without a class token on
Fashion-MNIST: about 6 minutes on 2 cores the first time, then a minute.
"""

from __future__ import annotations

import argparse
import time

from autocomp import Recipe, compress
from autocomp._paths import resolve_path
from autocomp.data import DataConfig, load_splits
from autocomp.models import ModelSpec
from autocomp.train import TrainConfig, evaluate, train_or_reuse

KWARGS = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6, num_heads=6,
              mlp_ratio=2.0, class_token=False, global_pool="avg", fc_norm=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    spec = ModelSpec(name="vit_tiny_patch16_224", kwargs=KWARGS)
    splits = load_splits(DataConfig(dataset="fashion_mnist", val_size=5000, calib_size=256, seed=0))
    checkpoint = resolve_path(f"{{cache}}/teachers/fashion_mnist_gap_ln_d96x6_e{args.epochs}.safetensors",
                              what="checkpoint", must_exist=False)
    started = time.perf_counter()
    model, trained = train_or_reuse(spec, splits, TrainConfig(epochs=args.epochs, batch_size=128, lr=0.003,
                                                              weight_decay=0.05, warmup_steps=200, hflip=False,
                                                              seed=0), checkpoint)
    print(f"model {'trained in %.0f s' % (time.perf_counter() - started) if trained else 'reused'}: {checkpoint}")
    print(f"uncompressed: val {evaluate(model, splits.val):.2f}%")
    depth = KWARGS["depth"]
    for keep in (0.7, 0.5):
        for blocks in ([0], [2], [4], list(range(depth))):
            recipe = Recipe.from_dict({"blocks": [{"reduce_tokens": {"keep": keep}} if i in blocks else {}
                                                  for i in range(depth)]})
            weighed, once = compress(model, recipe), compress(model, recipe)
            once.blocks.averaged = None  # the blocks hand no weights over: each token counted once
            print(f"merge keep {keep} after blocks {blocks}: weighed by patches {evaluate(weighed, splits.val):.2f}%"
                  f", each token once {evaluate(once, splits.val):.2f}%")


if __name__ == "__main__":
    main()
