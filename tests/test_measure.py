from __future__ import annotations

import timm
import torch
from torch import nn

from autocomp.hardware import HardwareProfile
from autocomp.measure import measure, peak_activation_nbytes, weight_nbytes


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
    assert result.memory_mb == result.weights_mb + result.activations_mb
    assert result.weights_mb == weight_nbytes(model) / 1e6
