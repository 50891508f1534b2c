"""torchvision's VisionTransformer and transformers' ViTForImageClassification and DeiTs, rebuilt as timm's with their
weights:
the same outputs, compressed, loaded from a factory's checkpoint, their images made as their libraries make them
by default (a search of the torchvision one: test_search_e2e.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torchvision.models import vision_transformer as tv

import autocomp
from autocomp.data import DataConfig, TensorSplit, load_splits
from autocomp.data._config import REBUILT_FROM, preprocessing_source, resolve_preprocessing
from autocomp.errors import AutocompError, AutocompWarning
from autocomp.models import ModelSpec, create_model, timm_equivalent, vit_blocks
from autocomp.ops import PruneHeads, PruneMlp


def torchvision_vit(**kwargs) -> tv.VisionTransformer:
    """A torchvision ViT with every weight drawn (its head is zeros when built: outputs would agree trivially)."""
    torch.manual_seed(0)
    model = tv.VisionTransformer(**{"image_size": 32, "patch_size": 8, "num_layers": 3, "num_heads": 4,
                                    "hidden_dim": 64, "mlp_dim": 100, "num_classes": 7, **kwargs})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model.eval()


def test_a_torchvision_vit_is_rebuilt_as_timms_with_the_same_outputs_and_left_as_it_was():
    """Every weight in its place (a width that is no multiple of the embedding, dropout rates, the train/eval mode),
    a new module: the caller's is not changed."""
    source = torchvision_vit(dropout=0.1, attention_dropout=0.05)
    before = {key: value.clone() for key, value in source.state_dict().items()}
    rebuilt = timm_equivalent(source)
    assert type(rebuilt) is VisionTransformer
    assert getattr(rebuilt, REBUILT_FROM)["model"] == "torchvision's VisionTransformer"
    assert rebuilt.blocks[0].mlp.fc1.out_features == 100 and rebuilt.blocks[0].attn.num_heads == 4
    assert rebuilt.blocks[0].attn.attn_drop.p == 0.05 and rebuilt.blocks[0].mlp.drop1.p == 0.1
    assert not rebuilt.training and timm_equivalent(source.train()).training
    source.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = source(images)
        assert (expected[0] - expected[1]).abs().max() > 0.05  # weights that make a difference
        assert (rebuilt(images) - expected).abs().max() < 1e-5
    assert all(torch.equal(before[key], value) for key, value in source.state_dict().items())
    assert timm_equivalent(rebuilt) is rebuilt  # timm's: taken as it is


@pytest.mark.parametrize("where", ["heads.head", "heads"])
def test_a_torchvision_vit_whose_head_fine_tuning_replaced_is_rebuilt_with_it(where):
    """torchvision's fine-tuning recipe replaces the head (heads.head = Linear(dim, classes)), and num_classes keeps
    the old count: the rebuild was refused as 'blocks of different sizes'."""
    source = torchvision_vit()
    head = nn.Linear(64, 3)
    if where == "heads":
        source.heads = head
    else:
        source.heads.head = head
    rebuilt = timm_equivalent(source)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rebuilt.num_classes == 3 and (rebuilt(images) - source(images)).abs().max() < 1e-5


