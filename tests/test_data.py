from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from autocomp import AutocompError
from autocomp.errors import AutocompWarning
from autocomp.data import DataConfig, FolderSplit, Preprocessing, load_splits
from autocomp.data._load import SPLIT_FOLDERS

COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


SPLIT_SEEDS = {name: seed for seed, split in enumerate(("train", "val", "test")) for name in SPLIT_FOLDERS[split]}


def make_folder(root, counts, size=(12, 10), seed=None):
    """Class folders of small PNGs; a class named after a colour is that colour plus noise. The noise is seeded by
    the split a folder is named after (a val/ folder made like train/ would hold copies of its first images)."""
    from PIL import Image

    rng = np.random.default_rng(SPLIT_SEEDS.get(root.name.lower(), 0) if seed is None else seed)
    for label, count in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        base = np.array(COLORS.get(label, (rng.integers(0, 255),) * 3), dtype=np.int16)
        for i in range(count):
            pixels = np.clip(base + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")


def tiny_rgb_vit(num_classes=2):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4,
                             num_classes=num_classes, embed_dim=32, depth=1, num_heads=2).eval()


def test_digits_splits_are_deterministic_disjoint_and_sized():
    config = DataConfig(dataset="digits", val_size=200, calib_size=50, test_size=300, seed=3)
    a, b = load_splits(config), load_splits(config)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert (len(a.val), len(a.calib), len(a.test)) == (200, 50, 300)
    assert len(a.train) + 200 + 50 + 300 == 1797
    rows = lambda s: {tuple(r.tolist()) for r in s.x.flatten(1)}  # noqa: E731
    # no image in two splits (the 1,797 digits are all different): together they hold every image once
    assert len(rows(a.train) | rows(a.calib) | rows(a.val) | rows(a.test)) == 1797
    other = load_splits(DataConfig(dataset="digits", val_size=200, calib_size=50, test_size=300, seed=4))
    assert not torch.equal(a.val.y, other.val.y)


def _write_idx(path, array, header):
    with gzip.open(path, "wb") as handle:
        handle.write(bytes(header) + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 60), ("t10k", 20)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28)), [0] * 16)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10, [0] * 8)
    splits = load_splits(DataConfig(dataset="fashion_mnist", root=str(tmp_path), val_size=10, calib_size=5))
    assert splits.train.x.shape == (45, 1, 28, 28) and len(splits.test) == 20
    assert splits.test.y.tolist() == [i % 10 for i in range(20)]


def test_missing_fashion_mnist_names_the_install_line(tmp_path):
    with pytest.raises(AutocompError, match="apt-get install -y dataset-fashion-mnist"):
        load_splits(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))


def test_imagefolder_of_class_folders_is_split_and_streamed(tmp_path):
    make_folder(tmp_path, {"cat": 6, "dog": 6})
    model = tiny_rgb_vit()
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2,
                                    test_size=2, workers=0), model)
    assert splits.num_classes == 2 and (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    assert isinstance(splits.train, FolderSplit) and isinstance(splits.val, FolderSplit)  # paths, not pixels
    assert splits.calib.x.shape == (2, 3, 16, 16)  # only the calibration images are held as a tensor
    x, y = splits.train.tensors()
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [int(f.startswith("dog")) for f in splits.train.files]
    parts = [set(splits.train.files), set(splits.val.files), set(splits.test.files)]
    assert len(set.union(*parts)) == sum(map(len, parts)) == 10  # disjoint: 6 + 2 + 2 distinct files
    assert splits.train.input_numel() == splits.calib.input_numel() == 3 * 16 * 16  # sized without decoding
    again = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2,
                                   test_size=2, workers=0), model)
    assert again.train.files == splits.train.files and torch.equal(again.calib.x, splits.calib.x)


def test_a_training_image_removed_or_added_leaves_the_held_out_splits_as_they_were(tmp_path):
    """A broken image removed (or a new one added) between two runs of a search: the images it was validated,
    tested and calibrated on stay the same (a permutation of the file list drew them all anew), and the digests
    that a resumed search compares say which split changed."""
    import dataclasses

    from PIL import Image

    make_folder(tmp_path, {"cat": 20, "dog": 20})
    model = tiny_rgb_vit()
    config = DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=6, calib_size=4, test_size=5, workers=0)
    first = load_splits(config, model)
    (tmp_path / first.train.files[0]).unlink()
    Image.new("RGB", (12, 10), (1, 2, 3)).save(tmp_path / "cat" / "new.png")
    second = load_splits(config, model)
    assert "cat/new.png" in second.train.files  # where a file falls is its own path's (and the seed's) business
    assert (first.val.files, first.test.files) == (second.val.files, second.test.files)
    assert torch.equal(first.calib.x, second.calib.x)
    assert {name for name in first.digests if first.digests[name] != second.digests[name]} == {"train"}
    assert load_splits(dataclasses.replace(config, seed=1), model).digests["val"] != first.digests["val"]


def test_a_resumed_run_keeps_its_held_out_sizes_and_refuses_other_held_out_images(tmp_path):
    """Sizes left unset depend on the image count (a fifth of a small folder): a resumed run takes those its trials
    had, so that a broken training image removed changes nothing held out; an image added where it falls in a
    held-out split, or a run from before the record, is refused."""
    import shutil
    from types import SimpleNamespace

    from autocomp.search._images import OLDER, changed_for_trial, record
    from autocomp.search._rundir import run_splits

    make_folder(tmp_path / "data", {"cat": 30, "dog": 30})  # no split folders, no sizes: each a fifth or so
    config, model, said = SimpleNamespace(data=DataConfig(dataset="imagefolder", root=str(tmp_path / "data"),
                                                          workers=0)), tiny_rgb_vit(), []
    first = run_splits(config, model, None, tmp_path, said.append)
    recorded = record(first)
    counts = {name: recorded[name]["images"] for name in ("test", "calib", "val")}
    assert counts == {"test": 12, "calib": 9, "val": 7}  # 60 // 5; then 48 // 5 and (48 - 9) // 5
    (tmp_path / "data" / first.train.files[0]).unlink()  # 59 images: an unset test size would now be 11
    again = run_splits(config, model, recorded, tmp_path, said.append)
    assert (again.val.files, again.test.files) == (first.val.files, first.test.files)
    assert torch.equal(again.calib.x, first.calib.x) and len(again.train) == len(first.train) - 1
    assert said == ["note: the training images changed since the earlier trials ran (validation, test and "
                    "calibration did not); the trials to come distil on the new ones"]
    history = [[0, recorded["train"]["digest"]], [5, again.digests["train"]]]  # trials 5.. distilled on the new
    assert changed_for_trial(recorded, again, 4, history) == ["train"] and changed_for_trial(recorded, again, 5,
                                                                                             history) == []
    assert changed_for_trial(recorded, first, 5, history) == ["train"]  # the images put back: trial 5 had others
    for index in range(60):  # an added image that falls in a held-out split
        added = tmp_path / "data" / "dog" / f"added{index}.png"
        shutil.copy(tmp_path / "data" / "dog" / "0.png", added)
        if f"dog/added{index}.png" not in load_splits(config.data, model).train.files:
            break
        added.unlink()
    with pytest.raises(AutocompError, match=r"^the images of the (val|test|calib)( and (val|test|calib))* splits? "
                                            r"changed since the trials in .* ran"):
        run_splits(config, model, recorded, tmp_path, said.append)
    with pytest.raises(AutocompError, match="was searched by an earlier autocomp, which drew an image folder's"):
        run_splits(config, model, OLDER, tmp_path, said.append)


