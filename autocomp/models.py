"""Models a user brings: a timm model name, or a factory function of their own (``package.module:function``), with
keyword arguments and a checkpoint; or (Python API) an ``nn.Module``. Nothing is ever unpickled."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from timm.layers import Attention
from torch import nn

from autocomp._foreign import is_foreign_vit, library_model, timm_equivalent
from autocomp._io import hash_weights, read_safetensors
from autocomp.data._config import TRAINED_WITH, trained_with
from autocomp.errors import AutocompError, warn

__all__ = ["ModelSpec", "create_model", "factory_folder", "factory_module", "load_checkpoint", "model_digest",
           "model_images", "model_structure", "require_structure", "structure_difference", "timm_equivalent",
           "vit_blocks"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build the base model.

    Attributes:
        name: a timm model name (``timm.list_models()``), e.g. ``deit_tiny_patch16_224``; or None with ``factory``.
        kwargs: keyword arguments for ``timm.create_model`` or the factory (``img_size``, ``embed_dim``, ...).
        checkpoint: weights to load: ``.safetensors``, or ``.pth``/``.pt`` (loaded with ``weights_only=True``).
        checkpoint_key: the key of a training checkpoint the weights are under (``state_dict_ema``, say); None:
            as timm's ``load_checkpoint`` takes them (an EMA copy first: ``state_dict_ema``, ``model_ema``; then
            ``state_dict``, ``model``), or the one dict of the model's weights the checkpoint holds.
        factory: ``package.module:function`` returning the model (a timm ViT-family ``nn.Module``), for a model
            timm does not name; importable where autocomp runs, or found in ``path``.
        path: the folder holding the factory's module (``module.py`` or a package folder) where Python does not
            find it on its own; a job's config sets it to the job file's folder, or the current one, that holds it
            (:func:`factory_folder`), so that its run folder and ``best/`` find the module too.
    """

    name: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    factory: str | None = None
    path: str | None = None
    checkpoint_key: str | None = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.factory is None):
            raise AutocompError("give the model a timm name or a factory ('package.module:function'), not "
                                f"{'both' if self.name else 'neither'}")
        if self.factory is not None and (not isinstance(self.factory, str) or self.factory.count(":") != 1):
            raise AutocompError(f"factory must read 'package.module:function', got {self.factory!r}")

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "kwargs": dict(self.kwargs), "checkpoint": self.checkpoint}
        return data | {key: getattr(self, key) for key in ("factory", "path", "checkpoint_key")
                       if getattr(self, key) is not None}

    def describe(self) -> str:
        return self.name if self.name is not None else self.factory


def base_model(model: ModelSpec | nn.Module) -> nn.Module:
    """A job's uncompressed model: the module given (in eval mode), or the one its spec builds with its weights."""
    return model.eval() if isinstance(model, nn.Module) else create_model(model)


def create_model(spec: ModelSpec, *, load_weights: bool = True) -> nn.Module:
    """Build the model of ``spec`` (a timm name, or the user's factory; never downloads anything) and load its
    checkpoint."""
    import timm

    if spec.factory is not None:
        model = _from_factory(spec)
        if not is_foreign_vit(model):
            vit_blocks(model)
        if load_weights and spec.checkpoint:  # into the model the factory made: a torchvision ViT's own keys
            load_checkpoint(model, spec.checkpoint, key=spec.checkpoint_key)
        return timm_equivalent(model).eval()  # a torchvision ViT: timm's, with its weights
    if not timm.is_model(spec.name):
        near = difflib.get_close_matches(spec.name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(near)}?" if near else "; see timm.list_models('*vit*')"
        raise AutocompError(f"unknown timm model {spec.name!r}{hint}")
    architecture, _, tag = spec.name.partition(".")
    if tag and "pretrained_cfg" not in spec.kwargs:  # is_model accepts any tag; create_model fails with a traceback
        tags = [name.partition(".")[2] for name in timm.list_models(f"{architecture}.*", include_tags=True)]
        if tag not in tags:
            near = difflib.get_close_matches(tag, tags, n=3, cutoff=0.5)
            raise AutocompError(f"timm has no pretrained tag {tag!r} for {architecture}"
                                + (f"; did you mean {', '.join(f'{architecture}.{t}' for t in near)}?" if near else
                                   f"; its tags: {', '.join(tags) or 'none'}"))
    weights = [key for key in ("pretrained", "checkpoint_path") if key in spec.kwargs]
    overlay = spec.kwargs.get("pretrained_cfg_overlay")  # may set the preprocessing too: refused for a weight file
    if isinstance(overlay, Mapping) and {"file", "url", "hf_hub_id"} & set(overlay):
        weights.append("pretrained_cfg_overlay")
    if weights:
        raise AutocompError(f"model.kwargs.{weights[0]}: autocomp builds the architecture from the kwargs and reads "
                            "weights only from model.checkpoint (it never downloads); give the weights file there, "
                            f"e.g. timm's model.safetensors for {spec.name} from the Hugging Face hub (timm/<name>)")
    try:
        model = timm.create_model(spec.name, pretrained=False, **dict(spec.kwargs))
    except (TypeError, ValueError, AssertionError, OSError, RuntimeError) as exc:
        raise AutocompError(f"timm could not build {spec.name!r} with kwargs {dict(spec.kwargs)}: {exc}") from None
    vit_blocks(model)
    if load_weights and spec.checkpoint:
        load_checkpoint(model, spec.checkpoint, key=spec.checkpoint_key)
    return model.eval()