def test_a_torchvision_vit_at_the_swag_weights_sizes_is_read_as_those_weights_read_images():
    source = tv.VisionTransformer(image_size=384, patch_size=64, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    with pytest.warns(AutocompWarning, match=r"whose images are made as torchvision's IMAGENET1K_SWAG_E2E_V1 weights "
                                             r"had theirs made: .*crop_pct 1.0 .*interpolation bicubic"):
        made = resolve_preprocessing(timm_equivalent(source), DataConfig(dataset="imagefolder", root="images"))
    assert (made.image_size, made.interpolation, made.crop_pct) == (384, "bicubic", 1.0)


def test_compress_takes_a_torchvision_vit_and_returns_timms_compressed():
    source = torchvision_vit()
    images = torch.randn(2, 3, 32, 32)
    same = autocomp.compress(source, autocomp.Recipe.identity(3))
    with torch.no_grad():
        assert (same(images) - source(images)).abs().max() < 1e-5
    recipe = autocomp.Recipe(blocks=({"prune_heads": PruneHeads(keep=2)}, {"prune_mlp": PruneMlp(keep=0.5)}, {}))
    smaller = autocomp.compress(source, recipe, calibration=torch.randn(8, 3, 32, 32))
    assert smaller.blocks[0].attn.qkv.out_features == 3 * 2 * 16 and smaller.blocks[1].mlp.fc1.out_features == 50
    assert type(source) is tv.VisionTransformer and source.encoder.layers[0].self_attention.num_heads == 4


def test_torchvision_vits_the_rebuild_cannot_express_are_refused_saying_why():
    stem = tv.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                                conv_stem_configs=[tv.ConvStemConfig(out_channels=8, kernel_size=3, stride=2)])
    with pytest.raises(AutocompError, match=r"has a convolutional stem \(conv_stem_configs\)"):
        timm_equivalent(stem)
    with pytest.raises(AutocompError, match=r"has a pre-logits layer \(heads.pre_logits: representation_size\)"):
        timm_equivalent(torchvision_vit(representation_size=12))
    dropped = torchvision_vit()
    dropped.heads.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(64, 3))
    with pytest.raises(AutocompError, match=r"'s heads.head is a Sequential of Dropout, Linear; autocomp rebuilds "
                                            r"torchvision ViTs whose heads are one Linear with a bias"):
        timm_equivalent(dropped)

    class Pooled(tv.VisionTransformer):
        def forward(self, x):  # average of the tokens: not what timm's rebuild would compute
            return self.heads(self.encoder(self._process_input(x)).mean(1))

    with pytest.raises(AutocompError, match="Pooled subclasses torchvision's VisionTransformer with a forward of its "
                                            "own"):
        timm_equivalent(Pooled(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32))
    with pytest.raises(AutocompError, match=r"is torchvision's VisionTransformer: rebuild it as timm's with "
                                            r"autocomp.models.timm_equivalent\(model\)"):
        vit_blocks(torchvision_vit())  # the parts of autocomp that take a model as it is say how


def test_a_factory_making_a_torchvision_vit_loads_its_torchvision_checkpoint_then_is_rebuilt(tmp_path):
    """The checkpoint holds torchvision's keys (encoder.layers...): it is loaded into the factory's model, which is
    then rebuilt; the job's model stays the factory, so best/ loads on its own."""
    (tmp_path / "tvfactory.py").write_text(
        "from torchvision.models import VisionTransformer\n\n"
        "def build(classes):\n"
        "    return VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=64, "
        "mlp_dim=100, num_classes=classes)\n")
    source = torchvision_vit()
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = create_model(ModelSpec(factory="tvfactory:build", kwargs={"classes": 7}, path=str(tmp_path),
                                   checkpoint=str(tmp_path / "weights.pth")))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert type(model) is VisionTransformer and (model(images) - source(images)).abs().max() < 1e-5


def test_a_rebuilt_models_images_are_made_as_torchvisions_weights_had_theirs_made_and_said_so():
    rebuilt = timm_equivalent(torchvision_vit())
    with pytest.warns(AutocompWarning, match=r"the model is torchvision's VisionTransformer, whose images are made as "
                                             r"torchvision's IMAGENET1K_V1 weights had theirs made: mean .*, crop_pct "
                                             r"0.875 .*interpolation bilinear; set data.mean, data.std, "
                                             r"data.crop_pct, data.interpolation to what it was trained with"):
        made = resolve_preprocessing(rebuilt, DataConfig(dataset="imagefolder", root="images"))
    assert (made.image_size, made.interpolation, made.crop_pct) == (32, "bilinear", 0.875)
    assert made.mean == pytest.approx((0.485, 0.456, 0.406)) and made.std == pytest.approx((0.229, 0.224, 0.225))
    own = DataConfig(dataset="imagefolder", root="images", mean=0.5, std=0.25, crop_pct=1.0, interpolation="bicubic")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutocompWarning)  # every setting given: nothing guessed, nothing said
        assert resolve_preprocessing(rebuilt, own).crop_pct == 1.0
    assert preprocessing_source(rebuilt, DataConfig(dataset="imagefolder", root="images")) == \
        "from torchvision's IMAGENET1K_V1 weights' preprocessing (the model is torchvision's VisionTransformer)"


