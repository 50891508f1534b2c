"""Token reduction: after a block, fewer tokens go on to the later blocks, so their attention and MLP really
shrink. Prefix tokens (class and register tokens) are never dropped or merged.

Two methods:

* ``merge`` (ToMe, Bolya et al. 2023): bipartite soft matching on the cosine similarity of the block's attention
  keys (averaged over heads); matched tokens are merged by a size-weighted average. Each token's size (how many
  patches it stands for) is tracked, and later blocks get ``attn_mask = log(size)`` on the key axis (proportional
  attention), which fused ``scaled_dot_product_attention`` adds to its logits.
* ``prune`` (EViT, Liang et al. 2022): keep the tokens the class token attends to most in that block; the dropped
  tokens are fused into one extra token, their attention-weighted average, placed after the kept ones.

The blocks are wrapped in :class:`TokenReducingBlocks` (an ``nn.Sequential`` holding the same block modules, so
parameter names and other operators are unaffected); its ``plan`` maps block index to :class:`ReduceTokens`. A
model that averages its output tokens (timm's ``global_pool='avg'``) averages the patches they stand for: its norm
after the blocks is wrapped in :class:`PoolWeighted` (``norm.*`` weights become ``norm.norm.*``), so its
``forward_features`` gives each token scaled by its weight in that average.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from autocomp.errors import AutocompError
from autocomp.models import vit_blocks
from autocomp.ops._base import CompressContext

__all__ = ["PoolWeighted", "ReduceTokens", "TokenReducingBlocks", "TOKEN_METHODS", "kept_tokens", "reduced_count",
           "size_bias"]

TOKEN_METHODS = ("merge", "prune")


@dataclass(frozen=True)
class ReduceTokens:
    """After the block, keep a fraction of its non-prefix tokens.

    Attributes:
        keep: fraction of the block's non-prefix tokens kept, in (0, 1]; ``max(1, round(keep * n))`` are kept.
        method: ``merge`` (ToMe size-weighted merging) or ``prune`` (EViT: drop the least attended, fuse them into
            one extra token); one of ``TOKEN_METHODS``.
    """

    keep: float
    method: str = "merge"

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or not 0 < self.keep <= 1:
            raise AutocompError(f"keep must be the fraction of tokens kept, a number in (0, 1], got {self.keep!r}")
        object.__setattr__(self, "keep", float(self.keep))  # 1 and 1.0 are the same setting
        if self.method not in TOKEN_METHODS:
            raise AutocompError(f"method must be one of {list(TOKEN_METHODS)}, got {self.method!r}")

    def tag(self) -> str:
        return f"t{self.method[0]}{self.keep:g}"


def kept_tokens(num_tokens: int, keep: float) -> int:
    """How many of ``num_tokens`` non-prefix tokens a reduction with fraction ``keep`` keeps."""
    return max(1, round(keep * num_tokens))


def reduced_count(num_tokens: int, config: ReduceTokens) -> int:
    """Non-prefix tokens after a block reduced by ``config`` (``prune`` adds its fused token when it drops any)."""
    kept = kept_tokens(num_tokens, config.keep)
    return kept + 1 if config.method == "prune" and kept < num_tokens else kept


def size_bias(size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The proportional-attention mask for token sizes ``(B, N)``: ``log(size)`` shaped ``(B, 1, 1, N)``."""
    return size.log().to(dtype)[:, None, None, :]


