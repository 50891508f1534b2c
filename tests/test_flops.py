"""MACs of a tiny ViT against values derived by hand, with and without compression."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import TINY_KWARGS
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

from autocomp import Recipe, compress
from autocomp.flops import count_macs, count_params

# The tiny ViT: 8x8 one-channel images, 2x2 patches -> 16 patches + 1 class token; width 32, 4 heads of 8, MLP 128.
B, C, P, PATCHES, N, D, HEADS, HD, H, K = 3, 1, 2, 16, 17, 32, 4, 8, 128, 10


def tiny():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, **TINY_KWARGS).eval()


def example():
    return torch.randn(B, C, 8, 8)


def block_macs(n=N, heads=HEADS, hidden=H):
    attn_dim = heads * HD
    qkv = B * n * D * 3 * attn_dim
    attention = B * heads * n * n * HD * 2  # q @ k^T and attn @ v
    proj = B * n * attn_dim * D
    mlp = B * n * D * hidden + B * n * hidden * D
    return qkv + attention + proj + mlp


STEM = B * PATCHES * D * C * P * P  # the patch-embedding convolution
HEAD = B * D * K  # the classifier on the class token


def test_uncompressed_macs_match_the_hand_count():
    count = count_macs(tiny(), example())
    assert count.total == STEM + 2 * block_macs() + HEAD
    assert count.by_module["patch_embed.proj"] == STEM
    assert count.by_module["blocks.0.attn.qkv"] == B * N * D * 3 * D
    assert count.by_module["blocks.0.attn"] == B * HEADS * N * N * HD * 2  # the fused attention itself
    assert count.by_module["blocks.1.mlp.fc2"] == B * N * H * D
    assert count.by_module["head"] == HEAD


def test_pruned_heads_and_mlp_neurons_shrink_the_count_exactly():
    recipe = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 2}}, {"prune_mlp": {"keep": 0.5}}]})
    model = compress(tiny(), recipe, calibration=example())
    assert count_macs(model, example()).total == STEM + block_macs(heads=2) + block_macs(hidden=64) + HEAD


def test_int8_layers_count_the_same_macs_as_float_ones():
    recipe = Recipe.from_dict({"blocks": [{"quantize": {"weight_bits": 8}}, {}]})
    count = count_macs(compress(tiny(), recipe), example())
    assert count.total == STEM + 2 * block_macs() + HEAD
    assert count.by_op["quantized.linear_dynamic"] == block_macs() - B * HEADS * N * N * HD * 2


def test_low_rank_layers_count_both_factors():
    recipe = Recipe.from_dict({"blocks": [{"low_rank": {"rank": 0.25, "layers": ["fc1"]}}, {}]})
    rank = 8  # 0.25 of min(32, 128)
    full_fc1, factored = B * N * D * H, B * N * (D * rank + rank * H)
    count = count_macs(compress(tiny(), recipe), example())
    assert count.total == STEM + 2 * block_macs() - full_fc1 + factored + HEAD


def test_token_merging_shrinks_later_blocks_and_counts_its_matching():
    recipe = Recipe.from_dict({"blocks": [{"reduce_tokens": {"keep": 0.5, "method": "merge"}}, {}]})
    # 16 patch tokens -> 8: one bipartite round, 8 "A" tokens against 8 "B" tokens on keys of width HD
    matching = B * 8 * 8 * HD
    count = count_macs(compress(tiny(), recipe, calibration=example()), example())
    assert count.total == STEM + block_macs() + matching + block_macs(n=1 + 8) + HEAD


def test_token_pruning_counts_the_class_attention_and_keeps_a_fused_token():
    recipe = Recipe.from_dict({"blocks": [{"reduce_tokens": {"keep": 0.5, "method": "prune"}}, {}]})
    class_attention = B * HEADS * 1 * N * HD  # the class token's row of q @ k^T
    count = count_macs(compress(tiny(), recipe, calibration=example()), example())
    assert count.total == STEM + block_macs() + class_attention + block_macs(n=1 + 8 + 1) + HEAD


def _fvcore_sdpa(inputs, outputs):
    q, k, v = (get_shape(value) for value in inputs[:3])
    return q[0] * q[1] * q[2] * k[2] * (q[3] + v[3])


def test_the_count_agrees_with_fvcore_on_the_uncompressed_model():
    analysis = FlopCountAnalysis(tiny(), example())
    # fvcore has no handler for timm's fused attention; it counts LayerNorm, which is no MAC (a None handle does
    # not remove a default one, so a zero handle does)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _fvcore_sdpa, "aten::layer_norm", lambda i, o: 0)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    assert analysis.total() == count_macs(tiny(), example()).total


def test_an_extra_handler_can_be_given():
    count = count_macs(tiny(), example(), handlers={torch.ops.aten.gelu: lambda inputs, outputs: 1})
    assert count.total == STEM + 2 * block_macs() + HEAD + 2
    assert count.by_op["aten.gelu"] == 2


@pytest.mark.parametrize("blocks, removed", [
    ([{}, {}], 0),
    ([{"quantize": {"weight_bits": 8}}, {"quantize": {"weight_bits": 8}}], 0),  # packed, still every weight
    ([{"quantize": {"weight_bits": 4}}, {"quantize": {"weight_bits": 16}}], 0),
    ([{"prune_heads": {"keep": 2}}, {}], 3 * 16 * D + 3 * 16 + 16 * D),  # 16 channels: qkv rows, proj columns
    ([{}, {"prune_mlp": {"keep": 0.5}}], 64 * D + 64 + D * 64),
])
def test_params_count_every_weight_once_whatever_its_storage(blocks, removed):
    base = tiny()
    total = sum(p.numel() for p in base.parameters())
    model = compress(base, Recipe.from_dict({"blocks": blocks}), calibration=example())
    assert count_params(model) == total - removed