def test_a_wrapper_holding_a_torchvision_vit_names_it():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torchvision_vit()

    with pytest.raises(AutocompError, match=r"it holds one at \.backbone \(VisionTransformer\): search that module"):
        vit_blocks(Wrapper())


def transformers_vit(**kwargs):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(**{"image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_size": 64,
                          "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 100, "num_labels": 7,
                          **kwargs})
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh"])
def test_a_transformers_vit_is_rebuilt_as_timms_giving_its_logits(act):
    """query, key and value (three Linears) are timm's fused qkv; the LayerNorm's eps (1e-12) and the activation are
    the model's; the output is the logits of its ImageClassifierOutput."""
    source = transformers_vit(hidden_act=act, hidden_dropout_prob=0.1, qkv_bias=act == "gelu")
    rebuilt = timm_equivalent(source)
    assert type(rebuilt) is VisionTransformer and rebuilt.norm.eps == 1e-12 and rebuilt.pos_drop.p == 0.1
    # dropouts where the model has them: none after the MLP's activation (timm's Mlp has one there)
    assert isinstance(rebuilt.blocks[0].mlp.drop1, nn.Identity) and rebuilt.blocks[0].mlp.drop2.p == 0.1
    assert (rebuilt.blocks[0].attn.qkv.bias is not None) == (act == "gelu")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = source(images).logits
        assert (expected[0] - expected[1]).abs().max() > 0.01
        assert (rebuilt(images) - expected).abs().max() < 1e-5
    with pytest.warns(AutocompWarning, match=r"the model is transformers' ViTForImageClassification, whose images are "
                                             r"made as transformers' ViTImageProcessor makes them by default .*: mean "
                                             r"\[0.5, 0.5, 0.5\], std \[0.5, 0.5, 0.5\], crop_pct 1.0 .*, "
                                             r"interpolation bilinear; set "):
        made = resolve_preprocessing(rebuilt, DataConfig(dataset="imagefolder", root="images"))
    assert (made.image_size, made.crop_mode, made.crop_pct) == (32, "squash", 1.0)
    student = autocomp.compress(source, autocomp.Recipe(blocks=({"prune_mlp": PruneMlp(keep=0.5)}, {}, {})),
                                calibration=torch.randn(8, 3, 32, 32))
    split = TensorSplit(x=torch.randn(16, 3, 32, 32), y=torch.randint(0, 7, (16,)))
    before = student.blocks[0].mlp.fc1.weight.clone()
    autocomp.distill.distill(student, source, split, autocomp.Distill(steps=2, alpha=1.0, batch_size=8))  # its logits
    assert not torch.equal(before, student.blocks[0].mlp.fc1.weight)


