from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import yaml
from torch import nn

from autocomp import AutocompError, Recipe, compress
from autocomp.distill import distill, distillation_loss
from autocomp.recipe import Distill
from autocomp.measure import weight_nbytes
from autocomp.ops import OPERATORS as REGISTRY
from autocomp.ops.qat import FakeQuantLinear
from autocomp.ops.quantize import Int8Linear
from autocomp.train import evaluate

# One setting per registered operator, for a 2-block, 4-head, width-32 model (tiny_teacher).
OPERATORS = {
    "prune_heads": {"keep": 2},
    "prune_mlp": {"keep": 0.5},
    "low_rank": {"rank": 0.25},
    "reduce_tokens": {"keep": 0.5},
    "quantize": {},
}
STEPS = 60  # about 1 s on one core; the gains below are 25+ points, asserted at 15


def _student(teacher, splits, block: dict) -> nn.Module:
    return compress(teacher, Recipe.from_dict({"blocks": [block, block]}), calibration=splits.calib.x)


def _floats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_operator_table_covers_the_registry():
    assert set(OPERATORS) == set(REGISTRY)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_loss_is_the_formula_by_hand(alpha, temperature):
    student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    teacher = torch.tensor([[1.0, 1.0, 0.0], [-2.0, 0.5, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    ce = -(student.softmax(-1)[[0, 1], labels].log()).mean()
    p_t, p_s = (teacher / temperature).softmax(-1), (student / temperature).softmax(-1)
    kl = (p_t * (p_t.log() - p_s.log())).sum() / 2  # batch mean of the per-sample KL
    expected = (1 - alpha) * ce + alpha * temperature ** 2 * kl
    got = distillation_loss(student, teacher, labels, alpha, temperature)
    assert torch.allclose(got, expected, rtol=1e-12, atol=0)
    if alpha == 0:
        assert torch.allclose(got, ce, rtol=1e-12, atol=0)
    if alpha == 1:
        assert torch.allclose(got, temperature ** 2 * kl, rtol=1e-12, atol=0)


def test_zero_steps_leaves_the_student_bitwise_unchanged(tiny_teacher, digits_splits):
    _, teacher = tiny_teacher
    student = _student(teacher, digits_splits, {"prune_heads": {"keep": 2}, "quantize": {}})
    x = digits_splits.val.x[:64]
    before, state = student(x), _floats(student)
    result = distill(student, teacher, digits_splits.train, Distill(steps=0, alpha=0.5))
    assert result is student and not result.training
    assert torch.equal(result(x), before)
    assert all(torch.equal(v, state[k]) for k, v in result.state_dict().items())


def test_distillation_recovers_a_head_pruned_student(tiny_teacher, digits_splits):
    _, teacher = tiny_teacher
    block = {"prune_heads": {"keep": 2}}
    baseline = evaluate(_student(teacher, digits_splits, block), digits_splits.val)
    distilled = distill(_student(teacher, digits_splits, block), teacher, digits_splits.train,
                        Distill(steps=STEPS, alpha=0.5))
    assert not distilled.training
    assert evaluate(distilled, digits_splits.val) >= baseline + 15  # measured 38.7 -> 66.3


def test_distillation_recovers_a_quantized_student_and_packs_it_again(tiny_teacher, digits_splits):
    _, teacher = tiny_teacher
    block = {"prune_heads": {"keep": 2}, "quantize": {}}
    undistilled = _student(teacher, digits_splits, block)
    distilled = distill(_student(teacher, digits_splits, block), teacher, digits_splits.train,
                        Distill(steps=STEPS, alpha=0.5))
    assert evaluate(distilled, digits_splits.val) >= evaluate(undistilled, digits_splits.val) + 15  # 38.0 -> 66.7
    assert not any(isinstance(m, FakeQuantLinear) for m in distilled.modules())
    assert sum(isinstance(m, Int8Linear) for m in distilled.modules()) == 8
    assert weight_nbytes(distilled) == weight_nbytes(undistilled)
    state, reference = distilled.state_dict(), undistilled.state_dict()
    assert {k: (v.dtype, v.shape) for k, v in state.items()} == {k: (v.dtype, v.shape) for k, v in reference.items()}
    assert not torch.equal(state["blocks.0.attn.qkv.weight_int8"], reference["blocks.0.attn.qkv.weight_int8"])


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_operator_trains_every_tensor_and_keeps_its_structure(tiny_teacher, digits_splits, name):
    _, teacher = tiny_teacher
    block = {name: OPERATORS[name]}
    before = _student(teacher, digits_splits, block)
    distilled = distill(_student(teacher, digits_splits, block), teacher, digits_splits.train,
                        Distill(steps=5, alpha=0.5, lr=1e-2, feature_weight=1.0))
    assert [type(m) for m in distilled.modules()] == [type(m) for m in before.modules()]
    state = distilled.state_dict()
    unchanged = [k for k, v in before.state_dict().items() if torch.equal(v, state[k])]
    assert unchanged == []  # gradients reached every parameter, quantized ones through the STE
    assert all(p.grad is None for p in distilled.parameters())


def test_teacher_and_global_rng_are_left_alone(tiny_teacher, digits_splits):
    _, teacher = tiny_teacher
    student = _student(teacher, digits_splits, {"prune_heads": {"keep": 2}})
    state, rng = _floats(teacher), torch.get_rng_state()
    grads = [p.grad for p in teacher.parameters()]
    distill(student, teacher, digits_splits.train, Distill(steps=3, alpha=0.5))
    assert not teacher.training and all(p.grad is g for p, g in zip(teacher.parameters(), grads))
    assert all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tiny_teacher, digits_splits):
    _, teacher = tiny_teacher
    block = {"prune_heads": {"keep": 2}, "reduce_tokens": {"keep": 0.5}}

    def run(seed: int) -> dict[str, torch.Tensor]:
        student = _student(teacher, digits_splits, block)
        return distill(student, teacher, digits_splits.train,
                       Distill(steps=10, alpha=0.5, feature_weight=1.0, seed=seed)).state_dict()

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    assert not all(torch.equal(v, other[k]) for k, v in first.items())


@pytest.mark.parametrize("block", [{"prune_heads": {"keep": 2}}, {"reduce_tokens": {"keep": 0.25}}],
                         ids=["heads", "fewer-tokens"])
def test_feature_distillation_brings_block_outputs_closer(tiny_teacher, digits_splits, block):
    _, teacher = tiny_teacher
    x = digits_splits.val.x

    def feature_error(feature_weight: float) -> float:
        student = distill(_student(teacher, digits_splits, block), teacher, digits_splits.train,
                          Distill(steps=30, alpha=0.5, lr=3e-3, feature_weight=feature_weight))
        outputs: dict[str, list[torch.Tensor]] = {"s": [], "t": []}
        hooks = [b.register_forward_hook(lambda m, a, out, key=key: outputs[key].append(out[:, 0]))
                 for key, model in (("s", student), ("t", teacher)) for b in model.blocks]
        with torch.no_grad():
            student(x), teacher(x)
        for hook in hooks:
            hook.remove()
        return sum(((s - t) ** 2).mean().item() for s, t in zip(outputs["s"], outputs["t"]))

    assert feature_error(100.0) < 0.75 * feature_error(0.0)  # measured 0.6 (heads), 0.3 (tokens)


def test_log_reports_the_loss(tiny_teacher, digits_splits):
    _, teacher = tiny_teacher
    lines: list[str] = []
    distill(_student(teacher, digits_splits, {"prune_heads": {"keep": 2}}), teacher, digits_splits.train,
            Distill(steps=10, alpha=0.5), log=lines.append)
    assert len(lines) == 5 and lines[-1].startswith("distill step 10/10: loss ")


def test_config_round_trips_through_yaml_as_a_plain_dict():
    config = Distill(steps=100, alpha=1, temperature=2, lr=5e-4, batch_size=32, feature_weight=0.5, seed=3)
    assert isinstance(config.alpha, float) and isinstance(config.temperature, float)  # YAML's 1 is 1.0
    data = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(config)))
    assert Distill(**data) == config


