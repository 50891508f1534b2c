"""Peak activation memory of a forward pass, as :func:`autocomp.measure.peak_activation_nbytes` counts it: the bytes
of tensors allocated during the pass that are alive at once (the input image and the weights not counted).

It walks the forward pass of timm's ViT and of ``autocomp.ops.tokens`` and, at each allocation, adds up what Python
still references there. What is referenced follows from the code, e.g.: the stem's output stays alive through all
blocks (the caller holds it); a block's input stays alive while the block runs (``nn.Sequential`` holds it); the
norm's output stays alive while the attention or MLP it feeds runs (it is their call argument); in a reducing block
what the reduction scores tokens by (the keys averaged over heads, or the class token's attention) is computed as
the attention runs and stays alive until the reduction has run.
"""

from __future__ import annotations

import math

from autocomp.costmodel._describe import ViTDescription
from autocomp.costmodel._plan import BlockPlan, merge_rounds
from autocomp.hardware import HardwareProfile
from autocomp.ops.quantize import int8_static_range

__all__ = ["peak_activation_nbytes"]

STAT_BYTES = 4  # LayerNorm's mean and rstd (fp32), allocated together with its output
UNPACK_PEAK_BYTES = 9  # bytes per weight alive at once while packed codes are unpacked to fp32
HALF = ("bf16", "fp16")


class _Peak:
    def __init__(self) -> None:
        self.value = 0

    def see(self, *live: int) -> None:
        self.value = max(self.value, sum(live))


def peak_activation_nbytes(description: ViTDescription, plans: list[BlockPlan], profile: HardwareProfile, *,
                           batch: int, count_unpacking: bool = True) -> int:
    """Predicted peak bytes of live activations in one forward pass of ``batch`` images; ``count_unpacking``
    False: without the temporary fp32 weights that bits without a kernel are unpacked to (a runtime backend, which
    computes on the packed weights: :func:`autocomp.measure.peak_activation_nbytes` counts so for it)."""
    d, peak, act = description, _Peak(), description.dtype_bytes
    rows = lambda tokens, width: act * batch * tokens * width  # noqa: E731 - bytes of a (batch, tokens, width)
    stats = lambda tokens: 2 * STAT_BYTES * batch * tokens  # noqa: E731
    patches, stem = rows(d.num_patches, d.embed_dim), rows(d.num_tokens, d.embed_dim)
    peak.see(patches, stem)  # the prefix concatenated in front of the patches (or the position add)
    if d.num_prefix_tokens:
        peak.see(patches, stem, stem)  # then the position embedding added
    x_in, sizes = stem, 0
    for index, block in enumerate(plans):
        n, width = block.tokens, d.embed_dim
        x = rows(n, width)
        sizes = (act + STAT_BYTES) * batch * n if block.masked else 0  # size mask and token sizes after a merge
        held = (stem if index else 0) + x_in + sizes
        qkv = rows(n, 3 * block.attn_dim)
        peak.see(held, x, stats(n))  # norm1
        linear = lambda live, name: _linear(peak, live, block, name, d, profile, batch, count_unpacking)  # noqa: E731
        linear([held, x], "qkv")
        scored = _scoring(peak, block, d, batch, [held, x, qkv])
        attn_out = _attention(peak, block, d, profile, batch, [held, x, qkv, scored])
        linear([held, x, qkv, attn_out, scored], "proj")
        peak.see(held, x, x, scored)  # first residual add
        held = held + x + scored  # the block input, the first residual and what the reduction scores by
        hidden = rows(n, block.hidden)
        peak.see(held, x, stats(n))  # norm2
        linear([held, x], "fc1")
        peak.see(held, x, hidden, hidden)  # GELU
        if d.mlp_norm:
            peak.see(held, x, hidden, hidden, stats(n))
        linear([held, x, hidden], "fc2")
        peak.see(held, x, x)  # second residual add
        x_in = rows(block.tokens_out, width)
        if block.reduce is not None:
            _reduction(peak, block, d, batch, held=stem + x + sizes)
    last = plans[-1].tokens_out if plans else d.num_tokens
    peak.see(rows(last, d.embed_dim), rows(last, d.embed_dim), stats(last))  # final norm
    return peak.value