def test_train_and_val_folders_are_splits_not_classes(tmp_path):
    make_folder(tmp_path / "train", {"cat": 8, "dog": 8, "fox": 8})
    make_folder(tmp_path / "val", {"cat": 2, "dog": 2, "fox": 2})
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=100, calib_size=3,
                                    test_size=3, workers=2), tiny_rgb_vit())
    assert splits.num_classes == 3
    assert len(splits.val) == 6 and all(f.startswith("val/") for f in splits.val.files)
    assert len(splits.train) == 24 - 3 - 3 and all(f.startswith("train/") for f in splits.train.files)
    assert sorted(splits.val.tensors()[1].tolist()) == [0, 0, 1, 1, 2, 2]


def test_train_and_test_folders_without_val_hold_validation_out_of_train(tmp_path):
    make_folder(tmp_path / "train", {"cat": 10, "dog": 10})
    make_folder(tmp_path / "test", {"cat": 2, "dog": 2})
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=4, calib_size=2,
                                    test_size=3, workers=0), tiny_rgb_vit())
    assert splits.classes == ("cat", "dog")  # not "test" and "train"
    assert all(f.startswith("test/") for f in splits.test.files) and len(splits.test) == 4
    assert all(f.startswith("train/") for f in splits.val.files + splits.train.files)
    assert (len(splits.val), len(splits.train)) == (4, 20 - 4 - 2)
    assert not set(splits.val.files) & set(splits.train.files)
    (tmp_path / "train").rename(tmp_path / "images")
    with pytest.raises(AutocompError, match=r"has \['test'\] but no train/ folder"):
        load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path)), tiny_rgb_vit())


def test_held_out_images_that_are_training_images_too_are_said(tmp_path):
    """A validation image that is a training image (linked, or a copy of its bytes) scores the models on what they
    learnt: said, with how many and an example. Files alike in size and first 4 KiB but not in contents (same-sized
    BMPs, alike at the top) are not."""
    import shutil
    import warnings

    from PIL import Image

    make_folder(tmp_path / "train", {"cat": 8, "dog": 8})
    make_folder(tmp_path / "val", {"cat": 2, "dog": 2})
    image = np.zeros((160, 40, 3), dtype=np.uint8)  # a 40x160 BMP of 19,254 bytes
    for i, folder in enumerate(("train/cat", "val/dog")):
        image[40:56] = 90 + 60 * i  # rows neither in the 4 KiB at the start, middle nor end of the file
        Image.fromarray(image).save(tmp_path / folder / "bmp.bmp")
    one, other = ((tmp_path / folder / "bmp.bmp").read_bytes() for folder in ("train/cat", "val/dog"))
    middle = slice(len(one) // 2 - 2048, len(one) // 2 + 2048)
    assert len(one) == len(other) and one != other
    assert one[:4096] == other[:4096] and one[middle] == other[middle] and one[-4096:] == other[-4096:]
    config = DataConfig(dataset="imagefolder", root=str(tmp_path), calib_size=2, test_size=2, workers=0, crop_pct=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_splits(config, tiny_rgb_vit())
    (tmp_path / "val" / "cat" / "linked.png").symlink_to(tmp_path / "train" / "cat" / "3.png")
    with pytest.warns(AutocompWarning, match=r"^1 of the 6 val images is a train image too \(the same file through "
                                             r"a link, or a copy of its bytes; e.g. val/cat/linked.png is "
                                             r"train/cat/3.png\): accuracy on them reads higher than on new images; "
                                             r"remove the copies and links, keeping one of each image$"):
        load_splits(config, tiny_rgb_vit())
    shutil.copyfile(tmp_path / "train" / "dog" / "5.png", tmp_path / "val" / "dog" / "copied.png")
    with pytest.warns(AutocompWarning, match=r"^2 of the 7 val images are train images too \("):
        load_splits(config, tiny_rgb_vit())


@pytest.mark.parametrize("names", [("training", "valid", "testing"), ("train", "validation", "test"),
                                   ("Train", "Val", "TEST")])  # Val/ was read as a class of a folder without splits
def test_split_folders_may_have_their_other_common_names(tmp_path, names):
    import shutil

    train, val, test = names
    make_folder(tmp_path / train, {"cat": 10, "dog": 10})
    make_folder(tmp_path / val, {"cat": 3, "dog": 3})
    make_folder(tmp_path / test, {"cat": 2, "dog": 2})
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), calib_size=2, workers=0),
                         tiny_rgb_vit())
    assert splits.classes == ("cat", "dog")  # not the split folders
    assert len(splits.val) == 6 and all(f.startswith(f"{val}/") for f in splits.val.files)
    assert len(splits.test) == 4 and all(f.startswith(f"{test}/") for f in splits.test.files)
    assert len(splits.train) == 18 and all(f.startswith(f"{train}/") for f in splits.train.files)
    assert splits.origins == {"train": f"{train}/", "calib": f"held out of {train}/", "val": f"{val}/",
                              "test": f"{test}/"}  # as the log says
    shutil.rmtree(tmp_path / val)  # validation drawn from the training images, which the log says with a note
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), calib_size=2, workers=0),
                         tiny_rgb_vit())
    assert splits.origins == {"train": f"{train}/", "calib": f"held out of {train}/", "val": f"held out of {train}/",
                              "test": f"{test}/"}
    assert load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path / train), calib_size=2, workers=0),
                       tiny_rgb_vit()).origins["val"] == "held out of the folder"
    make_folder(tmp_path / val, {"cat": 3, "dog": 3})
    make_folder(tmp_path / "val", {"cat": 1, "dog": 1})
    with pytest.raises(AutocompError, match=f"has ({val}/, val/|val/, {val}/): each is a val split; keep one of "):
        load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path)), tiny_rgb_vit())


