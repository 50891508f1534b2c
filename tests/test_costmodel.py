"""The cost model: roofline formulas against hand-derived values, weight and activation memory against the really
compressed model, MACs against the counter, and the measured correction on data with a known bias."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import shipped_profiles, small_vit

from autocomp import AutocompError, Recipe, compress
from autocomp.costmodel import CorrectedCostModel, CostModel, ViTDescription, describe, fidelity, linear_nbytes, plan
from autocomp.flops import count_macs
from autocomp.hardware import HardwareProfile
from autocomp.measure.profiling import load_profile
from autocomp.measure import peak_activation_nbytes, weight_nbytes
from autocomp.ops.quantize import WEIGHT_BITS, Quantize, stored_nbytes_for
from autocomp.ops.tokens import TokenReducingBlocks

PROFILES = shipped_profiles()
# A made-up device: 100 GFLOP/s fp32, 400 GOP/s int8, 10 GB/s, 5 us per op: ridge point at 10 FLOP/byte.
MADE_UP = HardwareProfile(name="made-up", batch_size=1, peak_gflops={"fp32": 100.0, "int8": 400.0},
                          memory_bandwidth_gbs=10.0, memory_gb=1.0, op_overhead_us=5.0, fast_weight_bits={8: "int8"},
                          fast_ops=("fused_attention",))


def one_block(num_patches=196, depth=1):
    """A ViT written down by hand: width 256, 4 heads of 64, MLP 1024, a class token; one block unless told."""
    return ViTDescription(embed_dim=256, num_heads=(4,) * depth, head_dim=64, mlp_hidden=(1024,) * depth,
                          num_patches=num_patches, num_prefix_tokens=1, num_classes=10, in_chans=3,
                          patch_size=(16, 16), global_pool="token",
                          bias=dict.fromkeys(("qkv", "proj", "fc1", "fc2"), True), attn_norm=False, mlp_norm=False,
                          fc_norm=False, block_fixed_nbytes=(0,) * depth, stem_nbytes=0, head_nbytes=0)


def op(prediction, name):
    (found,) = [o for o in prediction.ops if o.name == name]
    return found


def recipe(*blocks):
    return Recipe.from_dict({"blocks": list(blocks)})


# --- roofline formulas, by hand -------------------------------------------------------------------------------------

def test_a_large_fp32_linear_is_compute_bound():
    fc1 = op(CostModel(description=one_block(), profile=MADE_UP).predict(recipe({})), "blocks.0.mlp.fc1")
    # 197 tokens x 256 -> 1024: 51,642,368 MACs = 103,284,736 FLOP at 100 GFLOP/s
    assert fc1.macs == 197 * 256 * 1024
    assert fc1.compute_ms == pytest.approx(1.03284736)
    # reads 197 x 256 fp32 inputs and 1024 x 256 + 1024 fp32 weights, writes 197 x 1024: 2,061,312 bytes at 10 GB/s
    assert fc1.nbytes == 2_061_312
    assert fc1.memory_ms == pytest.approx(0.2061312)
    assert fc1.bound == "compute"
    assert fc1.latency_ms == pytest.approx(1.03284736 + 0.005)


def test_a_small_int8_linear_is_memory_bound_and_computes_at_int8():
    model = CostModel(description=one_block(num_patches=3), profile=MADE_UP)
    fc1 = op(model.predict(recipe({"quantize": {"weight_bits": 8}})), "blocks.0.mlp.fc1")
    assert fc1.precision == "int8"
    # 4 tokens: 1,048,576 MACs = 2,097,152 OP at 400 GOP/s
    assert fc1.compute_ms == pytest.approx(0.00524288)
    # 4 x (256 + 1024) fp32 activations + int8 weights 262,144 + fp32 scale and bias 2 x 4 x 1024 = 290,816 bytes
    assert fc1.nbytes == 290_816
    assert fc1.memory_ms == pytest.approx(0.0290816)
    assert fc1.bound == "memory"
    assert fc1.latency_ms == pytest.approx(0.0290816 + 0.005)


def test_fused_attention_by_hand():
    attn = op(CostModel(description=one_block(), profile=MADE_UP).predict(recipe({})), "blocks.0.attn")
    scores = 4 * 197 * 197  # heads x queries x keys
    assert attn.macs == scores * 64 * 2  # q @ k^T and attn @ v: 19,870,208
    assert attn.flops == 5 * scores  # the softmax
    assert attn.compute_ms == pytest.approx((2 * 19_870_208 + 776_180) / 100e9 * 1e3)
    assert attn.nbytes == 4 * 4 * 197 * 256  # q, k, v read, the output written; the scores stay on chip
    assert attn.bound == "compute"


def test_unfused_attention_writes_the_scores_and_its_softmax_is_memory_bound():
    profile = dataclasses.replace(MADE_UP, fast_ops=())
    prediction = CostModel(description=one_block(), profile=profile).predict(recipe({}))
    parts = [o for o in prediction.ops if o.name.startswith("blocks.0.attn.") and "qkv" not in o.name
             and "proj" not in o.name]
    assert [o.name.split(".")[-1] for o in parts] == ["scores", "softmax", "values", "merge_heads"]
    assert sum(o.macs for o in parts) == 4 * 197 * 197 * 64 * 2
    softmax = op(prediction, "blocks.0.attn.softmax")
    assert softmax.nbytes == 4 * 2 * 4 * 197 * 197  # the fp32 scores read and written
    assert softmax.memory_ms == pytest.approx(0.1241888)
    assert softmax.bound == "memory"
    assert softmax.latency_ms == pytest.approx(0.1241888 + 0.005)


def test_weights_without_a_fast_kernel_save_memory_but_not_time():
    model = CostModel(description=one_block(), profile=MADE_UP)  # kernels for 8 bits only
    full = model.predict(recipe({}))
    four = model.predict(recipe({"quantize": {"weight_bits": 4}}))
    assert four.weight_nbytes < model.predict(recipe({"quantize": {"weight_bits": 8}})).weight_nbytes
    assert four.latency_ms > full.latency_ms  # unpacked to fp32, then the same fp32 GEMM
    unpack = op(four, "blocks.0.mlp.fc1.unpack")
    packed = stored_nbytes_for(256, 1024, bias=True, config=Quantize(weight_bits=4))
    assert unpack.nbytes == packed + 20 * 256 * 1024  # packed codes read, ~20 bytes a weight moved unpacking them
    fc1 = op(four, "blocks.0.mlp.fc1")
    assert fc1.precision == "fp32"
    assert fc1.nbytes == op(full, "blocks.0.mlp.fc1").nbytes  # reads the unpacked fp32 weight


def test_int8_with_a_fast_kernel_is_faster_without_one_slower():
    description = one_block()
    int8 = recipe({"quantize": {"weight_bits": 8}})
    with_kernel = CostModel(description=description, profile=MADE_UP)
    without = CostModel(description=description, profile=dataclasses.replace(MADE_UP, fast_weight_bits={}))
    assert with_kernel.predict(int8).latency_ms < with_kernel.predict(recipe({})).latency_ms
    assert without.predict(int8).latency_ms > without.predict(recipe({})).latency_ms
    assert without.predict(int8).weight_nbytes == with_kernel.predict(int8).weight_nbytes


def test_static_activations_run_at_their_measured_rate_where_the_profile_has_one():
    """A static int8 GEMM runs at another rate than the dynamic one (on a Xeon with AMX, OpenVINO's 2.1x it, ONNX
    Runtime's 0.93x: benchmarks/static_activations.py): with ``int8_static`` measured it is predicted at that rate,
    its input's quantization included; without, at the int8 rate plus a quantize op."""
    description = one_block()
    dynamic, static = recipe({"quantize": {"weight_bits": 8}}), recipe({"quantize": {"weight_bits": 8, "act_bits": 8}})
    measured = CostModel(description=description, profile=dataclasses.replace(
        MADE_UP, peak_gflops={**MADE_UP.peak_gflops, "int8_static": 800.0}))
    fc1 = op(measured.predict(static), "blocks.0.mlp.fc1")
    assert fc1.precision == "int8_static" and fc1.group == "linear.int8_static"  # corrected apart from dynamic
    assert fc1.compute_ms == pytest.approx(op(measured.predict(dynamic), "blocks.0.mlp.fc1").compute_ms / 2)
    assert not [o for o in measured.predict(static).ops if o.name.endswith("act_quant")]
    assert measured.predict(static).latency_ms < measured.predict(dynamic).latency_ms
    unmeasured = CostModel(description=description, profile=MADE_UP)
    assert op(unmeasured.predict(static), "blocks.0.mlp.fc1.act_quant").kind == "elementwise"
    assert op(unmeasured.predict(static), "blocks.0.mlp.fc1").precision == "int8"
    assert unmeasured.predict(static).latency_ms > unmeasured.predict(dynamic).latency_ms


def test_weight_storage_is_the_quantize_operators_own():
    assert linear_nbytes(10, 20, bias=True, quantize=None) == 4 * (200 + 20)
    for bits in WEIGHT_BITS:
        config = Quantize(weight_bits=bits, group_size=8)
        assert linear_nbytes(10, 20, bias=True, quantize=config) == stored_nbytes_for(10, 20, bias=True, config=config)


def test_sixteen_bit_weights_run_at_the_half_precision_peak_with_casts():
    profile = dataclasses.replace(MADE_UP, peak_gflops={"fp32": 100.0, "bf16": 400.0}, fast_weight_bits={16: "bf16"})
    prediction = CostModel(description=one_block(), profile=profile).predict(recipe({"quantize": {"weight_bits": 16}}))
    fc1 = op(prediction, "blocks.0.mlp.fc1")
    assert fc1.precision == "bf16"
    assert fc1.compute_ms == pytest.approx(2 * 197 * 256 * 1024 / 400e9 * 1e3)
    assert fc1.nbytes == 2 * 197 * (256 + 1024) + 2 * (256 * 1024 + 1024)  # bf16 activations, weights and bias
    assert op(prediction, "blocks.0.mlp.fc1.cast").nbytes == (4 + 2) * 197 * (256 + 1024)


@pytest.mark.parametrize("path", PROFILES)
def test_every_shipped_profile_predicts(path):
    profile = load_profile(path)
    prediction = CostModel(description=one_block(), profile=profile).predict(recipe({"quantize": {}}))
    assert prediction.latency_ms > 0
    assert prediction.batch_size == profile.batch_size
    assert set(prediction.latency_by_layer()) == {"patch_embed", "pos_embed", "blocks.0", "norm", "head"}


def test_a_profile_without_device_facts_is_refused():
    model = CostModel(description=one_block(), profile=HardwareProfile(name="timing-only"))
    with pytest.raises(AutocompError, match=r"'timing-only' lacks \['peak_gflops', 'memory_bandwidth_gbs'"):
        model.predict(recipe({}))


# --- against the really compressed model ----------------------------------------------------------------------------

BATCH = 3
RECIPES = {
    "identity": [{}, {}],
    "int8": [{"quantize": {"weight_bits": 8}}, {"quantize": {"weight_bits": 8}}],
    "heads": [{"prune_heads": {"keep": 2}}, {"prune_heads": {"keep": 5}}],
    "mlp": [{"prune_mlp": {"keep": 0.25}}, {"prune_mlp": {"keep": 0.75}}],
    "low_rank": [{"low_rank": {"rank": 0.25}}, {"low_rank": {"rank": 0.3, "layers": ["fc1", "proj"]}}],
    "low_rank_int8": [{"low_rank": {"rank": 0.25}, "quantize": {}}, {"prune_mlp": {"keep": 0.5}, "quantize": {}}],
    "merge": [{"reduce_tokens": {"keep": 0.5}}, {"prune_heads": {"keep": 3}}],
    "prune_tokens": [{"reduce_tokens": {"keep": 0.3, "method": "prune"}, "quantize": {}}, {"prune_mlp": {"keep": 0.5}}],
    "everything": [{"prune_heads": {"keep": 4}, "prune_mlp": {"keep": 0.5},
                    "low_rank": {"rank": 0.25, "layers": ["qkv"]}, "reduce_tokens": {"keep": 0.5}, "quantize": {}},
                   {"low_rank": {"rank": 0.2, "layers": ["fc2"]}, "reduce_tokens": {"keep": 0.5}}],
}


@pytest.fixture(scope="module")
def base():
    return small_vit(depth=2)


@pytest.fixture(scope="module")
def cost_model(base):
    """On this machine's profile, whose kernel table describes how the quantized modules run here."""
    local = load_profile(Path(__file__).parent.parent / "hardware_profiles" / "local_cpu.yaml")
    return CostModel(description=describe(base), profile=dataclasses.replace(local, batch_size=BATCH))


def _compressed(base, blocks):
    torch.manual_seed(0)
    return compress(base, recipe(*blocks), calibration=torch.randn(8, 3, 16, 16))


@pytest.mark.parametrize("name", RECIPES)
def test_weight_memory_matches_the_compressed_model(base, cost_model, name):
    predicted = cost_model.predict(recipe(*RECIPES[name])).weight_nbytes
    assert predicted == pytest.approx(weight_nbytes(_compressed(base, RECIPES[name])), rel=0.02)


QUANTIZED = {f"w{bits}g{group}" + ("a8" if act else ""): {"weight_bits": bits, "group_size": group, "act_bits": act}
             for bits in WEIGHT_BITS for group, act in ((16, None), (64, None), (8, 8))}


def _blocks(name):
    if name in RECIPES:
        return RECIPES[name]
    return [{"quantize": QUANTIZED[name]}, {"low_rank": {"rank": 0.25}, "quantize": QUANTIZED[name]}]


@pytest.mark.parametrize("name", QUANTIZED)
def test_weight_memory_matches_every_quantization_the_operator_offers(base, cost_model, name):
    blocks = _blocks(name)
    predicted = cost_model.predict(recipe(*blocks)).weight_nbytes
    assert predicted == pytest.approx(weight_nbytes(_compressed(base, blocks)), rel=0.02)


# The prediction walks the same allocations as the forward pass; only index and token-size tensors of a few hundred
# bytes are left out (0.2 % at most over a sweep of 50 random recipes on three ViT shapes), so 3 % leaves room for
# small changes in timm or torch internals while still catching a missed tensor of a block.
ACTIVATION_TOLERANCE = 0.03


@pytest.mark.parametrize("name", [*RECIPES, *QUANTIZED])
def test_activation_peak_approximates_the_measured_one(base, cost_model, name):
    blocks = _blocks(name)
    measured = peak_activation_nbytes(_compressed(base, blocks), torch.randn(BATCH, 3, 16, 16))
    assert cost_model.predict(recipe(*blocks)).activation_nbytes == pytest.approx(measured, rel=ACTIVATION_TOLERANCE)


@pytest.mark.parametrize("name", [*RECIPES, *QUANTIZED])
def test_macs_match_the_counted_ones(base, cost_model, name):
    counted = count_macs(_compressed(base, _blocks(name)), torch.randn(BATCH, 3, 16, 16)).total
    assert cost_model.predict(recipe(*_blocks(name))).macs == counted


def test_token_counts_are_the_operators_own(base):
    model = _compressed(base, RECIPES["everything"])
    assert isinstance(model.blocks, TokenReducingBlocks)
    plans = plan(describe(base), recipe(*RECIPES["everything"]))
    assert [b.tokens for b in plans] + [plans[-1].tokens_out] == model.blocks.tokens_entering(17)


def test_what_compress_refuses_the_cost_model_refuses(cost_model):
    with pytest.raises(AutocompError, match="prune_heads.keep=7 but the block has 6 heads"):
        cost_model.predict(recipe({"prune_heads": {"keep": 7}}, {}))
    with pytest.raises(AutocompError, match="no rank makes this layer smaller|use rank <="):
        cost_model.predict(recipe({"low_rank": {"rank": 0.9}}, {}))
    with pytest.raises(AutocompError, match="the recipe has 1 blocks but the model has 2"):
        cost_model.predict(recipe({}))


def test_describe_refuses_a_compressed_model(base):
    with pytest.raises(AutocompError, match="pass the model before autocomp.compress"):
        describe(_compressed(base, RECIPES["int8"]))


# --- the measured correction ----------------------------------------------------------------------------------------

def test_fidelity_by_hand():
    stats = fidelity([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 4.0, 3.0])
    assert stats["spearman"] == pytest.approx(0.8)
    assert stats["mape"] == pytest.approx((0 + 0 + 0.25 + 1 / 3) / 4)
    assert stats["within_10pct"] == 0.5
    assert stats["median_ratio"] == pytest.approx(1.0)
    assert math.isnan(fidelity([1.0], [2.0])["spearman"])
    with pytest.raises(AutocompError, match="two equally long lists"):
        fidelity([1.0], [1.0, 2.0])


def _random_recipes(count, seed=0):
    rng = random.Random(seed)
    recipes = []
    for _ in range(count):
        blocks = []
        for _ in range(4):
            block = {}
            if rng.random() < 0.5:
                block["prune_heads"] = {"keep": rng.randint(1, 4)}
            if rng.random() < 0.5:
                block["prune_mlp"] = {"keep": rng.choice([0.25, 0.5, 0.75])}
            if rng.random() < 0.3:
                block["low_rank"] = {"rank": 0.25, "layers": ["fc1", "fc2"]}
            if rng.random() < 0.3:
                block["reduce_tokens"] = {"keep": rng.choice([0.3, 0.6])}
            if rng.random() < 0.5:
                block["quantize"] = {"weight_bits": 8}
            blocks.append(block)
        recipes.append(recipe(*blocks))
    return recipes


def _biased_device(prediction, rng):
    """A device the roofline gets wrong in a known way: GEMMs 2.5x slower, every op pays 3x the overhead, int8 only
    1.5x slower, and 0.2 ms of fixed cost, with 2 % noise."""
    scale = {"linear.fp32": 2.5, "linear.int8": 1.5}
    total = sum(scale.get(o.group, 1.0) * max(o.compute_ms, o.memory_ms) + 3 * o.overhead_ms for o in prediction.ops)
    return (total + 0.2) * rng.uniform(0.98, 1.02)


def test_the_correction_learns_a_systematic_bias():
    model = CostModel(description=one_block(depth=4), profile=MADE_UP)
    rng = random.Random(1)
    predictions = [model.predict(r) for r in _random_recipes(40)]
    measured = [_biased_device(p, rng) for p in predictions]
    raw = fidelity([p.latency_ms for p in predictions], measured)
    corrected = CorrectedCostModel()
    assert corrected.latency_ms(predictions[0]) == pytest.approx(predictions[0].latency_ms)  # nothing learnt yet
    for prediction, latency in zip(predictions, measured, strict=True):
        corrected.add(prediction, latency)
    after = corrected.fidelity()  # leave-one-out
    assert raw["mape"] > 0.3 and raw["within_10pct"] < 0.1
    assert after["mape"] < 0.05 and after["within_10pct"] >= 0.9
    assert after["spearman"] >= raw["spearman"]
    # the dominant group varies from recipe to recipe, so its scale is identifiable; groups that barely vary (the
    # stem, the head, the overhead of a fixed op count) trade off against the fixed cost, and the prior decides
    assert corrected.scales["linear.fp32"] == pytest.approx(2.5, rel=0.1)


def test_the_correction_needs_two_trials_for_its_error():
    corrected = CorrectedCostModel()
    with pytest.raises(AutocompError, match="at least 2 measured trials"):
        corrected.fidelity()
    with pytest.raises(AutocompError, match="measured latency must be positive"):
        corrected.add(CostModel(description=one_block(), profile=MADE_UP).predict(recipe({})), 0.0)
