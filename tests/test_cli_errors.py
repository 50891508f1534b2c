"""Bad input ends in one clear line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from autocomp._loader import read_yaml
from autocomp.cli import NOTHING_WITHIN_BUDGET, main
from autocomp.errors import AutocompError, AutocompWarning
from autocomp.recipe import Recipe
from test_search_e2e import ROOT, write_job


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("autocomp: error: ") and "Traceback" not in err
    return err


def edit_job(path: Path, change) -> Path:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def job(tmp_path, tiny_teacher):
    return write_job(tmp_path, tiny_teacher[0], {"latency": 0.5}, trials=2)


def test_the_help_says_what_autocomp_does_and_names_every_command(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    printed = capsys.readouterr().out
    # a sentence of its own, not the module docstring's first line cut short, with its reStructuredText quotes
    assert "Find the best compressed Vision Transformer for a device budget" in printed and "``" not in printed
    assert all(command in printed for command in ("search", "pareto", "export", "measure", "profile",
                                                          "check-costmodel"))


def test_help_and_pareto_start_without_torch_and_the_package_still_exports_compress(tmp_path):
    """torch and timm take seconds to import: ``autocomp --help`` and ``autocomp pareto`` need neither, and the
    package's exports that do are imported on first use, the functions and classes, not their modules."""
    code = ("import sys\nfrom autocomp.cli import main\n"
            "for argv in (['--help'], ['pareto', sys.argv[1]]):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('imported:', sorted({'torch', 'timm'} & set(sys.modules)))\n"
            "import autocomp\nprint(autocomp.ops.Quantize.__name__)")  # a submodule, after a bare import
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "no-run")], capture_output=True, text=True,
                          check=True)
    assert "has no pareto.json" in done.stderr  # the pareto command ran as far as reading the run folder
    assert done.stdout.splitlines()[-2:] == ["imported: []", "Quantize"]
    import autocomp
    import autocomp._compress  # the module behind autocomp.compress, once imported, leaves the function in place
    import autocomp.recipe

    assert autocomp.compress is autocomp._compress.compress and autocomp.Recipe is autocomp.recipe.Recipe
    assert {"compress", "Recipe", "Distill"} <= set(dir(autocomp))


