from __future__ import annotations

import functools

import pytest
import timm
import torch
from torch import nn

from autocomp import AutocompError
from autocomp.models import ModelSpec, create_model, load_checkpoint, vit_blocks

KW = {"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 32, "depth": 2, "num_heads": 4}


def test_unknown_model_lists_near_matches():
    with pytest.raises(AutocompError) as info:
        create_model(ModelSpec(name="deit_tiny_patch16_22"))
    assert "unknown timm model 'deit_tiny_patch16_22'" in str(info.value)
    assert "deit_tiny_patch16_224" in str(info.value)



def test_a_misspelt_pretrained_tag_is_named_with_the_tags_timm_has():
    with pytest.raises(AutocompError) as info:
        create_model(ModelSpec(name="vit_small_patch16_224.augreg_in21k_ft_in1", kwargs={"depth": 1}))
    assert str(info.value) == ("timm has no pretrained tag 'augreg_in21k_ft_in1' for vit_small_patch16_224; did you "
                               "mean vit_small_patch16_224.augreg_in21k_ft_in1k, vit_small_patch16_224.augreg_in21k, "
                               "vit_small_patch16_224.augreg_in1k?")
    with pytest.raises(AutocompError, match=r"no pretrained tag 'x' for vit_small_patch16_224; its tags: augreg_in1k"):
        create_model(ModelSpec(name="vit_small_patch16_224.x", kwargs={"depth": 1}))
    # every tag timm knows builds, those it hosts no weights for too
    assert create_model(ModelSpec(name="vit_base_patch16_gap_224.untrained", kwargs={"depth": 1})) is not None

def test_pth_checkpoint_loads_with_weights_only(tmp_path):
    model = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    again = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "w.pth")))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), again(x))


def test_a_training_checkpoint_with_the_weights_under_a_key_of_its_own_loads(tmp_path):
    """``{'net': state_dict, 'optimizer': ..., 'epoch': 3}`` (a user's own training loop): the weights under 'net'
    load (it was refused with advice to check the model's name); two such dicts are refused by name."""
    model = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    torch.save({"net": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, tmp_path / "w.pth")
    again = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "w.pth")))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), again(x))
    beside = {"best": {"acc": torch.tensor(0.9)}, "model": "deit_tiny", "epoch": 3}  # a metric, the model's name
    torch.save({"net": model.state_dict(), **beside}, tmp_path / "named.pth")
    again = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "named.pth")))
    assert torch.equal(model(x), again(x))
    torch.save({"net": model.state_dict(), "ema_net": model.state_dict(), "epoch": 3}, tmp_path / "two.pth")
    with pytest.raises(AutocompError, match=r"holds the model's weights under 2 keys \('net', 'ema_net'.*"
                                            r"name the one to compress in model.checkpoint_key"):
        create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "two.pth")))
    named = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "two.pth"),
                                   checkpoint_key="ema_net"))
    assert torch.equal(model(x), named(x))


