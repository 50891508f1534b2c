"""Measurement: what a model really costs on the target, where the target is, and how fast the target is.

- :func:`measure` runs the model on the profile's backend (:mod:`~autocomp.measure.backends`: PyTorch on the CPU or
  a CUDA GPU, ONNX Runtime, OpenVINO): latency (median of interleaved repeats, a drift-free ratio to a reference)
  and memory (the bytes the deployed weights really hold plus peak live activations);
- :mod:`~autocomp.measure.placement` runs it on the Ray node holding the device (``ray_resource``);
- :mod:`~autocomp.measure.profiling` measures the device itself (micro-benchmarks on the profile's backend) to
  calibrate a hardware profile, and loads profiles, calibrating those that say ``calibrate: on_first_use``.
"""

from __future__ import annotations

from autocomp.measure._measure import COUNTING, MB, Measurement, busy, measure, spread_warning, starved
from autocomp._timing import num_threads, peak_activation_nbytes, time_models, weight_nbytes

__all__ = ["COUNTING", "MB", "Measurement", "busy", "measure", "spread_warning", "starved", "num_threads",
           "peak_activation_nbytes", "time_models", "weight_nbytes"]