def factory_folder(factory: str, folders: Sequence[Path]) -> str | None:
    """The first of ``folders`` holding the module of ``factory`` (``package.module:function``: ``package/`` or
    ``package.py``), where Python does not import it from elsewhere: None where it does (an installed module, one on
    PYTHONPATH), or none holds it. A module imported already from one of ``folders`` (an earlier search in this
    process) gives that folder: the answer does not depend on what the process imported before."""
    import importlib.util

    top = _top_module(factory)
    if not top:
        return None
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return next((str(folder.resolve()) for folder in folders if _module_in(folder, top) is not None), None)
    origin = found.origin or next(iter(found.submodule_search_locations or []), None)
    if origin is None:
        return None
    origin = Path(origin).resolve()  # the module's file, its package's __init__.py, or a namespace package's folder
    return next((str(folder) for folder in (Path(f).resolve() for f in folders)
                 if origin == folder / f"{top}.py" or folder / top in (origin, origin.parent)), None)


def _top_module(factory: str) -> str:
    return factory.partition(":")[0].partition(".")[0]


def _module_in(folder: Path, top: str) -> Path | None:
    """``folder``'s module ``top`` as Python would import it from there: the package before the file."""
    return next((found for found in (folder / top, folder / f"{top}.py") if found.exists()), None)


def factory_module(spec: ModelSpec | nn.Module) -> Path | None:
    """The file or package folder of the factory's module that ``spec.path`` holds (None: no factory, or one
    Python imports from its own path)."""
    if not isinstance(spec, ModelSpec) or spec.factory is None or spec.path is None:
        return None
    return _module_in(Path(spec.path), _top_module(spec.factory))


def _from_factory(spec: ModelSpec) -> nn.Module:
    import importlib
    import sys

    module_name, _, function = spec.factory.partition(":")
    if spec.path is not None and spec.path not in sys.path:
        sys.path.append(spec.path)  # after the installed packages: it holds a module they do not
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = f" (not in model.path {spec.path})" if spec.path is not None else ""
        fix = (f"give the module's name, not its file: {module_name.removesuffix('.py')}:{function}"
               if module_name.endswith(".py") else
               "install it, put it beside the job file, or add its folder to PYTHONPATH")
        raise AutocompError(f"model.factory {spec.factory!r}: cannot import {module_name}{where} ({exc}); "
                            f"{fix}") from None
    make = getattr(module, function, None)
    if make is None:  # a module of the user's named like an installed one imports the installed one
        raise AutocompError(f"model.factory {spec.factory!r}: {module_name} ({getattr(module, '__file__', None)}) "
                            f"has no {function!r}; if yours is another module of that name, rename it")
    model = make(**dict(spec.kwargs))
    if not isinstance(model, nn.Module):
        raise AutocompError(f"model.factory {spec.factory!r} returned a {type(model).__name__}, not an nn.Module")
    return model