def transformers_deit(teacher: bool = False, **kwargs):
    from transformers import DeiTConfig, DeiTForImageClassification, DeiTForImageClassificationWithTeacher

    torch.manual_seed(0)
    config = DeiTConfig(**{"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 3,
                           "num_attention_heads": 4, "intermediate_size": 100, "num_labels": 5, **kwargs})
    model = (DeiTForImageClassificationWithTeacher if teacher else DeiTForImageClassification)(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("teacher", [False, True], ids=["DeiTForImageClassification", "WithTeacher"])
def test_a_transformers_deit_is_rebuilt_as_timms_with_its_distillation_token(teacher):
    """DeiT's distillation token sits after the class token, in the position embedding: timm's register token
    (the class token's head alone), or, with the teacher's head averaged in, timm's VisionTransformerDistilled's
    distillation token. Its images: DeiTImageProcessor's defaults, a bicubic squash to 256 then the centre 224."""
    from timm.models.deit import VisionTransformerDistilled

    source = transformers_deit(teacher)
    rebuilt = timm_equivalent(source)
    assert type(rebuilt) is (VisionTransformerDistilled if teacher else VisionTransformer)
    assert rebuilt.num_prefix_tokens == 2 and torch.equal(
        (rebuilt.dist_token if teacher else rebuilt.reg_token), source.deit.embeddings.distillation_token)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = source(images).logits
        assert (expected[0] - expected[1]).abs().max() > 0.01
        assert (rebuilt(images) - expected).abs().max() < 1e-5
    kind = type(source).__name__
    # as DeiT's weights were trained (facebook/deit-*'s files), not DeiTImageProcessor's class defaults (0.5)
    with pytest.warns(AutocompWarning, match=rf"the model is transformers' {kind}, whose images are made as "
                                             r"facebook/deit-\* weights had theirs made .*: mean \[0.485, 0.456, "
                                             r"0.406\], std \[0.229, 0.224, 0.225\], crop_pct 0.875 .*interpolation "
                                             r"bicubic; set "):
        made = resolve_preprocessing(rebuilt, DataConfig(dataset="imagefolder", root="images"))
    assert (made.crop_mode, made.crop_pct) == ("squash", 0.875)
    # compressed: a head pruned, tokens merged (the two tokens before the patches kept), an int8 block
    recipe = autocomp.Recipe(blocks=({"prune_heads": PruneHeads(keep=2), "reduce_tokens": {"keep": 0.5}},
                                     {"quantize": {"weight_bits": 8}}, {}))
    student = autocomp.compress(source, recipe, calibration=torch.randn(8, 3, 32, 32))
    assert type(student) is type(rebuilt) and student.blocks[0].attn.num_heads == 2
    with torch.no_grad():
        out = student(images)
    assert out.shape == (3, 5) and (out - expected).abs().max() > 1e-4  # compressed, not the same model
    split = TensorSplit(x=torch.randn(8, 3, 32, 32), y=torch.arange(8) % 5)
    with pytest.raises(AutocompError, match=rf"^distill's student is transformers' {kind}: the student is the "
                                            r"compressed model autocomp.compress returned"):
        autocomp.distill.distill(source, student, split, autocomp.Distill(steps=1, alpha=0.5, batch_size=4))


def test_transformers_models_the_rebuild_cannot_express_are_refused_saying_why():
    from transformers import ViTConfig, ViTModel

    with pytest.raises(AutocompError, match=r"ViTForImageClassification whose classifier is a Identity \(num_labels "
                                            r"0\): autocomp rebuilds those with a Linear classifier"):
        timm_equivalent(transformers_vit(num_labels=0))
    with pytest.raises(AutocompError, match=r"ViTForImageClassification is transformers' ViTForImageClassification: "
                                            r"rebuild it as timm's with autocomp.models.timm_equivalent"):
        vit_blocks(transformers_vit())
    with pytest.raises(AutocompError, match=r"with hidden_act 'relu': autocomp rebuilds those with gelu, "):
        timm_equivalent(transformers_vit(hidden_act="relu"))
    with pytest.raises(AutocompError, match=r"transformers' ViTModel is not rebuilt by autocomp: it rebuilds "
                                            r"ViTForImageClassification"):
        timm_equivalent(ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=32)))


def test_a_timm_model_given_another_librarys_checkpoint_is_told_to_build_that_librarys_model(tmp_path):
    from safetensors.torch import save_file

    torch.save(torchvision_vit().state_dict(), tmp_path / "tv.pth")
    save_file({k: v.contiguous() for k, v in transformers_vit().state_dict().items()}, tmp_path / "hf.safetensors")
    spec = {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "num_classes": 7}}
    for file, library in (("tv.pth", "torchvision's ViT"), ("hf.safetensors", "Hugging Face transformers' ViT")):
        with pytest.raises(AutocompError, match=f"does not fit the model: .*; it holds {library} weights: build that "
                                                "model in a factory .* which autocomp rebuilds as timm's"):
            create_model(ModelSpec(**spec, checkpoint=str(tmp_path / file)))


