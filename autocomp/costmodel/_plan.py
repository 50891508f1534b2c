"""What a recipe leaves of each block, as shapes: the single source the latency and memory predictions read."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from torch import nn

from autocomp.costmodel._describe import LINEARS, ViTDescription
from autocomp.errors import AutocompError
from autocomp.ops.lowrank import checked_rank
from autocomp.ops.mlp import kept_count
from autocomp.ops.quantize import Quantize, stored_nbytes_for
from autocomp.ops.tokens import ReduceTokens, TokenReducingBlocks, kept_tokens
from autocomp.recipe import Recipe

__all__ = ["BlockPlan", "plan", "linear_nbytes", "weight_nbytes", "merge_rounds"]

FLOAT_BITS = 32


@dataclass(frozen=True)
class BlockPlan:
    """One block after the recipe.

    Attributes:
        tokens: tokens entering the block (prefix included).
        tokens_out: tokens leaving it, after its token reduction.
        heads: attention heads kept.
        attn_dim: ``heads x head_dim``.
        hidden: MLP hidden neurons kept.
        ranks: Linear name (``qkv`` ...) -> low-rank rank, or None when the Linear stays whole.
        quantize: the block's quantize config (the Linears its ``layers`` name), or None for float weights; see
            :meth:`part_quantize`.
        reduce: the token reduction after this block, or None when it removes no token.
        masked: an earlier merge made token sizes differ, so attention gets a size mask.
    """

    tokens: int
    tokens_out: int
    heads: int
    attn_dim: int
    hidden: int
    ranks: dict[str, int | None]
    quantize: Quantize | None
    reduce: ReduceTokens | None
    masked: bool

    def linear_shapes(self, embed_dim: int) -> dict[str, tuple[int, int]]:
        """Linear name -> (in_features, out_features)."""
        return _linear_shapes(embed_dim, self.attn_dim, self.hidden)

    def part_quantize(self, name: str) -> list[Quantize | None]:
        """The quantize config of each part of the Linear ``name`` (itself, or its two low-rank factors, as in
        :meth:`linear_parts`), None for a part that stays float: the operator's own ``targets`` decides."""
        path = ".".join(LINEARS[name])
        paths = [path] if self.ranks[name] is None else [f"{path}.first", f"{path}.second"]
        return [self.quantize if self.quantize is not None and self.quantize.targets(p) else None for p in paths]

    def linear_parts(self, embed_dim: int, bias: dict[str, bool]) -> dict[str, list[tuple[int, int, bool]]]:
        """Linear name -> the Linears it is held as, ``(in, out, has_bias)``: itself, or its two low-rank factors
        (``in -> rank`` without bias, then ``rank -> out`` with the original bias)."""
        parts = {}
        for name, (in_f, out_f) in self.linear_shapes(embed_dim).items():
            rank = self.ranks[name]
            parts[name] = [(in_f, out_f, bias[name])] if rank is None else [(in_f, rank, False),
                                                                            (rank, out_f, bias[name])]
        return parts


def _linear_shapes(embed_dim: int, attn_dim: int, hidden: int) -> dict[str, tuple[int, int]]:
    return {"qkv": (embed_dim, 3 * attn_dim), "proj": (attn_dim, embed_dim), "fc1": (embed_dim, hidden),
            "fc2": (hidden, embed_dim)}


