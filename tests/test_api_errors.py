"""The Python API given the wrong things: one error naming the argument, what it takes and the fix (it was an
AttributeError or a ValueError from deep inside, or, for a split of 200 images and 100 labels, nothing at all)."""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import autocomp
from autocomp.config import load_config
from autocomp.data import TensorSplit
from autocomp.errors import AutocompError, AutocompTypeError
from autocomp.ops import PruneHeads
from autocomp.search import run_search
from conftest import small_vit

JOB = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist" / "search.yaml"


def test_compress_takes_a_recipe_its_file_or_its_dict_and_refuses_other_things(tmp_path):
    model, images = small_vit(), torch.randn(4, 3, 16, 16)
    recipe = autocomp.Recipe(blocks=({"prune_heads": PruneHeads(keep=3)}, {}))
    recipe.save(tmp_path / "recipe.yaml")
    expected = autocomp.compress(model, recipe, calibration=images)(images)
    for given in (tmp_path / "recipe.yaml", str(tmp_path / "recipe.yaml"), recipe.to_dict()):
        assert torch.equal(autocomp.compress(model, given, calibration=images)(images), expected)
    with pytest.raises(AutocompTypeError, match=r"^compress's recipe must be an autocomp.Recipe, a recipe.yaml's "
                                                r"path or its dict, got int 5$"):
        autocomp.compress(model, 5)
    with pytest.raises(AutocompTypeError, match=r"^compress's model must be the nn.Module to compress .*, got str "
                                                r"'vit_tiny_patch16_224'; build it first"):
        autocomp.compress("vit_tiny_patch16_224", recipe)
    for calibration, got in ((images[0], "a 3-D torch.float32 tensor of shape (3, 16, 16)"),
                             (images.numpy(), "ndarray"), (images.to(torch.uint8), "a 4-D torch.uint8 tensor")):
        with pytest.raises(AutocompTypeError, match=r"^compress's calibration must be a float tensor of preprocessed "
                                                    rf"images \(N, C, H, W\), got {re.escape(got)}"):
            autocomp.compress(model, recipe, calibration=calibration)
    # heads chosen from no scores or NaN scores (accepted without a word), activation ranges of nothing (IndexError)
    broken = images.clone()
    broken[0, 0, :2, :3] = float("nan")
    broken[1, 0, 0, 0] = float("inf")
    for calibration, said in ((images[:0], r"hold no images \(a batch of 0, \(0, 3, 16, 16\)\); give at least one"),
                              (broken, r"hold 7 values that are NaN or infinite; give images preprocessed")):
        for given in (recipe, autocomp.Recipe(blocks=({"quantize": {"weight_bits": 8, "act_bits": 8}}, {}))):
            with pytest.raises(AutocompError, match=rf"^compress's calibration images {said}"):
                autocomp.compress(model, given, calibration=calibration)
    with pytest.raises(AutocompError, match=r"^the model's weights are float16; autocomp compresses and measures "
                                            r"float32 models .*\(model.float\(\)\)$"):  # a dtype error inside torch
        autocomp.compress(small_vit().half(), recipe, calibration=images.half())


def test_images_of_another_layout_size_or_float_type_are_said_against_the_model_or_converted():
    """compress's calibration, distill's split and measure's example against the model: a channels-last batch and
    another size were timm's AssertionError deep in the patch embedding, float64 images a RuntimeError there; each is
    now said in one line with the fix, and float64 (NumPy's) taken as float32."""
    from autocomp.hardware import HardwareProfile
    from autocomp.measure import measure

    model, images = small_vit(), torch.randn(4, 3, 16, 16)
    recipe = autocomp.Recipe(blocks=({"prune_heads": PruneHeads(keep=3)}, {}))
    expected = autocomp.compress(model, recipe, calibration=images)(images)
    assert torch.equal(autocomp.compress(model, recipe, calibration=images.double())(images), expected)
    with pytest.raises(AutocompError, match=r"^compress's calibration images look channels-last, \(N, H, W, C\) "
                                            r"\(4, 16, 16, 3\), but the model takes \(N, C, H, W\) images of 3 "
                                            r"channels at 16x16 px: images.permute\(0, 3, 1, 2\) makes them so$"):
        autocomp.compress(model, recipe, calibration=images.permute(0, 2, 3, 1))
    with pytest.raises(AutocompError, match=r"^compress's calibration images have 1 channel \(4, 1, 16, 16\), but "
                                            r"the model takes 3 at 16x16 px: gray images as RGB: images.expand"):
        autocomp.compress(model, recipe, calibration=images[:, :1])
    with pytest.raises(AutocompError, match=r"^compress's calibration images are 32x32 px images, but the model takes "
                                            r"16x16: make them as the model's own preprocessing does"):
        autocomp.compress(model, recipe, calibration=torch.randn(4, 3, 32, 32))
    split = TensorSplit(x=torch.randn(8, 16, 16, 3).double(), y=torch.arange(8) % 5)
    assert split.x.dtype == torch.float32  # as the models take them
    student = autocomp.compress(model, recipe, calibration=images)
    with pytest.raises(AutocompError, match=r"^distill's split images look channels-last"):
        autocomp.distill.distill(student, model, split, autocomp.Distill(steps=1, alpha=0.5))
    profile = HardwareProfile(name="t", backend="pytorch-cpu", batch_size=1, threads=1, warmup=0, repeats=1)
    with pytest.raises(AutocompError, match=r"^measure's example images look channels-last"):
        measure(model, profile, example=split.x)
    assert measure(model, profile, example=images.double()).weights_mb > 0