def test_a_save_pretrained_file_is_read_through_from_pretrained_and_said_so_where_its_keys_are_not_the_modules(
        tmp_path):
    """transformers 5 names its modules' weights (vit.layers.0.attention.q_proj) otherwise than the files
    save_pretrained writes (vit.encoder.layer.0.attention.attention.query); only from_pretrained converts."""
    from safetensors.torch import load_file

    source = transformers_vit()
    source.save_pretrained(tmp_path / "hf")
    (tmp_path / "hffactory.py").write_text(
        "from transformers import ViTConfig, ViTForImageClassification\n\n"
        "def fresh(folder):\n    return ViTForImageClassification(ViTConfig.from_pretrained(folder))\n\n"
        "def pretrained(folder):\n    return ViTForImageClassification.from_pretrained(folder)\n")
    images, folder = torch.randn(2, 3, 32, 32), str(tmp_path / "hf")
    with torch.no_grad():
        expected = source(images).logits
        made = create_model(ModelSpec(factory="hffactory:pretrained", kwargs={"folder": folder}, path=str(tmp_path)))
        assert (made(images) - expected).abs().max() < 1e-5
        spec = ModelSpec(factory="hffactory:fresh", kwargs={"folder": folder}, path=str(tmp_path),
                         checkpoint=str(tmp_path / "hf" / "model.safetensors"))
        if set(load_file(spec.checkpoint)) == set(source.state_dict()):  # a transformers whose files are its keys
            assert (create_model(spec)(images) - expected).abs().max() < 1e-5
        else:
            with pytest.raises(AutocompError, match=r"a file transformers' save_pretrained wrote keeps the key layout "
                                                    r"of its files, .* ViTForImageClassification.from_pretrained on "
                                                    r"the file's \(local\) folder and leave model.checkpoint out"):
                create_model(spec)


def _folder(root, classes):
    from PIL import Image

    for number, name in enumerate(classes):
        (root / "train" / name).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (32, 32), (40 * index, 50 * number, 10)).save(root / "train" / name / f"{index}.png")


def test_a_transformers_models_label_names_order_the_class_folders_as_its_outputs(tmp_path):
    """A model trained with id2label {0: 'ship', 1: 'cat', ...} scores output 0 as ship: its class folders were
    taken in sorted order without a word (28.75% for a model of 49.06%)."""

    _folder(tmp_path, ["airplane", "cat", "ship"])
    named = {0: "ship", 1: "airplane", 2: "cat"}
    rebuilt = timm_equivalent(transformers_vit(num_labels=3, id2label=named, label2id={v: k for k, v in
                                                                                       named.items()}))
    config = DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=3, calib_size=3, test_size=3,
                        mean=0.5, std=0.5, crop_pct=1.0, interpolation="bilinear", crop_mode="squash", workers=0)
    splits = load_splits(config, rebuilt)
    assert splits.classes == ("ship", "airplane", "cat")
    folder_of = {path.split("/")[1] for split in (splits.train, splits.val) for path, label in
                 zip(split.files, split.labels) if label == 0}
    assert folder_of == {"ship"}  # label 0 is output 0's class
    plain = timm_equivalent(transformers_vit(num_labels=3))  # LABEL_0 ...: says nothing of the classes
    assert load_splits(config, plain).classes == ("airplane", "cat", "ship")
    other = {0: "ship", 1: "plane", 2: "cat"}
    with pytest.warns(AutocompWarning, match=r"the model names its outputs \['ship', 'plane', 'cat'\] \(its label "
                                             r"names\), which are not the class folders \['airplane', 'cat', 'ship'\]"):
        assert load_splits(config, timm_equivalent(transformers_vit(num_labels=3, id2label=other))).classes == \
            ("airplane", "cat", "ship")


def test_a_half_precision_or_meta_model_and_a_head_of_another_size_are_refused_saying_what_to_do():
    from types import SimpleNamespace

    from autocomp.search._before import check_classes

    images = SimpleNamespace(x=torch.randn(1, 3, 32, 32))
    config = SimpleNamespace(data=SimpleNamespace(dataset="imagefolder", root="images"), model=None)
    rebuilt = timm_equivalent(transformers_vit())  # 7 outputs
    with pytest.raises(AutocompError, match=r"the model's weights are float16; autocomp compresses and measures "
                                            r"float32 models .*: give it the float32 model \(model.float\(\)\)"):
        check_classes(rebuilt.half(), SimpleNamespace(calib=images, num_classes=7), config)
    with pytest.raises(AutocompError, match=r"the model has 7 outputs but the data has 4 classes; .*\(transformers' "
                                            r"ViTForImageClassification.from_pretrained with num_labels=4 and "
                                            r"ignore_mismatched_sizes=True makes such a head, untrained\)"):
        check_classes(rebuilt.float(), SimpleNamespace(calib=images, num_classes=4), config)
    with pytest.raises(AutocompError, match=r"torchvision's VisionTransformer has its weights on the meta device "
                                            r"\(shapes without values\): load its weights first"):
        timm_equivalent(torchvision_vit().to("meta"))


