from __future__ import annotations

import types

import pytest
import timm
import torch
from torch import nn

from autocomp import _timing
from autocomp.hardware import HardwareProfile
from autocomp.measure import measure, peak_activation_nbytes, time_models, weight_nbytes


def test_weight_bytes_are_counted_from_the_tensors_held():
    model = nn.Sequential(nn.Linear(10, 20), nn.LayerNorm(20), nn.Linear(20, 3, bias=False))
    model.register_buffer("table", torch.zeros(7, dtype=torch.float64))
    expected = 4 * (10 * 20 + 20) + 4 * (20 + 20) + 4 * 20 * 3 + 8 * 7
    assert weight_nbytes(model) == expected


def test_peak_activations_cover_the_largest_live_tensors():
    hidden = 256
    model = nn.Sequential(nn.Linear(8, hidden), nn.GELU(), nn.Linear(hidden, 4)).eval()
    x = torch.randn(32, 8)
    peak = peak_activation_nbytes(model, x)
    # fc1's output and GELU's output are alive together; nothing bigger ever is
    assert peak >= 2 * 32 * hidden * 4
    assert peak <= 2 * 32 * hidden * 4 + 32 * 4 * 4 + 4096


def test_peak_activations_grow_with_batch():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, num_classes=5,
                              embed_dim=32, depth=1, num_heads=2).eval()
    small = peak_activation_nbytes(model, torch.randn(2, 3, 16, 16))
    large = peak_activation_nbytes(model, torch.randn(8, 3, 16, 16))
    assert 3.5 < large / small < 4.5


def test_a_model_measured_against_itself_has_ratio_near_one():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).eval()
    profile = HardwareProfile(name="t", batch_size=4, repeats=15, warmup=2)
    result = measure(model, profile, example=torch.randn(3, 64), reference=model)
    assert 0.7 < result.latency_ratio < 1.4
    assert result.weights_mb == weight_nbytes(model) / 1e6
    assert result.activations_mb == peak_activation_nbytes(model, torch.randn(4, 64)) / 1e6  # at the batch size


class _Takes(nn.Module):
    """A model whose forward passes take ``seconds`` in turn on a fake clock, and are logged by ``name``."""

    def __init__(self, name: str, seconds: list[float], clock: types.SimpleNamespace, log: list[str]) -> None:
        super().__init__()
        self.label, self.seconds, self.clock, self.log, self.calls = name, seconds, clock, log, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.label)
        self.clock.now += self.seconds[self.calls % len(self.seconds)]
        self.calls += 1
        return x


@pytest.fixture
def clock(monkeypatch):
    """The timing's clock, moved only by :class:`_Takes` models."""
    fake = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(_timing, "time", types.SimpleNamespace(perf_counter=lambda: fake.now))
    return fake


def test_timing_interleaves_the_models_reversing_the_order_every_other_round(clock):
    log = []
    a, b = _Takes("a", [0.001, 0.002, 0.003], clock, log), _Takes("b", [0.010], clock, log)
    times = time_models([a, b], torch.zeros(1), warmup=1, repeats=4, threads=1)
    assert log == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then a round each way
    assert times[0] == pytest.approx([0.002, 0.003, 0.001, 0.002]) and times[1] == pytest.approx([0.010] * 4)


def test_a_measurement_reports_the_median_its_spread_and_the_median_of_the_per_round_ratios(clock):
    log = []
    model = _Takes("model", [0.001, 0.002, 0.003, 0.004, 0.010], clock, log)
    reference = _Takes("reference", [0.001, 0.004, 0.001, 0.004, 0.001], clock, log)
    profile = HardwareProfile(name="t", batch_size=1, warmup=0, repeats=5)
    result = measure(model, profile, example=torch.zeros(1), reference=reference)
    assert result.latency_ms == pytest.approx(3.0)  # the median of 1, 2, 3, 4 and 10 ms
    assert result.latency_iqr_ms == pytest.approx(7.0 - 1.5)  # the quartiles of the five
    # round by round 1/1, 2/4, 3/1, 4/4 and 10/1: their median, 1, not the ratio of the medians (3 ms / 1 ms)
    assert result.latency_ratio == pytest.approx(1.0)