def test_measure_and_distill_refuse_the_wrong_things_in_one_line(tmp_path):
    """measure given a DataLoader or a profile's path, distill given labels beyond the model's classes or the same
    module twice: one line each (AttributeError, IndexError deep in the loss, or nothing); the two models given the
    other way round are warned about (the uncompressed one was trained in place)."""
    from torch.utils.data import DataLoader

    from autocomp.errors import AutocompWarning
    from autocomp.hardware import HardwareProfile
    from autocomp.measure import measure

    model, images = small_vit(), torch.randn(4, 3, 16, 16)
    profile = HardwareProfile(name="t", backend="pytorch-cpu", batch_size=1, threads=1, warmup=0, repeats=1)
    with pytest.raises(AutocompTypeError, match=r"^measure's example must be a float tensor of preprocessed images "
                                                r"\(N, C, H, W\), got DataLoader "):
        measure(model, profile, example=DataLoader(images))
    with pytest.raises(AutocompTypeError, match=r"^measure's example must be a batch of images \(N, C, H, W\) for a "
                                                r"ViT, got a 3-D tensor of shape \(3, 16, 16\); one image: "
                                                r"example.unsqueeze\(0\)$"):
        measure(model, profile, example=images[0])
    with pytest.raises(AutocompTypeError, match=r"^measure's profile must be a HardwareProfile, got str "
                                                r"'hardware_profiles/local_cpu.yaml': load it first: autocomp.measure."
                                                r"profiling.load_profile\('hardware_profiles/local_cpu.yaml'\)"):
        measure(model, "hardware_profiles/local_cpu.yaml", example=images)
    student = autocomp.compress(model, autocomp.Recipe(blocks=({"prune_heads": PruneHeads(keep=3)}, {})),
                                calibration=images)
    config = autocomp.Distill(steps=1, alpha=0.5, batch_size=4)
    with pytest.raises(AutocompError, match=r"^distill's split has labels 0..7, but the models predict 5 classes "
                                            r"\(labels 0..4\)"):
        autocomp.distill.distill(student, model, TensorSplit(x=torch.randn(8, 3, 16, 16), y=torch.arange(8)), config)
    split = TensorSplit(x=torch.randn(8, 3, 16, 16), y=torch.arange(8) % 5)
    with pytest.raises(AutocompError, match=r"^distill's student and teacher are the same module"):
        autocomp.distill.distill(model, model, split, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutocompWarning)  # the right way round: nothing said
        autocomp.distill.distill(student, model, split, config)
    with pytest.warns(AutocompWarning, match=r"distill's teacher holds fewer weight bytes \(0.\d+ MB\) than the "
                                             r"student \(0.\d+ MB\), which is trained in place: were they given the "
                                             r"other way round\?"):
        autocomp.distill.distill(small_vit(), student, split, config)