def test_split_sizes_left_unset_take_a_fifth_of_a_small_folder_and_cap_at_their_limits(tmp_path):
    from autocomp.data import CALIB_SIZE, TEST_SIZE, VAL_SIZE

    make_folder(tmp_path / "small", {"cat": 25, "dog": 25})  # 50 images, no train/val/test folders
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path / "small"), workers=0), tiny_rgb_vit())
    # test: a fifth of 50; calibration: a fifth of the 40 left; validation: a fifth of the 32 after it
    assert (len(splits.test), len(splits.calib), len(splits.val), len(splits.train)) == (10, 8, 6, 26)
    make_folder(tmp_path / "split" / "train", {"cat": 30, "dog": 30})
    make_folder(tmp_path / "split" / "val", {"cat": 3, "dog": 3})
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path / "split"), workers=0), tiny_rgb_vit())
    assert (len(splits.test), len(splits.calib), len(splits.val), len(splits.train)) == (12, 9, 6, 39)
    big = load_splits(DataConfig(dataset="digits"))  # 1,797 images: test and calibration capped, validation not
    assert (len(big.test), len(big.calib), len(big.val)) == (min(TEST_SIZE, 359), min(CALIB_SIZE, 287), 236)
    assert VAL_SIZE == 5000 and len(load_splits(DataConfig(dataset="fashion_mnist")).val) == VAL_SIZE
    with pytest.raises(AutocompError, match="data.val_size must be a positive number of images or null"):
        DataConfig(val_size=0)


def test_the_preprocessing_is_the_models_own_and_matches_timms_eval_transform(tmp_path):
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config

    make_folder(tmp_path, {"red": 5, "green": 5}, size=(37, 29))
    model = tiny_rgb_vit()
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.3, 0.4, 0.5), "std": (0.2, 0.25, 0.3),
                            "interpolation": "bicubic", "crop_pct": 0.8, "input_size": (3, 16, 16)}
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2,
                                    test_size=2, workers=0), model)
    p = splits.preprocessing
    assert (p.mean, p.std, p.interpolation, p.crop_pct, p.image_size) == ((0.3, 0.4, 0.5), (0.2, 0.25, 0.3),
                                                                          "bicubic", 0.8, 16)
    timm_transform = create_transform(**resolve_model_data_config(model), is_training=False)
    x, _ = splits.val.tensors()
    expected = torch.stack([timm_transform(Image.open(tmp_path / f).convert("RGB")) for f in splits.val.files])
    assert torch.equal(x, expected)
    overridden = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2,
                                        test_size=2, workers=0, mean=[0.5], std=[0.5],
                                        interpolation="bilinear", crop_pct=1.0), model)
    assert overridden.preprocessing.mean == (0.5, 0.5, 0.5) and overridden.preprocessing.crop_pct == 1.0
    assert overridden.preprocessing.interpolation == "bilinear" and overridden.calib.x.shape[-1] == 16


