"""End to end at a realistic shape: a 224-px timm ViT (weights made here) searched on an image folder laid out as
train/ and val/, with the model's own per-channel preprocessing."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import timm
import timm.data
import torch
import yaml
from safetensors.torch import save_file
from test_data import make_folder

import autocomp
from autocomp.cli import main
from autocomp.config import load_config
from autocomp.errors import AutocompWarning
from autocomp.data import DataConfig, load_splits
from autocomp.results import load_run_study
from autocomp.search._rundir import job_identity
from autocomp.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
KWARGS = {"num_classes": 3, "depth": 2}  # vit_tiny_patch16_224 at 224 px, two of its blocks


def test_a_224px_vit_on_train_and_val_folders(tmp_path, monkeypatch, capsys):
    """... and an image broken after the trials (so first read by the final distillation, as one past the trials'
    training subset would be) stops the search with the file named, keeping its trials for the same command; a
    resumed search whose training images changed goes on (a trial rebuilt from them says it is not the model the
    trial scored), one whose validation images changed is refused."""
    make_folder(tmp_path / "data" / "train", {"red": 8, "green": 8, "blue": 8}, size=(64, 48))
    make_folder(tmp_path / "data" / "val", {"red": 3, "green": 3, "blue": 3}, size=(64, 48))
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **KWARGS)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "teacher.safetensors"))
    profile = yaml.safe_load((ROOT / "hardware_profiles" / "local_cpu.yaml").read_text())
    (tmp_path / "hw.yaml").write_text(yaml.safe_dump({**profile, "batch_size": 2, "repeats": 3, "warmup": 1}))
    (tmp_path / "space.yaml").write_text("heads_keep: [0.67]\nweight_bits: [32, 8]\n"  # all within budget
                                         "distill_steps: [1]\n")
    data = {"dataset": "imagefolder", "root": str(tmp_path / "data"), "val_size": 9, "calib_size": 4,
            "test_size": 3, "workers": 1}
    job = {"model": {"name": "vit_tiny_patch16_224", "kwargs": KWARGS,
                     "checkpoint": str(tmp_path / "teacher.safetensors")},
           "data": data, "search_space": str(tmp_path / "space.yaml"), "hardware": str(tmp_path / "hw.yaml"),
           "budget": {"memory": 0.99}, "trials": 2, "workers": 1, "seed": 0, "final_distill_steps": 1}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    broken = tmp_path / "data" / load_splits(DataConfig(**data), model).train.files[0]  # not held out of train/
    whole = broken.read_bytes()

    def breaking(*args, **kwargs):
        broken.write_bytes(whole[: len(whole) // 2])  # its header intact: the check before the trials passes
        return finalize(*args, **kwargs)
    from autocomp.search import _finish
    finalize = _finish.finalize
    monkeypatch.setattr(_finish, "finalize", breaking)
    assert main(["search", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"autocomp: error: cannot read image {broken}: ") and len(err.splitlines()) == 1
    assert err.endswith(f"; remove or replace the file; the 2 trials done are kept in {tmp_path / 'run'}: once that "
                        "is mended, the same command finishes the search without running them again")
    monkeypatch.setattr(_finish, "finalize", finalize)
    broken.write_bytes(whole)
    with pytest.warns(AutocompWarning, match=r"^validation holds 9 images: each is 11.1 points of accuracy, so the "
                                             r"scores and the front are noise at this size; give more labelled images"):
        assert main(["search", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "resuming: 2 trials already in " in printed  # none run again
    assert "data: 17 training (train/), 4 calibration (held out of train/), 9 validation (val/), 3 test (held out " \
        "of train/) images;" in printed
    assert "note: the validation" not in printed  # val/ is a folder of its own; test/ is not:
    assert "note: the test images are held out of train/, which the model may have been trained on: its scores read " \
        "high then, and every candidate's with them; a test/ folder of images it never saw avoids it" in printed

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trials"]["complete"] == 2
    assert summary["images"] == {"train": 24 - 3 - 4, "calib": 4, "val": 9, "test": 3}
    assert summary["images_from"] == {"train": "train/", "calib": "held out of train/", "val": "val/",
                                      "test": "held out of train/"}
    own = timm.data.resolve_model_data_config(model)  # the model's own preprocessing, as timm gives it
    assert summary["preprocessing"] == {"image_size": 224, "channels": 3, "mean": list(own["mean"]),
                                        "std": list(own["std"]), "interpolation": own["interpolation"],
                                        "crop_pct": own["crop_pct"], "crop_mode": own["crop_mode"]}
    assert summary["preprocessing_source"] == ("from the model's timm data config "
                                               "(vit_tiny_patch16_224.augreg_in21k_ft_in1k)")
    assert summary["met_budget"]
    best = autocomp.load(tmp_path / "run" / "best")
    assert tuple(best.pretrained_cfg["mean"]) == tuple(own["mean"])  # the preprocessing comes back with it
    assert best.pretrained_cfg["label_names"] == ["blue", "green", "red"]  # as are the class of each output
    preprocessing = autocomp.load_preprocessing(tmp_path / "run" / "best")
    splits = load_splits(DataConfig(**data), model)
    assert preprocessing == splits.preprocessing and len(splits.val) == 9  # val/ is the validation split
    assert evaluate(best, splits.val) == summary["best"]["val_accuracy"]

    broken.unlink()  # a run resumed without a training image: said, and the search goes on
    assert main(["search", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "note: the training images changed since the earlier trials ran" in capsys.readouterr().out
    history = load_run_study(tmp_path / "run").user_attrs["train_images"]  # trials 2.. would distil on the new
    assert [first for first, _ in history] == [0, 2] and history[0][1] != history[1][1]
    rows = list(csv.DictReader((tmp_path / "run" / "trials.csv").open()))
    trial = next(r["number"] for r in rows if r["state"] == "COMPLETE" and r["distilled"] == "True")
    shutil.rmtree(tmp_path / "run" / "trials" / trial, ignore_errors=True)  # no kept weights: rebuilt
    assert main(["export", str(tmp_path / "run"), "--trial", trial, "--out", str(tmp_path / "t")]) == 0
    assert autocomp.load_classes(tmp_path / "t") == ["blue", "green", "red"]
    rebuilt = json.loads((tmp_path / "t" / "metrics.json").read_text())["rebuilt"]  # not the model it scored: said
    assert "the training images it distilled on changed since it ran" in rebuilt["note"]
    assert rebuilt["note"] in capsys.readouterr().out and rebuilt["images"] == 9
    (tmp_path / "data").rename(tmp_path / "elsewhere")  # the run folder on a machine without the images
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autocomp: error: the onnx file is checked against the PyTorch model on the run's "
                          f"validation images: data.root: image folder '{tmp_path / 'data'}'") and err.endswith(
        f"(the data section of {tmp_path / 'run' / 'config.yaml'} says where they are: edit it to point at them on "
        "this machine)")
    (tmp_path / "elsewhere").rename(tmp_path / "data")
    shutil.copy(tmp_path / "data" / "val" / "red" / "0.png", tmp_path / "data" / "val" / "red" / "new.png")
    assert main(["search", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"autocomp: error: the images of the val split changed since the trials in {tmp_path / 'run'} ran, so their "
        "scores would not compare with new ones; put the images back as they were, or search into a new run folder "
        "(--out)")
    (tmp_path / "data" / "val" / "red" / "new.png").unlink()
    # the project folder moved (its job's paths relative to it): resumed, saying so, with the new paths recorded
    project = tmp_path / "moved" / "project"
    project.mkdir(parents=True)
    for name in ("data", "run", "teacher.safetensors", "hw.yaml", "space.yaml"):
        (tmp_path / name).rename(project / name)
    relative = {**job, "model": {**job["model"], "checkpoint": "teacher.safetensors"},
                "data": {**data, "root": "data"}, "search_space": "space.yaml", "hardware": "hw.yaml"}
    (project / "job.yaml").write_text(yaml.safe_dump(relative))
    (project / "space.yaml").write_text((project / "space.yaml").read_text() + "# a comment\n")
    assert main(["search", str(project / "job.yaml"), "--out", str(project / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"note: the job's files moved since the trials in {project / 'run'} ran (model.checkpoint was " \
        f"'{tmp_path / 'teacher.safetensors'}', now '{project / 'teacher.safetensors'}'; data.root was " \
        f"'{tmp_path / 'data'}', now '{project / 'data'}'; search_space was '{tmp_path / 'space.yaml'}', now " \
        f"'{project / 'space.yaml'}'; hardware was '{tmp_path / 'hw.yaml'}', now '{project / 'hw.yaml'}'); what they " \
        "hold is the same: resuming" in printed
    assert "resuming: 2 trials already in " in printed
    assert f"note: the search space file {project / 'space.yaml'} changed since the trials in {project / 'run'} " \
        "ran, but only in its text (a comment or a blank line)" in printed  # moved, and a comment: the same space
    written = yaml.safe_load((project / "run" / "config.yaml").read_text())
    assert (written["data"]["root"], written["hardware"]) == (str(project / "data"), str(project / "hw.yaml"))
    fingerprint = job_identity(load_config(project / "job.yaml"), model)[2]  # the next resume matches as it is
    assert json.loads((project / "run" / "run.json").read_text())["fingerprint"] == fingerprint
    for name in ("data", "run", "teacher.safetensors", "hw.yaml", "space.yaml"):
        (project / name).rename(tmp_path / name)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    (tmp_path / "run" / "run.json").write_text(json.dumps({k: v for k, v in info.items() if k != "images"}))
    assert main(["search", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "was searched by an earlier autocomp, which drew" in capsys.readouterr().err  # its images unknown
