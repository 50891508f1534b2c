"""The cost model: latency and memory of a recipe on a device, predicted without building the compressed model.

``describe(base_model)`` reads the base ViT's shapes once; ``CostModel(description=..., profile=...).predict(recipe)``
lists every operator of the compressed forward pass with its roofline time, the weight bytes the compressed model
holds and its peak activation bytes. ``CorrectedCostModel`` learns, from trials measured so far, how far the
roofline is off on the device, and ``fidelity`` reports how well predictions rank and match measurements.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from autocomp.costmodel._activations import peak_activation_nbytes
from autocomp.costmodel._correction import CorrectedCostModel, fidelity
from autocomp.costmodel._describe import ViTDescription, describe
from autocomp.costmodel._plan import BlockPlan, linear_nbytes, plan, weight_nbytes
from autocomp.costmodel._roofline import OpCost, inventory, roofline
from autocomp.hardware import HardwareProfile
from autocomp.recipe import Recipe

__all__ = ["CostModel", "Prediction", "OpCost", "ViTDescription", "describe", "CorrectedCostModel", "fidelity",
           "BlockPlan", "plan", "roofline", "linear_nbytes"]


@dataclass(frozen=True)
class Prediction:
    """The predicted cost of one recipe at the profile's batch size.

    Attributes:
        ops: every operator, in execution order, with its roofline terms.
        weight_parts: bytes held by ``stem``, ``blocks.<i>`` ..., ``head``.
        activation_nbytes: peak bytes of live activations.
        batch_size: images per forward pass.
    """

    ops: tuple[OpCost, ...]
    weight_parts: dict[str, int]
    activation_nbytes: int
    batch_size: int

    @property
    def latency_ms(self) -> float:
        return sum(op.latency_ms for op in self.ops)

    @property
    def weight_nbytes(self) -> int:
        return sum(self.weight_parts.values())

    @property
    def memory_nbytes(self) -> int:
        """Weights held plus peak activations (what ``Measurement.memory_mb`` measures, in bytes)."""
        return self.weight_nbytes + self.activation_nbytes

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    def latency_by_layer(self) -> dict[str, float]:
        """Milliseconds per part: ``patch_embed``, ``pos_embed``, ``blocks.<i>``, ``norm``, ``head`` ..."""
        parts: dict[str, float] = defaultdict(float)
        for op in self.ops:
            parts[_part(op.name)] += op.latency_ms
        return dict(parts)

    def latency_by_group(self) -> dict[str, float]:
        """Milliseconds per operator group (``linear.int8``, ``attention.fp32``, ``norm`` ...)."""
        groups: dict[str, float] = defaultdict(float)
        for op in self.ops:
            groups[op.group] += op.latency_ms
        return dict(groups)


def _part(name: str) -> str:
    pieces = name.split(".")
    return ".".join(pieces[:2]) if pieces[0] == "blocks" else pieces[0]


class CostModel:
    """Predicts a recipe's cost on one device from the base model's description."""

    def __init__(self, *, description: ViTDescription, profile: HardwareProfile) -> None:
        self.description, self.profile = description, profile

    def predict(self, recipe: Recipe) -> Prediction:
        """The cost of ``recipe`` at ``profile.batch_size``.

        Raises:
            AutocompError: the recipe does not fit the model, or the profile lacks the device facts.
        """
        plans = plan(self.description, recipe)
        batch = self.profile.batch_size
        return Prediction(ops=tuple(inventory(self.description, plans, self.profile, batch=batch)),
                          weight_parts=weight_nbytes(self.description, plans, widen_half=_widens_half(self.profile)),
                          activation_nbytes=peak_activation_nbytes(
                              self.description, plans, _allocating(self.profile), batch=batch,
                              count_unpacking=not _exports(self.profile)),
                          batch_size=batch)


def _widens_half(profile: HardwareProfile) -> bool:
    """Whether the profile's backend holds fp16 and bf16 tensors as fp32 (a runtime's CPU kernels: see
    :mod:`autocomp.measure.backends`), so that they are counted as it holds them."""
    from autocomp.measure.backends import backend_of

    return backend_of(profile).widens_half


def _exports(profile: HardwareProfile) -> bool:
    """Whether the profile's backend runs an export (whose runtime computes on packed weights, unpacking none)."""
    from autocomp.measure.backends import backend_of

    return backend_of(profile).exports


def _allocating(profile: HardwareProfile) -> HardwareProfile:
    """The profile whose kernels decide the activation bytes that are measured: on a runtime backend those are
    still PyTorch's on the CPU (the runtimes report none, see :mod:`autocomp.measure.backends`), so its kernels and
    its attention there (its unpacking of packed weights aside: :func:`_exports`)."""
    from autocomp.measure.profiling import BACKEND_KERNELS, pytorch_fuses_attention

    if not _exports(profile):
        return profile

    return HardwareProfile(name=profile.name, batch_size=profile.batch_size,
                           fast_weight_bits=BACKEND_KERNELS["pytorch-cpu"],
                           fast_ops=("fused_attention",) if pytorch_fuses_attention() else ())