def test_a_transformers_models_own_preprocessor_config_makes_its_images(tmp_path):
    """A model from_pretrained read from a folder with its preprocessor_config.json (CIFAR's mean and std, say): its
    images were made with ViTImageProcessor's defaults (38.75% for a 49.06% model)."""
    from transformers import DeiTImageProcessor, ViTForImageClassification, ViTImageProcessor

    transformers_vit().save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.49, 0.48, 0.45], image_std=[0.25, 0.24, 0.26],
                      resample=3).save_pretrained(tmp_path / "vit")
    rebuilt = timm_equivalent(ViTForImageClassification.from_pretrained(tmp_path / "vit"))
    config = DataConfig(dataset="imagefolder", root="images")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutocompWarning)  # nothing guessed: nothing said
        made = resolve_preprocessing(rebuilt, config)
    assert made.mean == pytest.approx((0.49, 0.48, 0.45)) and made.std == pytest.approx((0.25, 0.24, 0.26))
    assert (made.interpolation, made.crop_mode, made.crop_pct, made.image_size) == ("bicubic", "squash", 1.0, 32)
    assert preprocessing_source(rebuilt, config).startswith(f"from its preprocessor_config.json ({tmp_path / 'vit'}")
    # DeiT's processor: a square resize, then the centre crop
    DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "vit")
    made = resolve_preprocessing(timm_equivalent(ViTForImageClassification.from_pretrained(tmp_path / "vit")), config)
    assert (made.crop_mode, made.crop_pct, made.interpolation) == ("squash", 32 / 36, "bicubic")
    # one for another size than the model's is not followed: the defaults, said
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(tmp_path / "vit")
    with pytest.warns(AutocompWarning, match="made as transformers' ViTImageProcessor makes them by default"):
        resolve_preprocessing(timm_equivalent(ViTForImageClassification.from_pretrained(tmp_path / "vit")), config)


