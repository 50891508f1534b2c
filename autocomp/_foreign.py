"""ViTs of other libraries, rebuilt as timm's VisionTransformer with the same weights, so that autocomp's operators
(written for timm's blocks) compress them: torchvision's ``VisionTransformer`` (``vit_b_16`` ..., or one built with
sizes of its own).

The rebuilt model computes what the original does (the same layers in the same order; its outputs agree up to float
rounding), and carries the preprocessing its library's weights were trained with as its timm data config, named as
such, so that an image folder is read as the user's model expects unless the job's ``data:`` says otherwise.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from autocomp.data._config import REBUILT_FROM, TRAINED_WITH
from autocomp.errors import AutocompError

__all__ = ["REBUILT_FROM", "timm_equivalent", "is_foreign_vit"]

TORCHVISION = "torchvision's VisionTransformer"
# torchvision's ImageNet ViT weights (ViT_B_16_Weights.IMAGENET1K_V1 ...): ImageClassification(crop_size=224),
# a bilinear resize to 256 then the centre 224 (crop_pct 0.875), ImageNet's mean and std
TORCHVISION_PREPROCESSING = {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
                             "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center"}


def _torchvision_vit() -> type | None:
    try:
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError:  # torchvision is timm's dependency, but an install may lack it
        return None
    return VisionTransformer


def is_foreign_vit(module: nn.Module) -> bool:
    """Whether :func:`timm_equivalent` rebuilds ``module``."""
    kind = _torchvision_vit()
    return kind is not None and isinstance(module, kind)


def timm_equivalent(model: nn.Module) -> nn.Module:
    """``model`` itself, or, for a ViT of another library autocomp knows, timm's VisionTransformer holding its weights
    (a new module, in ``model``'s mode, dtype and device; ``model`` is not changed).

    Raises:
        AutocompError: a variant the rebuild cannot express (a convolutional stem, a pre-logits layer, a forward of
            a subclass's own), named, with what to do.
    """
    if not is_foreign_vit(model):
        return model
    return _from_torchvision(model)


def _from_torchvision(source: nn.Module) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    kind = _torchvision_vit()
    name = f"{type(source).__module__}.{type(source).__qualname__}"
    if type(source).forward is not kind.forward or type(source)._process_input is not kind._process_input:
        raise AutocompError(f"{name} subclasses torchvision's VisionTransformer with a forward of its own, which "
                            "autocomp cannot rebuild as timm's; search torchvision's VisionTransformer itself "
                            "(its weights loaded), or build the model with timm")
    if not isinstance(source.conv_proj, nn.Conv2d):
        raise AutocompError(f"{name} has a convolutional stem (conv_stem_configs), which timm's VisionTransformer "
                            "does not have; autocomp rebuilds torchvision ViTs with a single patch convolution")
    if set(dict(source.heads.named_children())) != {"head"}:
        raise AutocompError(f"{name} has a pre-logits layer (representation_size={source.representation_size}), "
                            "which timm's VisionTransformer does not have; autocomp rebuilds torchvision ViTs whose "
                            "heads are one Linear (representation_size=None, as torchvision's weights have)")
    layers = list(source.encoder.layers)
    attention = [layer.self_attention for layer in layers]
    norms = [module for module in source.modules() if isinstance(module, nn.LayerNorm)]
    activations = {type(layer.mlp[1]) for layer in layers} | {getattr(layer.mlp[1], "approximate", "none")
                                                               for layer in layers}
    widths = {layer.mlp[0].out_features for layer in layers}
    if len(norms) != 2 * len(layers) + 1 or len({norm.eps for norm in norms}) != 1 \
            or activations != {nn.GELU, "none"} or len(widths) != 1 \
            or len({attn.num_heads for attn in attention}) != 1 \
            or not all(attn._qkv_same_embed_dim and attn.bias_k is None for attn in attention) \
            or len({(attn.in_proj_bias is None, attn.out_proj.bias is None) for attn in attention}) != 1:
        raise AutocompError(f"{name} has layers torchvision's ViT builder does not make (other norms, activations "
                            "or attention settings, or blocks of different sizes); autocomp rebuilds torchvision "
                            "ViTs as torchvision.models.VisionTransformer builds them")
    dim, width = source.hidden_dim, widths.pop()
    model = VisionTransformer(
        img_size=source.image_size, patch_size=source.patch_size, in_chans=source.conv_proj.in_channels,
        num_classes=source.num_classes, global_pool="token", embed_dim=dim, depth=len(layers),
        num_heads=attention[0].num_heads, mlp_ratio=(width + 0.5) / dim,  # int(dim * ratio) is the width exactly
        qkv_bias=attention[0].in_proj_bias is not None, proj_bias=attention[0].out_proj.bias is not None,
        norm_layer=partial(nn.LayerNorm, eps=norms[0].eps),
        pos_drop_rate=source.encoder.dropout.p, proj_drop_rate=source.dropout,
        attn_drop_rate=source.attention_dropout, weight_init="skip")
    weights = {"cls_token": source.class_token, "pos_embed": source.encoder.pos_embedding,
               "patch_embed.proj.weight": source.conv_proj.weight, "patch_embed.proj.bias": source.conv_proj.bias,
               "norm.weight": source.encoder.ln.weight, "norm.bias": source.encoder.ln.bias,
               "head.weight": source.heads.head.weight, "head.bias": source.heads.head.bias}
    for index, layer in enumerate(layers):
        parts = {"norm1": layer.ln_1, "norm2": layer.ln_2, "mlp.fc1": layer.mlp[0], "mlp.fc2": layer.mlp[3],
                 "attn.proj": layer.self_attention.out_proj}
        for part, module in parts.items():
            weights[f"blocks.{index}.{part}.weight"] = module.weight
            weights[f"blocks.{index}.{part}.bias"] = module.bias  # None (left out below) where it has none
        # nn.MultiheadAttention's in_proj is timm's fused qkv: query, key, value rows, each split by head alike
        weights[f"blocks.{index}.attn.qkv.weight"] = layer.self_attention.in_proj_weight
        weights[f"blocks.{index}.attn.qkv.bias"] = layer.self_attention.in_proj_bias
    with torch.no_grad():
        model.load_state_dict({key: value.detach().clone() for key, value in weights.items() if value is not None})
    first = next(source.parameters())
    model.to(device=first.device, dtype=first.dtype).train(source.training)
    channels = source.conv_proj.in_channels
    model.pretrained_cfg = {**TORCHVISION_PREPROCESSING, "input_size": (channels, source.image_size,
                                                                        source.image_size),
                            "num_classes": source.num_classes, "architecture": TORCHVISION}
    setattr(model, REBUILT_FROM, TORCHVISION)
    if hasattr(source, TRAINED_WITH):  # a checkpoint's training arguments, read when it was loaded
        setattr(model, TRAINED_WITH, getattr(source, TRAINED_WITH))
    return model