# where a trainer's checkpoint keeps the weights, in the order timm's load_checkpoint takes them: an EMA copy first
TRAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def load_checkpoint(model: nn.Module, path: str | Path, *, key: str | None = None) -> None:
    """Load a state dict into ``model``; a checkpoint that does not fit is refused with what differs. ``key``: the
    key of a training checkpoint the weights are under (:class:`ModelSpec`'s ``checkpoint_key``)."""
    import argparse

    path = Path(path)
    if not path.is_file():
        raise AutocompError(f"checkpoint not found: {path}; train or copy it there, or fix model.checkpoint")
    if path.suffix == ".safetensors":
        state = read_safetensors(path, "checkpoint", "the file is damaged or not safetensors; copy or save it again")
    else:
        # timm's train.py saves its arguments beside the weights, as an argparse.Namespace of plain values (torch
        # 2.5 on; an older torch refuses it below, as any object)
        allowed = getattr(torch.serialization, "safe_globals", None)
        try:
            with allowed([argparse.Namespace]) if allowed is not None else contextlib.nullcontext():
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
            if "Weights only load failed" in str(exc):
                found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
                raise AutocompError(
                    f"cannot read checkpoint {path}: it holds pickled Python objects"
                    + (f" ({found.group(1)})" if found else "") + " (a whole model saved with torch.save(model), "
                    "or objects saved beside the weights), which autocomp does not unpickle; save model.state_dict() "
                    "alone instead, or pass the nn.Module itself in Python (run_search with the config's model "
                    "replaced: README)") from None
            raise AutocompError(f"cannot read checkpoint {path}: {exc}".splitlines()[0]) from None
    args = state.get("args") if isinstance(state, dict) else None  # timm's train.py: how it made its images
    if key is not None:
        if not isinstance(state, dict) or not isinstance(state.get(key), dict):
            held = [name for name, value in state.items() if isinstance(value, dict)] if isinstance(state, dict) \
                else []
            raise AutocompError(f"model.checkpoint_key {key!r}: checkpoint {path} holds no weights under it; its "
                                f"keys holding dicts: {', '.join(map(repr, held)) or 'none'}")
        state = state[key]
    elif isinstance(state, dict):  # a trainer's checkpoint: the weights under a key ('model': a name is not them)
        keys = [name for name in TRAINER_KEYS if _tensors(state.get(name))]
        plain = [name for name in keys if name not in TRAINER_KEYS[:2]]
        if keys and keys[0] in TRAINER_KEYS[:2] and plain:  # an EMA copy beside the weights: which is taken, said
            warn(f"checkpoint {path} holds the model's weights under {plain[0]!r} and their EMA copy under "
                 f"{keys[0]!r}: autocomp takes the EMA copy, as timm's load_checkpoint does; set "
                 f"model.checkpoint_key: {plain[0]} for the others")
        state = state[keys[0]] if keys else state
    own = model.state_dict()
    state = _under_key(state, own, path)
    if isinstance(state, dict):
        state = _under_prefix(_cleaned(state), own, path)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = []
        if wrong:
            key = wrong[0]
            details.append(f"{len(wrong)} shape mismatch(es), e.g. {key}: checkpoint {tuple(state[key].shape)} vs "
                           f"model {tuple(own[key].shape)}")
        if missing:
            details.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        library = _library_of(unexpected)
        if type(model).__module__.startswith("transformers."):  # the module's keys and its files' differ (5 and 4)
            fix = (f"a file transformers' save_pretrained wrote keeps the key layout of its files, which only "
                   f"from_pretrained reads into the module: build it in the factory with {type(model).__name__}"
                   ".from_pretrained on the file's (local) folder and leave model.checkpoint out")
        elif library and not is_foreign_vit(model):
            fix = (f"it holds {library[0]} weights: build that model in a factory (model: {{factory: ..., checkpoint: "
                   f"...}}, returning {library[1]}), which autocomp rebuilds as timm's with these weights")
        else:
            fix = "check model.name and model.kwargs (or the factory's model) against the checkpoint"
        raise AutocompError(f"checkpoint {path} does not fit the model: {'; '.join(details)}; {fix}")
    model.load_state_dict(state)
    if trained := trained_with(args):  # an image folder's preprocessing takes them over the timm config's
        setattr(model, TRAINED_WITH, trained)