def test_preprocessing_steps_in_words_give_the_transforms_input_with_pil_and_numpy_alone(tmp_path):
    """preprocessing.json's steps are what a deployment without timm or torchvision follows: done with PIL and
    numpy, they give the tensor the transform gives, for a square image and for one whose centre crop starts half
    way between two pixels (the words say how that rounds: a user's floor would shift it by one)."""
    from PIL import Image

    from autocomp.data import Preprocessing
    from autocomp.saving import load_preprocessing

    p = Preprocessing(image_size=16, channels=3, mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3),
                      interpolation="bicubic", crop_pct=0.8)
    steps = p.steps()
    assert steps == ["convert the image to 8-bit RGB (16-bit images scaled to 8 bits first)",
                     "resize the shorter side to 20 px, the longer to 20 x longer / shorter rounded down (bicubic "
                     "interpolation, antialiased as PIL's resize is)",
                     "crop the centre 16 x 16 px (from the left at round((width - 16) / 2), the top at "
                     "round((height - 16) / 2), halves rounded to even as Python's round)",
                     "scale the pixels to [0, 1] (divide by 255)",
                     "per channel, subtract mean [0.3, 0.4, 0.5] and divide by std [0.2, 0.25, 0.3]",
                     "batch as float32 (N, 3, 16, 16), channels first"]
    # 46 x 40 -> 23 x 20: the crop starts at round(3.5) = 4, not 3; 42 x 40 -> 21 x 20: at round(2.5) = 2, not 3
    for width, left in ((40, 2), (46, 4), (42, 2)):
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, width, 3), dtype=np.uint8))
        resized = (20 * width // 40, 20)
        assert left == round((resized[0] - 16) / 2)
        by_hand = np.asarray(image.convert("RGB").resize(resized, Image.BICUBIC))[2:18, left:left + 16] / 255.0
        by_hand = ((by_hand - np.array(p.mean)) / np.array(p.std)).transpose(2, 0, 1).astype(np.float32)
        np.testing.assert_allclose(p.transform()(image).numpy(), by_hand, atol=1e-5)
    (tmp_path / "preprocessing.json").write_text(json.dumps({**p.to_dict(), "steps": steps}))
    assert load_preprocessing(tmp_path) == p  # the words are for a reader: the settings load as they were


def test_the_digits_preprocessing_says_their_scale_and_reproduces_the_model_input(tmp_path):
    """sklearn's digits hold values 0..16, divided by 16: the record says so (it said divide by 255, and a deployer
    who followed it fed the model a sixteenth of its input: 10% accuracy), and its transform and timm config, which
    divide by 255, give the split's tensors from the raw values."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from autocomp.saving import load_preprocessing

    splits = load_splits(DataConfig(dataset="digits", val_size=50, calib_size=10, seed=0))
    p = splits.preprocessing
    assert p.pixel_max == 16 and "scale the pixels to [0, 1] (divide by 16: the images' values run 0..16)" in p.steps()
    raw = load_digits().images  # (1797, 8, 8), values 0..16
    by_steps = torch.from_numpy(((raw / 16 - p.mean[0]) / p.std[0]).astype(np.float32))
    by_transform = torch.stack([p.transform()(Image.fromarray(image.astype(np.uint8)))[0] for image in raw])
    assert torch.allclose(by_transform, by_steps, atol=1e-5)
    val = splits.val.x[:, 0]  # each validation image is one of the raw images, as the steps make it
    distance = (val[:, None] - by_steps[None]).abs().amax(dim=(2, 3)).min(dim=1).values
    assert distance.max() < 1e-5
    (tmp_path / "preprocessing.json").write_text(json.dumps(p.to_dict()))
    assert load_preprocessing(tmp_path) == p
    for wrong in (0, -1, True, "16"):
        with pytest.raises(AutocompError, match=r"pixel_max must be the images' largest pixel value"):
            Preprocessing(**{**p.to_dict(), "pixel_max": wrong})
    assert Preprocessing(**{**p.to_dict(), "pixel_max": 255}).to_dict().keys() == {  # 8-bit: as recorded before
        "image_size", "channels", "mean", "std", "interpolation", "crop_pct", "crop_mode"}


def test_splits_given_a_class_count_name_the_classes_by_their_labels():
    from autocomp.data import Splits

    assert Splits(None, None, None, None, 3).classes == ("0", "1", "2")  # as Splits took it before it named them
    assert Splits(None, None, None, None, ("cat", "dog")).num_classes == 2


def test_where_the_preprocessing_came_from_is_said():
    """The log and summary.json name the source of each value: the job's keys, the model's pretrained tag (a
    checkpoint fine-tuned from another tag's weights wants that tag's mean and std), timm's defaults."""
    from timm.models.vision_transformer import VisionTransformer

    from autocomp.data import preprocessing_source

    folder = DataConfig(dataset="imagefolder", root="images")
    assert preprocessing_source(tiny_rgb_vit(), folder) == (
        "from the model's timm data config (vit_tiny_patch16_224.augreg_in21k_ft_in1k)")
    assert preprocessing_source(tiny_rgb_vit(), DataConfig(dataset="imagefolder", root="images", mean=[0.5],
                                                           crop_pct=1.0)) == (
        "data.mean, data.crop_pct from the job, the rest from the model's timm data config "
        "(vit_tiny_patch16_224.augreg_in21k_ft_in1k)")
    bare = VisionTransformer(img_size=16, patch_size=4, num_classes=2, embed_dim=32, depth=1, num_heads=2)
    assert preprocessing_source(bare, folder) == "from timm's defaults (the model has no timm data config)"
    assert preprocessing_source(bare, DataConfig(dataset="digits")).startswith("from the training split's statistics")



def test_a_model_without_a_timm_data_config_is_normalized_with_timms_defaults_and_the_user_told(tmp_path):
    """A VisionTransformer built directly (not by timm.create_model) has no pretrained_cfg: timm resolves ImageNet's
    statistics and crop for it, which are not what a model trained otherwise had; the user is told what to set (the
    crop too: a model trained on whole images, its mean and std given, lost 5 points to it without a word)."""
    import warnings

    from timm.models.vision_transformer import VisionTransformer

    make_folder(tmp_path, {"red": 5, "green": 5})
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, num_classes=2, embed_dim=32, depth=1, num_heads=2).eval()
    config = dict(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2, test_size=2, workers=0)
    with pytest.warns(UserWarning, match=r"no timm data config \(pretrained_cfg\), so its images are made with "
                                         r"timm's defaults: mean \[0.485, 0.456, 0.406\], std \[0.229, 0.224, "
                                         r"0.225\], crop_pct 0.875 \(the centre 87.5% of each image\), interpolation "
                                         r"bicubic; set data.mean, data.std, data.crop_pct, data.interpolation to "
                                         r"what it was trained with \(data.crop_pct 1.0: the whole image\)$") as said:
        assert load_splits(DataConfig(**config), model).preprocessing.mean == (0.485, 0.456, 0.406)
    # attributed to the caller's own line (here this file), not to a file inside autocomp
    assert said[0].category is AutocompWarning and said[0].filename == __file__
    with pytest.warns(UserWarning, match=r"defaults: std \[0.229, 0.224, 0.225\], crop_pct 0.875 .*; set data.std, "
                                         r"data.crop_pct, data.interpolation to "):  # not the user's mean
        load_splits(DataConfig(**config, mean=[0.5]), model)
    with pytest.warns(UserWarning, match=r"defaults: crop_pct 0.875 \(the centre 87.5% of each image\), interpolation "
                                         r"bicubic; set data.crop_pct, data.interpolation to what"):
        load_splits(DataConfig(**config, mean=[0.5], std=[0.5]), model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # set by the user, or a timm model's own: nothing to say
        load_splits(DataConfig(**config, mean=[0.5], std=[0.5], crop_pct=1.0, interpolation="bilinear"), model)
        load_splits(DataConfig(**config, crop_pct=1.0), tiny_rgb_vit())


def test_a_timm_model_built_at_another_size_than_its_pretrained_configs_is_told_whose_crop_it_gets(tmp_path):
    """A timm name built at img_size=16 keeps the 224-px tag's crop_pct 0.9 and statistics: rarely what a model
    trained at 16 px had (a crop it never saw costs it accuracy); said, naming what to set."""
    import warnings

    make_folder(tmp_path, {"red": 5, "green": 5})
    config = dict(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2, test_size=2, workers=0)
    with pytest.warns(UserWarning, match=r"built for 16-px images, but its timm data config is its pretrained "
                                         r"weights', for 224 px: crop_pct 0.9 \(the centre 90% of each image\), "
                                         r"mean .*; if it was trained otherwise, set data.crop_pct \(1.0: the whole "
                                         r"image\), data.mean, data.std to what it was trained with$"):
        load_splits(DataConfig(**config), tiny_rgb_vit())
    with pytest.warns(UserWarning, match=r"crop_pct 0.9 \(the centre 90% of each image\); if it was trained "
                                         r"otherwise, set data.crop_pct \(1.0: the whole image\) to what"):
        load_splits(DataConfig(**config, mean=[0.5], std=[0.5]), tiny_rgb_vit())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the crop given: nothing to say
        load_splits(DataConfig(**config, crop_pct=0.9), tiny_rgb_vit())


def test_a_crop_pct_rounded_below_a_whole_resize_is_told_what_it_resizes_to(tmp_path):
    """crop_pct 0.888889 for "resize 36, crop 32" resized to 35 px (32 / 0.888889 = 35.99996, rounded down as timm
    rounds it): a user's model then scored 2 points off their own evaluation without a word; said, with the exact
    fraction to give (here at 16 px: 18 meant, 17 done). An exact fraction, or one far from a whole size, says
    nothing."""
    import warnings

    make_folder(tmp_path, {"red": 5, "green": 5})
    config = dict(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2, test_size=2, workers=0)
    with pytest.warns(AutocompWarning, match=r"^data.crop_pct 0.888889 resizes to 17 px before the 16-px crop "
                                             r"\(16 / 0.888889 = 17.99999775, rounded down as timm rounds it\); for 18 "
                                             r"px, give crop_pct 0.8888888888888888 \(16 / 18\)$"):
        splits = load_splits(DataConfig(**config, crop_pct=0.888889), tiny_rgb_vit())
    assert splits.preprocessing.steps()[1].startswith("resize the shorter side to 17 px")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for crop_pct in (16 / 18, 0.875):
            load_splits(DataConfig(**config, crop_pct=crop_pct), tiny_rgb_vit())


def test_a_squash_models_images_are_squashed_as_timm_does_and_saved_so(tmp_path):
    """CLIP and SigLIP fine-tunes resize both sides (``crop_mode: squash``): a centre crop of a wide image is
    another input."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config

    from autocomp.data import Preprocessing
    from autocomp.saving import load_preprocessing

    make_folder(tmp_path, {"red": 5, "green": 5}, size=(48, 16))  # 3:1, so a crop and a squash differ
    model = timm.create_model("vit_base_patch16_clip_384.openai_ft_in1k", pretrained=False, img_size=16,
                              patch_size=4, num_classes=2, embed_dim=32, depth=1, num_heads=2).eval()
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2,
                                    test_size=2, workers=0), model)
    assert splits.preprocessing.crop_mode == "squash"
    timm_transform = create_transform(**{**resolve_model_data_config(model), "input_size": (3, 16, 16)},
                                      is_training=False)
    x, _ = splits.val.tensors()
    expected = torch.stack([timm_transform(Image.open(tmp_path / f).convert("RGB")) for f in splits.val.files])
    assert torch.allclose(x, expected, atol=1e-6)
    cropped = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2,
                                     test_size=2, workers=0, crop_mode="center"), model)
    assert not torch.allclose(cropped.val.tensors()[0], expected, atol=1e-2)  # the override is taken
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "preprocessing.json").write_text(json.dumps(splits.preprocessing.to_dict()))
    assert load_preprocessing(tmp_path / "saved") == splits.preprocessing
    older = {k: v for k, v in splits.preprocessing.to_dict().items() if k != "crop_mode"}  # saved before crop_mode
    (tmp_path / "saved" / "preprocessing.json").write_text(json.dumps(older))
    assert load_preprocessing(tmp_path / "saved").crop_mode == "center"
    with pytest.raises(AutocompError, match=r"data.crop_mode must be one of \['center', 'squash', 'border'\]"):
        DataConfig(crop_mode="sqaush")
    assert Preprocessing(**{**older, "crop_mode": "border"}).timm_config()["crop_mode"] == "border"


def test_resizing_keys_are_refused_for_builtin_data_sets():
    """Nothing resizes or crops Fashion-MNIST or digits: image_size, interpolation, crop_pct and crop_mode would be
    ignored (and preprocessing_source would say they came from the job), so they are refused by name; mean and std
    apply and stay accepted."""
    with pytest.raises(AutocompError, match=r"^data.image_size, data.crop_pct: for image folders only; digits images "
                                            r"are used as they come \(8 px, no resize or crop\): remove them"):
        DataConfig(dataset="digits", image_size=16, crop_pct=0.5)
    with pytest.raises(AutocompError, match=r"^data.interpolation: .*fashion_mnist images .*\(28 px.*remove it "):
        DataConfig(interpolation="bicubic")
    assert DataConfig(dataset="digits", mean=[0.3], std=[0.2]).mean == (0.3,)
    assert DataConfig(dataset="imagefolder", image_size=16, crop_pct=0.5).crop_pct == 0.5


@pytest.mark.parametrize("kwargs, data, message", [
    ({"in_chans": 4}, {}, "the model takes 4-channel images, and autocomp reads images as grayscale"),
    ({"img_size": (16, 24)}, {}, "the model takes 16x24 images, and autocomp's preprocessing makes square ones"),
    ({}, {"image_size": 24}, "data.image_size is 24 but the model was built for 16x16 images"),
    ({"img_size": (16, 24), "dynamic_img_size": True}, {}, "the model takes 16x24 images, and autocomp's "
     "preprocessing makes square ones; build it with a square img_size (or dynamic_img_size=True and set "
     "data.image_size)"),
    ({}, {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
     "data.mean [123.675, 116.28, 103.53] is on the 0..255 scale, but pixels are scaled to [0, 1] before "
     "normalization; divide it by 255: [0.485, 0.456, 0.406]"),
])
def test_a_model_or_preprocessing_the_images_cannot_feed_is_refused_in_one_line(tmp_path, kwargs, data, message):
    import timm

    make_folder(tmp_path, {"a": 4, "b": 4})
    with pytest.raises(AutocompError, match=re.escape(message)) as info:
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{"img_size": 16, **kwargs},
                                  patch_size=4, num_classes=2, embed_dim=32, depth=1, num_heads=2).eval()
        load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=1, calib_size=1, test_size=1,
                               **data), model)
    assert "\n" not in str(info.value)

def test_a_model_trained_on_its_own_preprocessing_scores_the_same_through_autocomp(tmp_path):
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config

    from autocomp.train import evaluate

    make_folder(tmp_path, {"red": 20, "green": 20, "blue": 20}, size=(40, 30))
    model = tiny_rgb_vit(num_classes=3)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.6, 0.2, 0.4), "std": (0.1, 0.3, 0.2),
                            "interpolation": "bicubic", "crop_pct": 0.9, "input_size": (3, 16, 16)}
    config = DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=12, calib_size=4, test_size=4,
                        workers=0)
    splits = load_splits(config, model)
    timm_transform = create_transform(**resolve_model_data_config(model), is_training=False)

    def timm_batch(files):
        return torch.stack([timm_transform(Image.open(tmp_path / f).convert("RGB")) for f in files])

    train_x, train_y = timm_batch(splits.train.files), torch.tensor(splits.train.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(40):  # trained on timm's own transform
        loss = torch.nn.functional.cross_entropy(model(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        timm_accuracy = 100.0 * (model(timm_batch(splits.val.files)).argmax(-1)
                                 == torch.tensor(splits.val.labels)).float().mean().item()
    assert timm_accuracy > 60  # it learned something, so a wrong preprocessing would show
    assert evaluate(model, splits.val) == pytest.approx(timm_accuracy)


def test_every_image_whose_header_is_broken_is_named_at_once(tmp_path):
    make_folder(tmp_path, {"cat": 4, "dog": 4})
    for name in ("cat/x.png", "dog/y.jpg"):
        (tmp_path / name).write_text("not an image")
    with pytest.raises(AutocompError, match=r"^cannot read 2 images: \S+/cat/x.png \(cannot identify image file .*\); "
                                            r"\S+/dog/y.jpg \(cannot identify .*\); remove or replace them$"):
        load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=1, test_size=1),
                    tiny_rgb_vit())


@pytest.mark.parametrize("layout, message", [
    ({"loose.png": None}, "has no class folders; put each class's images in a folder of its own"),
    ({"cat/a.png": None, "dog/a.png": None, "stray.png": None, "labels.csv": "a,cat"},
     "holds 1 image(s) beside its class folders (stray.png); move each into its class's folder"),
    ({"cat/a.png": None, "dog/": None}, "class folder(s) ['dog'] under"),
    ({"cat/photo.heic": "HEIC", "dog/a.png": None, "dog/notes.txt": "text"}, "class folder(s) ['cat'] under"),
    ({**{f"{c}/{i}.png": None for c in ("cat", "dog") for i in range(3)}, "cat/b.png": "not a png"},
     "cannot read image"),
    ({"train/cat/a.png": None, "train/dog/a.png": None, "val/cat/a.png": None, "val/fox/a.png": None},
     "has classes ['fox'] that"),
    ({"train/cat/a.png": None, "train/dog/a.png": None, "val/cat/": None}, "holds no images; add images to its class"),
    ({**{f"{c}/{i}.png": None for c in ("cat", "dog") for i in range(3)}, "cat/f.tif": "float"},
     "f.tif: its pixels are 32-bit floats"),
])
def test_bad_image_folders_are_one_clear_line(tmp_path, layout, message):
    from PIL import Image

    for name, content in layout.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        elif content is None:
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
        elif content == "float":
            Image.fromarray(np.zeros((8, 8), dtype=np.float32)).save(path)
        else:
            path.write_text(content)
    with pytest.raises(AutocompError, match=re.escape(message)) as info:
        load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=1, calib_size=1, test_size=1),
                    tiny_rgb_vit())
    assert "\n" not in str(info.value)


def test_files_that_are_not_images_in_class_folders_are_left_out_and_named(tmp_path):
    """A labels file or notes beside a class's images are left out, as torchvision's ImageFolder does (they stopped
    the search), with one warning naming them: a format the loader does not read is not lost unsaid."""
    from autocomp import AutocompWarning

    make_folder(tmp_path, {"cat": 6, "dog": 6})
    (tmp_path / "cat" / "labels.csv").write_text("a,cat")
    (tmp_path / "dog" / "photo.heic").write_text("HEIC")
    with pytest.warns(AutocompWarning) as said:
        splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=1,
                                        test_size=1, workers=0), tiny_rgb_vit())
    assert len(splits.train) + len(splits.val) + len(splits.test) + len(splits.calib.y) == 12
    assert [str(w.message) for w in said if "class folders" in str(w.message)] == [
        f"2 file(s) in the class folders of {tmp_path} are not images and are left out (cat/labels.csv, "
        "dog/photo.heic); images are .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp: convert any other "
        "image format to one of them"]


def test_a_class_named_in_another_unicode_form_in_val_is_trains_class(tmp_path):
    """val/Trousér copied from macOS (e + a combining accent) is train/'s Trousér (one character): it was refused as
    a class train/ has not, in a message where both names print alike. The classes stay train/'s as written (their
    order is the model's outputs')."""
    import unicodedata

    composed, decomposed = unicodedata.normalize("NFC", "Trousér"), unicodedata.normalize("NFD", "Trousér")
    assert composed != decomposed
    make_folder(tmp_path / "train", {composed: 6, "cat": 6})
    make_folder(tmp_path / "val", {decomposed: 3, "cat": 3})
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), calib_size=2, workers=0),
                         tiny_rgb_vit())
    assert splits.classes == tuple(sorted((composed, "cat")))
    labels = {file.split("/")[1]: label for file, label in zip(splits.val.files, splits.val.labels)}
    assert labels == {decomposed: splits.classes.index(composed), "cat": splits.classes.index("cat")}


@pytest.mark.parametrize("name", ["vit_small_r26_s32_224", "vit_small_resnet26d_224"])
def test_a_hybrid_vit_takes_images_of_its_stems_channels(tmp_path, name):
    # its patch embedding's proj reads the CNN's 1024-2048 feature maps: taken for the image, it refused the model
    import timm

    make_folder(tmp_path, {"red": 5, "green": 5}, size=(20, 18))
    model = timm.create_model(name, pretrained=False, img_size=64, num_classes=2, embed_dim=32, depth=1,
                              num_heads=2).eval()
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2,
                                    test_size=2, workers=0), model)
    x, _ = splits.val.tensors()
    assert (splits.preprocessing.channels, splits.preprocessing.image_size, tuple(x.shape[1:])) == (3, 64, (3, 64, 64))
    assert model(x).shape == (2, 2)


@pytest.mark.parametrize("name, mean", [("vit_small_patch16_224.dino", (0.485, 0.456, 0.406)),
                                        ("vit_small_patch16_224", (0.5, 0.5, 0.5))])
def test_a_timm_name_with_a_pretrained_tag_takes_that_tags_preprocessing(tmp_path, name, mean):
    from autocomp.models import ModelSpec, create_model

    make_folder(tmp_path, {"red": 5, "green": 5})
    model = create_model(ModelSpec(name=name, kwargs={"img_size": 32, "depth": 1, "num_classes": 2}))
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2,
                                    test_size=2, workers=0), model)
    assert (splits.preprocessing.mean, splits.preprocessing.image_size) == (mean, 32)


def test_mean_and_std_must_match_the_channels(tmp_path):
    make_folder(tmp_path, {"a": 4, "b": 4})
    with pytest.raises(AutocompError, match=r"data.mean has 2 values but the model takes 3 channels; give 3 values "
                                            r"or one$"):
        load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=1, calib_size=1, test_size=1,
                               mean=[0.5, 0.5]), tiny_rgb_vit())
    import timm

    gray = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, depth=1, in_chans=1,
                             num_classes=2)
    with pytest.raises(AutocompError, match=r"data.mean has 3 values but the model takes 1 channel; give one value$"):
        load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=1, calib_size=1, test_size=1,
                               mean=[0.5, 0.5, 0.5], std=[0.5]), gray)
    with pytest.raises(AutocompError, match="data.std is empty; give one value per input channel, or leave it out"):
        DataConfig(dataset="imagefolder", root=str(tmp_path), std=[])  # not the model's statistics, unsaid
    with pytest.raises(AutocompError, match=r"data.mean must be finite numbers, got \[0.5, nan\]"):
        DataConfig(dataset="imagefolder", root=str(tmp_path), mean=[0.5, float("nan")])  # passed the range checks


def test_a_missing_folder_on_a_node_is_named(tmp_path):
    make_folder(tmp_path / "data", {"a": 4, "b": 4})
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path / "data"), val_size=1, calib_size=1,
                                    test_size=1), tiny_rgb_vit())
    (tmp_path / "data").rename(tmp_path / "elsewhere")
    with pytest.raises(AutocompError, match=r"image folder .*data does not exist on host .*; put the data at the "):
        next(splits.train.batches(2))


def test_too_large_holdout_is_refused():
    with pytest.raises(AutocompError, match="leaves no training images"):
        load_splits(DataConfig(dataset="digits", val_size=1500, calib_size=100, test_size=300))


def test_data_root_is_found_as_the_jobs_other_paths_are(tmp_path, monkeypatch):
    """Next to the job's YAML file wherever the command runs, and with ``{cache}``, ``~`` and variables expanded."""
    import yaml

    from autocomp.config import load_config

    root = Path(__file__).resolve().parents[1]
    job = {"model": {"name": "deit_tiny_patch16_224", "kwargs": {"img_size": 16, "patch_size": 4, "depth": 1}},
           "search_space": str(root / "search_spaces" / "heads_int8.yaml"),
           "hardware": str(root / "hardware_profiles" / "local_cpu.yaml"), "budget": {"memory": 0.5}}
    (tmp_path / "jobs" / "pets").mkdir(parents=True)
    (tmp_path / "cache" / "pets").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PETS", str(tmp_path / "jobs" / "pets"))
    for given, found in (("pets", tmp_path / "jobs" / "pets"), ("{cache}/pets", tmp_path / "cache" / "pets"),
                         ("$PETS", tmp_path / "jobs" / "pets")):
        path = tmp_path / "jobs" / "job.yaml"
        path.write_text(yaml.safe_dump({**job, "data": {"dataset": "imagefolder", "root": given}}))
        assert load_config(path).data.root == str(found.resolve())


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_broken_past_its_header_is_one_line_naming_it_when_read(tmp_path, workers):
    """A half-written JPEG passes the header check of load_splits; decoding it, in the caller or in a loader's
    worker process, says which file in one line."""
    from PIL import Image

    make_folder(tmp_path / "train", {"red": 6, "green": 6})
    make_folder(tmp_path / "val", {"red": 2, "green": 2})
    broken = tmp_path / "val" / "red" / "half.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(broken, quality=95)
    broken.write_bytes(broken.read_bytes()[:len(broken.read_bytes()) // 2])  # the header, half the pixels
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=5, calib_size=2,
                                    test_size=2, workers=workers), tiny_rgb_vit())
    assert "val/red/half.jpg" in splits.val.files
    with pytest.raises(AutocompError) as info:
        for _ in splits.val.batches(2):
            pass
    assert str(info.value).startswith(f"cannot read image {broken}: ") and "\n" not in str(info.value)
    # a second one, in a later batch: both named at once (the split is read to its end), not one per run
    also = tmp_path / "val" / "green" / "half.png"
    Image.fromarray(noise).save(also)
    also.write_bytes(also.read_bytes()[:len(also.read_bytes()) // 2])
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=6, calib_size=2,
                                    test_size=2, workers=workers), tiny_rgb_vit())
    with pytest.raises(AutocompError, match=rf"^cannot read 2 images: [^\n]*{also.name} \(.*; remove or replace "
                                            r"them$") as info:
        for _ in splits.val.batches(1):
            pass
    assert str(broken) in str(info.value) and str(also) in str(info.value)