@pytest.mark.parametrize("field, value, message", [
    ("steps", -1, "steps must be a whole number of optimizer steps >= 0, got -1"),
    ("steps", 1.5, "steps must be a whole number of optimizer steps >= 0, got 1.5"),
    ("alpha", 1.5, "alpha must be the weight of the distillation term, a number in [0, 1], got 1.5"),
    ("alpha", -0.1, "alpha must be the weight of the distillation term, a number in [0, 1], got -0.1"),
    ("alpha", True, "alpha must be the weight of the distillation term, a number in [0, 1], got True"),
    ("temperature", 0, "temperature must be the softmax temperature, a number > 0, got 0"),
    ("temperature", float("inf"), "temperature must be the softmax temperature, a number > 0, got inf"),
    ("lr", 0.0, "lr must be the peak learning rate, a number > 0, got 0.0"),
    ("batch_size", 0, "batch_size must be a whole number of images per step >= 1, got 0"),
    ("feature_weight", -1.0, "feature_weight must be the weight of the feature MSE, a number >= 0"),
    ("seed", -1, "seed must be a whole-number seed >= 0, got -1"),
])
def test_bad_settings_name_the_field_and_the_range(field, value, message):
    settings = {"steps": 10, "alpha": 0.5, field: value}
    with pytest.raises(AutocompError, match=re.escape(message)):
        Distill(**settings)


def test_a_teacher_with_other_classes_is_refused(tiny_teacher, digits_splits):
    _, teacher = tiny_teacher
    student = _student(teacher, digits_splits, {})
    student.reset_classifier(5)
    with pytest.raises(AutocompError, match="student predicts 5 classes but the teacher 10"):
        distill(student, teacher, digits_splits.train, Distill(steps=1, alpha=0.5))


