"""The example jobs load as the search reads them, and `make demo` runs one of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autocomp.config import load_config
from autocomp.hardware import read_profile
from autocomp.space import load_space

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted(path for path in (ROOT / "examples").glob("*/*.yaml") if not path.name.startswith("teacher"))


@pytest.mark.parametrize("job", JOBS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_example_job_loads_with_its_space_and_profile(job):
    config = load_config(job)  # each of these raises AutocompError, naming the file, on what it cannot read
    read_profile(config.hardware)
    assert load_space(config.search_space).size(blocks=2) > 1, f"{job.name}: its search space offers one recipe"


def test_make_demo_runs_an_example_job_that_exists():
    recipe = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    jobs = re.findall(r"autocomp search (\S+\.yaml)", recipe)
    assert jobs, "make demo runs no autocomp search"
    assert all((ROOT / job).is_file() and (ROOT / job) in JOBS for job in jobs)


def _deploy_example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_onnx", ROOT / "examples" / "deploy_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("settings", [
    dict(image_size=16, channels=3, crop_pct=0.875, interpolation="bicubic", crop_mode="center"),
    dict(image_size=16, channels=3, crop_pct=0.8, interpolation="bilinear", crop_mode="squash"),
    dict(image_size=12, channels=1, crop_pct=1.0, interpolation="bilinear", crop_mode="center")])
def test_the_deployment_example_makes_the_model_input_the_search_made(settings):
    """examples/deploy_onnx.py follows preprocessing.json without torch or timm: its input is the transform's, on
    images wider and taller than square, whose centre crops start half way between pixels, and 16-bit ones."""
    import numpy as np
    from PIL import Image

    from autocomp.data import Preprocessing

    made = Preprocessing(mean=(0.3,) * settings["channels"], std=(0.2,) * settings["channels"], **settings)
    record = json_record(made)
    deploy = _deploy_example()
    rng = np.random.default_rng(0)
    for width, height in ((40, 40), (46, 40), (40, 53), (17, 31)):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        np.testing.assert_allclose(deploy.preprocess(image, record), made.transform()(image).numpy(), atol=1e-5)
    deep = Image.fromarray(rng.integers(0, 65536, (30, 24), dtype=np.uint16))
    np.testing.assert_allclose(deploy.preprocess(deep, record), made.transform()(deep).numpy(), atol=1e-5)


def test_the_deployment_example_names_every_image_it_cannot_read_at_once(tmp_path):
    """A damaged file is said in one line with the others, as the search says them, not as PIL's traceback."""
    import io

    from PIL import Image

    from autocomp.data import Preprocessing

    deploy = _deploy_example()
    whole = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(whole, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(whole.getvalue()[:200])  # its header, not its pixels
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "fine.png")
    record = json_record(Preprocessing(image_size=16, channels=3, mean=(0.5,) * 3, std=(0.2,) * 3))
    with pytest.raises(SystemExit) as stopped:
        deploy.inputs_of([tmp_path / name for name in ("fine.png", "truncated.jpg", "text.png")], record)
    said = str(stopped.value)
    assert said.startswith(f"cannot read 2 image(s): {tmp_path / 'truncated.jpg'} (") and said.endswith(
        "; remove or replace them") and f"; {tmp_path / 'text.png'} (cannot identify image file" in said
    assert len(deploy.inputs_of([tmp_path / "fine.png"], record)) == 1


def test_the_deployment_example_reads_the_folders_the_search_reads_and_refuses_what_it_refuses(tmp_path):
    """A link back up to the data is not read (its other classes would take this one's label), a folder linked
    into two classes is refused, as are images beside the class folders: as autocomp's loader does."""
    from autocomp.data import DataConfig, load_splits
    from autocomp.errors import AutocompError
    from test_data import make_folder, tiny_rgb_vit

    deploy, model = _deploy_example(), tiny_rgb_vit()
    make_folder(tmp_path / "train", {"red": 3, "blue": 2})
    (tmp_path / "train" / "red" / "up").symlink_to(tmp_path / "train", target_is_directory=True)
    images, _ = deploy.class_images(tmp_path / "train", ["blue", "red"])
    assert sorted(p.relative_to(tmp_path / "train").as_posix() for p in images) == [
        "blue/0.png", "blue/1.png", "red/0.png", "red/1.png", "red/2.png"]
    splits = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), calib_size=1, val_size=1,
                                    test_size=1, workers=0), model)
    assert sum(len(getattr(splits, name)) for name in ("train", "calib", "val", "test")) == len(images)  # as read
    (tmp_path / "train" / "red" / "up").unlink()
    (tmp_path / "train" / "red" / "blues").symlink_to(tmp_path / "train" / "blue", target_is_directory=True)
    with pytest.raises(SystemExit, match=r"read for class 'blue' and for class 'red'"):
        deploy.class_images(tmp_path / "train", ["blue", "red"])
    with pytest.raises(AutocompError, match=r"read for class"):
        load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), workers=0), model)
    (tmp_path / "train" / "red" / "blues").unlink()
    (tmp_path / "train" / "red" / "0.png").rename(tmp_path / "train" / "stray.png")
    with pytest.raises(SystemExit, match=r"holds 1 image\(s\) beside its class folders \(stray.png\)"):
        deploy.class_images(tmp_path / "train", ["blue", "red"])