def test_16_bit_images_are_scaled_and_float_ones_refused(tmp_path):
    from PIL import Image

    from autocomp.data import Preprocessing

    Image.fromarray(np.full((8, 8), 100 * 257, dtype=np.uint16)).save(tmp_path / "grey.png")  # 16-bit grey 100/255
    transform = Preprocessing(image_size=8, channels=3, mean=(0.0,), std=(1.0,)).transform()
    with Image.open(tmp_path / "grey.png") as image:
        assert image.mode.startswith("I") and torch.allclose(transform(image), torch.full((3, 8, 8), 100 / 255))
    Image.fromarray(np.full((8, 8), 0.4, dtype=np.float32)).save(tmp_path / "float.tif")
    with Image.open(tmp_path / "float.tif") as image, pytest.raises(ValueError, match="32-bit floats"):
        transform(image)


def test_val_may_lack_a_class_and_its_labels_stay_trains(tmp_path):
    """A rare class with no validation images: its folder empty or missing; the others keep train/'s indices, and
    the user is told which classes validation leaves out (a folder deleted by mistake went unsaid)."""
    make_folder(tmp_path / "train", {"blue": 4, "green": 4, "red": 4})
    make_folder(tmp_path / "val", {"green": 2, "red": 2})
    (tmp_path / "val" / "blue").mkdir()  # empty
    with pytest.warns(AutocompWarning, match=r"val has no images of 1 of the 3 classes \(blue\): its accuracy is "
                                             r"over the others alone"):
        splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=4, calib_size=1,
                                        test_size=2), tiny_rgb_vit(num_classes=3))
    assert splits.num_classes == 3
    assert {f.split("/")[1]: label for f, label in zip(splits.val.files, splits.val.labels)} == {"green": 1, "red": 2}


