"""Head pruning: the pruned heads are removed from ``qkv``, ``proj`` (and any per-head-dim layers); the block keeps
running with fused attention and its attributes (``num_heads``, ``attn_dim``) describe what is left."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp.importance import HEAD_SCORES, head_scores
from autocomp.models import vit_blocks
from autocomp.ops._base import CompressContext, observe
from autocomp.ops._surgery import slice_linear

__all__ = ["PruneHeads", "keep_heads"]


@dataclass(frozen=True)
class PruneHeads:
    """Keep ``keep`` heads of a block's attention, chosen by ``importance``.

    Attributes:
        keep: number of heads kept (1 .. the block's heads).
        importance: head score, one of ``autocomp.importance.HEAD_SCORES``.
    """

    keep: int
    importance: str = "output_norm"

    def __post_init__(self) -> None:
        if not isinstance(self.keep, int) or self.keep < 1:
            raise AutocompError(f"keep must be a whole number of heads >= 1, got {self.keep!r}")
        if self.importance not in HEAD_SCORES:
            raise AutocompError(f"importance must be one of {sorted(HEAD_SCORES)}, got {self.importance!r}")

    @property
    def reads_calibration(self) -> bool:
        """Whether the heads kept depend on the calibration images (a data-aware score)."""
        return self.importance == "output_norm"

    def tag(self) -> str:
        return f"h{self.keep}"


def keep_heads(attn: nn.Module, kept: torch.Tensor) -> None:
    """Physically keep only heads ``kept`` (indices, any order) of a timm ``Attention`` module."""
    kept = torch.sort(kept).values
    heads, head_dim = attn.num_heads, attn.head_dim
    per_head = (kept[:, None] * head_dim + torch.arange(head_dim)).flatten()  # channels of kept heads
    qkv_rows = torch.cat([per_head + part * heads * head_dim for part in range(3)])
    attn.qkv = slice_linear(attn.qkv, rows=qkv_rows)
    attn.proj = slice_linear(attn.proj, cols=per_head)
    if getattr(attn, "gate", None) is not None:
        attn.gate = slice_linear(attn.gate, rows=per_head)
    if isinstance(attn.norm, nn.LayerNorm):
        attn.norm.weight = nn.Parameter(attn.norm.weight.detach()[per_head].clone())
        attn.norm.bias = nn.Parameter(attn.norm.bias.detach()[per_head].clone())
        attn.norm.normalized_shape = (len(per_head),)
    elif not isinstance(attn.norm, nn.Identity):
        raise AutocompError(f"cannot prune heads through a {type(attn.norm).__name__} attention norm")
    attn.num_heads = len(kept)
    attn.attn_dim = len(kept) * head_dim


def apply(model: nn.Module, configs: dict[int, PruneHeads], context: CompressContext) -> None:
    blocks = vit_blocks(model)
    for index, config in configs.items():
        heads = blocks[index].attn.num_heads
        if config.keep > heads:
            raise AutocompError(f"block {index}: prune_heads.keep={config.keep} but the block has {heads} heads; "
                                f"allowed 1..{heads}")
    proj_inputs = {} if context.structure_only else _capture_proj_inputs(model, blocks, configs, context)
    for index, config in configs.items():
        attn = blocks[index].attn
        if config.keep == attn.num_heads:
            continue
        if context.structure_only:
            kept = torch.arange(config.keep)
        else:
            scores = head_scores(config.importance, attn, proj_inputs.get(index))
            kept = torch.topk(scores, config.keep).indices
        keep_heads(attn, kept)


@torch.no_grad()
def _capture_proj_inputs(model: nn.Module, blocks: list[nn.Module], configs: dict[int, PruneHeads],
                         context: CompressContext) -> dict[int, torch.Tensor]:
    """One forward pass of the calibration images, recording each scored block's per-head attention outputs."""
    wanted = [i for i, c in configs.items() if c.importance == "output_norm" and c.keep < blocks[i].attn.num_heads]
    if not wanted or context.calibration is None:
        return {}
    captured: dict[int, torch.Tensor] = {}
    observe(model, context.calibration, {i: blocks[i].attn.proj for i in wanted}, captured.__setitem__)
    return captured