def _library_of(keys: Sequence[str]) -> tuple[str, str] | None:
    """The library whose ViT has weights named ``keys`` (autocomp rebuilds its model as timm's), and that model."""
    if any(key.startswith(("vit.encoder.layer.", "vit.layers.", "vit.embeddings.")) for key in keys):
        return "Hugging Face transformers' ViT", "transformers.ViTForImageClassification(ViTConfig(...))"
    if any(key.startswith(("deit.encoder.layer.", "deit.layers.", "deit.embeddings.")) for key in keys):
        kind = "DeiTForImageClassificationWithTeacher" if any(key.startswith("distillation_classifier.")
                                                               for key in keys) else "DeiTForImageClassification"
        return "Hugging Face transformers' DeiT", f"transformers.{kind}(DeiTConfig(...))"
    if any(key.startswith("encoder.layers.encoder_layer_") for key in keys):
        return "torchvision's ViT", "torchvision.models.vit_b_16(num_classes=...) or another of its ViT builders"
    return None


def _tensors(value: Any) -> bool:
    """Whether ``value`` is a non-empty dict of tensors (a state dict; not a config or an optimizer's state)."""
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _cleaned(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the prefixes DDP (``module.``) and torch.compile (``_orig_mod.``) add."""
    from timm.models import clean_state_dict

    return clean_state_dict(state)


def _under_key(state: Any, own: Mapping[str, Any], path: Path) -> Any:
    """A training checkpoint's weights saved under a key of its own (``{'net': state_dict, 'epoch': 3}``), where
    it holds no tensor at its top: the dict of tensors under it that holds the model's keys (those of a metric or
    an optimizer do not), or the one dict of tensors there is (its mismatch then said as any checkpoint's)."""
    if not isinstance(state, dict) or any(isinstance(value, torch.Tensor) for value in state.values()):
        return state
    held = [key for key, value in state.items() if _tensors(value)]
    fits = [key for key in held if set(own) <= set(_under_prefix(_cleaned(state[key]), own, path))]
    if len(fits) > 1:
        raise AutocompError(f"checkpoint {path} holds the model's weights under {len(fits)} keys "
                            f"({', '.join(map(repr, fits))}: a model and its EMA copy?); name the one to compress in "
                            "model.checkpoint_key")
    return state[fits[0]] if fits else state[held[0]] if len(held) == 1 else state


def _under_prefix(state: dict[str, Any], own: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``state``, or the model's weights held in it under a prefix (a Lightning module's ``model.``, a wrapper's
    ``backbone.``, up to two levels deep) where its own keys do not fit but those under one prefix do, exactly."""
    if set(own) <= set(state):  # the model's keys at the top: those beside them are refused as unexpected
        return state
    found = {}
    for depth in (1, 2):
        for prefix in sorted({".".join(key.split(".")[:depth]) + "." for key in state if key.count(".") >= depth}):
            inner = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
            if set(inner) == set(own):
                found[prefix] = inner
    if len(found) > 1:
        raise AutocompError(f"checkpoint {path} holds the model's weights under {len(found)} prefixes "
                            f"({', '.join(repr(p) for p in found)}: a model and its EMA copy?); save the one to "
                            "compress as a plain state dict")
    return next(iter(found.values()), state)


def model_digest(model: nn.Module) -> str:
    """A hash of a ViT: its weights (names, dtypes, shapes, bytes) and each block's heads (which a state dict does
    not show). A run records its base model's, so that a resume or an export notices a changed checkpoint."""
    digest = hashlib.sha256(json.dumps([block.attn.num_heads for block in vit_blocks(model)]).encode())
    hash_weights(model, digest)
    return digest.hexdigest()[:16]


