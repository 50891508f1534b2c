"""Teacher training: patch dropout makes training steps see fewer tokens, and leaves the trained model as it was."""

from __future__ import annotations

import pytest
import torch

from autocomp.errors import AutocompError
from autocomp.models import ModelSpec, create_model
from autocomp.train import TrainConfig, evaluate, train
from conftest import TINY_KWARGS

TOKENS = 1 + (TINY_KWARGS["img_size"] // TINY_KWARGS["patch_size"]) ** 2  # class token + 16 patches


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=TINY_KWARGS))


def _tokens_per_epoch(model: torch.nn.Module, split, config: TrainConfig) -> list[set[int]]:
    """The token counts the first block saw in training, per epoch (an epoch is len(split) / batch_size steps)."""
    seen: list[int] = []
    hook = model.blocks[0].register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[1]))
    try:
        train(model, split, config)
    finally:
        hook.remove()
    steps = -(-len(split) // config.batch_size)
    return [set(seen[i:i + steps]) for i in range(0, len(seen), steps)]


def test_patch_drop_trains_on_fewer_tokens_then_on_all_and_keeps_the_model(digits_splits):
    model = _tiny()
    keys = set(model.state_dict())
    split = digits_splits.train.subset(256)
    config = TrainConfig(epochs=3, batch_size=64, lr=3e-3, warmup_steps=4, hflip=False, patch_drop=0.5,
                         patch_drop_epochs=2)
    per_epoch = _tokens_per_epoch(model, split, config)
    assert per_epoch == [{1 + (TOKENS - 1) // 2}, {1 + (TOKENS - 1) // 2}, {TOKENS}]  # class token always kept
    assert isinstance(model.patch_drop, torch.nn.Identity) and set(model.state_dict()) == keys
    model.train()  # even in training mode, the model handed back sees every token
    seen = []
    model.blocks[0].register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[1]))
    model(split.tensors()[0][:2])
    assert seen == [TOKENS]


def test_patch_drop_per_epoch_follows_the_list(digits_splits):
    model = _tiny()
    config = TrainConfig(epochs=3, batch_size=64, lr=3e-3, warmup_steps=4, hflip=False, patch_drop=[0.75, 0.5, 0])
    per_epoch = _tokens_per_epoch(model, digits_splits.train.subset(256), config)
    patches = TOKENS - 1
    assert per_epoch == [{1 + int(patches * 0.25)}, {1 + int(patches * 0.5)}, {TOKENS}]  # timm keeps int(L * (1 - p))
    assert isinstance(model.patch_drop, torch.nn.Identity)


def test_patch_drop_still_learns(digits_splits):
    model = _tiny()
    train(model, digits_splits.train, TrainConfig(epochs=15, batch_size=64, lr=3e-3, warmup_steps=20, hflip=False,
                                                  patch_drop=0.5))
    assert evaluate(model, digits_splits.val) > 45.0  # chance is 10%; 62% seen (76% on every token, as conftest's)


def test_patch_drop_is_checked(digits_splits):
    with pytest.raises(AutocompError, match="patch_drop must be a share in \\[0, 1\\)"):
        TrainConfig(patch_drop=1.0)
    with pytest.raises(AutocompError, match="patch_drop_epochs must be between 0 and epochs \\(3\\)"):
        TrainConfig(epochs=3, patch_drop=0.5, patch_drop_epochs=4)
    with pytest.raises(AutocompError, match="lists 2 shares for 3 epochs; give one per epoch"):
        TrainConfig(epochs=3, patch_drop=[0.5, 0])
    with pytest.raises(AutocompError, match="must be a share in \\[0, 1\\) or a list of them"):
        TrainConfig(epochs=2, patch_drop=[0.5, 1.5])
    with pytest.raises(AutocompError, match="patch_drop_epochs goes with a single patch_drop share"):
        TrainConfig(epochs=2, patch_drop=[0.5, 0], patch_drop_epochs=1)
    cnn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(AutocompError, match="needs a timm ViT .*Sequential has none: set patch_drop to 0"):
        train(cnn, digits_splits.train.subset(64), TrainConfig(epochs=1, patch_drop=0.5))