def test_a_timing_spread_over_a_quarter_of_its_median_is_warned_about():
    from autocomp.measure import spread_warning

    assert spread_warning("the uncompressed model", 10.0, 2.5) is None  # a quarter: quiet enough
    warning = spread_warning("the uncompressed model", 10.0, 4.2)
    assert warning.startswith("warning: the uncompressed model was timed at 10 ms with repeats spread over 4.2 ms")
    assert "rerun on a quieter machine" in warning
    # a steady load: repeats alike, the thread starved; a budget in ms is judged against the figures
    warning = spread_warning("the uncompressed model", 50.0, 1.0, cpu_share=0.25, absolute=True, cpu_ms=12.5)
    assert warning.startswith("warning: the uncompressed model was timed at 50 ms while other processes took the CPU "
                              "(its thread got 25% of one): the machine is busy; latencies in ms are ratios (timed "
                              "interleaved, robust) times the CPU time of its passes, 12.5 ms")
    assert warning.endswith("give it as a fraction (latency: 0.6)")
    assert spread_warning("the uncompressed model", 50.0, 1.0, cpu_share=0.25, threads=4) is None


@pytest.mark.parametrize("cpu_per_second, starved", [(1.0, False), (0.25, True)])
def test_a_one_thread_timing_says_the_share_of_a_cpu_it_got(clock, monkeypatch, cpu_per_second, starved):
    """A steady load slows every repeat alike, so the spread cannot show it; the process's CPU time against the wall
    time does: a timing whose thread ran a quarter of the time is starved."""
    from autocomp.measure import _measure, busy
    from autocomp.measure import starved as is_starved

    monkeypatch.setattr(_measure, "time", types.SimpleNamespace(perf_counter=lambda: clock.now,
                                                                process_time=lambda: clock.now * cpu_per_second))
    model = _Takes("model", [0.010], clock, [])
    result = measure(model, HardwareProfile(name="t", batch_size=1, warmup=0, repeats=5), example=torch.zeros(1))
    assert result.cpu_share == pytest.approx(cpu_per_second)
    assert result.latency_iqr_ms == pytest.approx(0) and is_starved(result, 1) is starved and busy(result, 1) is starved
    assert not is_starved(result, 4)  # several threads: a share under 1 is no sign of a load (they wait on each other)


def test_a_busy_uncompressed_model_is_timed_again_and_starved_takes_its_cpu_time(monkeypatch):
    """Every latency in ms of a run is a ratio times the uncompressed model's: on a busy machine it is timed up to
    three times, the fastest kept, and where its thread still got too little of a CPU, the CPU time of its passes
    stands for its latency (the wall time kept as raw_latency_ms)."""
    from autocomp.measure import Measurement
    from autocomp.measure.placement import Placed
    from autocomp.search import _before

    splits = types.SimpleNamespace(calib=types.SimpleNamespace(x=torch.zeros(1)))
    profile = HardwareProfile(name="t")
    readings = iter([(40.0, 0.3), (30.0, 0.5), (35.0, 0.4), (1.0, 1.0)])
    monkeypatch.setattr(_before, "measure_on_device", lambda *args, **kwargs: Placed(
        Measurement(latency_ms=(r := next(readings))[0], latency_iqr_ms=0.1, latency_ratio=None, weights_mb=1.0,
                    activations_mb=1.0, cpu_share=r[1]), None, 0.0, 0.0))
    cost = _before.baseline_cost(nn.Identity(), profile, splits)
    assert cost["timings"] == 3 and cost["raw_latency_ms"] == 30.0 and cost["cpu_share"] == 0.5  # the fastest
    assert cost["latency_ms"] == pytest.approx(15.0)  # its CPU time: 30 ms of wall time at half a CPU
    readings = iter([(12.0, 0.97), (1.0, 1.0)])
    cost = _before.baseline_cost(nn.Identity(), profile, splits)
    assert cost["timings"] == 1 and cost["latency_ms"] == cost["raw_latency_ms"] == 12.0  # a quiet machine: once


def test_a_timing_its_cgroups_cpu_quota_held_back_is_not_taken_for_a_busy_machine(clock, monkeypatch):
    """A container of half a CPU runs the model at half speed with nothing else running: its wall time is what the
    model takes there, and the share it got says nothing of other processes (so its CPU time is not taken)."""
    from autocomp.measure import _measure, starved

    monkeypatch.setattr(_measure, "time", types.SimpleNamespace(perf_counter=lambda: clock.now,
                                                                process_time=lambda: clock.now * 0.5))
    held = iter([1_000, 5_000_000])  # ns its quota held the cgroup back: before and after the timing
    monkeypatch.setattr(_measure, "throttled_ns", lambda: next(held))
    result = measure(_Takes("model", [0.010], clock, []), HardwareProfile(name="t", batch_size=1, warmup=0, repeats=5),
                     example=torch.zeros(1))
    assert result.cpu_share is None and not starved(result, 1)