def model_structure(model: nn.Module) -> dict[str, Any]:
    """What a compressed model's saved weights need of the base model they are loaded onto that their shapes do not
    show: each block's heads (2 heads or 4 over the same qkv shapes compute other outputs), the pooling, the class
    and register tokens, the LayerNorm's eps and the MLP's activation. A run searched on a module given in Python
    records it (best/model.yaml, run.json), so that loading onto another module is refused, not silently wrong (other
    shapes: ``load_state_dict`` says which)."""
    blocks = vit_blocks(model)
    return {"kind": type(model).__name__,  # VisionTransformer with a register token, or DeiT's distilled one
            "heads": [block.attn.num_heads for block in blocks], "pool": str(getattr(model, "global_pool", None)),
            "prefix_tokens": getattr(model, "num_prefix_tokens", None),
            "norm_eps": getattr(blocks[0].norm1, "eps", None), "act": repr(getattr(blocks[0].mlp, "act", None))}


def require_structure(recorded: Any, model: nn.Module, where: str | Path) -> None:
    """Refuse ``model`` as the base of ``where`` (a run folder, or a model saved from one, searched on a module given
    in Python) where it differs from the structure recorded there (:func:`model_structure`); a record from before
    there was one is not checked."""
    if isinstance(recorded, Mapping) and (difference := structure_difference(recorded, model)) is not None:
        raise AutocompError(f"the base given is not the module {where} was searched on: {difference}; pass the module "
                            "the search was given (its weights may differ: the saved ones replace them)")


def structure_difference(recorded: Mapping[str, Any], model: nn.Module) -> str | None:
    """How ``model`` differs from the structure ``recorded`` (:func:`model_structure`), in words, or None."""
    own = model_structure(model)
    if recorded.get("heads") is not None and own["heads"] != recorded["heads"]:
        return f"its blocks have {own['heads']} heads, the searched module's {recorded['heads']}"
    for key, what in (("kind", "class differs"), ("pool", "pooling differs"),
                      ("prefix_tokens", "class and register tokens differ"),
                      ("norm_eps", "LayerNorm eps differs"), ("act", "MLP activation differs")):
        if key in recorded and own[key] != recorded[key]:
            return f"its {what} from the searched module's ({own[key]} against {recorded[key]})"
    return None


def vit_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a timm ViT-family model, checked to have the standard layout."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
        built = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")  # timm's name, if it made it
        named = type(model).__name__ + (f" (timm builds {built} as one)" if built and built != type(model).__name__
                                        else "")
        raise AutocompError(f"{named} is not supported: its blocks are an nn.ModuleList of "
                            f"{type(blocks[0]).__name__} (as in timm's Eva, RoPE and relative-position ViTs, whose "
                            "blocks take position inputs of their own); autocomp compresses timm's VisionTransformer "
                            "family (vit_*, deit_*, flexivit_*, ...), whose blocks are an nn.Sequential")
    if is_foreign_vit(model):  # the search, compress, load and export take it as it is: they rebuild it so
        raise AutocompError(f"{type(model).__module__}.{type(model).__qualname__} is {library_model(model)}: rebuild "
                            "it as timm's with autocomp.models.timm_equivalent(model) (the same weights and outputs) "
                            "to use it here")
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        inner = next((name for name, module in model.named_modules()
                      if name and (_is_vit(module) or is_foreign_vit(module))), None)
        hint = "" if inner is None else (
            f"; it holds one at .{inner} ({type(model.get_submodule(inner)).__name__}): search that module, with "
            "the data section giving the preprocessing the wrapper did, if any (its outputs are the logits scored)")
        kind = type(model)
        named = kind.__name__ if kind.__module__.startswith("timm.") else f"{kind.__module__}.{kind.__qualname__}"
        raise AutocompError(f"{named} has no 'blocks' sequence; autocomp needs a timm ViT-family model "
                            f"(timm's VisionTransformer, DeiT, ...){hint}")
    for index, block in enumerate(blocks):
        for path in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            if _get(block, path) is None:
                part = path.split(".")[0]  # attn or mlp: what the block has in its place, named
                held = getattr(block, part, None)
                found = f" (its {part} is a {type(held).__module__}.{type(held).__qualname__})" \
                    if isinstance(held, nn.Module) else ""
                raise AutocompError(f"block {index} has no {path}{found}; autocomp supports blocks with a fused qkv "
                                    "Linear, attn.proj, mlp.fc1 and mlp.fc2 (timm's standard ViT block): build the "
                                    "model's blocks with timm.models.vision_transformer.Block, or their attention "
                                    "with timm.layers.Attention and their MLP with timm.layers.Mlp")
        attn = block.attn
        if not isinstance(attn, Attention) or getattr(attn, "num_kv_groups", 1) != 1:
            raise AutocompError(
                f"block {index}: its attention is a {type(attn).__module__}.{type(attn).__name__}, not timm's "
                "multi-head Attention (timm.layers.Attention, one fused qkv Linear for every head), whose heads "
                "autocomp prunes and whose keys it reads to merge tokens; attention that mixes heads (CaiT), is "
                "windowed or relative-position (SAM) or differential is not supported; build the model's blocks "
                "with timm.layers.Attention")
    return list(blocks)