def json_record(preprocessing):
    import json

    return json.loads(json.dumps({**preprocessing.to_dict(), "steps": preprocessing.steps()}))  # as written


def _deploy(tmp_path, script, export, extra=(), size=(23, 19)):
    """Run examples/``script`` as a deployer runs it on a folder holding the model ``export(model, path)`` wrote,
    with preprocessing.json and classes.json, over class folders of images of ``size``: its lines, and those the
    PyTorch model's predictions on the same images give."""
    import json
    import subprocess
    import sys

    import torch
    from PIL import Image

    from autocomp.data import Preprocessing
    from test_data import make_folder, tiny_rgb_vit

    model = tiny_rgb_vit(num_classes=3)
    made = Preprocessing(image_size=16, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                         interpolation="bicubic", crop_pct=0.875)
    export(model, tmp_path / "best")
    (tmp_path / "best" / "preprocessing.json").write_text(json.dumps(json_record(made)))
    classes = ["blue", "green", "red"]
    (tmp_path / "best" / "classes.json").write_text(json.dumps(classes))
    make_folder(tmp_path / "val", {name: 5 for name in classes}, size=size)
    # as image folders are: images in a sub-folder and in a folder linked in, which the search reads; a macOS
    # index, its resource fork, Windows' thumbnails, notes, which it leaves out
    deeper = tmp_path / "val" / "red" / "nested" / "deeper"
    deeper.mkdir(parents=True)
    for name in ("3.png", "4.png"):
        (tmp_path / "val" / "red" / name).rename(deeper / name)
    make_folder(tmp_path / "more", {"green": 2}, size=size, seed=5)
    (tmp_path / "val" / "green" / "linked").symlink_to(tmp_path / "more" / "green", target_is_directory=True)
    for junk in ("blue/.DS_Store", "red/._0.png", "blue/Thumbs.db", "blue/notes.txt"):
        (tmp_path / "val" / junk).write_bytes(b"\x00\x05Bud1 not an image")
    files = sorted([*(tmp_path / "val").glob("*/[0-9].png"), *deeper.glob("*.png"),
                    *(tmp_path / "val" / "green" / "linked").glob("*.png")])
    assert len(files) == 17
    with torch.no_grad():
        top = model(torch.stack([made.transform()(Image.open(p)) for p in files])).argmax(dim=1)
    right = sum(classes[k] == p.relative_to(tmp_path / "val").parts[0] for k, p in zip(top.tolist(), files))
    make_folder(tmp_path / "val", {"T-shirt_top": 2}, size=size)  # no class is named so: left out, and said
    run = ("import os, runpy, sys\nsys.argv = sys.argv[1:]\n"
           "sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python examples/<script>` has it\n"
           "runpy.run_path(sys.argv[0], run_name='__main__')\n"
           "print('imported:', sorted({'torch', 'timm', 'autocomp'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", run, str(ROOT / "examples" / script), str(tmp_path / "best"),
                           "--folder", str(tmp_path / "val"), "--batch", "4", *extra, str(files[0])],
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stderr.splitlines()[-2:] == [
        "left out 1 file(s) that are not images (blue/notes.txt); images are .jpg, .jpeg, .png, .ppm, .bmp, .pgm, "
        ".tif, .tiff, .webp", f"left out 1 folder(s) not named as a class of classes.json: ['T-shirt_top']; the "
        f"classes are {classes}"]
    return done.stdout.splitlines(), [f"top-1 accuracy {100 * right / len(files):.2f}% on {len(files)} images",
                                      f"{files[0]}: {classes[top[0]]}", "imported: []"]


def test_the_deployment_example_classifies_a_folder_as_the_model_does_without_torch(tmp_path):
    """The example run as a deployer runs it: its top-1 accuracy on class folders is the PyTorch model's on the same
    images, through the ONNX file in ONNX Runtime, and it imports neither torch nor autocomp."""
    import torch

    from autocomp.runtimes import export_onnx

    said, expected = _deploy(tmp_path, "deploy_onnx.py",
                             lambda model, folder: export_onnx(model, torch.randn(2, 3, 16, 16), folder / "model.onnx"))
    assert said == expected


@pytest.mark.parametrize("static", [False, True], ids=["dynamic batch", "static batch"])
def test_the_openvino_deployment_example_classifies_a_folder_as_the_model_does(tmp_path, static):
    """examples/deploy_openvino.py compiles the IR as autocomp checked it (f32; at a static batch with export.json's
    properties) and, with deploy_onnx.py's preprocessing, classifies as the PyTorch model does, the last batch
    padded at a static batch."""
    pytest.importorskip("openvino")
    import json

    import torch

    from autocomp.runtimes.openvino import export_openvino

    def export(model, folder):
        export_openvino(model, torch.randn(2, 3, 16, 16), folder / "model.xml")
        (folder / "model.onnx").unlink(missing_ok=True)  # as autocomp export leaves the folder
        (folder / "export.json").write_text(json.dumps({"static_batch_properties": {"SNIPPETS_MODE": "DISABLE"}}))

    said, expected = _deploy(tmp_path, "deploy_openvino.py", export, ["--static-batch"] if static else [],
                             size=(19, 23))
    assert said == expected