def plan(description: ViTDescription, recipe: Recipe) -> list[BlockPlan]:
    """Each block's shapes after ``recipe``; refuses what ``autocomp.compress`` refuses (heads, ranks)."""
    if len(recipe.blocks) != description.depth:
        raise AutocompError(f"the recipe has {len(recipe.blocks)} blocks but the model has {description.depth}; "
                            "give one entry per transformer block")
    tokens = _tokens_entering(description, recipe)
    plans, masked = [], False
    for index, block in enumerate(recipe.blocks):
        heads = description.num_heads[index]
        if "prune_heads" in block:
            if block["prune_heads"].keep > heads:
                raise AutocompError(f"block {index}: prune_heads.keep={block['prune_heads'].keep} but the block has "
                                    f"{heads} heads; allowed 1..{heads}")
            heads = block["prune_heads"].keep
        hidden = description.mlp_hidden[index]
        if "prune_mlp" in block:
            hidden = kept_count(block["prune_mlp"].keep, hidden)
        shapes = _linear_shapes(description.embed_dim, heads * description.head_dim, hidden)
        ranks: dict[str, int | None] = dict.fromkeys(LINEARS)
        low_rank = block.get("low_rank")
        if low_rank is not None and low_rank.rank < 1:
            for name in low_rank.layers:
                in_f, out_f = shapes[name]
                ranks[name] = checked_rank(low_rank, SimpleNamespace(in_features=in_f, out_features=out_f), index,
                                            name)
        reduce = block.get("reduce_tokens")
        if reduce is not None and tokens[index + 1] == tokens[index]:
            reduce = None  # keeps every token: the block runs unreduced
        plans.append(BlockPlan(tokens=tokens[index], tokens_out=tokens[index + 1], heads=heads,
                               attn_dim=heads * description.head_dim, hidden=hidden, ranks=ranks,
                               quantize=block.get("quantize"), reduce=reduce, masked=masked))
        masked = masked or (reduce is not None and reduce.method == "merge")
    return plans


def _tokens_entering(description: ViTDescription, recipe: Recipe) -> list[int]:
    """Token counts, computed by the token-reduction operator's own ``tokens_entering``."""
    blocks = TokenReducingBlocks([nn.Identity() for _ in recipe.blocks],
                                 num_prefix_tokens=description.num_prefix_tokens)
    blocks.plan.update({i: b["reduce_tokens"] for i, b in enumerate(recipe.blocks) if "reduce_tokens" in b})
    return blocks.tokens_entering(description.num_tokens)


def merge_rounds(tokens: int, keep: float) -> list[tuple[int, int]]:
    """``(tokens before, tokens merged)`` of each bipartite-matching round of a ToMe merge of ``tokens``
    non-prefix tokens (the same rounds as ``autocomp.ops.tokens``: at most half of them per round)."""
    rounds, target = [], kept_tokens(tokens, keep)
    while tokens > target:
        merged = min(tokens - target, (tokens + 1) // 2)
        rounds.append((tokens, merged))
        tokens -= merged
    return rounds


def linear_nbytes(in_features: int, out_features: int, *, bias: bool, quantize: Quantize | None,
                  dtype_bytes: int = 4, widen_half: bool = False) -> int:
    """Bytes a Linear holds: float weights and bias, or what the quantize operator stores for ``quantize`` (its
    own :func:`~autocomp.ops.quantize.stored_nbytes_for`, so the two cannot drift apart)."""
    if quantize is None:
        return dtype_bytes * (in_features * out_features + (out_features if bias else 0))
    return stored_nbytes_for(in_features, out_features, bias=bias, config=quantize, widen_half=widen_half)


def weight_nbytes(description: ViTDescription, plans: list[BlockPlan], *,
                  widen_half: bool = False) -> dict[str, int]:
    """Bytes held per part: ``stem``, ``blocks.<i>`` ..., ``head``; they add up to the compressed model's.
    ``widen_half``: quantized layers' fp16 and bf16 tensors (bf16 weights, 2-6 bit scales) at 4 bytes, as a runtime
    backend holds them once loaded (``Backend.widens_half``)."""
    parts = {"stem": description.stem_nbytes}
    for index, block in enumerate(plans):
        total = description.block_fixed_nbytes[index]
        total += 2 * description.dtype_bytes * (block.attn_dim * description.attn_norm
                                                + block.hidden * description.mlp_norm)
        for name, parts_of_layer in block.linear_parts(description.embed_dim, description.bias).items():
            for (part_in, part_out, part_bias), quantize in zip(parts_of_layer, block.part_quantize(name),
                                                                 strict=True):
                total += linear_nbytes(part_in, part_out, bias=part_bias, quantize=quantize,
                                       dtype_bytes=description.dtype_bytes, widen_half=widen_half)
        parts[f"blocks.{index}"] = total
    parts["head"] = description.head_nbytes
    return parts

