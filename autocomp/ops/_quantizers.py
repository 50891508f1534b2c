"""Quantizer maths for ``quantize.py``: scale search, integer codes, dense bit packing, activation quantizers.

Weights are quantized symmetrically: ``code = clamp(round(w / scale), -L, L)`` with ``L = 2**(bits-1) - 1``, so at
2 bits the grid is ternary {-1, 0, 1} (one of the four codes is unused). One scale per output channel at 8 bits, one
per group of ``group_size`` consecutive input weights of a row below 8 bits; when ``in_features`` is not a multiple
of ``group_size`` the last group of each row is shorter (nothing is padded or stored for it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["SCALE_METHODS", "PERCENTILE", "levels", "search_scale", "quantize_codes", "dequantize", "pack_codes",
           "unpack_codes", "packed_nbytes", "ActQuant", "activation_qparams"]

SCALE_METHODS = ("minmax", "percentile", "mse")
# "percentile" clips each group (or row) at this quantile of |w|. Measured on heavy-tailed weights it lowers the
# squared error a little at 2-4 bits but raises it at 6-8 bits, where clipping costs more than rounding saves.
PERCENTILE = 0.999
MSE_RATIOS = tuple(1.0 - 0.02 * k for k in range(41))  # clipping ratios tried by "mse", 1.0 first (ties keep it)
FP16_TINY = torch.finfo(torch.float16).tiny  # smallest normal fp16: group scales are stored in fp16
FP16_MAX = torch.finfo(torch.float16).max


def levels(bits: int) -> int:
    """``L``: codes lie in ``[-L, L]``."""
    return 2 ** (bits - 1) - 1


def _groups(weight: torch.Tensor, group_size: int | None, fill: float) -> torch.Tensor:
    """``weight`` (out, in) as (out, groups, group_size), the last group padded with ``fill``; None: one group."""
    out_features, in_features = weight.shape
    size = in_features if group_size is None else group_size
    count = math.ceil(in_features / size)
    pad = count * size - in_features
    if pad:
        weight = torch.nn.functional.pad(weight, (0, pad), value=fill)
    return weight.reshape(out_features, count, size)


def _round_scale(scale: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """The scale as it will be stored: fp32 (>= 1e-8) per channel, fp16 per group (values kept in fp32)."""
    if group_size is None:
        return scale.clamp(min=1e-8)
    return scale.clamp(FP16_TINY, FP16_MAX).half().float()


def search_scale(weight: torch.Tensor, bits: int, group_size: int | None, method: str) -> torch.Tensor:
    """Scales (out,) for ``group_size=None`` (per channel) or (out, groups), chosen by ``method``.

    Args:
        weight: (out, in) fp32 weight.
        bits: weight bits (2 .. 8).
        group_size: input weights per scale, or None for one scale per output channel.
        method: ``minmax`` (largest |w| maps to L), ``percentile`` (the ``PERCENTILE`` quantile of |w| does) or
            ``mse`` (the clipping ratio in ``MSE_RATIOS`` with least squared error, per group).
    """
    weight = weight.detach().float()
    top = levels(bits)
    grouped = _groups(weight.abs(), group_size, 0.0)
    absmax = grouped.amax(dim=-1)
    if method == "minmax":
        scale = _round_scale(absmax / top, group_size)
    elif method == "percentile":
        clip = torch.nanquantile(_groups(weight.abs(), group_size, math.nan), PERCENTILE, dim=-1)
        scale = _round_scale(clip / top, group_size)
    elif method == "mse":
        signed = _groups(weight, group_size, 0.0)  # padded zeros quantize to 0: they add no error
        scale = best = None
        for ratio in MSE_RATIOS:
            candidate = _round_scale(ratio * absmax / top, group_size)
            error = ((torch.round(signed / candidate[..., None]).clamp(-top, top) * candidate[..., None] - signed)
                     ** 2).sum(dim=-1)
            if scale is None:
                scale, best = candidate, error
            else:
                better = error < best
                scale, best = torch.where(better, candidate, scale), torch.where(better, error, best)
    else:
        raise ValueError(f"scale method must be one of {list(SCALE_METHODS)}, got {method!r}")
    return scale[:, 0] if group_size is None else scale


def _expand(scale: torch.Tensor, in_features: int, group_size: int | None) -> torch.Tensor:
    """Per-weight scales, broadcastable to (out, in)."""
    if group_size is None:
        return scale[:, None]
    return scale.repeat_interleave(group_size, dim=1)[:, :in_features]


def quantize_codes(weight: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """Signed integer codes (fp32 holding whole numbers in [-L, L]) of ``weight`` under ``scale``."""
    top = levels(bits)
    return torch.round(weight / _expand(scale, weight.shape[1], group_size)).clamp(-top, top)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """fp32 weight ``codes * scale``; ``codes`` (out, in) fp32."""
    out_features, in_features = codes.shape
    if group_size is not None and in_features % group_size == 0:  # the common case, without a full-size scale copy
        grouped = codes.view(out_features, in_features // group_size, group_size) * scale.float()[..., None]
        return grouped.view(out_features, in_features)
    return codes * _expand(scale.float(), in_features, group_size)


def _chunk(bits: int) -> tuple[int, int]:
    """(codes, bytes) of the shortest whole-byte run: 4 bits (2, 1), 2 bits (4, 1), 3 bits (8, 3), 6 bits (4, 3)."""
    common = math.gcd(8, bits)
    return 8 // common, bits // common


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes of ``count`` codes of ``bits`` bits packed densely."""
    return math.ceil(count * bits / 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (< 2**bits, any shape, read row-major) into a dense little-endian bit stream (uint8).

    Code ``i`` occupies bits ``[i * bits, (i + 1) * bits)`` of the stream, least significant bit first.
    """
    per_chunk, chunk_bytes = _chunk(bits)
    flat = codes.reshape(-1).to(torch.int32)
    count = flat.numel()
    flat = torch.nn.functional.pad(flat, (0, (-count) % per_chunk)).view(-1, per_chunk)
    words = torch.zeros(flat.shape[0], dtype=torch.int32, device=flat.device)
    for index in range(per_chunk):
        words |= flat[:, index] << (index * bits)
    stream = torch.stack([(words >> (8 * b)) & 255 for b in range(chunk_bytes)], dim=-1)
    return stream.to(torch.uint8).reshape(-1)[:packed_nbytes(count, bits)].clone()


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` unsigned codes (uint8) of a stream written by :func:`pack_codes`."""
    per_chunk, chunk_bytes = _chunk(bits)
    stream = torch.nn.functional.pad(packed, (0, (-packed.numel()) % chunk_bytes)).view(-1, chunk_bytes)
    codes = torch.empty(stream.shape[0], per_chunk, dtype=torch.uint8, device=packed.device)
    for index in range(per_chunk):  # uint8 arithmetic throughout: a code spans at most two bytes
        byte, offset = divmod(index * bits, 8)
        code = stream[:, byte] >> offset
        if offset + bits > 8:
            code = code | (stream[:, byte + 1] << (8 - offset))
        codes[:, index] = code & (2 ** bits - 1)
    return codes.reshape(-1)[:count]


class ActQuant(NamedTuple):
    """The static quantizer of a layer's input: ``code = clamp(round(x / scale) + zero_point, 0, quant_max)``.

    ``quant_max`` is 255 (full uint8) or 127 where the int8 kernel would saturate on larger codes (CPUs without
    VNNI, see :func:`autocomp.ops.quantize.int8_static_range`); it is saved with the layer, so a model computes the
    same numbers on every machine.
    """

    scale: float
    zero_point: int
    quant_max: int = 255


def activation_qparams(low: float, high: float, quant_max: int = 255) -> ActQuant:
    """The asymmetric quantizer with codes ``0 .. quant_max`` covering ``[low, high]`` (widened to include 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / quant_max, 1e-8)
    zero_point = int(min(quant_max, max(0, round(-low / scale))))
    return ActQuant(float(scale), zero_point, int(quant_max))
