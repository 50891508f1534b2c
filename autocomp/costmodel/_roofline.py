"""The operator inventory of a (compressed) ViT forward pass, each operator timed by a roofline.

An operator's time is ``max(compute, memory traffic) + launches x per-op overhead``, where compute is its MACs at the
peak of the precision it runs at (a multiply-add is 2 operations, as in the profile's peaks) plus its other
arithmetic at the fp32 peak, and memory traffic is the bytes it reads and writes at the memory bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autocomp.costmodel._describe import ViTDescription
from autocomp.costmodel._plan import BlockPlan, linear_nbytes, merge_rounds
from autocomp.errors import AutocompError
from autocomp.flops import attention_macs
from autocomp.hardware import INT8_STATIC, HardwareProfile
from autocomp.ops.quantize import Quantize

__all__ = ["OpCost", "roofline", "inventory"]

# Arithmetic per element of the non-GEMM ops (approximate operation counts of the algorithms, not device facts).
NORM_FLOPS, GELU_FLOPS, SOFTMAX_FLOPS, ADD_FLOPS = 8, 8, 5, 1
# Kernel launches of one token-reduction step, counted from the ATen ops that ``autocomp.ops.tokens`` dispatches.
MERGE_LAUNCHES, MERGE_ROUND_LAUNCHES, PRUNE_LAUNCHES = 4, 20, 20
# Unpacking packed codes to an fp32 weight (``autocomp.ops._quantizers``): about 4 ATen ops per code position in
# a whole-byte run of codes, plus 6 (pad, convert, offset, scale ...); about 20 bytes moved per weight (the codes
# written and re-read as uint8, converted to fp32, offset, scaled).
UNPACK_BASE_LAUNCHES, UNPACK_LAUNCHES_PER_CODE, UNPACK_BYTES_PER_WEIGHT = 6, 4, 20
HALF = ("bf16", "fp16")


@dataclass(frozen=True)
class OpCost:
    """One operator of the forward pass and its predicted time.

    Attributes:
        name: where it runs, after the model's module names (``blocks.3.attn.qkv``, ``blocks.3.tokens``).
        kind: ``conv``, ``linear``, ``attention``, ``norm``, ``elementwise``, ``unpack`` or ``tokens``.
        precision: the precision its MACs run at.
        macs: multiply-adds.
        flops: other arithmetic operations.
        nbytes: bytes read and written (activations in and out, weights read).
        launches: kernels (or module calls) it takes, each paying the per-op overhead.
        compute_ms, memory_ms, overhead_ms: the roofline's terms.
    """

    name: str
    kind: str
    precision: str
    macs: int
    flops: int
    nbytes: int
    launches: int
    compute_ms: float
    memory_ms: float
    overhead_ms: float

    @property
    def latency_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms) + self.overhead_ms

    @property
    def bound(self) -> str:
        """``compute`` or ``memory``: which roofline term sets the time."""
        return "compute" if self.compute_ms >= self.memory_ms else "memory"

    @property
    def group(self) -> str:
        """The group a measured correction scales together: kind, plus precision for the MAC-heavy kinds."""
        return f"{self.kind}.{self.precision}" if self.kind in ("conv", "linear", "attention") else self.kind


def roofline(profile: HardwareProfile, *, name: str, kind: str, nbytes: int, precision: str = "fp32", macs: int = 0,
             flops: int = 0, launches: int = 1) -> OpCost:
    """Time one operator on ``profile``."""
    missing = profile.missing_device_facts()
    if missing:
        raise AutocompError(f"hardware profile {profile.name!r} lacks {missing}; the cost model needs them "
                            "(see hardware_profiles/local_cpu.yaml)")
    if precision not in profile.peak_gflops:
        raise AutocompError(f"hardware profile {profile.name!r} has no peak_gflops.{precision}, needed by {name}")
    compute_s = 2 * macs / (profile.peak_gflops[precision] * 1e9) + flops / (profile.peak_gflops["fp32"] * 1e9)
    memory_s = nbytes / (profile.memory_bandwidth_gbs * 1e9)
    return OpCost(name=name, kind=kind, precision=precision, macs=macs, flops=flops, nbytes=nbytes, launches=launches,
                  compute_ms=1e3 * compute_s, memory_ms=1e3 * memory_s,
                  overhead_ms=1e-3 * launches * profile.op_overhead_us)


class _Inventory:
    """Collects the operators of one forward pass at batch size ``batch``."""

    def __init__(self, description: ViTDescription, profile: HardwareProfile, batch: int) -> None:
        self.d, self.profile, self.batch = description, profile, batch
        self.act = description.dtype_bytes
        self.fused_attention = "fused_attention" in profile.fast_ops
        self.fused_elementwise = "fused_elementwise" in profile.fast_ops
        self.ops: list[OpCost] = []

    def add(self, name: str, kind: str, **terms: int | str) -> None:
        self.ops.append(roofline(self.profile, name=name, kind=kind, **terms))  # type: ignore[arg-type]

    def norm(self, name: str, rows: int, width: int) -> None:
        elements = self.batch * rows * width
        self.add(name, "norm", flops=NORM_FLOPS * elements, nbytes=self.act * (2 * elements + 2 * width))

    def elementwise(self, name: str, elements: int, *, flops_each: int, reads: int = 1) -> None:
        """An elementwise op over ``elements`` outputs reading ``reads`` inputs; free when fused into a GEMM."""
        if not self.fused_elementwise:
            self.add(name, "elementwise", flops=flops_each * elements, nbytes=self.act * (reads + 1) * elements)

    def linear(self, name: str, rows: int, parts: list[tuple[int, int, bool]],
               quantizes: list[Quantize | None]) -> None:
        """A Linear (or its low-rank factors) over ``rows`` tokens per image, each part quantized by its entry of
        ``quantizes`` or not.

        The weight bits run at the precision of the profile's kernel for them; bits without a kernel are unpacked
        to fp32 first (an extra op that reads the packed weight and writes the fp32 one) and run an fp32 GEMM.
        """
        tokens = self.batch * rows
        for index, ((in_f, out_f, bias), quantize) in enumerate(zip(parts, quantizes, strict=True)):
            bits = 32 if quantize is None else quantize.weight_bits
            precision = self.profile.kernel_precision(bits)
            part = name if len(parts) == 1 else f"{name}.{('first', 'second')[index]}"
            weights = linear_nbytes(in_f, out_f, bias=bias, quantize=quantize, dtype_bytes=self.act)
            act = self.act
            if quantize is not None and quantize.act_bits:  # static 8-bit inputs
                if precision == "int8" and INT8_STATIC in self.profile.peak_gflops:
                    precision = INT8_STATIC  # measured as such, its input's quantization included
                else:  # another kernel's rate, and the inputs quantized to 8 bits before it
                    self.add(f"{part}.act_quant", "elementwise", flops=tokens * in_f,
                             nbytes=(self.act + 1) * tokens * in_f, launches=2)
            if precision is None:
                per_code = 8 // math.gcd(8, bits)
                self.add(f"{part}.unpack", "unpack", flops=4 * in_f * out_f,
                         nbytes=weights + UNPACK_BYTES_PER_WEIGHT * in_f * out_f,
                         launches=UNPACK_BASE_LAUNCHES + UNPACK_LAUNCHES_PER_CODE * per_code)
                weights = linear_nbytes(in_f, out_f, bias=bias, quantize=None, dtype_bytes=self.act)
            elif precision in HALF:
                act = 2
                if not self.fused_elementwise:  # fp32 activations cast down before the GEMM and back after it
                    self.add(f"{part}.cast", "elementwise", flops=tokens * (in_f + out_f),
                             nbytes=(self.act + 2) * tokens * (in_f + out_f), launches=2)
            self.add(part, "linear", precision=precision or "fp32", macs=tokens * in_f * out_f,
                     nbytes=act * tokens * (in_f + out_f) + weights)

    def attention(self, name: str, block: BlockPlan) -> None:
        n, heads, width = block.tokens, block.heads, block.attn_dim
        qkv, scores = self.batch * n * width, self.batch * heads * n * n
        mask = self.batch * n if block.masked else 0
        half = attention_macs(self.batch * heads, n, n, self.d.head_dim, 0)  # one of q @ k^T and attn @ v
        if self.fused_attention:
            self.add(name, "attention", macs=2 * half, flops=SOFTMAX_FLOPS * scores,
                     nbytes=self.act * (4 * qkv + mask))
            return
        self.add(f"{name}.scores", "attention", macs=half, flops=qkv, nbytes=self.act * (4 * qkv + scores),
                 launches=2)  # q * scale, then q @ k^T
        self.add(f"{name}.softmax", "elementwise", flops=SOFTMAX_FLOPS * scores,
                 nbytes=self.act * (2 * scores + (2 * scores if mask else 0)), launches=1 + bool(mask))
        self.add(f"{name}.values", "attention", macs=half, nbytes=self.act * (scores + 2 * qkv))
        self.add(f"{name}.merge_heads", "elementwise", nbytes=self.act * 2 * qkv)

    def tokens(self, name: str, block: BlockPlan) -> None:
        rest = block.tokens - self.d.num_prefix_tokens
        keys = self.act * self.batch * block.tokens * block.attn_dim
        out = self.act * self.batch * block.tokens_out * self.d.embed_dim
        if block.reduce.method == "merge":
            rounds = merge_rounds(rest, block.reduce.keep)
            width = self.d.embed_dim + self.d.head_dim  # tokens and their keys travel together
            macs = sum(self.batch * ((n + 1) // 2) * (n // 2) * self.d.head_dim for n, _ in rounds)
            moved = sum(6 * self.act * self.batch * n * width for n, _ in rounds)
            self.add(name, "tokens", macs=macs, nbytes=keys + moved + out,
                     launches=MERGE_LAUNCHES + MERGE_ROUND_LAUNCHES * len(rounds))
        else:
            macs = self.batch * block.heads * block.tokens * self.d.head_dim  # the class token's row of q @ k^T
            moved = 3 * self.act * self.batch * block.tokens * self.d.embed_dim
            self.add(name, "tokens", macs=macs, nbytes=keys + moved + out, launches=PRUNE_LAUNCHES)


def inventory(description: ViTDescription, plans: list[BlockPlan], profile: HardwareProfile, *,
              batch: int) -> list[OpCost]:
    """Every operator of one forward pass of ``batch`` images, in execution order."""
    d, ops = description, _Inventory(description, profile, batch)
    patch_area = d.patch_size[0] * d.patch_size[1]
    pixels, patches = batch * d.in_chans * d.num_patches * patch_area, batch * d.num_patches * d.embed_dim
    ops.add("patch_embed", "conv", macs=patches * d.in_chans * patch_area,
            nbytes=d.dtype_bytes * (pixels + patches + d.embed_dim * (d.in_chans * patch_area + 1)))
    tokens = batch * d.num_tokens * d.embed_dim
    ops.add("pos_embed", "elementwise", flops=tokens,
            nbytes=d.dtype_bytes * (patches + 3 * tokens + d.num_tokens * d.embed_dim),
            launches=1 + bool(d.num_prefix_tokens))  # concatenate the prefix tokens, add the position embedding
    for index, block in enumerate(plans):
        name, n, width = f"blocks.{index}", block.tokens, d.embed_dim
        parts = block.linear_parts(d.embed_dim, d.bias)
        ops.norm(f"{name}.norm1", n, width)
        ops.linear(f"{name}.attn.qkv", n, parts["qkv"], block.part_quantize("qkv"))
        ops.attention(f"{name}.attn", block)
        if d.attn_norm:
            ops.norm(f"{name}.attn.norm", n, block.attn_dim)
        ops.linear(f"{name}.attn.proj", n, parts["proj"], block.part_quantize("proj"))
        ops.elementwise(f"{name}.add1", batch * n * width, flops_each=ADD_FLOPS, reads=2)
        ops.norm(f"{name}.norm2", n, width)
        ops.linear(f"{name}.mlp.fc1", n, parts["fc1"], block.part_quantize("fc1"))
        ops.elementwise(f"{name}.mlp.act", batch * n * block.hidden, flops_each=GELU_FLOPS)
        if d.mlp_norm:
            ops.norm(f"{name}.mlp.norm", n, block.hidden)
        ops.linear(f"{name}.mlp.fc2", n, parts["fc2"], block.part_quantize("fc2"))
        ops.elementwise(f"{name}.add2", batch * n * width, flops_each=ADD_FLOPS, reads=2)
        if block.reduce is not None:
            ops.tokens(f"{name}.tokens", block)
    last = plans[-1].tokens_out if plans else d.num_tokens
    ops.norm("norm", last, d.embed_dim)
    if d.global_pool not in ("token", ""):
        ops.add("pool", "elementwise", flops=batch * last * d.embed_dim,
                nbytes=d.dtype_bytes * batch * (last + 1) * d.embed_dim)
    if d.fc_norm:
        ops.norm("fc_norm", 1, d.embed_dim)
    if d.num_classes:
        ops.linear("head", 1, [(d.embed_dim, d.num_classes, True)], [None])
    return ops.ops