@pytest.mark.parametrize("processor", ["vit_int_size", "deit_354", "deit_model_int_sizes"])
def test_a_preprocessor_configs_images_are_the_processors_own_to_the_pixel(tmp_path, processor):
    """autocomp's transform against the transformers processor the file describes, on one PIL image: an older file's
    size as an int crashed the rebuild; a DeiT resize of 354 before a 224 crop was made one pixel short (timm rounds
    size / crop_pct down)."""
    import json

    import numpy as np
    from PIL import Image
    from transformers import DeiTImageProcessor, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path / "vit"
    transformers_vit(image_size=224, patch_size=32, hidden_size=16, num_attention_heads=2).save_pretrained(folder)
    if processor == "vit_int_size":
        real = ViTImageProcessor(size={"height": 224, "width": 224}, resample=3)
        real.save_pretrained(folder)
        saved = json.loads((folder / "preprocessor_config.json").read_text())
        (folder / "preprocessor_config.json").write_text(json.dumps({**saved, "size": 224}))  # as older files have it
    elif processor == "deit_354":
        real = DeiTImageProcessor(size={"height": 354, "width": 354}, crop_size={"height": 224, "width": 224})
        real.save_pretrained(folder)
    else:  # a DeiT beside facebook/deit-*'s file: ImageNet's mean and std, size 256 and crop_size 224 as ints
        from transformers import DeiTForImageClassification

        transformers_deit(image_size=224, patch_size=32, hidden_size=16, num_attention_heads=2).save_pretrained(folder)
        real = DeiTImageProcessor(size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224},
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        real.save_pretrained(folder)
        saved = json.loads((folder / "preprocessor_config.json").read_text())
        (folder / "preprocessor_config.json").write_text(json.dumps({**saved, "size": 256, "crop_size": 224}))
    kind = DeiTForImageClassification if processor == "deit_model_int_sizes" else ViTForImageClassification
    rebuilt = timm_equivalent(kind.from_pretrained(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutocompWarning)  # followed: nothing guessed
        made = resolve_preprocessing(rebuilt, DataConfig(dataset="imagefolder", root="images"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    expected = real(images=image, return_tensors="pt")["pixel_values"][0]
    difference = (made.transform()(image) - expected).abs()
    # at most one 8-bit level (1 / 255 / std: their resizes round a pixel here and there), almost always none
    assert difference.max() < 1.01 / 255 / min(real.image_std) and (difference > 1e-4).float().mean() < 0.02


def test_a_hub_models_preprocessor_config_in_the_hugging_face_cache_is_followed(tmp_path, monkeypatch):
    """from_pretrained("facebook/deit-...") names a hub id, not a folder: the file its processor's from_pretrained
    left in the Hugging Face cache is read (never downloaded); an id the cache does not hold gets the defaults."""
    import json

    import huggingface_hub.constants
    from transformers import DeiTImageProcessor

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--deit-cifar" / "snapshots" / "0123"
    DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32},
                       image_mean=[0.49, 0.48, 0.45], image_std=[0.25, 0.24, 0.26]).save_pretrained(snapshot)
    (cache / "models--someone--deit-cifar" / "refs").mkdir()
    (cache / "models--someone--deit-cifar" / "refs" / "main").write_text("0123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    model = transformers_deit()
    model.config._name_or_path = "someone/deit-cifar"
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutocompWarning)  # nothing guessed: nothing said
        made = resolve_preprocessing(timm_equivalent(model), DataConfig(dataset="imagefolder", root="images"))
    assert made.mean == pytest.approx((0.49, 0.48, 0.45)) and made.crop_pct == pytest.approx(32 / 36)
    assert json.loads((snapshot / "preprocessor_config.json").read_text())["crop_size"]["height"] == 32
    model.config._name_or_path = "someone/not-cached"
    with pytest.warns(AutocompWarning, match="made as facebook/deit-"):
        resolve_preprocessing(timm_equivalent(model), DataConfig(dataset="imagefolder", root="images"))


def test_a_preprocessor_config_of_another_processor_is_left_for_the_defaults_with_the_warning(tmp_path):
    from transformers import ConvNextImageProcessor, ViTForImageClassification

    transformers_vit().save_pretrained(tmp_path / "vit")
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(tmp_path / "vit")  # its crop_pct: not followed
    with pytest.warns(AutocompWarning, match="made as transformers' ViTImageProcessor makes them by default"):
        resolve_preprocessing(timm_equivalent(ViTForImageClassification.from_pretrained(tmp_path / "vit")),
                              DataConfig(dataset="imagefolder", root="images"))


def test_an_export_reads_the_run_images_with_the_preprocessing_its_trials_were_scored_with(tmp_path):
    """A run of a model whose preprocessing was guessed (a transformers DeiT: the facebook/deit-* defaults, warned
    about when it searched): an export reads the images with what summary.json records, warning no more."""
    import dataclasses
    import json

    from types import SimpleNamespace

    from autocomp.search._export import _run_splits

    _folder(tmp_path / "data", ["a", "b", "c", "d", "e"])
    source = transformers_deit()
    config = SimpleNamespace(data=DataConfig(dataset="imagefolder", root=str(tmp_path / "data"), val_size=5,
                                             calib_size=5, test_size=5, workers=0))  # the job's data section
    base = timm_equivalent(source)
    with pytest.warns(AutocompWarning, match="made as facebook/deit-"):  # as the search said it
        searched = load_splits(config.data, base).preprocessing
    (tmp_path / "summary.json").write_text(json.dumps({"preprocessing": searched.to_dict()}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutocompWarning)
        splits = _run_splits(config, base, None, tmp_path, "checked")
    given = load_splits(dataclasses.replace(config.data, mean=searched.mean, std=searched.std,
                                            crop_pct=searched.crop_pct, interpolation=searched.interpolation,
                                            crop_mode=searched.crop_mode), base)  # the same images, made alike
    assert splits.preprocessing == searched
    assert torch.equal(next(splits.val.batches(5))[0], next(given.val.batches(5))[0])