def test_an_empty_split_is_refused(tiny_teacher, digits_splits):
    _, teacher = tiny_teacher
    empty = dataclasses.replace(digits_splits.train, x=digits_splits.train.x[:0], y=digits_splits.train.y[:0])
    with pytest.raises(AutocompError, match="the split is empty"):
        distill(_student(teacher, digits_splits, {}), teacher, empty, Distill(steps=1, alpha=0.5))


@pytest.mark.parametrize("block", [{"prune_heads": {"keep": 2}}, {"quantize": {}}], ids=["heads", "int8"])
def test_teacher_outputs_cached_once_give_the_same_students(tiny_teacher, digits_splits, block):
    from autocomp.distill import TeacherCache

    _, teacher = tiny_teacher
    cache = TeacherCache.build(teacher, digits_splits.train, Distill(steps=12, alpha=0.5, batch_size=32))
    assert len(cache.outputs) == 12
    for steps, alpha in ((12, 0.5), (7, 0.9)):  # a shorter run uses a prefix; alpha does not change the batches
        config = Distill(steps=steps, alpha=alpha, batch_size=32)
        assert cache.serves(config)
        plain = distill(_student(teacher, digits_splits, block), teacher, digits_splits.train, config)
        cached = distill(_student(teacher, digits_splits, block), teacher, digits_splits.train, config, cache=cache)
        # the teacher ran on each image in other batches: its logits are the same to float rounding (1e-6), and so
        # is what the students compute (not every weight: Adam moves the key bias, which no output depends on, by
        # rounding noise)
        images = digits_splits.val.tensors()[0][:256]
        with torch.no_grad():
            ours, theirs = cached(images), plain(images)  # (an int8 code may round the other way: 0.007 on int8)
        assert torch.allclose(ours, theirs, atol=0.02) and torch.equal(ours.argmax(1), theirs.argmax(1))
    assert not cache.serves(Distill(steps=12, alpha=0.5, batch_size=64))  # other batches
    assert not cache.serves(Distill(steps=13, alpha=0.5, batch_size=32))  # more than were cached
    assert not cache.serves(Distill(steps=5, alpha=0.5, batch_size=32, seed=1))
    assert not cache.serves(Distill(steps=5, alpha=0.5, batch_size=32, feature_weight=1.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path runs where one exists")
def test_distillation_on_a_gpu_returns_a_packed_student_on_the_cpu(tiny_teacher, digits_splits):
    _, teacher = tiny_teacher
    student = _student(teacher, digits_splits, {"quantize": {}})
    before = evaluate(student, digits_splits.val)
    tuned = distill(student, teacher, digits_splits.train, Distill(steps=STEPS, alpha=0.5), device="cuda")
    assert all(t.device.type == "cpu" for t in tuned.state_dict().values())
    assert sum(isinstance(m, Int8Linear) for m in tuned.modules()) == 8
    assert next(teacher.parameters()).device.type == "cpu"
    assert evaluate(tuned, digits_splits.val) >= before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path runs where one exists")
def test_teacher_outputs_computed_on_a_gpu_are_the_cpus_kept_on_the_cpu(tiny_teacher, digits_splits):
    from autocomp.distill import TeacherCache

    _, teacher = tiny_teacher
    config = Distill(steps=4, alpha=0.5, batch_size=32)
    on_cpu = TeacherCache.build(teacher, digits_splits.train, config)
    on_gpu = TeacherCache.build(teacher, digits_splits.train, config, device="cuda")
    assert next(teacher.parameters()).device.type == "cpu"  # a copy went to the GPU
    assert {t.device.type for t in on_gpu.outputs} == {"cpu"}
    for a, b in zip(on_cpu.outputs, on_gpu.outputs, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)



def test_the_teacher_runs_once_on_each_image_the_distillations_draw(tiny_teacher, digits_splits):
    """100 steps of 64 from 1,024 images drew each image about 6 times, and the teacher ran on every draw (117 s of
    a 224-px run's start, for 19 s of distinct images): each image is now run once, its logits given to every batch
    that draws it, in the order the distillation draws them."""
    from autocomp.distill import TeacherCache, _batches

    _, teacher = tiny_teacher
    seen = []
    hook = teacher.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    split, config = digits_splits.train.subset(100), Distill(steps=12, alpha=0.5, batch_size=32)  # 4 passes
    try:
        cache = TeacherCache.build(teacher, split, config)
    finally:
        hook.remove()
    assert sum(seen) == 100 and len(seen) == 4  # each of the 100 images once, in batches of 32
    drawn = list(_batches(split, config))
    assert len(cache.outputs) == len(drawn) == 12
    with torch.no_grad():
        for kept, (x, _) in zip(cache.outputs, drawn, strict=True):
            assert torch.allclose(kept, teacher(x), rtol=1e-5, atol=1e-5)
