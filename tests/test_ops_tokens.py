from __future__ import annotations

import math

import pytest
import timm
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from autocomp import Recipe, compress
from autocomp.errors import AutocompError
from autocomp.ops.tokens import ReduceTokens, TokenReducingBlocks, size_bias

PATCHES = 64  # img_size 32 / patch_size 4 -> 8 x 8


def _model(**overrides):
    kwargs = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, num_classes=5)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()


VARIANTS = {
    "plain": {},
    "registers": {"reg_tokens": 2},
    "no-class-token": {"class_token": False, "global_pool": "avg"},
}
CASES = [(v, m) for v in sorted(VARIANTS) for m in ("merge", "prune") if (v, m) != ("no-class-token", "prune")]


def _recipe(plan: dict[int, dict], depth: int = 4) -> Recipe:
    return Recipe.from_dict({"blocks": [{"reduce_tokens": plan[i]} if i in plan else {} for i in range(depth)]})


def _tokens(model, images):
    """The token sequence entering the first block."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))


def _images(batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 3, 32, 32)


@pytest.mark.parametrize("variant, method", CASES)
def test_keep_one_is_bitwise_identity(variant, method):
    model = _model(**VARIANTS[variant])
    reduced = compress(model, _recipe({i: {"keep": 1.0, "method": method} for i in range(4)}))
    assert isinstance(reduced.blocks, TokenReducingBlocks)
    assert torch.equal(reduced(_images()), model(_images()))


@pytest.mark.parametrize("variant, method", CASES)
def test_tokens_entering_each_block_follow_the_plan(variant, method):
    model = _model(**VARIANTS[variant])
    prefix = model.num_prefix_tokens
    reduced = compress(model, _recipe({0: {"keep": 0.5, "method": method}, 2: {"keep": 0.3, "method": method}}))
    seen = []
    for block in reduced.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    logits = reduced(_images())
    # merge: 64 -> 32 -> round(9.6) = 10; prune: 64 -> 32 + 1 fused -> round(0.3 * 33) = 10 + 1 fused
    after = {"merge": [64, 32, 32, 10], "prune": [64, 33, 33, 11]}[method]
    assert seen == [prefix + n for n in after]
    assert reduced.blocks.tokens_entering(prefix + PATCHES) == [prefix + n for n in after + after[-1:]]
    assert logits.shape == (2, 5)


@pytest.mark.parametrize("variant, method", [c for c in CASES if c[0] != "no-class-token"])
def test_prefix_tokens_pass_through_the_reduction_unchanged(variant, method):
    model = _model(**VARIANTS[variant])
    prefix = model.num_prefix_tokens
    reduced = compress(model, _recipe({0: {"keep": 0.25, "method": method}}))
    out, into = [], []
    reduced.blocks[0].register_forward_hook(lambda module, args, output: out.append(output))
    reduced.blocks[1].register_forward_pre_hook(lambda module, args: into.append(args[0]))
    reduced(_images())
    assert into[0].shape[1] < out[0].shape[1]
    assert torch.equal(into[0][:, :prefix], out[0][:, :prefix])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("plan", [{0: {"keep": 0.5}, 2: {"keep": 0.5}}, {1: {"keep": 0.05}},
                                  {0: {"keep": 0.5}, 1: {"keep": 0.5, "method": "prune"}}], ids=str)
def test_merge_conserves_total_size(variant, plan):
    if variant == "no-class-token" and any(c.get("method") == "prune" for c in plan.values()):
        pytest.skip("prune needs a class token")
    model = _model(**VARIANTS[variant])
    prefix = model.num_prefix_tokens
    reduced = compress(model, _recipe(plan))
    x, size = reduced.blocks.forward_with_sizes(_tokens(reduced, _images()))
    assert size.shape == x.shape[:2]
    assert torch.equal(size[:, :prefix], torch.ones(2, prefix))
    assert torch.equal(size[:, prefix:].sum(dim=1), torch.full((2,), float(PATCHES)))
    assert size.min() >= 1 and size.max() > 1


def test_log_size_bias_makes_a_merged_pair_act_like_two_tokens():
    block = _model().blocks[1]
    torch.manual_seed(2)
    x = torch.randn(2, 9, 48)
    x[:, 4] = x[:, 3]
    pair = block(x)
    size = torch.ones(2, 8)
    size[:, 3] = 2
    merged = block(torch.cat([x[:, :4], x[:, 5:]], dim=1), attn_mask=size_bias(size, x.dtype))
    assert torch.allclose(merged, torch.cat([pair[:, :4], pair[:, 5:]], dim=1), atol=1e-5)
    unbiased = block(torch.cat([x[:, :4], x[:, 5:]], dim=1))
    assert not torch.allclose(unbiased[:, 0], pair[:, 0], atol=1e-4)  # the bias is what makes them agree


def test_merging_two_identical_tokens_leaves_the_class_token_unchanged():
    """End to end: ToMe picks the identical pair (cosine 1), and proportional attention in the later blocks makes
    the merged token count twice, so the class token ends exactly where it would without merging."""
    model = _model()
    x = _tokens(model, _images())[:, :9].detach().clone()  # class token + 8 patches (non-prefix 2 in set A, 3 in set B)
    x[:, 4] = x[:, 3]
    expected = model.blocks(x)
    reduced = compress(model, _recipe({0: {"keep": 7 / 8}}))
    out, size = reduced.blocks.forward_with_sizes(x)
    assert out.shape[1] == 8 and size.max() == 2
    assert torch.allclose(out[:, 0], expected[:, 0], atol=1e-5)


def test_later_blocks_run_fused_attention_on_fewer_tokens(monkeypatch):
    reduced = compress(_model(), _recipe({0: {"keep": 0.5}, 2: {"keep": 0.5}}))
    calls = []
    original = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape[2], None if attn_mask is None else tuple(attn_mask.shape)))
        return original(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    reduced(_images())
    assert calls == [(65, None), (33, (2, 1, 1, 33)), (33, (2, 1, 1, 33)), (17, (2, 1, 1, 17))]


def test_prune_keeps_the_most_attended_tokens_and_fuses_the_rest():
    model = _model(reg_tokens=2)
    prefix, block = model.num_prefix_tokens, model.blocks[0]
    x = _tokens(model, _images())
    out = block(x)
    attn = block.attn
    q, k, _ = attn.qkv(block.norm1(x)).reshape(2, x.shape[1], 3, 3, 16).permute(2, 0, 3, 1, 4)
    scores = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1))[:, :, 0].softmax(-1)  # (B, heads, N)
    scores = scores.mean(dim=1)[:, prefix:]
    top = scores.topk(32, dim=-1).indices.sort(dim=-1).values
    dropped = torch.ones_like(scores).scatter(1, top, 0) * scores
    fused = ((dropped / dropped.sum(-1, keepdim=True))[..., None] * out[:, prefix:]).sum(dim=1)
    reduced = compress(model, _recipe({0: {"keep": 0.5, "method": "prune"}}))
    into = []
    reduced.blocks[1].register_forward_pre_hook(lambda module, args: into.append(args[0]))
    reduced(_images())
    got = into[0]
    assert got.shape[1] == prefix + 32 + 1
    kept = out[:, prefix:].gather(1, top[..., None].expand(-1, -1, 48))
    assert torch.allclose(got[:, prefix:-1], kept, atol=1e-6)
    assert torch.allclose(got[:, -1], fused, atol=1e-5)


@pytest.mark.parametrize("keep", [0, -0.2, 1.5, "half", True, math.nan])
def test_bad_keep_is_refused_with_field_and_range(keep):
    with pytest.raises(AutocompError, match=r"block 1: reduce_tokens: keep must .* in \(0, 1\]"):
        _recipe({1: {"keep": keep}})


def test_unknown_method_lists_the_methods():
    with pytest.raises(AutocompError, match=r"method must be one of \['merge', 'prune'\], got 'drop'"):
        _recipe({0: {"keep": 0.5, "method": "drop"}})


def test_prune_without_class_token_is_refused():
    with pytest.raises(AutocompError, match="block 2: .*'prune'.*no class token; use method 'merge'"):
        compress(_model(**VARIANTS["no-class-token"]), _recipe({2: {"keep": 0.5, "method": "prune"}}))


def test_recipe_round_trips_through_yaml_with_identical_outputs():
    recipe = _recipe({0: {"keep": 0.5}, 1: {"keep": 1}, 2: {"keep": 0.4, "method": "prune"}})
    again = Recipe.from_dict(yaml.safe_load(yaml.safe_dump(recipe.to_dict())))
    assert again == recipe and recipe.blocks[1]["reduce_tokens"] == ReduceTokens(keep=1.0)
    assert recipe.summary() == "tm0.5 | tm1 | tp0.4 | -"
    model = _model()
    assert torch.equal(compress(model, again)(_images()), compress(model, recipe)(_images()))


def test_weights_keep_their_names():
    model = _model()
    reduced = compress(model, _recipe({0: {"keep": 0.5}}))
    assert list(reduced.state_dict()) == list(model.state_dict())
    rebuilt = compress(_model(), _recipe({0: {"keep": 0.5}}), structure_only=True)
    rebuilt.load_state_dict(reduced.state_dict())
    assert torch.equal(rebuilt(_images()), reduced(_images()))


def test_composes_with_head_pruning_quantization_and_a_second_application(monkeypatch):
    import autocomp.ops  # noqa: F401 - registers prune_heads and quantize

    recipe = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 2}, "reduce_tokens": {"keep": 0.5}},
                                          {"quantize": {}}, {}, {}]})
    model = compress(_model(), recipe, calibration=_images(4))
    assert model.blocks[0].attn.num_heads == 2 and model.blocks.plan == {0: ReduceTokens(keep=0.5)}
    model = compress(model, _recipe({2: {"keep": 0.5, "method": "prune"}}))
    assert sorted(model.blocks.plan) == [0, 2]
    calls = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: calls.append(tuple(q.shape[1:3])) or original(q, k, v, **kw))
    assert model(_images()).shape == (2, 5)
    assert calls == [(2, 65), (3, 33), (3, 33), (3, 18)]  # (heads, tokens); block 2 keeps 16 + 1 fused


def test_merge_is_a_size_weighted_average():
    """Merging in several rounds (keep 0.05: 64 -> 32 -> 16 -> 8 -> 4 -> 3) joins tokens of unequal sizes; a
    size-weighted average keeps the size-weighted sum of the tokens exactly."""
    model = _model(reg_tokens=2)
    reduced = compress(model, _recipe({1: {"keep": 0.05}}))
    out, into = [], []
    reduced.blocks[1].register_forward_hook(lambda module, args, output: out.append(output))
    reduced.blocks[2].register_forward_pre_hook(lambda module, args: into.append(args[0]))
    _, size = reduced.blocks.forward_with_sizes(_tokens(reduced, _images()))
    prefix = model.num_prefix_tokens
    assert into[0].shape[1] == prefix + 3 and sorted(size[0, prefix:].tolist()) != [1.0, 1.0, 1.0]
    weighted = (into[0][:, prefix:] * size[:, prefix:, None]).sum(dim=1)
    assert torch.allclose(weighted, out[0][:, prefix:].sum(dim=1), atol=1e-4)


def test_an_average_pooled_model_averages_the_patches_its_merged_tokens_stand_for():
    """Without a class token (timm's 'avg' pooling), the output is the mean over tokens: a merged token is weighed by
    the patches it stands for, as ToMe averages (counted once, a 0.7 merge cost a user's model 5 points more), also
    where the model's LayerNorm sits between the blocks and the pooling (fc_norm=False, as in timm's *_gap_* ViTs,
    where scaling the tokens before the norm would change nothing); a model read through its class token is not
    touched."""
    for overrides in ({"class_token": False, "global_pool": "avg"},
                      {"class_token": False, "global_pool": "avg", "reg_tokens": 2},
                      {"class_token": False, "global_pool": "avg", "fc_norm": False}):
        base = _model(**overrides)
        model = compress(base, _recipe({0: {"keep": 0.5, "method": "merge"}}))
        assert isinstance(base.norm, nn.LayerNorm) is (overrides.get("fc_norm") is False)
        images = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            x, size = model.blocks.forward_with_sizes(_tokens(model, images))
            prefix = model.num_prefix_tokens
            weights = size[:, prefix:, None] / size[:, prefix:].sum(dim=1)[:, None, None]
            normed = base.norm(x[:, prefix:])  # the model's own norm, on each token
            pooled = (normed * weights).sum(dim=1)  # by hand: the average over the patches
            expected = model.head(model.fc_norm(pooled))
            assert torch.allclose(model(images), expected, atol=1e-5)
            plain = model.head(model.fc_norm(normed.mean(dim=1)))  # what it was: each token once
            assert not torch.allclose(model(images), plain, atol=1e-3)
    assert compress(_model(), _recipe({0: {"keep": 0.5, "method": "merge"}})).blocks.averaged is None


def test_a_pool_weighted_model_saves_and_loads(tmp_path):
    """The norm the weights pass through keeps its weights (as norm.norm.*; those saved as norm.* before it was
    wrapped load too), and a second compression of the model wraps it once."""
    from autocomp.models import ModelSpec
    from autocomp.saving import load_model, save_model

    overrides = {"class_token": False, "global_pool": "avg", "fc_norm": False}
    model = compress(_model(**overrides), _recipe({0: {"keep": 0.5, "method": "merge"}}))
    model = compress(model, _recipe({2: {"keep": 0.5, "method": "merge"}}))
    assert isinstance(model.norm.norm, nn.LayerNorm) and sorted(model.blocks.plan) == [0, 2]
    with torch.no_grad():
        model.norm.norm.weight.mul_(2.0)  # distinct from a fresh norm's
    recipe = Recipe.from_dict({"blocks": [{"reduce_tokens": {"keep": 0.5}}, {}, {"reduce_tokens": {"keep": 0.5}}, {}]})
    spec = ModelSpec(name="vit_tiny_patch16_224", kwargs=dict(img_size=32, patch_size=4, embed_dim=48, depth=4,
                                                                num_heads=3, num_classes=5, **overrides))
    save_model(tmp_path, model, recipe, spec)
    images = _images()
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path)(images), model(images), atol=1e-6)
    older = {key.replace("norm.norm.", "norm."): value for key, value in model.state_dict().items()}
    again = compress(_model(**overrides), recipe, structure_only=True)
    again.load_state_dict(older)  # as saved before the norm was wrapped
    assert torch.equal(again.norm.norm.weight, model.norm.norm.weight)


@pytest.mark.parametrize("method", ["merge", "prune"])
def test_reducing_tokens_lowers_the_activation_peak(method):
    """The reduction keeps only what it scores tokens by, not the attention's queries and keys: holding those
    (a view of the whole qkv output) through the block's MLP raised the peak above the uncompressed model's."""
    from autocomp.measure import peak_activation_nbytes

    base, images = _model(), torch.randn(8, 3, 32, 32)
    model = compress(base, _recipe({i: {"keep": 0.85, "method": method} for i in range(4)}))
    with torch.no_grad():
        assert peak_activation_nbytes(model, images) < peak_activation_nbytes(base, images)