def test_a_tensor_split_checks_its_images_and_labels():
    images = torch.randn(6, 3, 16, 16)
    assert len(TensorSplit(x=images, y=torch.arange(6) % 5)) == 6
    assert TensorSplit(x=images, y=torch.arange(6, dtype=torch.int32)).y.dtype == torch.int64  # as the losses take
    with pytest.raises(AutocompError, match=r"^TensorSplit has 6 images \(x\) but 3 labels \(y\): give one label per "
                                            r"image$"):
        TensorSplit(x=images, y=torch.arange(3))
    with pytest.raises(AutocompTypeError, match=r"^TensorSplit's y must be a 1-D tensor of class indices \(int64\), "
                                                r"got a 1-D torch.float32 tensor; labels.long\(\) float labels"):
        TensorSplit(x=images, y=torch.zeros(6))
    with pytest.raises(AutocompTypeError, match=r"^TensorSplit's x must be a float tensor of preprocessed images "
                                                r"\(N, C, H, W\), got ndarray"):
        TensorSplit(x=np.zeros((6, 3, 16, 16), dtype=np.float32), y=torch.arange(6))


def test_distill_without_a_distill_config_says_where_one_comes_from():
    teacher = small_vit()
    student = autocomp.compress(teacher, autocomp.Recipe(blocks=({"prune_heads": PruneHeads(keep=3)}, {})),
                                calibration=torch.randn(4, 3, 16, 16))
    split = TensorSplit(x=torch.randn(8, 3, 16, 16), y=torch.arange(8) % 5)
    with pytest.raises(AutocompTypeError, match=r"^distill's config must be an autocomp.Distill, e.g. autocomp."
                                                r"Distill\(steps=200, alpha=0.9\), got NoneType None; a recipe without "
                                                r"a distill section has recipe.distill None$"):
        autocomp.distill.distill(student, teacher, split, None)
    with pytest.raises(AutocompTypeError, match=r"^distill's split must be an autocomp.data split"):
        autocomp.distill.distill(student, teacher, (split.x, split.y), autocomp.Distill(steps=1, alpha=0.5))