def require_float32(model: nn.Module) -> None:
    """Refuse a model whose floating weights are not float32 (half, bf16): autocomp's 16-bit, int8 and lower-bit
    settings start from float32 weights, and its images are float32 (a half model's first layer refused them with a
    dtype error from deep inside torch)."""
    kinds = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()}
                   - {"float32"})
    if kinds:
        raise AutocompError(f"the model's weights are {', '.join(kinds)}; autocomp compresses and measures float32 "
                            "models (its 16-bit, int8 and lower-bit settings start from them): give it the float32 "
                            "model (model.float())")


def model_images(model: nn.Module, images: torch.Tensor, where: str, *,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``images`` (a float ``(N, C, H, W)`` tensor) as ``model`` takes them: in ``dtype`` (float64 or half
    converted), checked against the channels and size its patch embedding takes (a ViT built for one size only; one
    with a dynamic size, or a hybrid's CNN stem, takes others).

    Raises:
        AutocompError: no images, values that are NaN or infinite, other channels (a channels-last or gray batch
            said as such) or another size, with ``where`` (what holds them: "compress's calibration images") and
            the fix; before timm's assertion, deep inside.
    """
    if len(images) == 0:  # importance scores from no images, activation ranges of nothing
        raise AutocompError(f"{where} hold no images (a batch of 0, {tuple(images.shape)}); give at least one")
    if not torch.isfinite(images.sum(dtype=torch.float64)):  # NaN scores chose the heads to prune, NaN ranges failed
        # (a NaN or an inf makes the sum so, with no copy of a large split made to find out)
        raise AutocompError(f"{where} hold {(~torch.isfinite(images)).sum().item():,} values that are NaN or "
                            "infinite; give images preprocessed as the model takes them (a std of 0 in the "
                            "normalization makes them)")
    embed = getattr(model, "patch_embed", None)
    if embed is not None and not hasattr(embed, "backbone"):  # a hybrid's CNN stem takes what it takes
        channels = getattr(getattr(embed, "proj", None), "in_channels", None)
        fixed = getattr(embed, "strict_img_size", False) and not getattr(embed, "dynamic_img_size", False)
        size = tuple(embed.img_size) if fixed and getattr(embed, "img_size", None) is not None else None
        got, shape = tuple(images.shape[1:]), tuple(images.shape)
        at = f" at {size[0]}x{size[1]} px" if size else ""
        if channels is not None and got[0] != channels:
            if got[-1] == channels and (size is None or got[:2] == size):
                raise AutocompError(f"{where} look channels-last, (N, H, W, C) {shape}, but the model takes (N, C, H, "
                                    f"W) images of {channels} channels{at}: images.permute(0, 3, 1, 2) makes them so")
            gray = got[0] == 1 and channels == 3
            raise AutocompError(f"{where} have {got[0]} channel{'s' if got[0] != 1 else ''} {shape}, but the model "
                                f"takes {channels}{at}: " + ("gray images as RGB: images.expand(-1, 3, -1, -1)"
                                                             if gray else "give (N, C, H, W) images"))
        if size is not None and got[1:] != size:
            raise AutocompError(f"{where} are {got[1]}x{got[2]} px images, but the model takes {size[0]}x{size[1]}: "
                                "make them as the model's own preprocessing does, at the size it was built for")
    return images if images.dtype == dtype else images.to(dtype)


def _is_vit(module: nn.Module) -> bool:
    """Whether ``module`` is a ViT autocomp compresses (a ConvNeXt's or Swin's stages have blocks too)."""
    try:
        return hasattr(module, "patch_embed") and bool(vit_blocks(module))
    except AutocompError:
        return False


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module
