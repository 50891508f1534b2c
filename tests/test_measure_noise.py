"""Measurement under a competing CPU load: the ratio against an interleaved reference stays where it was unloaded.

The one timed assertion of the suite, asked for by the cost-model issue: on a shared machine the absolute latency
swings by several times, the interleaved ratio must not (within 15 %).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import torch
from conftest import small_vit

from autocomp import Recipe, compress
from autocomp.hardware import HardwareProfile
from autocomp.measure import measure

TOLERANCE = 0.15
BUSY_LOOP = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


@contextmanager
def competing_load(processes: int, *, seconds: float) -> Iterator[list[subprocess.Popen]]:
    """``processes`` busy loops, each ending by itself after ``seconds`` and killed on exit in any case."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=seconds)]) for _ in range(processes)]
    try:
        time.sleep(0.2)  # let them start spinning
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def test_interleaved_ratio_under_a_competing_cpu_load_stays_within_15_percent():
    base = small_vit(depth=4, img_size=32, embed_dim=96)
    halved = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 3}, "prune_mlp": {"keep": 0.25}}] * 4})
    candidate = compress(base, halved, calibration=torch.randn(8, 3, 32, 32))
    profile = HardwareProfile(name="noise-test", batch_size=8, warmup=3, repeats=80)
    example = torch.randn(8, 3, 32, 32)

    quiet = measure(candidate, profile, example=example, reference=base)
    # one busy loop per core: the measuring process competes for every core, not only its own
    with competing_load(os.cpu_count() or 2, seconds=30) as procs:
        loaded = measure(candidate, profile, example=example, reference=base)
        assert all(proc.poll() is None for proc in procs), "the load ended before the measurement did"

    assert quiet.latency_ratio < 0.8  # the two models really differ, so the ratio carries information
    assert abs(loaded.latency_ratio / quiet.latency_ratio - 1) <= TOLERANCE, (quiet, loaded)