def test_python_dash_m_autocomp_is_the_command(tmp_path):
    """Where the venv's scripts folder is not on the PATH, ``python -m autocomp`` runs the same command (it said
    "No module named autocomp.__main__"), with its exit status."""
    helped = subprocess.run([sys.executable, "-m", "autocomp", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: autocomp ")
    refused = subprocess.run([sys.executable, "-m", "autocomp", "pareto", str(tmp_path / "no-run")],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "has no pareto.json" in refused.stderr and "Traceback" not in refused.stderr


def test_unknown_model_name(job, tmp_path, capsys):
    edit_job(job, lambda d: d["model"].update(name="deit_tiny_patch16_22"))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert "unknown timm model 'deit_tiny_patch16_22'; did you mean deit_tiny_patch16_224" in err


def test_malformed_yaml(job, tmp_path, capsys):
    job.write_text("model: [unclosed\n")
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert f"{job} is not valid YAML" in err
    assert err.endswith("(while parsing a flow sequence started at line 1, column 8)")  # where the list opened
    job.write_text("data:\n  dataset: folder\n   root: images\n")  # one space too many
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert err == (f"autocomp: error: config file {job} is not valid YAML: mapping values are not allowed here at "
                   "line 3, column 8: 'root: images'")


def test_a_key_given_twice_is_refused_naming_both_lines(job, tmp_path, capsys):
    """PyYAML keeps the last of two equal keys: a budget written twice lost its first limit without a word; a
    space's or a recipe's key twice in a flow mapping likewise. A YAML merge key may still be overridden."""
    text = job.read_text()
    job.write_text(text + "budget: {memory: 0.9}\n")
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    line = len(text.splitlines()) + 1
    first = next(number for number, row in enumerate(text.splitlines(), 1) if row.startswith("budget:"))
    assert err == (f"autocomp: error: config file {job} is not valid YAML: the key 'budget' is given a second time "
                   f"(keep one; the first is at line {first}) at line {line}, column 1: 'budget: {{memory: 0.9}}'")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("blocks:\n  - {prune_heads: {keep: 2}, prune_heads: {keep: 3}}\n")
    with pytest.raises(AutocompError, match=r"the key 'prune_heads' is given a second time \(keep one; the first "
                                            r"is at line 2\) at line 2, column 30"):
        Recipe.load(recipe)
    merged = tmp_path / "merged.yaml"
    merged.write_text("a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n")
    assert read_yaml(merged, what="file") == {"a": {"b": 1}, "c": {"b": 2}}


def test_unknown_key_names_key_and_file(job, tmp_path, capsys):
    edit_job(job, lambda d: d["data"].update(vals_size=3))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert f"{job}: data: unknown key(s) ['vals_size']" in err
    assert err.endswith("; did you mean 'val_size' for 'vals_size'?")  # a typo of a key it has
    edit_job(job, lambda d: (d["data"].pop("vals_size"), d.update(trails=3)))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert "unknown key(s) ['trails']" in err and err.endswith("; did you mean 'trials' for 'trails'?")
    # a key in other case is that key (memory_MB: memory_mb, an absolute limit), not the nearest spelling (memory,
    # a fraction, which the same number would mean otherwise)
    edit_job(job, lambda d: (d.pop("trails"), d.update(budget={"memory_MB": 0.7})))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert err.endswith("; did you mean 'memory_mb' for 'memory_MB'?"), err


def test_unknown_key_in_search_space(job, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("heads_keep: [0.5, 1.0]\nbits: [8]\n")
    edit_job(job, lambda d: d.update(search_space=str(space)))
    assert main(["search", str(job), "--out", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert f"search space {space}: unknown key(s) ['bits']" in err and "did you mean" not in err  # none close
    assert "measuring on" not in out  # said before the target is looked at (a profile may calibrate first)


def test_missing_dataset(job, tmp_path, capsys):
    edit_job(job, lambda d: d.update(data={"dataset": "fashion_mnist", "root": str(tmp_path / "nowhere")}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert "Fashion-MNIST files not found" in err and "apt-get install -y dataset-fashion-mnist" in err
    assert err.startswith(f"autocomp: error: data.root: Fashion-MNIST files not found in {tmp_path / 'nowhere'}")
    assert "fix data.root" in err


def test_missing_image_folder_is_named_before_the_model_preprocessing(job, tmp_path, capsys):
    edit_job(job, lambda d: d.update(data={"dataset": "imagefolder", "root": str(tmp_path / "nowhere")}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert f"data.root: image folder '{tmp_path / 'nowhere'}'" in err and "is not a directory" in err


def test_a_one_channel_model_on_an_image_folder_asks_for_its_mean_and_std(job, tmp_path, capsys):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(12):
            Image.new("RGB", (8, 8)).save(tmp_path / "images" / label / f"{index}.png")
    edit_job(job, lambda d: d.update(data={"dataset": "imagefolder", "root": str(tmp_path / "images"), "val_size": 4,
                                           "calib_size": 4, "test_size": 4, "workers": 0}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert "the model takes 1 channel(s) but its timm config gives mean [0.485, 0.456, 0.406]" in err
    assert "set data.mean and data.std to 1 value(s) each" in err


def test_a_model_whose_outputs_are_not_the_datas_classes_is_refused(job, tmp_path, capsys):
    # 10 outputs on a folder of 3 classes: it scored near chance and distilled against labels it has no output for
    from PIL import Image

    for label in ("a", "b", "c"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(8):
            Image.new("L", (8, 8), color=index * 9).save(tmp_path / "images" / label / f"{index}.png")
    edit_job(job, lambda d: d.update(data={"dataset": "imagefolder", "root": str(tmp_path / "images"), "val_size": 4,
                                           "calib_size": 4, "test_size": 4, "workers": 0, "mean": [0.5],
                                           "std": [0.5]}))
    assert main(["search", str(job), "--out", str(tmp_path / "r")]) == 2
    said = capsys.readouterr()
    err = said.err.strip()
    # what the data is comes first, with a note on validation images drawn from those it may have been trained on
    assert re.search(r"data: \d+ training \(the folder\), 4 calibration \(held out of the folder\), 4 validation "
                     r"\(held out of the folder\), 4 test \(held out of the folder\) images", said.out), said.out
    assert "note: the validation and test images are held out of the folder, which the model may have been trained " \
        "on: their scores read high then, and every candidate's with them; val/ and test/ folders of images it never " \
        "saw avoid it" in said.out
    assert ("the model has 10 outputs but the data has 3 classes; its outputs must be the data's classes (class "
            "folders in sorted order): set model.kwargs.num_classes: 3") in err
    # one class folder: that advice (num_classes: 1) ran a search where every candidate scored 100%
    for label in ("b", "c"):
        shutil.rmtree(tmp_path / "images" / label)
    for index in range(8, 24):  # images enough for the held-out splits
        Image.new("L", (8, 8), color=index * 9).save(tmp_path / "images" / "a" / f"{index}.png")
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r1")], capsys)
    assert err.endswith(f"the data has 1 class ({tmp_path / 'images'}: one class folder): every image has the same "
                        "label, so every candidate scores 100% and nothing tells them apart; give images of at least "
                        "2 classes")


def test_a_forward_that_returns_no_logits_tensor_is_refused_saying_so():
    """A forward returning a tuple or a dict was said to fail on the data's images ("'tuple' object has no attribute
    'shape'; set data.image_size"), and a module with another class count was told to set model.kwargs."""

    import torch

    from autocomp.search._before import check_classes

    class Returns(torch.nn.Module):
        def __init__(self, make):
            super().__init__()
            self.make = make

        def forward(self, x):
            return self.make(len(x))

    splits = SimpleNamespace(calib=SimpleNamespace(x=torch.zeros(2, 3, 8, 8)), num_classes=3)
    for make, got in [(lambda n: (torch.zeros(n, 3), None), "a tuple"),
                      (lambda n: {"logits": torch.zeros(n, 3)}, "a dict"),
                      (lambda n: torch.zeros(n, 5, 3), "a tensor of shape (1, 5, 3)")]:
        model = Returns(make)
        with pytest.raises(AutocompError, match=f"^the model's forward returns {re.escape(got)} for one image; "
                                                "autocomp scores and distils the logits, a tensor of "):
            check_classes(model, splits, SimpleNamespace(data=SimpleNamespace(dataset="imagefolder"), model=model))
    model = Returns(lambda n: torch.zeros(n, 10))
    with pytest.raises(AutocompError, match=r"has 10 outputs but the data has 3 classes; .*: give a module with 3 "
                                            r"outputs trained on these classes \(a timm model's reset_classifier"):
        check_classes(model, splits, SimpleNamespace(data=SimpleNamespace(dataset="imagefolder"), model=model))


def test_the_front_shows_the_candidates_measured_again_and_whether_they_held(tmp_path, capsys):
    """A trial within budget by its one measurement and over it measured again (so not best/) read "within budget:
    yes" in the table, with nothing to say otherwise (a new user found it in summary.json)."""
    import json

    front = [{"number": n, "accuracy": a, "latency_ms": ms, "memory_mb": 1.0, "feasible": True,
              "recipe_summary": "b0: heads 0.5"} for n, a, ms in ((5, 60.0, 12.873), (3, 50.0, 10.5), (1, 40.0, 9.0))]
    (tmp_path / "pareto.json").write_text(json.dumps({"trials": front, "limits": {"latency_ms": 15.99}}))
    assert main(["pareto", str(tmp_path)]) == 0
    assert "measured again" not in capsys.readouterr().out  # a run still searching: no column
    again = [{"trial": 5, "remeasured_latency_ms": 16.4, "remeasured_memory_mb": 1.0, "within_budget_again": False},
             {"trial": 3, "remeasured_latency_ms": 10.46, "remeasured_memory_mb": 1.0, "within_budget_again": True}]
    (tmp_path / "summary.json").write_text(json.dumps({"remeasured": again}))
    assert main(["pareto", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "measured again" in next(line for line in lines if "trial" in line)
    cells = {line.split("│")[1].strip(): line.split("│")[6].strip() for line in lines if line.count("│") == 8}
    assert cells == {"5": "16.400 ms, over", "3": "10.460 ms, within", "1": "-"}
    (tmp_path / "summary.json").write_text("{")  # a damaged summary: the table without the column, no traceback
    assert main(["pareto", str(tmp_path)]) == 0 and "measured again" not in capsys.readouterr().out


def test_a_model_that_has_learnt_nothing_of_the_data_is_warned_about(tiny_teacher, digits_splits):
    """An untrained checkpoint (a new user's cached teacher was one) searched without a word: every accuracy the run
    reported was of a model at chance. Chance is the most common class's share, within two standard errors."""
    import torch

    from autocomp.data import TensorSplit
    from autocomp.models import create_model
    from autocomp.search._before import untrained_note
    from autocomp.train import evaluate

    spec, trained = tiny_teacher
    config = SimpleNamespace(model=spec, data=SimpleNamespace(dataset="digits"))
    assert untrained_note(evaluate(trained, digits_splits.val), digits_splits.val, config) is None
    torch.manual_seed(0)
    untrained = create_model(dataclasses.replace(spec, checkpoint=None))
    accuracy = evaluate(untrained, digits_splits.val)
    note = untrained_note(accuracy, digits_splits.val, config)
    assert note.startswith(f"the uncompressed model scores {accuracy:.2f}% on validation, not clearly better than "
                           "always answering the most common class (")
    assert f"(model.checkpoint: {spec.checkpoint})" in note
    skewed = TensorSplit(x=torch.zeros(100, 1, 8, 8), y=torch.tensor([0] * 90 + [1] * 10))  # 90% one class
    assert "(90.00% of the 100 images; within two standard errors)" in untrained_note(92.0, skewed, config)  # 6 pts
    assert untrained_note(97.0, skewed, config) is None
    assert untrained_note(0.0, skewed.subset(49), config) is None  # a few images: noise, warned about apart


def test_a_model_that_fails_on_the_datas_images_is_refused_with_what_to_set(job, tmp_path, capsys, monkeypatch):
    # a module of the user's own without a timm data config gets timm's default size (224 px): its own forward error
    # was a traceback through autocomp
    from PIL import Image

    for channel, label in enumerate(("a", "b")):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(8):
            color = tuple((index + 1) * 9 if c == channel else 0 for c in range(3))  # no image in both classes
            Image.new("RGB", (40, 40), color=color).save(tmp_path / "images" / label / f"{index}.png")
    (tmp_path / "my_vits.py").write_text(
        "import torch\nfrom timm.models.vision_transformer import Block\n\n"
        "class Small(torch.nn.Module):  # a ViT of the user's own, with no patch_embed to say its image size\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.blocks = torch.nn.Sequential(Block(dim=8, num_heads=2))\n\n"
        "    def forward(self, x):\n"
        "        if x.shape[-1] != 32:\n"
        "            raise RuntimeError(f'expected 32x32 images,\\n got {tuple(x.shape)}')\n"
        "        return x.mean(dim=(1, 2, 3))[:, None].repeat(1, 2)\n\n"
        "def small(**kwargs):\n"
        "    return Small()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    edit_job(job, lambda d: d.update(model={"factory": "my_vits:small"},
                                     data={"dataset": "imagefolder", "root": str(tmp_path / "images"), "val_size": 4,
                                           "calib_size": 4, "test_size": 4, "workers": 0, "mean": [0.5],
                                           "std": [0.5]}))
    with pytest.warns(UserWarning) as said:  # the size it guessed, then what that did
        err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert [str(w.message) for w in said] == [
        "the model has no timm data config (pretrained_cfg), so its images are made with timm's defaults: image_size "
        "224, crop_pct 0.875 (the centre 87.5% of each image), interpolation bicubic; set data.image_size, "
        "data.crop_pct, data.interpolation to what it was trained with (data.crop_pct 1.0: the whole image)"]
    assert err == ("autocomp: error: the model fails on the data's images (3x224x224, channels x height x width): "
                   "RuntimeError: expected 32x32 images, got (1, 3, 224, 224); set data.image_size (and data.mean, "
                   "data.std) to the images the model was trained on")


def test_a_factory_module_that_cannot_be_imported_says_where_it_can_be(job, tmp_path, capsys):
    """Not installed, beside the job file, on PYTHONPATH: said with the three places; a module named by its file
    (my_vits.py:small) with its name (my_vits:small)."""
    edit_job(job, lambda d: d.update(model={"factory": "nowhere_vits:small"}))
    assert run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys) == (
        "autocomp: error: model.factory 'nowhere_vits:small': cannot import nowhere_vits (No module named "
        "'nowhere_vits'); install it, put it beside the job file, or add its folder to PYTHONPATH")
    (job.parent / "my_vits.py").write_text("def small():\n    raise RuntimeError('not reached')\n")
    edit_job(job, lambda d: d.update(model={"factory": "my_vits.py:small"}))
    assert run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys).endswith(
        "; give the module's name, not its file: my_vits:small")
    assert not (tmp_path / "r").exists()


def test_checkpoint_that_does_not_fit(job, tmp_path, capsys):
    edit_job(job, lambda d: d["model"]["kwargs"].update(embed_dim=48))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert "does not fit the model" in err


def test_missing_checkpoint(job, tmp_path, capsys):
    edit_job(job, lambda d: d["model"].update(checkpoint=str(tmp_path / "nope.safetensors")))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert "checkpoint not found" in err
    # relative: both places it was looked for are said, the job file's folder by name
    edit_job(job, lambda d: d["model"].update(checkpoint="nope.safetensors"))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert (f"checkpoint not found: 'nope.safetensors' (looked at {job.parent.resolve() / 'nope.safetensors'}, "
            f"{Path.cwd() / 'nope.safetensors'}); fix the path") in err


def test_a_timm_name_without_a_checkpoint_is_said_to_be_random_weights(job, tmp_path, capsys):
    # timm would start vit_* from random weights: a search then ranks a random model's accuracies
    edit_job(job, lambda d: d["model"].pop("checkpoint"))
    edit_job(job, lambda d: d.update(data={"dataset": "imagefolder", "root": str(tmp_path / "nowhere")}))
    with pytest.warns(AutocompWarning) as said:  # stopped at the images, after the model
        assert main(["search", str(job), "--out", str(tmp_path / "r")]) == 2
    assert [str(w.message) for w in said] == [
        "model.checkpoint is not given: deit_tiny_patch16_224 starts from random weights (autocomp never downloads "
        "timm's pretrained ones), so every accuracy of this search is a random model's; give the trained weights "
        "file (.safetensors or .pth) in model.checkpoint"]


def test_bad_budget(job, tmp_path, capsys):
    edit_job(job, lambda d: d.update(budget={"latency": -1}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert (f"{job}: budget.latency must be a positive number (a fraction of the uncompressed model's latency), "
            'e.g. 0.6 or "60%", got -1') in err  # not "budget: budget.latency"
    for bad, shown in ((float("nan"), "nan"), (float("inf"), "inf")):  # YAML's .nan and .inf: no limit at all
        edit_job(job, lambda d: d.update(budget={"memory_mb": bad}))
        err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
        assert f"budget.memory_mb must be a positive number of megabytes (10^6 bytes), e.g. 8, got {shown}" in err
    edit_job(job, lambda d: d.update(budget={"latency": 80}))  # a percentage where a fraction is meant
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert err.endswith(f"{job}: budget.latency is a fraction of the uncompressed model's latency (0.5: half of it), "
                        "at most 1, got 80; did you mean 0.8 (80%)? an absolute limit is budget.latency_ms")
    edit_job(job, lambda d: d.update(budget={"memory": 400}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert err.endswith("got 400; an absolute limit is budget.memory_mb")
    edit_job(job, lambda d: d.update(budget={"weights": 4}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert err.endswith("got 4; an absolute limit is budget.weights_mb")
    edit_job(job, lambda d: d.update(budget={"weights_mb": 8, "weights": 0.5}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert err.endswith("budget: give weights_mb or weights (fraction), not both")


def test_a_fraction_written_as_a_percentage_is_that_fraction(job):
    """The README words budgets as "at most 65% of the current latency": "65%" in the job is 0.65, the same job."""
    from autocomp.budget import Budget
    from autocomp.config import load_config

    edit_job(job, lambda d: d.update(budget={"latency": "65%", "memory": "12.5 %"}))
    assert load_config(job).budget == Budget(latency=0.65, memory=0.125)
    for bad in ("65", "%", "65%%", "-5%"):  # a number as text without %, no number: refused as before
        with pytest.raises(AutocompError, match=f"budget.latency must be a positive number .* got '{bad}'"):
            Budget(latency=bad)
    assert Budget(latency="33.3%") == Budget(latency=0.333)  # as written: the same job as 0.333
    for bad in ("0%", "1000%"):
        with pytest.raises(AutocompError, match=f"above 0% and at most 100%, got '{bad}'"):
            Budget(latency=bad)


def test_one_number_for_every_channel_and_a_capitalised_interpolation_are_taken(job):
    """data.mean: 0.5 is what the error for a wrong count asks for ("give 3 values or one"), as [0.5] is; BICUBIC,
    as PIL spells it, is bicubic."""
    from autocomp.config import load_config

    edit_job(job, lambda d: d["data"].update(mean=0.5, std=[0.25]))
    assert (load_config(job).data.mean, load_config(job).data.std) == ((0.5,), (0.25,))
    data = load_config(job).data
    edit_job(job, lambda d: d["data"].update(mean=[0.5], std=0.25))
    assert load_config(job).data == data  # the same job, however written
    from autocomp.data import DataConfig

    assert DataConfig(dataset="imagefolder", root="x", interpolation="BICUBIC").interpolation == "bicubic"
    with pytest.raises(AutocompError, match="data.interpolation must be one of"):
        DataConfig(dataset="imagefolder", root="x", interpolation="cubic")


def test_a_quantize_layers_choice_naming_no_linear_of_the_model_is_refused_before_the_passes(job, tmp_path, capsys,
                                                                                              monkeypatch):
    """The space alone cannot know the model's layer names: a typo (fcX) would make the operators refuse every 8-bit
    candidate, and the passes leave 8-bit weights out of every block unsaid."""
    def measured(*args, **kwargs):
        raise AssertionError("the uncompressed model was measured before the space's layer names were checked")

    monkeypatch.setattr("autocomp.search._before.baseline_cost", measured)
    space = tmp_path / "space.yaml"
    space.write_text("weight_bits: [32, 8]\nquantize_layers: [all, 'qkv,fcX']\n")
    edit_job(job, lambda d: d.update(search_space=str(space)))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert (f"search space {space}: quantize_layers choice 'qkv,fcX': block 0: quantize.layers entry 'fcX' matches "
            "no Linear of the block; its Linears: ['attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2']") in err
    assert not (tmp_path / "r").exists()


def test_bad_hardware_profile(job, tmp_path, capsys):
    profile = tmp_path / "hw.yaml"
    profile.write_text("name: x\nthreads: 0\n")
    edit_job(job, lambda d: d.update(hardware=str(profile)))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert f"hardware profile {profile}: threads must be a whole number >= 1, got 0" in err


def test_load_of_a_non_model_folder(tmp_path, capsys):
    err = run_cli(["export", str(tmp_path), "--trial", "0", "--out", str(tmp_path / "x")], capsys)
    assert "is not a search run folder" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_gpus_asked_where_cuda_is_absent(job, tmp_path, capsys):
    edit_job(job, lambda d: d.update(resources={"gpu": 1}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert "resources.gpu is 1 but CUDA is not available on this machine" in err
    assert not (tmp_path / "r" / "trials.csv").exists()  # refused before any trial


def test_more_cpus_per_trial_than_any_node_has(job, tmp_path, capsys):
    edit_job(job, lambda d: d.update(resources={"cpu": 512}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert "resources asks 512 CPU + 0 GPU per trial, but no node of the Ray cluster has that many" in err
    assert not (tmp_path / "r" / "trials.csv").exists()  # refused before any trial


def test_an_empty_budget_is_named_once(job, tmp_path, capsys):
    edit_job(job, lambda d: d.update(budget={}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert f"{job}: budget is empty; set at least one of latency_ms" in err


@pytest.mark.parametrize("resources, message", [({"cpu": 0}, "resources.cpu must be a whole number of CPUs >= 1"),
                                                ({"gpu": -1}, "resources.gpu must be a number of GPUs >= 0"),
                                                ({"cpus": 2}, "resources: unknown key(s) ['cpus']")])
def test_bad_resources(job, tmp_path, capsys, resources, message):
    edit_job(job, lambda d: d.update(resources=resources))
    assert message in run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)


def test_a_ray_client_address_is_refused_with_the_way_to_run(job, tmp_path, capsys):
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r"), "--ray-address", "ray://127.0.0.1:10001"],
                  capsys)
    assert "Ray Client (ray://) addresses are not supported" in err and "HOST:PORT" in err


def test_a_ray_of_this_process_whose_head_is_gone_is_refused_before_anything_loads(job, tmp_path, capsys,
                                                                                      monkeypatch):
    """Ray initialized in this process, its head since stopped or killed (`ray stop`, the OOM killer): the search
    took it, waited a minute on it, and Ray ended the process (a notebook's kernel with it)."""
    import socket
    import types

    import ray

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    gone = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(gcs_address=gone))
    for address in (None, gone):
        err = run_cli(["search", str(job), "--out", str(tmp_path / "r")]
                      + (["--ray-address", address] if address else []), capsys)
        assert err.startswith(f"autocomp: error: the Ray initialized in this process ({gone}) is not running any "
                              "more: its head refuses connections (stopped, or killed); call ray.shutdown() before "
                              "the search") and len(err.splitlines()) == 1
        assert not (tmp_path / "r").exists()


def test_a_ray_address_without_a_ray_head_is_refused_before_anything_loads(job, tmp_path, capsys, monkeypatch):
    """Ray retries an address for minutes, and only after the data and the baseline loaded: an address without a
    port, a port where nothing listens, and one where a web server (the dashboard's port, say) answers are refused
    first, each with what to give instead."""
    import http.server
    import socket
    import threading

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # stderr is the CLI's, read by the test
            pass

    web = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    grpc_like = socket.socket()  # answers as a gRPC server does: its SETTINGS frame first
    grpc_like.bind(("127.0.0.1", 0))
    grpc_like.listen()

    def answer():
        conn, _ = grpc_like.accept()
        with conn:
            conn.recv(64)
            conn.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))

    threading.Thread(target=answer, daemon=True).start()
    from autocomp.search._ray import check_ray_address

    check_ray_address(f"127.0.0.1:{grpc_like.getsockname()[1]}")  # taken: a Ray head would answer so
    # ... unless Ray would look for it elsewhere: without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, at this machine's own
    # address (here another loopback address, where nothing listens), and would retry it without end
    threading.Thread(target=answer, daemon=True).start()
    import ray.util

    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.2")
    from ray._private import ray_constants

    # as Ray was imported without the variable (here it was not); set now, as a script sets it after importing
    # autocomp.search, Ray does not see it, and the fix said was to start the head on loopback, as it was already
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r"), "--ray-address",
                   f"127.0.0.1:{grpc_like.getsockname()[1]}"], capsys)
    assert err == (f"autocomp: error: Ray address 127.0.0.1:{grpc_like.getsockname()[1]} (--ray-address): Ray would "
                   f"join it at this machine's address 127.0.0.2:{grpc_like.getsockname()[1]}, where the head does not "
                   "listen (it listens on loopback alone); set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Python "
                   "starts (export it, as where the head was started: Ray reads it once, when first imported, and "
                   "`import autocomp.search` imports Ray), so that Ray stays on loopback, or give the head's other "
                   "address")
    monkeypatch.undo()
    grpc_like.close()
    try:
        for address, said in [("127.0.0.1", "give the head's HOST:PORT"), ("::1", "give the head's HOST:PORT"),
                              (f"127.0.0.1:{free_port}", "nothing answers there (Connection refused)"),
                              (f"127.0.0.1:{web.server_port}", "what answers there is not a Ray head")]:
            err = run_cli(["search", str(job), "--out", str(tmp_path / "r"), "--ray-address", address], capsys)
            assert f"Ray address {address} (--ray-address): {said}" in err and "ray start --head" in err
            assert not (tmp_path / "r").exists()
    finally:
        web.shutdown()


def test_a_search_says_when_its_clusters_head_stops_answering(monkeypatch):
    """Ray ends the driver when the head is lost (within seconds where it stopped on this machine, a minute after
    where its machine is lost), with a message of its own: the search says first that the head stopped, what is
    kept and how to resume; not while the head answers, and once."""
    import socket
    import time

    from autocomp.search._ray import HeadWatch

    head = socket.socket()
    head.bind(("127.0.0.1", 0))
    head.listen(64)  # the watch's connections wait there, never accepted
    address = f"127.0.0.1:{head.getsockname()[1]}"
    said: list[str] = []
    watch = HeadWatch(address, said.append, every_s=0.05, silent_s=30.0)
    watch.start()
    time.sleep(0.6)
    assert not said  # it answers
    head.close()  # nothing listens: refused, said at once (not after silent_s)
    watch.join(timeout=10)
    assert not watch.is_alive() and len(said) == 1
    assert said[0].startswith(f"warning: the Ray cluster's head at {address} refuses connections (stopped); Ray ends "
                              "this search within a minute: the trials done are kept in the run folder")
    assert "the same command resumes them once the cluster runs again" in said[0]
    lost: list[str] = []  # a head whose machine is gone: no refusal, silence (each connection times out)

    def times_out(*args, **kwargs):
        raise TimeoutError("timed out")
    monkeypatch.setattr(socket, "create_connection", times_out)
    silent = HeadWatch("192.0.2.1:6379", lost.append, every_s=0.05, silent_s=0.3)
    silent.start()
    silent.join(timeout=10)
    assert not silent.is_alive() and len(lost) == 1
    assert lost[0].startswith("warning: the Ray cluster's head at 192.0.2.1:6379 has not answered for 0.3 s")
    assert "unless it answers again, Ray ends this search a minute after losing it" in lost[0]
    monkeypatch.undo()
    raylet = socket.socket()  # the node this search runs on: its raylet stops before the head (ray stop)
    raylet.bind(("127.0.0.1", 0))
    own = f"127.0.0.1:{raylet.getsockname()[1]}"
    raylet.close()  # nothing listens there
    head = socket.socket()
    head.bind(("127.0.0.1", 0))
    head.listen(64)
    node: list[str] = []
    watch = HeadWatch(f"127.0.0.1:{head.getsockname()[1]}", node.append, raylet=own, every_s=0.05, silent_s=30.0)
    watch.start()
    watch.join(timeout=10)
    head.close()
    assert len(node) == 1 and node[0].startswith(f"warning: the Ray node this search runs on (its raylet at {own}) "
                                                 "stopped; Ray ends this search within a minute")
    again = socket.socket()
    again.bind(("127.0.0.1", 0))
    again.listen(64)
    quiet = HeadWatch(f"127.0.0.1:{again.getsockname()[1]}", said.append, every_s=0.05, silent_s=0.3)
    quiet.start()
    quiet.stop.set()  # the search ended: the watch ends with it, silent
    quiet.join(timeout=10)
    again.close()
    assert not quiet.is_alive() and len(said) == 1


def test_a_search_on_its_own_ray_says_when_that_ray_is_stopped(monkeypatch):
    """`ray stop` on this machine stops every Ray there, a search's embedded one too, and Ray then ends the search
    with a message of its own (it had ended with none): the search says first that its own Ray stopped, what is kept
    and how to resume."""
    import socket
    import types

    from autocomp.search import _ray

    raylet = socket.socket()
    raylet.bind(("127.0.0.1", 0))
    port = raylet.getsockname()[1]
    raylet.close()  # stopped: nothing listens there
    head = socket.socket()
    head.bind(("127.0.0.1", 0))
    head.listen(64)
    context = types.SimpleNamespace(gcs_address=f"127.0.0.1:{head.getsockname()[1]}", get_node_id=lambda: "own")
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kwargs: None, shutdown=lambda: None,
                                 get_runtime_context=lambda: context,
                                 nodes=lambda: [{"NodeID": "own", "NodeManagerAddress": "127.0.0.1",
                                                 "NodeManagerPort": port, "Alive": True}])
    monkeypatch.setattr(_ray, "import_ray", lambda: fake)
    said: list[str] = []
    try:
        with _ray.ray_session(workers=1, ray_address=None, log=said.append):
            _ray._WATCH.join(timeout=10)
    finally:
        head.close()
    assert _ray._WATCH is None  # the search ended: no watch left
    assert said == [f"warning: this search's own Ray (its raylet at 127.0.0.1:{port}) stopped or was killed (`ray "
                    "stop` on this machine stops every Ray here, this one too); Ray ends this search within a minute: "
                    "the trials done are kept in the run folder, and the same command resumes them, on a Ray of its "
                    "own again"]
    # a search being stopped (a SIGTERM to its process group takes its Ray down too) says nothing of it
    quiet = _ray.HeadWatch(context.gcs_address, said.append, raylet=f"127.0.0.1:{port}", every_s=0.05, embedded=True)
    _ray._WATCH = quiet
    _ray.search_ending()
    assert quiet.check() and len(said) == 1
    _ray._WATCH = None


def test_a_second_search_into_a_run_folder_in_use_is_refused(job, tmp_path, capsys):
    """While a search holds its run folder (its process and host in the lock), another one into the same folder
    stops before it loads anything; once the first lets go, the folder is the next search's."""
    import fcntl

    run = tmp_path / "r"
    run.mkdir()
    with open(run / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("process 4242 on elsewhere")
        held.flush()
        err = run_cli(["search", str(job), "--out", str(run)], capsys)
        assert f"another search is running into {run} (process 4242 on elsewhere); wait for it to end" in err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    from autocomp.search._rundir import one_search_at_a_time

    with one_search_at_a_time(run):  # released: taken by the next one, which names itself
        assert (run / ".lock").read_text().startswith(f"process {os.getpid()} on ")
    assert (run / ".lock").read_text() == ""  # once it ends, the lock names no process (it named one still)
    with pytest.raises(AutocompError, match="unreachable"), one_search_at_a_time(run):
        raise AutocompError("unreachable")  # a search refused midway ...
    with one_search_at_a_time(run):  # ... lets go of the folder all the same
        pass
    fresh = tmp_path / "new" / "run"  # a folder made for a search refused before it wrote anything is not left
    with pytest.raises(AutocompError, match="refused"), one_search_at_a_time(fresh):
        raise AutocompError("refused")
    assert not fresh.exists() and (tmp_path / "new").is_dir()
    with one_search_at_a_time(fresh):
        (fresh / "run.json").write_text("{}")
    assert sorted(p.name for p in fresh.iterdir()) == [".lock", "run.json"]


def test_a_run_folder_on_a_file_system_without_locks_is_searched_unlocked(tmp_path, monkeypatch):
    import errno
    import fcntl

    from autocomp.search._rundir import one_search_at_a_time

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    said = []
    with one_search_at_a_time(tmp_path / "r", said.append):
        ran = True
    assert ran and said == [f"note: the file system of {tmp_path / 'r'} takes no locks (No locks available): "
                            "nothing stops a second search into this folder while this one runs"]


def test_an_out_folder_that_cannot_be_written_is_refused(job, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "run"):
        err = run_cli(["search", str(job), "--out", str(out)], capsys)
        assert f"cannot write the run folder {out} (" in err and "give a run folder (--out) you can write" in err


def test_a_memory_budget_no_candidate_can_meet_is_refused_before_any_trial(tmp_path, tiny_teacher, capsys,
                                                                            monkeypatch):
    """Refused before the uncompressed model is measured (up to a minute on a runtime backend): memory is
    counted."""
    from test_search_e2e import write_job

    def measured(*args, **kwargs):
        raise AssertionError("the uncompressed model was measured before an impossible memory budget was refused")

    monkeypatch.setattr("autocomp.search._before.baseline_cost", measured)
    job = write_job(tmp_path, tiny_teacher[0], {"memory_mb": 1e-4}, trials=2, workers=1)
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "budget: memory_mb <= 0.0001 cannot be met in " in err
    assert "its smallest candidate (every block at heads_keep 0.5 (2 of 4 heads), weight_bits 8) holds " in err
    smallest = float(re.search(r" holds ([\d.]+) MB of weights and activations", err).group(1))
    needed = float(re.search(r"loosen the budget to at least ([\d.]+) MB or widen the search space$", err).group(1))
    assert smallest <= needed <= smallest * 1.001  # rounded up: a budget set to it admits the smallest candidate
    # beside it, the uncompressed model's (counted: what the search measures it at), more than the smallest's
    whole = float(re.search(r"weights and activations \(the uncompressed model: ([\d.]+) MB\)", err).group(1))
    assert whole > smallest
    assert not (tmp_path / "run").exists()  # nothing written: the same folder takes the corrected job


def test_a_memory_fraction_no_candidate_can_meet_is_refused_before_the_model_is_scored(tmp_path, tiny_teacher,
                                                                                       capsys, monkeypatch):
    """A fraction needs the uncompressed model's bytes, measured; not its accuracy on validation and test (minutes
    on a 224-px ViT): the refusal comes between the two."""
    from test_search_e2e import write_job

    def scored(*args, **kwargs):
        raise AssertionError("the uncompressed model was scored before an impossible memory budget was refused")

    monkeypatch.setattr("autocomp.search._before.baseline_accuracy", scored)
    job = write_job(tmp_path, tiny_teacher[0], {"memory": 0.01}, trials=2, workers=1)
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be met in " in err and "loosen the budget to at least memory: " in err


def test_a_weights_budget_no_candidate_can_meet_is_refused_before_any_trial(tmp_path, tiny_teacher, capsys,
                                                                             monkeypatch):
    """As a memory budget is: the weights are counted, and the smallest candidate's are named."""
    from test_search_e2e import write_job

    def measured(*args, **kwargs):
        raise AssertionError("the uncompressed model was measured before an impossible weights budget was refused")

    monkeypatch.setattr("autocomp.search._before.baseline_cost", measured)
    job = write_job(tmp_path, tiny_teacher[0], {"weights_mb": 1e-4, "latency": 0.9}, trials=2, workers=1)
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "budget: weights_mb <= 0.0001 cannot be met in " in err
    smallest = float(re.search(r" holds ([\d.]+) MB of weights \(the uncompressed model: ([\d.]+) MB\)", err).group(1))
    needed = float(re.search(r"loosen the budget to at least ([\d.]+) MB or widen the search space$", err).group(1))
    assert 0 < smallest <= needed <= smallest * 1.001
    assert not (tmp_path / "run").exists()
    # a memory limit its weights would meet, but not with the activations: the refusal names the weights' limit
    job = write_job(tmp_path, tiny_teacher[0], {"memory_mb": round(needed * 1.01, 6)}, trials=2, workers=1)
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert (f" MB), {smallest:.4g} MB of them weights (budget.weights_mb limits the weights alone); loosen the "
            "budget to at least ") in err
    job = write_job(tmp_path, tiny_teacher[0], {"memory_mb": 1e-4, "weights_mb": 1e-4}, trials=2, workers=1)
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()  # both limits out of reach: both said, not one after the other's fix
    assert err.startswith("autocomp: error: budget: memory_mb <= 0.0001 cannot be met") and err.endswith(
        f"; budget: weights_mb <= 0.0001 cannot be met either ({smallest:.4g} MB of weights: at least {needed:.4g} MB)")
    monkeypatch.undo()
    job = write_job(tmp_path, tiny_teacher[0], {"weights": 0.01}, trials=2, workers=1)  # as a fraction: said as one
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "budget: weights_mb <= " in err and "loosen the budget to at least weights: " in err


def test_a_search_space_given_as_settings_is_named_where_they_were_given(tmp_path, tiny_teacher, capsys):
    """Settings in the job file (or in Python) are written to a cache file to be read as a file is: messages name
    where the user gave them, not that file."""
    from test_search_e2e import ROOT, write_job

    job = write_job(tmp_path, tiny_teacher[0], {"weights_mb": 1e-4}, trials=2, workers=1)
    edit_job(job, lambda d: d.update(search_space={"extends": str(ROOT / "search_spaces" / "heads_int8.yaml"),
                                                   "weight_bits": [32]}))
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "budget: weights_mb <= 0.0001 cannot be met in the search space given in job.yaml: its smallest " in err
    assert "given/" not in err


def test_a_latency_budget_no_candidate_can_meet_is_refused_before_any_trial(tmp_path, tiny_teacher, capsys):
    """Measured, not predicted: each setting is timed in every block at once (before the passes, where the cost model
    places the limit out of reach: the strongest of each knob and each bit width); the space's fastest candidate is
    then timed, and a limit far under it is refused."""
    import re

    from autocomp.results import load_run_study
    from test_search_e2e import write_job

    job = write_job(tmp_path, tiny_teacher[0], {"latency": 0.05}, trials=4, workers=1)
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "sensitivity": {"images": 50}}))
    assert main(["search", str(job), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "budget: latency <= 0.05x (" in err and " cannot be met in " in err
    # it names what it holds, a setting of the space that saves time; which settings those are is the timing's call
    # (under load the tiny model's fastest once held neither heads_keep 0.5 nor int8 and measured 0.98x)
    held = re.search(r"its fastest candidate \((.+?)\) measured ", err).group(1)
    assert held.startswith("nothing compressed: ") or re.search(r"heads_keep 0\.(5|67|83)\b|weight_bits 8\b", held)
    assert "x the uncompressed model" in err
    assert "or widen the search space" in err
    # the timings that decided it are on disk, and a setting left out for saving too little is named with its ratio
    timed = csv.DictReader((tmp_path / "run" / "uniform_latency.csv").open())
    rows = {(r["knob"], float(r["value"])): r for r in timed}
    slow = {(knob, float(value)) for knob, value in re.findall(r"([a-z_]+) ([\d.]+) \([\d.]+x\)", err)}
    assert all(rows[s]["offered"] == "False" for s in slow)
    assert err.endswith("see uniform_latency.csv)") == bool(slow)
    assert not (tmp_path / "run" / "run.json").exists()  # so the same folder takes the corrected job
    assert load_run_study(tmp_path / "run").trials == []
    # the cost model placed it out of reach: measured before the passes, not minutes after them
    assert not (tmp_path / "run" / "sensitivity.csv").exists()


def test_autocomps_own_warnings_print_as_one_line_and_a_librarys_keep_their_source():
    import warnings

    from autocomp import cli

    ours = cli._format_warning(UserWarning("openvino-cpu cannot run int8 layers"), UserWarning,
                               str(Path(cli.__file__).parent / "measure" / "profiling.py"), 249)
    assert ours == "warning: openvino-cpu cannot run int8 layers\n"
    theirs = cli._format_warning(UserWarning("deprecated"), UserWarning, warnings.__file__, 1)
    assert warnings.__file__ in theirs and "UserWarning: deprecated" in theirs
    # autocomp's warnings name the first line outside the package (under the command line, the entry script)
    ours = cli._format_warning(AutocompWarning("set data.mean"), AutocompWarning, "/usr/bin/autocomp", 8)
    assert ours == "warning: set data.mean\n"


def test_sigterm_stops_a_command_as_ctrl_c_does_and_the_handler_before_comes_back():
    """kill PID (a background search, where the shell leaves SIGINT ignored; a scheduler's preemption) raises
    Terminated, a KeyboardInterrupt, so the search stops as on Ctrl-C: results kept, Ray shut down, one line."""
    import os
    import signal
    import time

    from autocomp import cli
    from autocomp._signals import terminated_as_interrupted

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(cli.Terminated), terminated_as_interrupted():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode: never reached
    assert signal.getsignal(signal.SIGTERM) is before



def test_a_job_config_made_in_python_with_a_part_of_the_wrong_type_is_refused_naming_it(job):
    """dataclasses.replace(config, budget=0.8), as a Python user changes a job: the field and the type it takes,
    in an AutocompError (not a TypeError from deep in the run); run_search takes a job's path too."""
    import dataclasses

    from autocomp.config import load_config
    from autocomp.search import run_search

    config = load_config(job)
    for field, value, said in (
            ("budget", 0.8, "budget must be autocomp.budget.Budget(latency=0.8) (or memory=), got float 0.8"),
            ("data", "digits", "data must be autocomp.data.DataConfig(dataset='imagefolder', root='images'), got "
                               "str 'digits'"),
            ("model", "vit_tiny_patch16_224", "model must be autocomp.models.ModelSpec(name='vit_small_patch16_224'), "
                                              "or the nn.Module itself, got str 'vit_tiny_patch16_224'"),
            ("hardware", None, "hardware must be the path of a hardware profile YAML file, the HardwareProfile or the "
                               "mapping its file would hold (e.g. dataclasses.replace(autocomp.hardware.read_profile("
                               "'hardware_profiles/local_cpu.yaml'), threads=2)), got NoneType None")):
        with pytest.raises(AutocompError) as refused:
            dataclasses.replace(config, **{field: value})
        assert str(refused.value) == said
        assert isinstance(refused.value, TypeError)  # caught as either
    assert dataclasses.replace(config, hardware=str(config.hardware)).hardware == config.hardware  # a str: a Path
    written = job.read_text()
    for section, value in (("budget", 0.8), ("resources", 2)):  # in a YAML file: the loader's words, not Python's
        edit_job(job, lambda d: d.update({section: value}))
        with pytest.raises(AutocompError) as refused:
            load_config(job)
        assert str(refused.value) == f"{job}: {section} must be a mapping of {section.title()} settings, got {value}"
        job.write_text(written)
    with pytest.raises(AutocompError, match=r"^run_search takes a JobConfig .* or the path of a job YAML, got dict$"):
        run_search({"trials": 2}, "run")
    edit_job(job, lambda d: d.update(trials=0))
    with pytest.raises(AutocompError, match="trials must be a whole number >= 1, got 0"):  # the path is read
        run_search(str(job), "run")


def test_a_job_changes_a_profile_or_space_it_extends_without_copying_the_file(job, tmp_path, capsys):
    """A 224-px user serving one image at a time could not set the shipped profile's batch of 16 from the job:
    ``hardware: {extends: <file>, batch_size: 1}`` takes the file's settings and changes those given (a search space
    likewise), checked as a file is; the same job read again is the same file, so its run resumes."""
    from autocomp.config import load_config
    from autocomp.hardware import read_profile
    from autocomp.search import load_space

    shipped_profile, shipped_space = ROOT / "hardware_profiles" / "local_cpu.yaml", ROOT / "search_spaces" / \
        "heads_int8.yaml"
    (tmp_path / "spaces").mkdir()
    shutil.copy(shipped_space, tmp_path / "spaces" / "mine.yaml")
    edit_job(job, lambda d: d.update(hardware={"extends": str(shipped_profile), "batch_size": 1},
                                     search_space={"extends": "spaces/mine.yaml", "weight_bits": [32]}))  # beside it
    config = load_config(job)
    profile, file = read_profile(config.hardware), read_profile(shipped_profile)
    assert profile.batch_size == 1 and profile == dataclasses.replace(file, batch_size=1)
    space = load_space(config.search_space)
    assert space.weight_bits == (32,) and space.heads_keep == load_space(shipped_space).heads_keep
    assert load_config(job).hardware == config.hardware  # read again: the same file
    from autocomp.measure.profiling import load_profile

    # measured on first use as its file is: what calibration fills in where unset (the kernels) filled in alike
    # (a file written with every setting left them empty: no int8 kernel, int8 candidates predicted slower)
    measured, file_measured = load_profile(config.hardware), load_profile(shipped_profile)
    assert measured.fast_weight_bits == file_measured.fast_weight_bits and 8 in measured.fast_weight_bits
    assert measured.fast_ops == file_measured.fast_ops and measured.batch_size == 1
    edit_job(job, lambda d: d.update(hardware={"extends": str(shipped_profile), "bach_size": 1}))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    assert (f"hardware profile given in {job} (hardware: {shipped_profile} with ['bach_size'] changed): unknown "
            "key(s) ['bach_size']") in err and "did you mean 'batch_size'" in err
    assert not (tmp_path / "r").exists()


def test_a_run_of_settings_given_as_a_mapping_says_which_setting_changed(job, tmp_path, tiny_teacher):
    """Settings given in the job (or in Python) are a file in the cache: a run refused as another job named the two
    cache files, not the setting that differs."""
    from autocomp._io import write_yaml
    from autocomp.config import load_config
    from autocomp.search import _rundir

    edit_job(job, lambda d: d.update(hardware={"extends": str(ROOT / "hardware_profiles" / "local_cpu.yaml"),
                                               "batch_size": 1}))
    recorded = _rundir.job_identity(load_config(job), tiny_teacher[1])[0]
    (tmp_path / "run").mkdir()
    write_yaml(tmp_path / "run" / "config.yaml", {key: str(value) if key in _rundir.FILES else value
                                                  for key, value in recorded.items()})  # as a run writes it
    edit_job(job, lambda d: d["hardware"].update(batch_size=2))
    again = load_config(job)
    settings, paths = _rundir._job_changes(tmp_path / "run", _rundir.job_identity(again, tiny_teacher[1])[0], again)
    assert settings == ["hardware.batch_size was 1, now 2"] and not paths


def test_a_search_without_a_front_says_its_outcome_once(tmp_path, capsys, monkeypatch):
    """The outcome is said again below the front's table, where the table pushed it up; a run with no front yet
    prints a line instead of the table, right below the outcome: repeating it there printed it twice in a row."""
    import json

    import autocomp.search

    message = "no candidate met the budget; closest was trial 1 (latency_ms over by 20.7%); loosen the budget"

    def search(config, out, **kwargs):
        print(message)
        return {"met_budget": False, "message": message}

    monkeypatch.setattr(autocomp.search, "run_search", search)
    example = Path(__file__).parents[1] / "examples" / "fashion_mnist" / "search.yaml"
    (tmp_path / "pareto.json").write_text(json.dumps({"trials": [], "limits": {}}))
    assert main(["search", str(example), "--out", str(tmp_path)]) == NOTHING_WITHIN_BUDGET == 3  # a script stops
    out = capsys.readouterr().out
    assert out.count(message) == 1 and "so there is no front" in out
    front = {"number": 3, "accuracy": 90.0, "latency_ms": 9.0, "memory_mb": 2.0, "feasible": False,
             "recipe_summary": "b0: heads 0.5"}
    (tmp_path / "pareto.json").write_text(json.dumps({"trials": [front], "limits": {"latency_ms": 8.0}}))
    assert main(["search", str(example), "--out", str(tmp_path)]) == NOTHING_WITHIN_BUDGET
    out = capsys.readouterr().out
    assert out.count(message) == 2 and out.rstrip().endswith(message)  # below the table too


@pytest.mark.parametrize("mistake", ["checkpoint", "mean"])
def test_a_mistake_in_the_job_is_said_before_the_cpu_is_measured_on_first_use(job, tmp_path, capsys, monkeypatch,
                                                                             mistake):
    # measuring a profile on first use takes half a minute: a missing file or a wrong data setting, found in a
    # second, is said first (it was said after the measurement)
    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path / "empty-cache"))

    def measured(*args, **kwargs):
        raise AssertionError("the CPU was measured before the job's mistake was said")

    monkeypatch.setattr("autocomp.measure.profiling.calibrate", measured)
    if mistake == "checkpoint":
        edit_job(job, lambda d: d["model"].update(checkpoint=str(tmp_path / "nope.safetensors")))
    else:
        edit_job(job, lambda d: d["data"].update(mean=[0.5, 0.5]))
    err = run_cli(["search", str(job), "--out", str(tmp_path / "r")], capsys)
    said = {"checkpoint": "checkpoint not found",
            "mean": "data.mean has 2 values but the model takes 1 channel; give one value"}[mistake]
    assert said in err


def test_a_process_forked_while_sigterm_stops_the_search_ends_by_it_as_by_default():
    """OpenVINO's telemetry forks a process per event and terminates it: the fork inherits the search's handler,
    which raised Terminated there too (a traceback from a copy of the search in its log); it now ends as by default."""
    import os
    import signal
    import time

    from autocomp._signals import terminated_as_interrupted

    with terminated_as_interrupted():
        child = os.fork()
        if child == 0:
            try:
                time.sleep(30)
            finally:
                os._exit(7)  # reached only where the handler raised in the child
        time.sleep(0.2)
        os.kill(child, signal.SIGTERM)
        _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop itself, as Python says it
def test_an_interrupt_python_drops_in_a_finalizer_is_raised_where_the_search_waits():
    """A SIGTERM that lands while Python runs a finalizer (a weakref callback, ``__del__``) raises there, and Python
    drops it ("Exception ignored in ..."): a search so terminated went on to its end. It is remembered, and the
    search's waits raise it; once the block that took it ends, it is forgotten."""
    import os
    import signal
    import time

    from autocomp._signals import Terminated, raise_pending, terminated_as_interrupted

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here, inside the finalizer

    with pytest.raises(Terminated), terminated_as_interrupted():
        Finalized()  # dropped at once: its finalizer takes the signal
        raise_pending()
    raise_pending()  # nothing pending after the block


def test_ctrl_c_left_ignored_by_the_shell_stays_ignored():
    """A script's `autocomp search ... &` runs with SIGINT ignored: Ctrl-C in its terminal is not for it (the
    command took it all the same, and stopped)."""
    import signal

    from autocomp._signals import terminated_as_interrupted

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with terminated_as_interrupted(ctrl_c=True) as taken:
            assert taken and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with terminated_as_interrupted(ctrl_c=True):  # Python's own: remembered as well (see the finalizer test)
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