class TokenReducingBlocks(nn.Sequential):
    """Transformer blocks that shorten the token sequence after the blocks named in ``plan``.

    Attributes:
        plan: block index -> :class:`ReduceTokens` applied to that block's output.
        num_prefix_tokens: leading tokens (class + register) that pass through every reduction unchanged.
    """

    def __init__(self, blocks: Iterable[nn.Module], *, num_prefix_tokens: int) -> None:
        super().__init__(*blocks)
        self.num_prefix_tokens = num_prefix_tokens
        self.plan: dict[int, ReduceTokens] = {}
        # the model averages its output tokens from this one on: the output carries their weights (see apply)
        self.averaged: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = self.forward_with_sizes(x)
        if self.averaged is None or size is None:
            return x
        # a merged token stands for ``size`` patches: its weight in the model's average over tokens, handed to the
        # norm after the blocks as one extra channel (see PoolWeighted; counted once each, a merge to 0.7 cost a
        # user's average-pooled ViT 5 points more before distillation)
        first = self.averaged
        weight = x.new_ones(x.shape[:2])
        weight[:, first:] = size[:, first:] * (size.shape[1] - first) / size[:, first:].sum(dim=1, keepdim=True)
        return torch.cat([x, weight[..., None]], dim=-1)

    def forward_with_sizes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the blocks; also return each token's size ``(B, N)`` (patches it stands for), or None while no
        merge has happened (every token is itself)."""
        size = None
        for index, block in enumerate(self):
            bias = None if size is None else size_bias(size, x.dtype)
            config, rest = self.plan.get(index), x.shape[1] - self.num_prefix_tokens
            if config is None or kept_tokens(rest, config.keep) == rest:
                x = block(x) if bias is None else block(x, attn_mask=bias)
                continue
            with _scoring(block.attn, config.method, bias) as scored:
                x = block(x) if bias is None else block(x, attn_mask=bias)
            if config.method == "merge":  # popped: the reduction alone holds what it scores by, until it ends
                x, size = _merge(x, size, scored.pop("metric"), self.num_prefix_tokens, config.keep)
            else:
                x, size = _prune(x, size, scored.pop("scores"), self.num_prefix_tokens, config.keep)
        return x, size

    def tokens_entering(self, num_tokens: int) -> list[int]:
        """Tokens (prefix included) entering each block, then leaving the last, for ``num_tokens`` at the input."""
        counts = [num_tokens]
        for index in range(len(self)):
            config, rest = self.plan.get(index), counts[-1] - self.num_prefix_tokens
            counts.append(counts[-1] if config is None else self.num_prefix_tokens + reduced_count(rest, config))
        return counts

    def extra_repr(self) -> str:
        return "plan={" + ", ".join(f"{i}: {c.tag()}" for i, c in sorted(self.plan.items())) + "}"


class PoolWeighted(nn.Module):
    """The model's norm after the blocks, then each token scaled by its weight in the average pool that follows, so
    that the plain average over tokens is ToMe's size-weighted one: the average over the patches the tokens stand
    for, with the norm applied to each token as the model does. :class:`TokenReducingBlocks` hands the weights over
    as one channel after the ``width`` of the tokens (one tensor passes between modules), which this strips; tokens
    without it (no merge happened) pass the norm alone, as in the model before."""

    def __init__(self, norm: nn.Module, width: int) -> None:
        super().__init__()
        self.norm, self.width = norm, width
        self._register_load_state_dict_pre_hook(self._saved_unwrapped)

    @staticmethod
    def _saved_unwrapped(state: dict, prefix: str, *_args: Any) -> None:
        """Weights saved before the norm was wrapped (``norm.weight``, by versions that averaged each token once)
        load under the wrapped names (``norm.norm.weight``)."""
        for key in [key for key in state if key.startswith(prefix) and not key.startswith(f"{prefix}norm.")]:
            state[f"{prefix}norm.{key[len(prefix):]}"] = state.pop(key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.width:
            return self.norm(x)
        return self.norm(x[..., :-1]) * x[..., -1:]

    def extra_repr(self) -> str:
        return f"width={self.width}"


@contextlib.contextmanager
def _scoring(attn: nn.Module, method: str, bias: torch.Tensor | None) -> Iterator[dict[str, torch.Tensor]]:
    """What the reduction after the block scores tokens by, taken from the attention's queries and keys
    ``(B, heads, N, head_dim)`` as it runs (timm's ``Attention`` passes them through ``q_norm``/``k_norm``, Identity
    or a norm, so nothing is recomputed): ``metric``, the keys averaged over heads ``(B, N, head_dim)`` (merging), or
    ``scores``, the class token's attention ``(B, N)`` (pruning). Only these are kept, not the queries and keys,
    which would otherwise stay alive through the block's MLP and raise its activation peak."""
    captured: dict[str, torch.Tensor] = {}

    def query(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        if method != "merge":
            captured["q"] = out[:, :, :1].clone()  # the class token's query row (a view would keep all of q)

    def key(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        if method == "merge":
            captured["metric"] = out.mean(dim=1)
        else:
            captured["scores"] = _class_attention(captured.pop("q"), out, bias, attn.scale)

    hooks = [attn.q_norm.register_forward_hook(query), attn.k_norm.register_forward_hook(key)]
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


def _class_attention(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Score: the class token's attention to every token ``(B, N)``, averaged over heads; ``q`` is its query row
    ``(B, heads, 1, head_dim)``."""
    logits = (q * scale) @ k.transpose(-2, -1)  # (B, heads, 1, N)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def _bipartite_matching(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score: split tokens alternately into A (even) and B (odd); the ``r`` A tokens most similar to their best B
    partner are merged into it. Returns (merged A indices, their B partners, unmerged A indices in order)."""
    metric = F.normalize(metric, dim=-1)
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(-2, -1)  # (B, |A|, |B|)
    best, partner = similarity.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    src = order[:, :r]
    return src, partner.gather(1, src), order[:, r:].sort(dim=-1).values


def _merge_rows(values: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, unmerged: torch.Tensor) -> torch.Tensor:
    """Surgery: add A rows ``src`` into B rows ``dst``; the result is (unmerged A rows, B rows)."""
    a, b = values[:, ::2], values[:, 1::2]
    index = lambda i: i[..., None].expand(-1, -1, values.shape[-1])  # noqa: E731
    b = b.scatter_add(1, index(dst), a.gather(1, index(src)))
    return torch.cat([a.gather(1, index(unmerged)), b], dim=1)


def _merge(x: torch.Tensor, size: torch.Tensor | None, metric: torch.Tensor, prefix: int,
           keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe merging of the non-prefix tokens of ``x`` down to ``kept_tokens(n, keep)``, in rounds of at most |A|;
    ``metric``: the keys averaged over heads ``(B, N, head_dim)``, as in ToMe."""
    if size is None:
        size = x.new_ones(x.shape[:2], dtype=torch.float32)
    head, tokens = x[:, :prefix], x[:, prefix:]
    head_size, tokens_size = size[:, :prefix], size[:, prefix:]
    metric = metric[:, prefix:]
    target = kept_tokens(tokens.shape[1], keep)
    while tokens.shape[1] > target:
        r = min(tokens.shape[1] - target, (tokens.shape[1] + 1) // 2)
        src, dst, unmerged = _bipartite_matching(metric, r)
        weight = tokens_size[..., None]
        summed = _merge_rows(torch.cat([tokens, metric], dim=-1) * weight.to(tokens.dtype), src, dst, unmerged)
        tokens_size = _merge_rows(weight, src, dst, unmerged)[..., 0]
        summed = summed / tokens_size[..., None].to(summed.dtype)
        tokens, metric = summed[..., :x.shape[-1]], summed[..., x.shape[-1]:]
    return torch.cat([head, tokens], dim=1), torch.cat([head_size, tokens_size], dim=1)


def _prune(x: torch.Tensor, size: torch.Tensor | None, scores: torch.Tensor, prefix: int,
           keep: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """EViT: keep the top-scored non-prefix tokens (in their order), fuse the rest into one token after them."""
    head, tokens, scores = x[:, :prefix], x[:, prefix:], scores[:, prefix:]
    kept = kept_tokens(tokens.shape[1], keep)
    order = scores.argsort(dim=-1, descending=True)
    top, rest = order[:, :kept].sort(dim=-1).values, order[:, kept:]
    index = lambda i: i[..., None].expand(-1, -1, x.shape[-1])  # noqa: E731
    weight = scores.gather(1, rest)
    weight = (weight / weight.sum(dim=-1, keepdim=True))[..., None].to(x.dtype)
    fused = (tokens.gather(1, index(rest)) * weight).sum(dim=1, keepdim=True)
    x = torch.cat([head, tokens.gather(1, index(top)), fused], dim=1)
    if size is not None:  # after a merge, the fused token stands for all the patches it absorbed
        size_rest = size[:, prefix:]
        size = torch.cat([size[:, :prefix], size_rest.gather(1, top),
                          size_rest.gather(1, rest).sum(dim=-1, keepdim=True)], dim=1)
    return x, size


def apply(model: nn.Module, configs: dict[int, ReduceTokens], context: CompressContext) -> None:
    blocks = vit_blocks(model)
    prefix = getattr(model, "num_prefix_tokens", None)
    if not isinstance(prefix, int):
        raise AutocompError(f"{type(model).__name__} has no num_prefix_tokens; reduce_tokens needs a timm "
                            "VisionTransformer-family model")
    for index, config in configs.items():
        if config.method == "prune" and getattr(model, "cls_token", None) is None:
            raise AutocompError(f"block {index}: reduce_tokens method 'prune' ranks tokens by class-token "
                                "attention but this model has no class token; use method 'merge'")
        attn = blocks[index].attn
        if not all(isinstance(getattr(attn, name, None), nn.Module) for name in ("q_norm", "k_norm")):
            raise AutocompError(f"block {index}: reduce_tokens reads queries and keys through attn.q_norm and "
                                f"attn.k_norm, which {type(attn).__name__} lacks; use timm's Attention")
    if not isinstance(model.blocks, TokenReducingBlocks):
        model.blocks = TokenReducingBlocks(blocks, num_prefix_tokens=prefix)
    model.blocks.plan.update(configs)
    # timm's average pooling over the tokens (after the model's norm, LayerNorm or Identity): weighted by the
    # merged tokens' sizes; another pooling averages them as they are
    if (getattr(model, "global_pool", None) == "avg" and getattr(model, "attn_pool", None) is None
            and isinstance(getattr(model, "norm", None), nn.Module)):
        if not isinstance(model.norm, PoolWeighted):
            model.norm = PoolWeighted(model.norm, model.embed_dim)
        model.blocks.averaged = 0 if getattr(model, "pool_include_prefix", False) else prefix