def test_class_folders_may_hold_linked_folders_and_their_hidden_folders_are_left_out(tmp_path):
    """As torchvision's ImageFolder: a folder linked into a class folder is read (a link loop once); a notebook's
    .ipynb_checkpoints is not data."""
    import os

    make_folder(tmp_path / "data", {"red": 4, "green": 4})
    make_folder(tmp_path / "more", {"red": 3}, seed=3)
    os.symlink(tmp_path / "more" / "red", tmp_path / "data" / "red" / "linked")
    os.symlink(tmp_path / "data" / "red", tmp_path / "data" / "red" / "loop")
    os.symlink(tmp_path / "data", tmp_path / "data" / "red" / "up")  # would label green's images red
    make_folder(tmp_path / "data" / "green" / ".ipynb_checkpoints", {"x": 2})
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path / "data"), val_size=1, calib_size=1,
                                    test_size=1), tiny_rgb_vit())
    files = splits.train.files + splits.val.files + splits.test.files
    assert len(files) + 1 == 4 + 3 + 4  # the calibration image is the one not listed
    assert sum("linked" in f for f in files) >= 2 and not any(".ipynb" in f or "loop" in f or "up" in f
                                                               for f in files)


def test_a_folder_linked_into_two_classes_is_refused(tmp_path):
    """A link from one class folder into another (or one outside folder linked from two classes) would give the same
    images two labels, silently."""
    import os

    make_folder(tmp_path / "data", {"red": 4, "green": 4})
    os.symlink(tmp_path / "data" / "green", tmp_path / "data" / "red" / "greens")
    with pytest.raises(AutocompError, match=r"the images of folder .*green are read for class 'green' and for class "
                                            r"'red' \(a link under .* leads to it from both\); an image has one label"):
        load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path / "data"), val_size=1, calib_size=1,
                               test_size=1), tiny_rgb_vit())


