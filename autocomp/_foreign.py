"""ViTs of other libraries, rebuilt as timm's VisionTransformer with the same weights, so that autocomp's operators
(written for timm's blocks) compress them: torchvision's ``VisionTransformer`` (``vit_b_16`` ..., or one built with
sizes of its own), Hugging Face transformers' ``ViTForImageClassification`` (transformers 4 and 5) and its DeiTs
(``DeiTForImageClassification``, whose distillation token is timm's register token, and
``DeiTForImageClassificationWithTeacher``, timm's ``VisionTransformerDistilled``).

The rebuilt model computes what the original does (the same layers in the same order; its outputs, the original's
logits, agree up to float rounding), and carries as its timm data config the preprocessing its library gives such a
model by default, named as such, so that an image folder is read as the user's model most likely expects unless the
job's ``data:`` says otherwise (a warning says each value taken).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from autocomp.data._config import REBUILT_FROM, TRAINED_WITH, crop_pct_for
from autocomp.errors import AutocompError

__all__ = ["timm_equivalent", "is_foreign_vit", "library_model"]

# torchvision's IMAGENET1K_V1 ViT weights (vit_b_16, vit_b_32, vit_l_32; vit_l_16's resizes to 242):
# ImageClassification(crop_size=224), a bilinear resize to 256 then the centre 224 (crop_pct 0.875), ImageNet's mean
# and std; its IMAGENET1K_SWAG_E2E_V1 weights, at 384, 512 and 518 px: a bicubic resize to the size, no crop
TORCHVISION = {"model": "torchvision's VisionTransformer",
               "preprocessing": "torchvision's IMAGENET1K_V1 weights had theirs made",
               "defaults": "torchvision's IMAGENET1K_V1 weights' preprocessing",
               "settings": {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "interpolation": "bilinear",
                            "crop_pct": 0.875, "crop_mode": "center"}}
TORCHVISION_SWAG = {**TORCHVISION, "preprocessing": "torchvision's IMAGENET1K_SWAG_E2E_V1 weights had theirs made",
                    "defaults": "torchvision's IMAGENET1K_SWAG_E2E_V1 weights' preprocessing",
                    "settings": {**TORCHVISION["settings"], "interpolation": "bicubic", "crop_pct": 1.0}}
SWAG_SIZES = (384, 512, 518)  # the SWAG end-to-end weights' image sizes (vit_b_16, vit_l_16, vit_h_14)
# transformers' ViTImageProcessor by default (google/vit-base-patch16-224's preprocessor_config.json too): a bilinear
# resize of the whole image to the model's size (no crop: timm's squash), mean and std 0.5
TRANSFORMERS = {"model": "transformers' ViTForImageClassification",
                "preprocessing": "transformers' ViTImageProcessor makes them by default (its preprocessor_config.json "
                                 "may say otherwise)",
                "defaults": "transformers' ViTImageProcessor's defaults",
                "settings": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear",
                             "crop_pct": 1.0, "crop_mode": "squash"}}
# facebook/deit-*'s preprocessor_config.json (DeiTImageProcessor): the whole image resized bicubically to 256 x 256,
# then the centre 224 x 224 (crop_pct 0.875 of a squash), ImageNet's mean and std, as DeiT was trained (the class's
# own defaults say mean and std 0.5, which no DeiT weights were trained with)
TRANSFORMERS_DEIT = {"model": "transformers' DeiTForImageClassification",
                     "preprocessing": "facebook/deit-* weights had theirs made (their preprocessor_config.json; the "
                                      "model's own may say otherwise)",
                     "defaults": "facebook/deit-* weights' preprocessing",
                     "settings": {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
                                  "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "squash"}}
# transformers' classification models autocomp rebuilds: the attribute holding the backbone, whether the output
# averages a class-token head and a distillation-token head (timm's VisionTransformerDistilled in eval mode)
TRANSFORMERS_KINDS = {"ViTForImageClassification": ("vit", False), "DeiTForImageClassification": ("deit", False),
                      "DeiTForImageClassificationWithTeacher": ("deit", True)}
# transformers' hidden_act values timm's GELU computes exactly (gelu_new is the tanh form, as gelu_pytorch_tanh)
HF_ACTIVATIONS = {"gelu": nn.GELU, "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"),
                  "gelu_new": partial(nn.GELU, approximate="tanh")}


@dataclass
class _Layout:
    """A ViT's sizes and where each of timm's weights is in it."""

    image_size: int
    patch_size: int
    channels: int
    classes: int
    dim: int
    heads: int
    width: int  # the MLP's hidden neurons
    eps: float
    act: Any
    drops: dict[str, float]  # timm's pos_drop_rate, proj_drop_rate, attn_drop_rate
    weights: dict[str, torch.Tensor | None]  # timm's names: the tensors (None: a bias the model does not have)
    labels: list[str] | None = None  # the name of each output, where the model names them (transformers' id2label)
    act_dropout: bool = True  # a dropout after the MLP's activation (timm's and torchvision's; transformers' has none)
    reg_tokens: int = 0  # tokens after the class token, in the position embedding (DeiT's distillation token)
    distilled: bool = False  # a second head on the token after the class token, the two heads' logits averaged


def _torchvision_vit() -> type | None:
    try:
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError:  # torchvision is timm's dependency, but an install may lack it
        return None
    return VisionTransformer


def _from_transformers(module: nn.Module) -> bool:
    return type(module).__module__.startswith("transformers.")


def library_model(module: nn.Module) -> str:
    """What ``module`` is, in words: "torchvision's VisionTransformer", "transformers' DeiTForImageClassification"."""
    if _from_transformers(module):
        return f"transformers' {type(module).__name__}"
    return "torchvision's VisionTransformer" + (f" ({type(module).__qualname__})"
                                                 if type(module) is not _torchvision_vit() else "")


def is_foreign_vit(module: nn.Module) -> bool:
    """Whether :func:`timm_equivalent` takes ``module`` (to rebuild it, or to say why it cannot)."""
    kind = _torchvision_vit()
    return (kind is not None and isinstance(module, kind)) or \
        (_from_transformers(module) and hasattr(module, "config") and getattr(module.config, "model_type", None)
         in ("vit", "deit", "beit", "dinov2", "vit_msn", "vit_mae", "dinov2_with_registers", "vit_hybrid"))


def timm_equivalent(model: nn.Module) -> nn.Module:
    """``model`` itself, or, for a ViT of another library autocomp knows, timm's VisionTransformer holding its weights
    (a new module, in ``model``'s mode, dtype and device, whose output is the original's logits; ``model`` is not
    changed).

    Raises:
        AutocompError: a variant the rebuild cannot express (a convolutional stem, a pre-logits layer, a forward of
            a subclass's own, another transformers model than ViTForImageClassification), named, with what to do.
    """
    if not is_foreign_vit(model):
        return model
    if any(parameter.is_meta for parameter in model.parameters()):
        raise AutocompError(f"{library_model(model)} has its weights on the meta device (shapes without values): "
                            "load its weights first (model.to_empty(device='cpu') then load_state_dict, or "
                            "from_pretrained)")
    if _from_transformers(model):
        layout = _transformers_layout(model)
        kind = type(model).__name__
        defaults = TRANSFORMERS if kind == "ViTForImageClassification" else {**TRANSFORMERS_DEIT,
                                                                               "model": f"transformers' {kind}"}
        return _assemble(model, layout, {**(_processor_of(model, layout.image_size) or defaults),
                                         "model": defaults["model"]})
    layout = _torchvision_layout(model)
    return _assemble(model, layout, TORCHVISION_SWAG if layout.image_size in SWAG_SIZES else TORCHVISION)


def _torchvision_layout(source: nn.Module) -> _Layout:
    kind = _torchvision_vit()
    name = f"{type(source).__module__}.{type(source).__qualname__}"
    if type(source).forward is not kind.forward or type(source)._process_input is not kind._process_input:
        raise AutocompError(f"{name} subclasses torchvision's VisionTransformer with a forward of its own, which "
                            "autocomp cannot rebuild as timm's; search torchvision's VisionTransformer itself "
                            "(its weights loaded), or build the model with timm")
    if not isinstance(source.conv_proj, nn.Conv2d):
        raise AutocompError(f"{name} has a convolutional stem (conv_stem_configs), which timm's VisionTransformer "
                            "does not have; autocomp rebuilds torchvision ViTs with a single patch convolution")
    # the head as built (heads.head), or as fine-tuning replaced it (heads.head = Linear(768, 10), or heads itself)
    head = source.heads if isinstance(source.heads, nn.Linear) else getattr(source.heads, "head", None)
    if "pre_logits" in dict(source.heads.named_children()):
        raise AutocompError(f"{name} has a pre-logits layer (heads.pre_logits: representation_size), which timm's "
                            "VisionTransformer does not have; autocomp rebuilds torchvision ViTs whose heads are one "
                            "Linear (as torchvision's weights have)")
    if not isinstance(head, nn.Linear) or head.bias is None or \
            (not isinstance(source.heads, nn.Linear) and set(dict(source.heads.named_children())) != {"head"}):
        odd = source.heads if head is None or isinstance(source.heads, nn.Linear) else head
        where = "heads" if odd is source.heads else "heads.head"
        raise AutocompError(f"{name}'s {where} is {_described(odd)}; autocomp rebuilds torchvision ViTs whose heads "
                            "are one Linear with a bias (heads.head, or heads itself)")
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
    weights = {"cls_token": source.class_token, "pos_embed": source.encoder.pos_embedding,
               **_linear("patch_embed.proj", source.conv_proj), **_linear("norm", source.encoder.ln),
               **_linear("head", head)}
    for index, layer in enumerate(layers):
        # nn.MultiheadAttention's in_proj is timm's fused qkv: query, key, value rows, each split by head alike
        parts = {"norm1": layer.ln_1, "norm2": layer.ln_2, "mlp.fc1": layer.mlp[0], "mlp.fc2": layer.mlp[3],
                 "attn.proj": layer.self_attention.out_proj}
        for part, module in parts.items():
            weights.update(_linear(f"blocks.{index}.{part}", module))
        weights[f"blocks.{index}.attn.qkv.weight"] = layer.self_attention.in_proj_weight
        weights[f"blocks.{index}.attn.qkv.bias"] = layer.self_attention.in_proj_bias
    return _Layout(image_size=source.image_size, patch_size=source.patch_size,
                   channels=source.conv_proj.in_channels, classes=head.out_features, dim=source.hidden_dim,
                   heads=attention[0].num_heads, width=widths.pop(), eps=norms[0].eps, act=nn.GELU,
                   drops={"pos_drop_rate": source.encoder.dropout.p, "proj_drop_rate": source.dropout,
                          "attn_drop_rate": source.attention_dropout},
                   weights=weights)


def _transformers_layout(source: nn.Module) -> _Layout:
    kind, config = type(source).__name__, source.config
    if kind not in TRANSFORMERS_KINDS:
        raise AutocompError(f"transformers' {kind} is not rebuilt by autocomp: it rebuilds "
                            f"{', '.join(TRANSFORMERS_KINDS)} (and torchvision's VisionTransformer) as timm's "
                            f"VisionTransformer; for {config.model_type} weights, load them into the timm model of "
                            "that family")
    backbone, distilled = TRANSFORMERS_KINDS[kind]
    act = HF_ACTIVATIONS.get(config.hidden_act) if isinstance(config.hidden_act, str) else None
    if act is None:
        raise AutocompError(f"transformers' {kind} with hidden_act {config.hidden_act!r}: autocomp rebuilds those "
                            f"with {', '.join(HF_ACTIVATIONS)}")
    heads = {"classifier": source.cls_classifier, "distillation_classifier": source.distillation_classifier} \
        if distilled else {"classifier": source.classifier}
    for name, head in heads.items():
        if not isinstance(head, nn.Linear) or head.bias is None:
            raise AutocompError(f"transformers' {kind} whose {name} is {_described(head)} (num_labels "
                                f"{config.num_labels}): autocomp rebuilds those with a Linear classifier; give the "
                                "model its labels (num_labels)")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim * config.num_attention_heads != config.hidden_size:
        raise AutocompError(f"transformers' {kind} with head_dim {head_dim} x {config.num_attention_heads} heads != "
                            f"hidden_size {config.hidden_size}: autocomp rebuilds those whose heads split the width")
    vit = getattr(source, backbone)
    layers = list(vit.layers if hasattr(vit, "layers") else vit.encoder.layer)  # transformers 5; 4
    embeddings = vit.embeddings
    size = _square(config.image_size, "image_size", kind)
    first = next(iter(heads.values()))
    weights = {"cls_token": embeddings.cls_token, "pos_embed": embeddings.position_embeddings,
               **_linear("patch_embed.proj", embeddings.patch_embeddings.projection),
               **_linear("norm", vit.layernorm), **_linear("head", first)}
    distillation = getattr(embeddings, "distillation_token", None)
    if distillation is not None:  # DeiT's: after the class token, before the patches, in the position embedding
        weights["dist_token" if distilled else "reg_token"] = distillation
    if distilled:
        weights.update(_linear("head_dist", source.distillation_classifier))
    for index, layer in enumerate(layers):
        attention = layer.attention
        if hasattr(attention, "q_proj"):  # transformers 5
            query, key, value, out = attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj
            fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
        else:  # transformers 4: ViTSelfAttention's query, key, value; ViTSelfOutput's, ViTIntermediate's, ViTOutput's
            query, key, value = attention.attention.query, attention.attention.key, attention.attention.value
            out, fc1, fc2 = attention.output.dense, layer.intermediate.dense, layer.output.dense
        parts = {"norm1": layer.layernorm_before, "norm2": layer.layernorm_after, "attn.proj": out, "mlp.fc1": fc1,
                 "mlp.fc2": fc2}
        for part, module in parts.items():
            weights.update(_linear(f"blocks.{index}.{part}", module))
        weights[f"blocks.{index}.attn.qkv.weight"] = torch.cat([query.weight, key.weight, value.weight])
        weights[f"blocks.{index}.attn.qkv.bias"] = None if query.bias is None else \
            torch.cat([query.bias, key.bias, value.bias])
    return _Layout(image_size=size, patch_size=_square(config.patch_size, "patch_size", kind),
                   channels=config.num_channels, classes=first.out_features, dim=config.hidden_size,
                   heads=config.num_attention_heads, width=config.intermediate_size, eps=config.layer_norm_eps,
                   act=act, drops={"pos_drop_rate": config.hidden_dropout_prob,
                                   "proj_drop_rate": config.hidden_dropout_prob,
                                   "attn_drop_rate": config.attention_probs_dropout_prob},
                   weights=weights, act_dropout=False, labels=_label_names(config, first.out_features),
                   reg_tokens=int(distillation is not None and not distilled), distilled=distilled)


# the image processors whose saved keys autocomp follows (others, ConvNeXt's crop_pct say, are left for the defaults)
VIT_PROCESSORS = ("ViTImageProcessor", "ViTImageProcessorFast", "ViTFeatureExtractor")
DEIT_PROCESSORS = ("DeiTImageProcessor", "DeiTImageProcessorFast", "DeiTFeatureExtractor")
# PIL's resampling filters by number, as a saved image processor gives them
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _processor_of(source: nn.Module, image_size: int) -> dict[str, Any] | None:
    """The preprocessing the ``preprocessor_config.json`` of a transformers model read by ``from_pretrained`` says
    (ViTImageProcessor's and DeiTImageProcessor's keys), as TRANSFORMERS's entries: the file beside it, read from a
    folder, or the one the Hugging Face cache holds for its hub id (never downloaded); None where there is no such
    file, or one autocomp cannot follow (then the library's defaults are taken, said)."""
    import json

    path = _processor_file(getattr(source, "name_or_path", None) or getattr(source.config, "_name_or_path", None))
    if path is None:
        return None
    try:
        saved = json.loads(path.read_text())
        kind = saved.get("image_processor_type") or saved.get("feature_extractor_type")
        size, crop = saved.get("size") or {}, saved.get("crop_size") or {}
        if kind in VIT_PROCESSORS + DEIT_PROCESSORS:  # an older file's int size (and crop): a square of that side
            size, crop = ({"height": side, "width": side} if isinstance(side, int) else side for side in (size, crop))
        resized = size.get("shortest_edge") or size.get("height")
        cropped = (crop.get("height") or crop.get("shortest_edge")) if saved.get("do_center_crop") else resized
        normalize = saved.get("do_normalize", True)
        settings = {"mean": tuple(saved["image_mean"]) if normalize else (0.0,), "std": tuple(saved["image_std"])
                    if normalize else (1.0,), "interpolation": RESAMPLE[int(saved.get("resample", 2))],
                    "crop_pct": crop_pct_for(cropped, resized),
                    "crop_mode": "center" if "shortest_edge" in size else "squash"}
    except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):  # a file of another form
        return None
    rescaled = saved.get("do_rescale", True) and abs(saved.get("rescale_factor", 1 / 255) - 1 / 255) < 1e-9
    if kind not in VIT_PROCESSORS + DEIT_PROCESSORS or not saved.get("do_resize", True) or not rescaled \
            or cropped != image_size or size.get("height", resized) != size.get("width", resized):
        return None  # another processor's keys, no resize, pixels not divided by 255, another size, a rectangle
    return {**TRANSFORMERS, "preprocessing": f"its preprocessor_config.json ({path}) makes them",
            "defaults": f"its preprocessor_config.json ({path})", "settings": settings, "read": True}


def _processor_file(name: str | None) -> Path | None:
    """A model's ``preprocessor_config.json``: in its folder, or in the Hugging Face cache for a hub id (offline:
    only a file a ``from_pretrained`` of its processor left there)."""
    if not name:
        return None
    if (Path(name) / "preprocessor_config.json").is_file():
        return Path(name) / "preprocessor_config.json"
    if Path(name).exists():  # a folder without one
        return None
    try:
        from transformers.utils import cached_file

        found = cached_file(name, "preprocessor_config.json", local_files_only=True,
                            _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
    except Exception:  # noqa: BLE001 - a name the hub's rules refuse, a transformers without these keys: none
        return None
    return Path(found) if found else None


def _label_names(config: Any, count: int) -> list[str] | None:
    """transformers' id2label as a list, output by output; None where it names them LABEL_0 ... (transformers'
    default, which says nothing of the classes)."""
    names = getattr(config, "id2label", None) or {}
    listed = [names.get(index, names.get(str(index))) for index in range(count)]
    if None in listed or listed == [f"LABEL_{index}" for index in range(count)]:
        return None
    return [str(name) for name in listed]


def _square(value: Any, name: str, kind: str) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise AutocompError(f"transformers' {kind} with {name} {list(value)}: autocomp rebuilds square ones")
    return int(value[0])


def _described(module: nn.Module) -> str:
    """A module in a few words: its class, or its children's (a Sequential of Dropout and Linear)."""
    children = [type(child).__name__ for child in module.children()]
    return f"a {type(module).__name__}" + (f" of {', '.join(children)}" if children else "")


def _linear(name: str, module: nn.Module) -> dict[str, torch.Tensor | None]:
    """A layer's weight and bias (None where it has none) under timm's ``name``."""
    return {f"{name}.weight": module.weight, f"{name}.bias": module.bias}


def _assemble(source: nn.Module, layout: _Layout, library: dict[str, Any]) -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    weights = layout.weights
    depth = sum(key.endswith(".attn.qkv.weight") for key in weights)
    model = (VisionTransformerDistilled if layout.distilled else VisionTransformer)(
        img_size=layout.image_size, patch_size=layout.patch_size, in_chans=layout.channels,
        num_classes=layout.classes, global_pool="token", embed_dim=layout.dim, depth=depth, num_heads=layout.heads,
        mlp_ratio=(layout.width + 0.5) / layout.dim,  # int(dim * ratio) is the width exactly
        qkv_bias=weights["blocks.0.attn.qkv.bias"] is not None,
        proj_bias=weights["blocks.0.attn.proj.bias"] is not None,
        norm_layer=partial(nn.LayerNorm, eps=layout.eps), act_layer=layout.act, weight_init="skip",
        **({"reg_tokens": layout.reg_tokens} if layout.reg_tokens else {}), **layout.drops)
    if not layout.act_dropout:
        for block in model.blocks:
            block.mlp.drop1 = nn.Identity()
    own = model.state_dict()
    given = {key: value.detach() for key, value in weights.items() if value is not None}  # copied in by the load
    wrong = [key for key in own if key not in given or tuple(given[key].shape) != tuple(own[key].shape)]
    if wrong or set(given) - set(own):
        key = (wrong or sorted(set(given) - set(own)))[0]
        raise AutocompError(f"{library['model']} does not fit timm's ViT of its sizes (its {key}: "
                            f"{tuple(given[key].shape) if key in given else 'none'}, timm's "
                            f"{tuple(own[key].shape) if key in own else 'none'}): autocomp rebuilds it as its library "
                            "builds it, every block of one size, with biases")
    with torch.no_grad():
        model.load_state_dict(given)
    first = next(source.parameters())
    model.to(device=first.device, dtype=first.dtype).train(source.training)
    model.pretrained_cfg = {**library["settings"], "num_classes": layout.classes, "architecture": library["model"],
                            "input_size": (layout.channels, layout.image_size, layout.image_size),
                            **({"label_names": layout.labels} if layout.labels else {})}
    setattr(model, REBUILT_FROM, {key: library[key] for key in ("model", "preprocessing", "defaults", "read")
                                  if key in library})
    if hasattr(source, TRAINED_WITH):  # a checkpoint's training arguments, read when it was loaded
        setattr(model, TRAINED_WITH, getattr(source, TRAINED_WITH))
    return model
