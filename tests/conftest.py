"""Shared fixtures: a tiny ViT trained on scikit-learn's digits, cached for the session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# pytest-xdist's workers share the cores: each keeps its share of threads, since two processes with as many threads
# as there are cores each spin against the other (the Makefile's two-process phase: 1.9 min with 2 threads each, 1.2
# with 1, on 2 cores)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import torch  # noqa: E402

if _WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback only
# the suite's own cache (calibrated profiles, teachers): never the user's, and measured afresh on each run
os.environ["AUTOCOMP_CACHE"] = _CACHE = tempfile.mkdtemp(prefix="autocomp-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# Ray's session folders (logs, sockets; about 0.4 MB for each Ray a test starts, some twenty a run) in a folder of this
# process, removed at its exit, instead of piling up in /tmp/ray; short, for Ray's socket paths (107 characters at most)
os.environ["RAY_TMPDIR"] = _RAY_TMP = tempfile.mkdtemp(prefix="autocomp-ray-", dir="/tmp")
atexit.register(shutil.rmtree, _RAY_TMP, ignore_errors=True)
# ... but for its calibrated profiles where AUTOCOMP_TEST_PROFILES names a folder: `make test` empties one at its start
# and shares it between its pytest processes, so that each CPU setting (uncapped, capped) calibrates each profile once
# in the run, not once in every process (seconds each: onnxruntime_cpu 17 s, openvino_cpu 20 s on a 2-core EPYC)
if os.environ.get("AUTOCOMP_TEST_PROFILES"):
    os.makedirs(os.environ["AUTOCOMP_TEST_PROFILES"], exist_ok=True)
    os.symlink(os.path.abspath(os.environ["AUTOCOMP_TEST_PROFILES"]), os.path.join(_CACHE, "profiles"))
# PyTorch runs int8 Linear layers on FBGEMM (its "x86" engine) only where the CPU has AVX2, and on oneDNN elsewhere:
# the Makefile's capped run sets this to "onednn" to take the path of CPUs without AVX2 (in the pytest process: Ray
# workers and subprocesses keep PyTorch's own choice)
if os.environ.get("AUTOCOMP_TEST_QENGINE"):
    torch.backends.quantized.engine = os.environ["AUTOCOMP_TEST_QENGINE"]

from autocomp.data import DataConfig, load_splits  # noqa: E402
from autocomp.models import ModelSpec  # noqa: E402
from autocomp.train import TrainConfig, train_or_reuse  # noqa: E402

TINY_KWARGS = {"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 32, "depth": 2,
               "num_heads": 4}
DIGITS = DataConfig(dataset="digits", val_size=300, calib_size=64, test_size=300, seed=0)


@pytest.fixture(scope="session")
def digits_splits():
    return load_splits(DIGITS)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, digits_splits):
    """(spec with checkpoint, model): a 2-block, 4-head ViT trained on digits for a few seconds."""
    path = tmp_path_factory.mktemp("teacher") / "tiny_digits.safetensors"
    spec = ModelSpec(name="deit_tiny_patch16_224", kwargs=TINY_KWARGS, checkpoint=str(path))
    torch.manual_seed(0)
    model, _ = train_or_reuse(spec, digits_splits, TrainConfig(epochs=15, batch_size=64, lr=3e-3, warmup_steps=20,
                                                               hflip=False), path, log=lambda _: None)
    return spec, model


@pytest.fixture(scope="session")
def digits_images(digits_splits):
    """The 600 validation and test digits: what exports are compared with their PyTorch model on."""
    return torch.cat([digits_splits.val.tensors()[0], digits_splits.test.tensors()[0]])


def shipped_profiles() -> list:
    """The hardware profiles in hardware_profiles/, as test parameters named by file. Loading one calibrates it on
    first use; ONNX Runtime's runs its own kernels (MLAS), which the capped run's caps do not change: uncapped only."""
    from pathlib import Path

    return [pytest.param(path, id=path.stem, marks=[pytest.mark.uncapped_only] * (path.stem == "onnxruntime_cpu"))
            for path in sorted((Path(__file__).parent.parent / "hardware_profiles").glob("*.yaml"))]


def both_blocks(name: str, config):
    """A recipe with ``config`` for operator ``name`` in both blocks of the tiny teacher (token reduction in the first
    only: the second then has as few tokens as the first leaves)."""
    from autocomp import Recipe

    return Recipe(blocks=({name: config}, {name: config} if name != "reduce_tokens" else {}))


def onnx_initializers(path) -> dict:
    """An ONNX file's initializers by name, as numpy arrays."""
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def shared_ray():
    """One embedded Ray for a test file's searches. A search runs on the Ray it finds initialized, as it would on a
    user's (:func:`autocomp.search._ray.ray_session`), instead of starting and stopping its own each time (seconds
    of CPU a search: BENCHMARKS.md, session 24). Ray's workers inherit the environment Ray starts with: a test that
    sets a variable for them takes :func:`own_ray`; one that checks the embedded Ray's own start and stop, or a Ray
    address, belongs in a file without this fixture."""
    from autocomp.search._ray import ray_session

    with ray_session(workers=1, ray_address=None):  # the embedded Ray a search would start, kept for the file
        yield


@pytest.fixture
def own_ray():
    """For a test that sets the environment of Ray's workers in a file with :func:`shared_ray`: the shared Ray is
    stopped first, so that the search starts its own with that environment (the file's later tests do the same)."""
    import ray

    ray.shutdown()


def small_vit(**overrides):
    """A seeded 2-block, 6-head ViT on 16x16 RGB images (width 48) for operator tests."""
    import timm

    kwargs = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=48, depth=2, num_heads=6)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()


def skip_where_openvino_lacks_compressed_weights(exc: Exception) -> None:
    """Skip a test of OpenVINO running weights-only int8 or 4-bit weights where its CPU plugin cannot compile them:
    seen with oneDNN capped at AVX2 (the Makefile's capped run); there the profile's calibration and the search's
    latency pass leave such weights out (tested in test_search_sensitivity.py). A real CPU without VNNI (an AVX2
    EPYC, BENCHMARKS.md session 23) runs them; on a CPU with VNNI they must run, so ``exc`` is raised again there."""
    from autocomp.ops._qlayers import int8_static_range

    if int8_static_range() == 255:
        raise exc
    pytest.skip(f"OpenVINO cannot run compressed weights on this CPU (no VNNI here): {str(exc).splitlines()[-1]}")

