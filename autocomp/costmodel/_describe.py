"""The shapes of a timm ViT that the cost model needs, read once from the uncompressed base model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from autocomp.errors import AutocompError
from autocomp.measure import weight_nbytes
from autocomp.models import vit_blocks

__all__ = ["ViTDescription", "describe"]

LINEARS = {"qkv": ("attn", "qkv"), "proj": ("attn", "proj"), "fc1": ("mlp", "fc1"), "fc2": ("mlp", "fc2")}


@dataclass(frozen=True)
class ViTDescription:
    """A base ViT as numbers: enough to predict the cost of any recipe on it without building the model.

    Attributes:
        embed_dim: token width ``D``.
        num_heads: attention heads of each block.
        head_dim: width of one head.
        mlp_hidden: hidden width of each block's MLP.
        num_patches: patch tokens per image.
        num_prefix_tokens: class and register tokens, never reduced.
        num_classes: outputs of the head (0: no head Linear).
        in_chans: image channels.
        patch_size: ``(height, width)`` of a patch.
        global_pool: timm's pooling before the head (``token``, ``avg``, ...).
        bias: for ``qkv``, ``proj``, ``fc1``, ``fc2``: whether the Linear has a bias.
        attn_norm: the attention has a LayerNorm over its output channels (``attn.norm``), sliced by head pruning.
        mlp_norm: the MLP has a LayerNorm over its hidden channels (``mlp.norm``), sliced by MLP pruning.
        fc_norm: a LayerNorm after pooling, before the head.
        block_fixed_nbytes: bytes of each block's tensors that no operator changes (norm1, norm2, layer scales,
            q/k norms).
        stem_nbytes: bytes of the patch embedding, class/register tokens and position embedding.
        head_nbytes: bytes of everything after the blocks (final norm, fc_norm, head).
        dtype_bytes: bytes per element of the model's float weights and activations.
    """

    embed_dim: int
    num_heads: tuple[int, ...]
    head_dim: int
    mlp_hidden: tuple[int, ...]
    num_patches: int
    num_prefix_tokens: int
    num_classes: int
    in_chans: int
    patch_size: tuple[int, int]
    global_pool: str
    bias: dict[str, bool]
    attn_norm: bool
    mlp_norm: bool
    fc_norm: bool
    block_fixed_nbytes: tuple[int, ...]
    stem_nbytes: int
    head_nbytes: int
    dtype_bytes: int = 4

    @property
    def depth(self) -> int:
        return len(self.num_heads)

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block (patches plus prefix)."""
        return self.num_patches + self.num_prefix_tokens


def describe(model: nn.Module) -> ViTDescription:
    """Read the description of an uncompressed timm ViT-family model.

    Raises:
        AutocompError: the model is not a plain timm ViT, or is already compressed.
    """
    blocks = vit_blocks(model)
    for index, block in enumerate(blocks):
        for parent, attr in LINEARS.values():
            if type(getattr(getattr(block, parent), attr)) is not nn.Linear:
                raise AutocompError(f"block {index}: {parent}.{attr} is not a plain nn.Linear; describe() reads the "
                                    "uncompressed base model: pass the model before autocomp.compress")
    if type(model.blocks) is not nn.Sequential:
        raise AutocompError("the model's blocks are wrapped (token reduction?); describe() reads the uncompressed "
                            "base model: pass the model before autocomp.compress")
    embed = getattr(model, "patch_embed", None)
    conv = getattr(embed, "proj", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(getattr(embed, "norm", None), nn.Identity):
        raise AutocompError(f"{type(model).__name__}: the cost model expects timm's PatchEmbed (one Conv2d, no norm)")
    heads = tuple(block.attn.num_heads for block in blocks)
    head_dims = {block.attn.head_dim for block in blocks}
    if len(head_dims) != 1:
        raise AutocompError(f"blocks have different head widths {sorted(head_dims)}; the cost model needs one")
    stem = weight_nbytes(embed) + weight_nbytes(model.norm_pre) + sum(
        t.numel() * t.element_size() for t in [*model.parameters(recurse=False), *model.buffers(recurse=False)])
    in_blocks = sum(weight_nbytes(block) for block in blocks)
    first = blocks[0]
    return ViTDescription(
        embed_dim=model.embed_dim, num_heads=heads, head_dim=head_dims.pop(),
        mlp_hidden=tuple(block.mlp.fc1.out_features for block in blocks), num_patches=embed.num_patches,
        num_prefix_tokens=model.num_prefix_tokens, num_classes=model.num_classes, in_chans=conv.in_channels,
        patch_size=tuple(conv.kernel_size), global_pool=str(model.global_pool),
        bias={name: getattr(getattr(first, p), a).bias is not None for name, (p, a) in LINEARS.items()},
        attn_norm=isinstance(first.attn.norm, nn.LayerNorm), mlp_norm=isinstance(first.mlp.norm, nn.LayerNorm),
        fc_norm=isinstance(model.fc_norm, nn.LayerNorm),
        block_fixed_nbytes=tuple(_fixed_nbytes(block) for block in blocks), stem_nbytes=stem,
        head_nbytes=weight_nbytes(model) - stem - in_blocks, dtype_bytes=conv.weight.element_size())


def _fixed_nbytes(block: nn.Module) -> int:
    """Bytes of a block's tensors outside the four Linears and the two norms that pruning slices."""
    changed = [getattr(getattr(block, p), a) for p, a in LINEARS.values()] + [block.attn.norm, block.mlp.norm]
    return weight_nbytes(block) - sum(weight_nbytes(module) for module in changed)