def _linear(peak: _Peak, live: list[int], block: BlockPlan, name: str, d: ViTDescription, profile: HardwareProfile,
            batch: int, count_unpacking: bool) -> None:
    """Record the peak of one Linear (or its two low-rank factors) reading inputs while ``live`` is alive.

    What a Linear allocates besides its output: a float one without bias runs as ``mm`` plus ``_unsafe_view``, which
    is not a view op, so the counter counts its output twice until the ``mm`` result dies; bits without a fast kernel
    are unpacked to a temporary fp32 weight (uint8 codes, their fp32 conversion and the scaled weight: 9 bytes a
    weight at once, plus the scales in fp32, copied per weight when the groups do not divide the row); a 16-bit
    kernel casts its input down and its output back up; 8-bit activations are quantized (one byte, two while the
    quantized tensor is converted) or, without a static int8 kernel, fake-quantized. ``count_unpacking`` False: the
    unpacked weight not counted.
    """
    act = d.dtype_bytes
    rows = batch * block.tokens
    previous = 0  # the first factor's output, alive while the second runs
    for (in_f, out_f, bias), quantize in zip(block.linear_parts(d.embed_dim, d.bias)[name], block.part_quantize(name),
                                             strict=True):
        bits = 32 if quantize is None else quantize.weight_bits
        precision = profile.kernel_precision(bits)
        unpacked = precision is None
        half = precision in HALF
        out = act * rows * out_f
        extra = 0
        if quantize is not None and quantize.act_bits:
            extra = rows * in_f * (2 if bits == 8 and int8_static_range() is not None else act)
        double = 2 if (bits == 32 or unpacked or half) and not bias else 1
        if unpacked:
            scales = 0  # the scales as fp32: one per group, or one per weight (padded) when groups do not divide
            if quantize is not None:
                groups = math.ceil(in_f / quantize.group_size)
                scales = 4 * out_f * groups * (quantize.group_size if in_f % quantize.group_size else 1)
            weight = 4 * in_f * out_f if count_unpacking else 0
            if count_unpacking:
                peak.see(*live, previous, extra, UNPACK_PEAK_BYTES * in_f * out_f + scales)
            peak.see(*live, previous, extra, weight, out * double)
        elif half:
            peak.see(*live, previous, extra, 2 * rows * in_f, out // 2 * double)  # input cast down, bf16 GEMM
            peak.see(*live, previous, extra, out // 2, out)  # output cast back to fp32
        else:
            peak.see(*live, previous, extra, out * double)
        previous = out


def _attention(peak: _Peak, block: BlockPlan, d: ViTDescription, profile: HardwareProfile, batch: int,
               live: list[int]) -> int:
    """Record the attention's peak; return the bytes of its output (what ``proj`` reads)."""
    act, n = d.dtype_bytes, block.tokens
    out = act * batch * n * block.attn_dim
    if "fused_attention" in profile.fast_ops:
        peak.see(*live, out, STAT_BYTES * batch * block.heads * n)  # output and log-sum-exp
    else:
        scores = act * batch * block.heads * n * n
        peak.see(*live, out, scores, scores)  # scaled q, logits, softmax
        peak.see(*live, scores, out, out)  # attn @ v, then the copy that merges the heads
    if d.attn_norm:
        peak.see(*live, out, out, 2 * STAT_BYTES * batch * n)
    return out


def _scoring(peak: _Peak, block: BlockPlan, d: ViTDescription, batch: int, live: list[int]) -> int:
    """Record the peak of what a reducing block computes, as its attention runs, to score tokens by; return its bytes
    (0 for a block that reduces nothing): the keys averaged over heads (merging), or the class token's attention
    from its query row (pruning)."""
    act, n = d.dtype_bytes, block.tokens
    if block.reduce is None:
        return 0
    if block.reduce.method == "merge":
        return act * batch * n * d.head_dim
    query = act * batch * block.heads * d.head_dim
    peak.see(*live, query, 3 * act * batch * block.heads * n)  # scaled query row, logits, softmax
    return act * batch * n


def _reduction(peak: _Peak, block: BlockPlan, d: ViTDescription, batch: int, *, held: int) -> None:
    """Record the peak of the token reduction after ``block`` (``held``: what stays alive around it)."""
    act, rest = d.dtype_bytes, block.tokens - d.num_prefix_tokens
    out = act * batch * block.tokens_out * d.embed_dim
    if block.reduce.method == "prune":
        kept = block.tokens_out - d.num_prefix_tokens - 1  # tokens_out counts the fused token
        dropped = act * batch * (rest - kept) * d.embed_dim
        held += act * batch * block.tokens  # the class token's attention it scores by
        peak.see(held, dropped, dropped)  # the dropped tokens gathered, then weighted
        peak.see(held, act * batch * d.embed_dim, act * batch * kept * d.embed_dim, out)  # kept gathered, cat
        return
    width = d.embed_dim + d.head_dim  # tokens and their keys are merged together
    keys = act * batch * block.tokens * d.head_dim  # keys averaged over heads
    previous = 0
    for n, merged in merge_rounds(rest, block.reduce.keep):
        a_side, b_side = (n + 1) // 2, n // 2
        tokens = act * batch * width
        peak.see(held, keys, previous, act * batch * n * d.head_dim, act * batch * a_side * b_side)  # similarity
        peak.see(held, keys, previous, 2 * n * tokens)  # tokens and keys concatenated, weighted by size
        peak.see(held, keys, previous, n * tokens, tokens * (merged + b_side))  # merged rows added into B
        peak.see(held, keys, previous, n * tokens, tokens * (b_side + (a_side - merged) + (n - merged)))  # cat
        peak.see(held, keys, previous, 2 * (n - merged) * tokens)  # divided by the merged sizes
        previous, keys = (n - merged) * tokens, 0
    peak.see(held, previous, out)