def test_a_checkpoint_of_timms_train_script_loads_its_ema_copy_as_timm_does_and_says_so(tmp_path):
    """timm's train.py saves ``{'epoch', 'arch', 'state_dict', 'optimizer', 'version', 'args': argparse.Namespace,
    'state_dict_ema'}``: it was refused as a pickled model (the Namespace), and had it loaded, the weights would
    have been taken without a word about the EMA copy beside them."""
    import argparse
    import warnings

    from autocomp import AutocompWarning

    model, ema = (create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW)) for _ in range(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    args = argparse.Namespace(model="deit_tiny_patch16_224", mean=[0.5], std=[0.5], crop_pct=1.0, lr=0.1)
    torch.save({"epoch": 3, "arch": "deit_tiny_patch16_224", "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(), "version": 2, "args": args, "state_dict_ema": ema.state_dict(),
                "metric": 47.0}, tmp_path / "model_best.pth.tar")
    x = torch.randn(2, 1, 8, 8)
    path = str(tmp_path / "model_best.pth.tar")
    with pytest.warns(AutocompWarning) as said:
        taken = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=path))
    assert torch.equal(taken(x), ema(x)) and not torch.equal(taken(x), model(x))
    assert [str(w.message) for w in said] == [
        f"checkpoint {path} holds the model's weights under 'state_dict' and their EMA copy under 'state_dict_ema': "
        "autocomp takes the EMA copy, as timm's load_checkpoint does; set model.checkpoint_key: state_dict for the "
        "others"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # named: nothing to say
        taken = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=path,
                                       checkpoint_key="state_dict"))
    assert torch.equal(taken(x), model(x))
    with pytest.raises(AutocompError) as refused:
        create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=path, checkpoint_key="ema"))
    assert str(refused.value) == (f"model.checkpoint_key 'ema': checkpoint {path} holds no weights under it; its keys "
                                  "holding dicts: 'state_dict', 'optimizer', 'state_dict_ema'")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_a_checkpoint_saved_from_a_ddp_or_compiled_model_loads(tmp_path, prefix):
    from safetensors.torch import save_file

    model = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW))
    state = {prefix + key: value for key, value in model.state_dict().items()}
    torch.save({"model": state}, tmp_path / "w.pth")
    save_file(state, tmp_path / "w.safetensors")
    x = torch.randn(2, 1, 8, 8)
    for name in ("w.pth", "w.safetensors"):
        again = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / name)))
        assert torch.equal(model(x), again(x))


@pytest.mark.parametrize("extra", [{}, {"criterion.weight": torch.ones(3)}, {"model.head_extra": torch.ones(1)}])
def test_a_lightning_checkpoint_of_the_model_under_a_prefix_loads(tmp_path, extra):
    """A LightningModule holding the ViT as ``self.model``: its weights under ``model.``, beside the module's own
    (a loss's weight); a key under the prefix that the model lacks is still refused, as any extra key is."""
    model = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW))
    torch.save({"state_dict": {**{"model." + k: v for k, v in model.state_dict().items()}, **extra},
                "epoch": 3}, tmp_path / "w.ckpt")
    spec = ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "w.ckpt"))
    if "model.head_extra" in extra:
        with pytest.raises(AutocompError, match="unexpected key"):
            create_model(spec)
        return
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), create_model(spec)(x))


def test_a_checkpoint_with_the_model_at_the_top_and_a_prefixed_copy_is_not_read_from_the_copy(tmp_path):
    """An EMA kept as a submodule (``ema.``) beside the model's own keys: the copy's keys are unexpected, as before,
    not the weights loaded."""
    model = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW))
    state = model.state_dict()
    torch.save({**state, **{"ema." + k: v + 1 for k, v in state.items()}}, tmp_path / "w.pth")
    with pytest.raises(AutocompError, match=r"unexpected key\(s\), e.g. ema\."):
        create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "w.pth")))


def test_a_checkpoint_with_the_model_under_two_prefixes_is_refused_naming_them(tmp_path):
    model = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW))
    state = {prefix + k: v for prefix in ("model.", "model_ema.") for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(AutocompError, match=r"under 2 prefixes \('model.', 'model_ema.': a model and its EMA copy"):
        create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "w.pth")))


def test_a_whole_pickled_model_is_refused_with_the_fix(tmp_path):
    model = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW))
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(AutocompError, match=r"holds pickled Python objects \(timm.models.vision_transformer."
                                            r"VisionTransformer\) .* save model.state_dict\(\) alone instead"):
        create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "whole.pth")))


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_a_damaged_checkpoint_is_refused_in_one_line_with_the_file_named(tmp_path, name, damage):
    from safetensors.torch import save_file

    model = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW))
    path = tmp_path / name
    save_file(model.state_dict(), path) if name.endswith(".safetensors") else torch.save(model.state_dict(), path)
    whole = path.read_bytes()  # as after an interrupted copy, or another file under the checkpoint's name
    path.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else b"not a checkpoint at all\n")
    with pytest.raises(AutocompError) as info:
        create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(path)))
    assert str(info.value).startswith(f"cannot read checkpoint {path}: ")
    assert "\n" not in str(info.value)