def test_a_model_of_any_image_size_takes_data_image_size():
    """timm's dynamic_img_size: built at 16 px (its default input), it runs 24-px images when asked for them."""
    import timm

    from autocomp.data._config import resolve_preprocessing

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(16, 24), patch_size=4,
                              num_classes=2, embed_dim=32, depth=1, num_heads=2, dynamic_img_size=True).eval()
    assert resolve_preprocessing(model, DataConfig(dataset="imagefolder", image_size=24)).image_size == 24
    square = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, num_classes=2,
                               embed_dim=32, depth=1, num_heads=2, dynamic_img_size=True).eval()
    assert resolve_preprocessing(square, DataConfig(dataset="imagefolder")).image_size == 16
    assert model(torch.zeros(1, 3, 24, 24)).shape == (1, 2)


def test_file_names_that_are_not_utf8_are_read_like_any_other(tmp_path):
    import os

    make_folder(tmp_path, {"cat": 6, "dog": 6})
    for i in range(6):  # an old archive's Latin-1 names
        os.rename(os.fsencode(tmp_path / "cat" / f"{i}.png"), os.fsencode(tmp_path / "cat") + b"/caf\xe9%d.png" % i)
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2, calib_size=2,
                                    test_size=2, workers=0), tiny_rgb_vit())
    files = [*splits.train.files, *splits.val.files, *splits.test.files]
    assert len(set(files)) == 10 and sum("caf\udce9" in f for f in files) >= 4
    x, y = splits.train.tensors()  # decoded too
    assert x.shape == (6, 3, 16, 16)


