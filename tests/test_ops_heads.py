from __future__ import annotations

import pytest
import torch

from conftest import small_vit
from torch.nn import functional as F

from autocomp import Recipe, compress
from autocomp.importance import HEAD_SCORES
from autocomp.ops.heads import keep_heads


_model = small_vit


VARIANTS = {
    "plain": {},
    "layerscale+registers": {"init_values": 1e-1, "reg_tokens": 4},
    "no-class-token": {"class_token": False, "global_pool": "avg"},
    "qkv-bias-off+qk-norm": {"qkv_bias": False, "qk_norm": True},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("keep", [1, 3, 5])
def test_pruning_keeps_exactly_k_of_h_heads(variant, keep):
    model = _model(**VARIANTS[variant])
    x = torch.randn(2, 3, 16, 16)
    recipe = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": keep}}, {}]})
    pruned = compress(model, recipe, calibration=x)
    before, after = model.blocks[0].attn, pruned.blocks[0].attn
    head_dim = before.head_dim
    assert after.num_heads == keep and after.attn_dim == keep * head_dim and after.head_dim == head_dim
    assert after.qkv.weight.shape == (3 * keep * head_dim, 48)
    assert after.proj.weight.shape == (48, keep * head_dim)
    params = lambda a: a.qkv.weight.numel() + a.proj.weight.numel()  # noqa: E731
    assert params(after) * 6 == params(before) * keep
    assert pruned.blocks[1].attn.num_heads == 6
    assert pruned(x).shape == (2, 5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_keeping_all_heads_changes_nothing(variant):
    model = _model(**VARIANTS[variant])
    x = torch.randn(2, 3, 16, 16)
    pruned = compress(model, Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 6}}] * 2}), calibration=x)
    assert torch.equal(pruned(x), model(x))


def test_reordered_heads_give_identical_outputs():
    """Surgery moves the right rows: keeping all heads in a shuffled order computes the same function."""
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    keep_heads(model.blocks[0].attn, torch.tensor([5, 3, 1, 0, 2, 4]))
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_pruned_block_still_uses_fused_attention(monkeypatch):
    model = _model()
    pruned = compress(model, Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 2}}] * 2}),
                      calibration=torch.randn(2, 3, 16, 16))
    calls = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: calls.append(q.shape) or original(q, k, v, **kw))
    pruned(torch.randn(1, 3, 16, 16))
    assert [shape[1] for shape in calls] == [2, 2]  # (batch, heads, tokens, head_dim)


@pytest.mark.parametrize("method", sorted(HEAD_SCORES))
def test_importance_drops_a_dead_head(method):
    model = _model()
    attn = model.blocks[0].attn
    with torch.no_grad():  # head 4 contributes nothing: its proj columns are zero, its qkv rows tiny
        attn.proj.weight[:, 4 * 8:5 * 8] = 0
        for part in range(3):
            attn.qkv.weight[part * 48 + 4 * 8: part * 48 + 5 * 8] *= 1e-3
    recipe = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 5, "importance": method}}, {}]})
    pruned = compress(model, recipe, calibration=torch.randn(4, 3, 16, 16))
    kept_proj = pruned.blocks[0].attn.proj.weight
    assert kept_proj.abs().sum(0).min() > 0  # the dead head's zero columns are gone