def test_checkpoint_that_does_not_fit_names_the_difference(tmp_path, tiny_teacher):
    spec, _ = tiny_teacher
    wider = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs={**KW, "embed_dim": 48}))
    fits = r"does not fit the model: \d+ shape mismatch.*checkpoint \(32,\) vs model \(48,\)"
    with pytest.raises(AutocompError, match=fits):
        load_checkpoint(wider, spec.checkpoint)


@pytest.mark.parametrize("kwargs", [{"pretrained": True}, {"checkpoint_path": "/nowhere/w.pth"},
                                    {"pretrained_cfg_overlay": {"file": "/nowhere/w.safetensors"}}])
def test_weights_asked_for_through_timms_kwargs_are_refused_with_model_checkpoint_named(kwargs):
    # pretrained=True clashed with autocomp's own pretrained=False (a TypeError), a checkpoint_path escaped as a bare
    # FileNotFoundError, and a pretrained_cfg_overlay file was silently ignored (random weights)
    with pytest.raises(AutocompError, match=f"model.kwargs.{next(iter(kwargs))}: .* reads weights only from "
                                            "model.checkpoint"):
        create_model(ModelSpec(name="vit_tiny_patch16_224", kwargs={"img_size": 32, "depth": 1, **kwargs}))


def test_a_pretrained_cfg_overlay_that_sets_the_preprocessing_is_kept():
    overlay = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    model = create_model(ModelSpec(name="vit_tiny_patch16_224", kwargs={"img_size": 32, "depth": 1,
                                                                        "pretrained_cfg_overlay": overlay}))
    assert (model.pretrained_cfg["mean"], model.pretrained_cfg["std"]) == (overlay["mean"], overlay["std"])


@pytest.mark.parametrize("name", ["vit_base_patch16_siglip_224", "vit_small_patch14_reg4_dinov2", "flexivit_small",
                                  "deit_tiny_distilled_patch16_224", "vit_small_r26_s32_224",
                                  "vit_base_patch16_clip_224", "naflexvit_base_patch16_gap"])
def test_the_vit_families_the_readme_names_compress_with_every_operator_and_run_in_onnx_runtime(name, tmp_path):
    # attention-pool head, register tokens with LayerScale, flexible patches, a distillation token, a ResNet stem,
    # a pre-norm CLIP tower, NaFlex's embedding: benchmarks/model_coverage.py over every timm name, in small
    from autocomp import Recipe, compress
    from autocomp.runtimes import export_onnx
    from autocomp.runtimes.ort import ort_session

    torch.manual_seed(0)
    model = create_model(ModelSpec(name=name, kwargs={"img_size": 64, "depth": 2, "embed_dim": 64, "num_heads": 4,
                                                      "num_classes": 5}))
    method = "prune" if getattr(model, "cls_token", None) is not None else "merge"
    recipe = Recipe.from_dict({"blocks": [
        {"prune_heads": {"keep": 2}, "prune_mlp": {"keep": 0.5}, "low_rank": {"rank": 0.5},
         "reduce_tokens": {"keep": 0.7}, "quantize": {"weight_bits": 8, "act_bits": 8}},
        {"reduce_tokens": {"keep": 0.7, "method": method}, "quantize": {"weight_bits": 4}}]})
    images = torch.randn(8, 3, 64, 64)
    smaller = compress(model, recipe, calibration=images)
    assert [b.attn.num_heads for b in smaller.blocks] == [2, 4] and smaller.blocks[0].mlp.fc1.out_features == 128
    with torch.no_grad():
        logits = smaller(images[:2])
    session = ort_session(export_onnx(smaller, images[:2], tmp_path / "model.onnx").path)
    ort = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images[:2].numpy()})[0])
    assert logits.shape == (2, 5) and torch.allclose(ort, logits, atol=1e-2)


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])  # a ConvNeXt's stages have blocks: no ViT inside
def test_non_vit_model_is_refused(name):
    with pytest.raises(AutocompError, match="has no 'blocks' sequence; autocomp needs a timm ViT-family model "
                                            r"\(timm's VisionTransformer, DeiT, ...\)$"):
        create_model(ModelSpec(name=name, kwargs={"num_classes": 3}))