def test_a_split_prints_as_a_line_not_its_tensors_or_files(tmp_path):
    from autocomp.data import TensorSplit

    split = TensorSplit(x=torch.zeros(300, 1, 8, 8), y=torch.arange(300) % 10)
    assert repr(split) == "TensorSplit(300 images of (1, 8, 8), labels 0..9)"
    make_folder(tmp_path, {"red": 6, "green": 6}, size=(8, 8))
    folder = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=1, calib_size=1, test_size=1,
                                    workers=0), tiny_rgb_vit())
    assert repr(folder.train) == f"FolderSplit(9 images under {tmp_path}, labels 0..1)"


def test_a_checkpoints_training_arguments_give_the_preprocessing_the_job_leaves_out(tmp_path):
    """timm's train.py saves its arguments in its checkpoints: a model trained with mean, std, crop and
    interpolation of its own (not its pretrained tag's) was fed images made with the tag's, unless the job repeated
    every one of them; the job's keys still come first, and the source of each is said."""
    import argparse
    import warnings

    from autocomp import AutocompWarning
    from autocomp.data import preprocessing_source
    from autocomp.data._config import resolve_preprocessing
    from autocomp.models import ModelSpec, create_model

    trained = tiny_rgb_vit()
    args = argparse.Namespace(model="vit_tiny_patch16_224", mean=[0.4, 0.4, 0.4], std=(0.2, 0.2, 0.2), crop_pct=1.0,
                              interpolation="bilinear", img_size=16, lr=0.1, input_size=None)
    torch.save({"epoch": 3, "state_dict": trained.state_dict(), "args": args}, tmp_path / "last.pth.tar")
    spec = ModelSpec(name="vit_tiny_patch16_224", checkpoint=str(tmp_path / "last.pth.tar"),
                     kwargs={"img_size": 16, "patch_size": 4, "num_classes": 2, "embed_dim": 32, "depth": 1,
                             "num_heads": 2})
    model = create_model(spec)
    folder = DataConfig(dataset="imagefolder", root="images")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutocompWarning)  # no "built for 16 px, its config's crop is 224 px's"
        made = resolve_preprocessing(model, folder)
    assert (made.mean, made.std, made.crop_pct, made.interpolation) == ((0.4,) * 3, (0.2,) * 3, 1.0, "bilinear")
    assert preprocessing_source(model, folder) == (
        "mean, std, interpolation, crop_pct from the checkpoint's training arguments (its args), the rest from the "
        "model's timm data config (vit_tiny_patch16_224.augreg_in21k_ft_in1k)")
    job = DataConfig(dataset="imagefolder", root="images", mean=[0.5])
    assert resolve_preprocessing(model, job).mean == (0.5,) * 3
    assert preprocessing_source(model, job).startswith("data.mean from the job, std, interpolation, crop_pct from the "
                                                       "checkpoint's training arguments (its args), the rest from")
    # train.py's unset arguments (None, '') leave the model's config as it is
    torch.save({"state_dict": trained.state_dict(), "args": argparse.Namespace(mean=None, std=None, crop_pct=None,
                                                                               interpolation="")},
               tmp_path / "last.pth.tar")
    assert preprocessing_source(create_model(spec), folder) == (
        "from the model's timm data config (vit_tiny_patch16_224.augreg_in21k_ft_in1k)")


def test_training_arguments_of_the_wrong_kind_are_not_taken_for_preprocessing():
    from autocomp.data._config import trained_with

    assert trained_with({"mean": [0.5, 0.5, 0.5, 0.5], "std": [0.2], "crop_pct": True, "interpolation": "cubic",
                         "crop_mode": None}) == {"std": (0.2,)}
    assert trained_with("a string") == {} and trained_with(None) == {}