def test_run_search_refuses_a_run_folder_or_log_of_another_kind_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AutocompTypeError, match=r"^run_search's run_dir must be the path of the run folder \(str or "
                                                r"Path\), got int 5$"):
        run_search(JOB, 5)
    with pytest.raises(AutocompTypeError, match=r"^run_search's log must be a function taking each line .*, got str "
                                                r"'search.log'; to keep the lines in a file"):
        run_search(JOB, tmp_path / "run", log="search.log")
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    # a job that leaves model: out for a module from Python: "missing key(s) ['model']" said nothing of the module
    job = {key: value for key, value in yaml.safe_load(JOB.read_text()).items() if key != "model"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    with pytest.raises(AutocompError, match=r"job.yaml names no model; name one \(model: \{name: .*\), or, from "
                                            r"Python, give the module: load_config\('job.yaml', model=my_vit\)$"):
        run_search("job.yaml", tmp_path / "run")


def test_a_job_part_of_another_type_is_a_type_error_and_a_bad_value_is_not():
    config = load_config(JOB, files_must_exist=False)
    with pytest.raises(AutocompTypeError, match=r"^trials must be a whole number >= 1, got '3'$"):
        dataclasses.replace(config, trials="3")
    with pytest.raises(AutocompError, match=r"^trials must be a whole number >= 1, got 0$") as raised:
        dataclasses.replace(config, trials=0)
    assert not isinstance(raised.value, TypeError)


def test_a_model_compressed_in_python_saves_and_loads_back(tmp_path):
    """autocomp.save: the folder autocomp.load reads, onto the module it was compressed from (another of the same
    shapes with other heads refused), or on its own from a timm spec."""
    from autocomp.models import ModelSpec

    base, images = small_vit(), torch.randn(4, 3, 16, 16)
    recipe = autocomp.Recipe(blocks=({"prune_heads": PruneHeads(keep=3)}, {"quantize": {"weight_bits": 8}}))
    smaller = autocomp.compress(base, recipe, calibration=images)
    autocomp.save(tmp_path / "mine", smaller, recipe, base=base)
    assert torch.equal(autocomp.load(tmp_path / "mine", base=base)(images), smaller(images))
    with pytest.raises(AutocompError, match="the base given is not the module"):
        autocomp.load(tmp_path / "mine", base=small_vit(num_heads=3))
    spec = ModelSpec(name="vit_tiny_patch16_224", kwargs={"img_size": 16, "patch_size": 4, "in_chans": 3,
                                                          "num_classes": 5, "embed_dim": 48, "depth": 2,
                                                          "num_heads": 6})
    autocomp.save(tmp_path / "own", smaller, recipe, base=spec)
    assert torch.equal(autocomp.load(tmp_path / "own")(images), smaller(images))
    with pytest.raises(AutocompTypeError, match=r"^save's recipe must be the autocomp.Recipe it was compressed with, "
                                                r"got dict"):
        autocomp.save(tmp_path / "x", smaller, recipe.to_dict(), base=base)
    # a model and a recipe that do not go together: saved without a word, refused only when loaded
    deeper = autocomp.Recipe(blocks=({}, {}, {}))
    with pytest.raises(AutocompError, match=r"^save: the recipe has 3 blocks but the model has 2; .*; give the "
                                            r"recipe the model was compressed with"):
        autocomp.save(tmp_path / "x", smaller, deeper, base=base)
    with pytest.raises(AutocompError, match=r"^save: the model is not what the recipe makes of the base \(.+ and "
                                            r"\d+ more\), so the folder would not load; give the recipe the model "
                                            r"was compressed with"):
        autocomp.save(tmp_path / "x", base, recipe, base=base)  # the uncompressed model under a recipe
    assert not (tmp_path / "x").exists()
    with pytest.raises(AutocompTypeError, match=r"^load's base must be the nn.Module the model was compressed from "
                                                r".*, got str 'vit_tiny_patch16_224'$"):
        autocomp.load(tmp_path / "own", base="vit_tiny_patch16_224")
    with pytest.raises(AutocompError, match=r"nope does not exist; pass a run's best/ folder"):
        autocomp.load(tmp_path / "nope")


def test_a_sample_of_a_split_in_class_order_draws_from_every_class():
    """An export scores the deployable file on a sample of the test images: a listed test/ folder is in class order,
    and its first 1,000 images were its first classes only (20 of ImageNet's 1,000)."""
    ordered = TensorSplit(x=torch.randn(200, 3, 4, 4), y=torch.arange(5).repeat_interleave(40))
    sample = ordered.sample(50)
    assert len(sample) == 50 and set(sample.y.tolist()) == set(range(5))
    assert torch.equal(sample.y, ordered.sample(50).y) and ordered.sample(500) is ordered  # seeded; all: itself


def test_a_search_from_python_remembers_ctrl_c_and_leaves_the_callers_own_sigterm_handler():
    """run_search's signal block: where the caller handles SIGTERM itself, its handler stays and the block says it
    does not take SIGTERM; Ctrl-C (Python's own handler) is still taken and remembered (where Python drops it in a
    finalizer, the search raises it where it waits), and Python's handler comes back after."""
    import os
    import signal

    from autocomp import _signals

    def own(signum, frame):
        raise AssertionError("not called")

    before = signal.signal(signal.SIGTERM, own)
    try:
        with _signals.terminated_as_interrupted(unless_handled=True, ctrl_c=True) as taken:
            assert taken is False and signal.getsignal(signal.SIGTERM) is own
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # the handler runs between bytecodes
                    pass
            with pytest.raises(KeyboardInterrupt):
                _signals.raise_pending()  # remembered until the block ends
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is own
        _signals.raise_pending()  # forgotten after it
    finally:
        signal.signal(signal.SIGTERM, before)


def _stuck_in_c() -> None:
    """Hang where no Python handler can run: a second lock of a pthread mutex (OpenVINO's telemetry child hangs so
    in getaddrinfo, on a lock another thread of the parent held when it forked)."""
    import ctypes

    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # all zeros: PTHREAD_MUTEX_INITIALIZER on glibc
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


def test_a_process_forked_in_a_signal_block_ends_on_sigterm_even_stuck_in_c():
    """`autocomp export --format openvino` never returned on an offline machine: OpenVINO's telemetry forks a
    process per event and terminates it after a timeout; the child, stuck in getaddrinfo, had inherited the
    command's Python SIGTERM handler, which never ran, and the parent's exit waited on it. Forked in the block, a
    child has the default handlers back at once."""
    import multiprocessing
    import signal
    import sys

    from autocomp import _signals

    if not sys.platform.startswith("linux"):
        pytest.skip("a glibc pthread mutex")
    with _signals.terminated_as_interrupted(ctrl_c=True):
        child = multiprocessing.get_context("fork").Process(target=_stuck_in_c, daemon=True)
        child.start()
        try:
            time.sleep(0.5)
            child.terminate()
            child.join(20)
            assert child.exitcode == -signal.SIGTERM
        finally:
            if child.is_alive():
                child.kill()
                child.join()