def test_vits_of_other_libraries_are_refused_naming_what_they_are_and_what_to_build():
    """A block whose attention is nn.MultiheadAttention got no fix (torchvision's VisionTransformer itself is
    rebuilt as timm's: test_foreign.py)."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)
            self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    class Own(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Block())

    with pytest.raises(AutocompError, match=r"^block 0 has no attn.qkv \(its attn is a torch.nn.modules.activation."
                                            r"MultiheadAttention\); .*: build the model's blocks with timm.models."
                                            r"vision_transformer.Block, or their attention with timm.layers.Attention"):
        vit_blocks(Own())
    own = Own()
    own.blocks[0].attn = timm.layers.Attention(8, num_heads=2)  # timm's: what lacks fc1 is the MLP, named
    with pytest.raises(AutocompError, match=r"^block 0 has no mlp.fc1 \(its mlp is a torch.nn.modules.container."
                                            r"Sequential\); "):
        vit_blocks(own)


def test_a_wrapper_around_a_vit_is_refused_naming_the_vit_inside():
    """A training wrapper (a LightningModule, say) holding the ViT: the refusal says where the ViT is."""
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.ModuleDict({"backbone": timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                                                    img_size=16, patch_size=8, depth=1)})

    with pytest.raises(AutocompError, match=r"Wrapper has no 'blocks' sequence; .* it holds one at "
                                            r"\.net\.backbone \(VisionTransformer\): search that module"):
        vit_blocks(Wrapper())


@pytest.mark.parametrize("name, kind", [("cait_xxs24_224", "TalkingHeadAttn"), ("samvit_base_patch16", "sam"),
                                        ("vit_dwee_patch16_reg1_gap_256", "DiffAttention")])
def test_vits_whose_attention_is_not_timms_multi_head_attention_are_refused_by_name(name, kind):
    # their blocks have a fused qkv, proj, fc1 and fc2, but heads are mixed, windowed or differential: pruning a head
    # or merging tokens would break them (they failed inside the operators before this check)
    kwargs = {"embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 3}
    with pytest.raises(AutocompError, match=f"block 0: its attention is a .*{kind}.*, not timm's multi-head"):
        create_model(ModelSpec(name=name, kwargs=kwargs))


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "vit_relpos_small_patch16_224",
                                  "vit_betwixt_patch16_rope_reg4_gap_256"])
def test_vits_with_blocks_of_their_own_are_refused_by_name(name):
    """A vit_* name timm builds as another class (Eva: RoPE) is named beside it."""
    kind = {"eva02_tiny_patch14_224": "Eva", "vit_relpos_small_patch16_224": "VisionTransformerRelPos",
            "vit_betwixt_patch16_rope_reg4_gap_256": "Eva"}[name]
    with pytest.raises(AutocompError, match=rf"^{kind} \(timm builds {name} as one\) is not supported: its blocks .* "
                                            "compresses timm's VisionTransformer"):
        create_model(ModelSpec(name=name, kwargs={"img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2,
                                                  "num_classes": 3}))


def test_saved_weights_are_readable_as_the_users_other_files(tmp_path):
    """safetensors creates files for their owner alone (0600): a model folder copied to a server that runs as
    another user could not be loaded there."""
    import os

    from autocomp._io import write_safetensors

    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):  # as the user's umask makes their other files
        mask = os.umask(umask)
        try:
            write_safetensors(tmp_path / "w.safetensors", {"a": torch.zeros(2)})
        finally:
            os.umask(mask)
        assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == mode
    assert not (tmp_path / "w.safetensors.tmp").exists()



def test_a_saved_model_loaded_onto_another_base_is_refused_in_one_line(tmp_path):
    """A run of a model given as an nn.Module loads onto the module passed as base: another module (other classes)
    is refused naming the folder and the fix, not with load_state_dict's traceback."""
    from autocomp import AutocompError, Recipe, compress
    from autocomp.saving import load_model, save_model
    from conftest import small_vit

    base = small_vit()
    recipe = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 3, "importance": "weight_norm"}}] * 2})
    save_model(tmp_path / "best", compress(base, recipe), recipe, base)
    assert load_model(tmp_path / "best", base=base) is not None
    with pytest.raises(AutocompError, match=r"^the weights in \S+best do not fit the model its model.yaml and "
                                            r"recipe.yaml build from the base given \(size mismatch for head.weight: "
                                            r".* and 1 more\); pass as base the module the search was given \(the "
                                            r"run folder keeps its weights in base.safetensors\)$"):
        load_model(tmp_path / "best", base=small_vit(num_classes=7))
    # the same shapes with other heads (or pooling) loaded without a word and computed other outputs
    with pytest.raises(AutocompError, match=r"^the base given is not the module \S+best was searched on: its blocks "
                                            r"have \[3, 3\] heads, the searched module's \[6, 6\]; pass the module "
                                            r"the search was given \(its weights may differ"):
        load_model(tmp_path / "best", base=small_vit(num_heads=3))
    with pytest.raises(AutocompError, match=r"its pooling differs from the searched module's \(avg against token\)"):
        load_model(tmp_path / "best", base=small_vit(global_pool="avg"))
    with pytest.raises(AutocompError, match=r"its LayerNorm eps differs from the searched module's \(1e-12 against "
                                            r"1e-06\)"):  # a transformers ViT's (1e-12) onto timm's of its shapes
        load_model(tmp_path / "best", base=small_vit(norm_layer=functools.partial(nn.LayerNorm, eps=1e-12)))
    assert load_model(tmp_path / "best", base=small_vit()) is not None  # other weights, the same module: taken


def test_a_save_stopped_half_way_leaves_the_folders_earlier_model_whole(tmp_path, monkeypatch):
    from autocomp import Recipe, compress, saving
    from conftest import small_vit

    base = small_vit()
    first = Recipe.from_dict({"blocks": [{"prune_heads": {"keep": 3, "importance": "weight_norm"}}] * 2})
    saving.save_model(tmp_path / "best", compress(base, first), first, base, metrics={"trial": 1})
    second = Recipe.from_dict({"blocks": [{"prune_mlp": {"keep": 0.5, "importance": "weight_norm"}}] * 2})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C once the new weights and recipe are written, before the metrics

    monkeypatch.setattr(saving, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        saving.save_model(tmp_path / "best", compress(base, second), second, base, metrics={"trial": 2})
    assert Recipe.load(tmp_path / "best" / "recipe.yaml") == first
    assert [b.attn.num_heads for b in saving.load_model(tmp_path / "best", base=base).blocks] == [3, 3]
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["metrics.json", "model.yaml", "recipe.yaml",
                                                                     "weights.safetensors"]


def test_a_checkpoints_weights_are_the_dict_of_tensors_under_its_keys_and_what_else_it_pickles_is_named(tmp_path,
                                                                                                  monkeypatch):
    """A trainer's key holding a config ({'state_dict': {'lr': 0.1}, 'model': weights}) is not taken for the
    weights; an object saved beside them (a pathlib path in a script's arguments) is named where it is refused (it
    was "a whole model saved with torch.save(model)?"); a torch without ``safe_globals`` (2.2 to 2.4) loads a plain
    state dict (every .pth failed there)."""
    import argparse
    import pathlib

    model = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW))
    x = torch.randn(2, 1, 8, 8)
    for held in ({"state_dict": {"lr": 0.1}, "model": model.state_dict()},
                 {"model": {"arch": "vit"}, "weights": model.state_dict()}):
        torch.save(held, tmp_path / "w.pth")
        again = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "w.pth")))
        assert torch.equal(model(x), again(x))
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(output=pathlib.Path("/runs"))},
               tmp_path / "path.pth")
    with pytest.raises(AutocompError, match=r"holds pickled Python objects \(pathlib\.\w*Path\) \(a whole model "
                                            r"saved with torch.save\(model\), or objects saved beside the weights\)"):
        create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "path.pth")))
    monkeypatch.delattr(torch.serialization, "safe_globals")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    again = create_model(ModelSpec(name="deit_tiny_patch16_224", kwargs=KW, checkpoint=str(tmp_path / "plain.pth")))
    assert torch.equal(model(x), again(x))
