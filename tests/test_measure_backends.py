"""Backends chosen by the hardware profile: what runs a candidate, what its weights are counted in, what the trial
records, and the one-line refusals. No test asserts a time."""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from autocomp import AutocompError, Recipe, compress
from autocomp.cli import main
from autocomp.hardware import HardwareProfile
from autocomp.measure import backends, measure
from autocomp.measure.backends import ExportFailed, backend_of, holds_export, require_backend
from autocomp.ops import PruneHeads, PruneMlp, Quantize
from autocomp.search._objective import ERROR, TrialInputs, run_trial
from autocomp.train import evaluate
from conftest import DIGITS, TINY_KWARGS, skip_where_openvino_lacks_compressed_weights

pytestmark = pytest.mark.usefixtures("shared_ray")  # one Ray for the file's searches (conftest.py)

ROOT = Path(__file__).parent.parent
RECIPE = Recipe(blocks=[{"prune_heads": PruneHeads(keep=2), "quantize": Quantize(weight_bits=8)},
                        {"prune_mlp": PruneMlp(keep=0.5), "quantize": Quantize(weight_bits=4, group_size=16)}])


def _profile(backend: str, **overrides) -> HardwareProfile:
    return HardwareProfile(name="t", backend=backend, batch_size=8, warmup=1, repeats=3, **overrides)


def _needs(*modules: str) -> None:
    for name in modules:
        pytest.importorskip(name)


@pytest.fixture(scope="module")
def candidate(tiny_teacher, digits_splits):
    base = tiny_teacher[1]
    return base, compress(base, RECIPE, calibration=digits_splits.calib.x), digits_splits


@pytest.mark.parametrize("backend,modules,counted_in", [
    ("onnxruntime-cpu", ("onnxruntime", "onnx", "onnxscript"), "ONNX file"),
    ("openvino-cpu", ("openvino", "onnx", "onnxscript"), "OpenVINO IR"),
])
def test_a_runtime_backend_measures_the_exported_model_and_counts_its_file(candidate, backend, modules, counted_in,
                                                                           tmp_path):
    _needs(*modules)
    base, model, splits = candidate
    profile = _profile(backend)
    images = splits.val.tensors()[0][:64]
    try:
        result = measure(model, profile, example=splits.calib.x, reference=base, check=images)
    except ExportFailed as exc:  # the candidate has int8 and 4-bit weights
        if backend != "openvino-cpu":
            raise
        skip_where_openvino_lacks_compressed_weights(exc)
    # the weights are the bytes of the exported file as the runtime holds it loaded (its fp16 scales as fp32), not
    # PyTorch's count
    if backend == "onnxruntime-cpu":
        from autocomp.runtimes import export_onnx, onnx_weight_nbytes

        path = export_onnx(model, splits.calib.x[:2], tmp_path / "m.onnx").path
        loaded = onnx_weight_nbytes(path, loaded=True)
    else:
        from autocomp.runtimes.openvino import export_openvino, ir_weight_nbytes

        path = export_openvino(model, splits.calib.x[:2], tmp_path / "m.xml").path
        loaded = ir_weight_nbytes(path, loaded=True)
    assert result.weights_mb == pytest.approx(loaded / 1e6)
    assert result.weights_mb < measure(base, profile, example=splits.calib.x).weights_mb  # the file shrank
    assert result.agreement is not None and result.agreement >= 0.99 and result.max_logit_diff < 1.0
    assert result.latency_ratio is not None and result.latency_ms > 0
    assert result.runtime.startswith(f"{backend} (") and f"weights counted in the {counted_in}" in result.runtime
    runtime_package = modules[0]
    assert f"{runtime_package} {importlib.metadata.version(runtime_package)}" in result.runtime


@pytest.mark.parametrize("backend,modules", [("onnxruntime-cpu", ("onnxruntime", "onnx", "onnxscript")),
                                             ("openvino-cpu", ("openvino", "onnx", "onnxscript"))])
def test_bf16_weights_count_as_the_fp32_a_runtime_holds_and_the_cost_model_counts_them_so(candidate, backend,
                                                                                          modules, tmp_path):
    """Both runtimes widen bf16 weights to fp32 as they load the file (their CPU kernels run fp32): a memory budget
    met by halving the file would not be met by the running process (a user's OpenVINO search did so)."""
    from autocomp.costmodel import CostModel, describe
    from conftest import both_blocks

    _needs(*modules)
    base, _, splits = candidate
    recipe = both_blocks("quantize", Quantize(weight_bits=16))
    model = compress(base, recipe, calibration=splits.calib.x)
    facts = dict(peak_gflops={"fp32": 100.0}, memory_bandwidth_gbs=10.0, memory_gb=8.0)
    profile = _profile(backend, **facts)
    held, fp32 = (measure(m, profile, example=splits.calib.x).weights_mb for m in (model, base))
    if backend == "onnxruntime-cpu":
        from autocomp.runtimes import export_onnx

        in_file = export_onnx(model, splits.calib.x[:2], tmp_path / "m.onnx").weight_nbytes / 1e6
    else:
        from autocomp.runtimes.openvino import export_openvino

        in_file = export_openvino(model, splits.calib.x[:2], tmp_path / "m.xml").weight_nbytes / 1e6
    assert in_file < 0.75 * held and held == pytest.approx(fp32, rel=0.02)  # the file halves, the memory does not
    identity = Recipe.identity(len(recipe.blocks))
    for counted_on, widened in ((profile, True), (_profile("pytorch-cpu", **facts), False)):  # PyTorch holds bf16
        cost = CostModel(description=describe(base), profile=counted_on)
        bf16, whole = cost.predict(recipe).weight_nbytes, cost.predict(identity).weight_nbytes
        assert (bf16 == whole) if widened else (bf16 < 0.75 * whole)
    assert measure(model, _profile("pytorch-cpu"), example=splits.calib.x).weights_mb < 0.75 * fp32
    if backend == "onnxruntime-cpu":  # 4-bit weights' fp16 scales are cast to fp32 in the graph, held so too
        packed = both_blocks("quantize", Quantize(weight_bits=4, group_size=16))
        measured = measure(compress(base, packed, calibration=splits.calib.x), profile, example=splits.calib.x)
        predicted = CostModel(description=describe(base), profile=profile).predict(packed).weight_nbytes / 1e6
        assert predicted == pytest.approx(measured.weights_mb, rel=0.01)


def test_on_a_runtime_packed_weights_are_charged_no_unpacking_measured_and_predicted_alike(candidate):
    """ONNX Runtime computes on packed 4-bit weights (MatMulNBits), where PyTorch's 4-bit layer unpacks an fp32
    weight at every call: the runtime's activation memory leaves that weight out, as the cost model for it predicts
    (a new user's 4-bit model on OpenVINO was charged 3.0 MB of activations against int8's 2.5 MB)."""
    from autocomp.costmodel import CostModel, describe
    from conftest import both_blocks

    _needs("onnxruntime", "onnx", "onnxscript")
    base, _, splits = candidate
    recipe = both_blocks("quantize", Quantize(weight_bits=4, group_size=16))
    model = compress(base, recipe, calibration=splits.calib.x)
    facts = dict(peak_gflops={"fp32": 100.0}, memory_bandwidth_gbs=10.0, memory_gb=8.0, batch_size=1)
    on_runtime, in_pytorch = (measure(model, dataclasses.replace(_profile(name), **facts), example=splits.calib.x)
                              for name in ("onnxruntime-cpu", "pytorch-cpu"))
    assert on_runtime.activations_mb < in_pytorch.activations_mb
    assert "packed weights not unpacked" in on_runtime.runtime and "unpacked" not in in_pytorch.runtime
    profile = dataclasses.replace(_profile("onnxruntime-cpu"), **facts)
    predicted = CostModel(description=describe(base), profile=profile).predict(recipe).activation_nbytes / 1e6
    assert predicted == pytest.approx(on_runtime.activations_mb, rel=0.03)


def test_pytorch_cpu_runs_the_model_itself_and_checks_nothing(candidate):
    base, model, splits = candidate
    result = measure(model, _profile("pytorch-cpu"), example=splits.calib.x, reference=base,
                     check=splits.val.tensors()[0][:16])
    assert result.agreement is None and result.max_logit_diff is None
    assert result.runtime.startswith("pytorch-cpu (torch ") and "PyTorch tensors" in result.runtime


def test_the_exported_reference_is_cached_and_candidates_are_not(candidate, monkeypatch):
    _needs("onnxruntime", "onnx", "onnxscript")
    base, model, splits = candidate
    backend = backend_of(_profile("onnxruntime-cpu"))
    calls = []
    real = type(backend)._export
    monkeypatch.setattr(type(backend), "_export", lambda self, m, b, p: calls.append(m) or real(self, m, b, p))
    torch.manual_seed(1)
    fresh = type(base)(**{**TINY_KWARGS}).eval()  # new weights: a new cache entry
    for _ in range(2):
        backend.prepare_reference(fresh, splits.calib.x[:8], _profile("onnxruntime-cpu"))
    assert len(calls) == 1
    monkeypatch.setattr(backends, "EXPORTING", backends.EXPORTING + 1)  # autocomp writes or counts it otherwise
    backend.prepare_reference(fresh, splits.calib.x[:8], _profile("onnxruntime-cpu"))
    assert len(calls) == 2  # the reference cached before is not reused
    for _ in range(2):
        backend.prepare(model, splits.calib.x[:8], _profile("onnxruntime-cpu"))
    assert len(calls) == 4


def test_the_exported_reference_is_measured_where_the_cache_cannot_be_written(candidate, monkeypatch, tmp_path):
    _needs("onnxruntime", "onnx", "onnxscript")
    base, _, splits = candidate
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path / "a-file" / "cache"))  # unwritable, even for root
    prepared = backend_of(_profile("onnxruntime-cpu")).prepare_reference(base, splits.calib.x[:8],
                                                                          _profile("onnxruntime-cpu"))
    assert prepared.weight_nbytes > 0 and prepared.run(splits.calib.x[:16]).shape == (16, 10)


def test_a_candidates_export_kept_in_a_folder_is_read_back_not_written_again(candidate, monkeypatch, tmp_path):
    _needs("onnxruntime", "onnx", "onnxscript")
    base, model, splits = candidate
    profile = _profile("onnxruntime-cpu")
    backend = backend_of(profile)
    calls = []
    real = type(backend)._export
    monkeypatch.setattr(type(backend), "_export", lambda self, m, b, p: calls.append(m) or real(self, m, b, p))
    keep = tmp_path / "7" / "timed_export"
    keep.parent.mkdir()
    first = measure(model, profile, example=splits.calib.x, reference=base, keep=keep)
    assert [m is model for m in calls].count(True) == 1 and holds_export(keep)
    again = measure(model, profile, example=splits.calib.x, reference=base, keep=keep)
    assert [m is model for m in calls].count(True) == 1  # read back
    assert again.weights_mb == first.weights_mb and again.latency_ratio is not None
    # a folder whose parent is not there (a Ray node that does not see the run folder): a temporary export
    measure(model, profile, example=splits.calib.x, keep=tmp_path / "elsewhere" / "timed_export")
    assert [m is model for m in calls].count(True) == 2 and not (tmp_path / "elsewhere").exists()

    def fails(self, m, b, p):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(type(backend), "_export", fails)
    with pytest.raises(ExportFailed, match="no kernel"):
        measure(model, profile, example=splits.calib.x, keep=keep.parent / "other")
    assert sorted(keep.parent.iterdir()) == [keep]  # nothing half-written left beside it


def test_an_export_that_disagrees_with_pytorch_fails_the_trial_with_its_reason(candidate, monkeypatch):
    _needs("onnxruntime", "onnx", "onnxscript")
    base, _, splits = candidate
    backend = backend_of(_profile("onnxruntime-cpu"))
    real = type(backend).load

    def wrong(self, path, profile):  # the runtime's logits, rolled by one class: every top-1 decision changes
        module = real(self, path, profile)
        return lambda x: torch.roll(module(x), 1, dims=-1)

    monkeypatch.setattr(type(backend), "load", wrong)
    inputs = TrialInputs(base=base, val=splits.val, calib=splits.calib.x, train=splits.train,
                         profile=_profile("onnxruntime-cpu"), limits={"latency_ms": 1e9}, base_latency_ms=1.0,
                         check_images=splits.val.tensors()[0][:32])
    result = run_trial(RECIPE.to_dict(), inputs)
    assert result["retry"] is False
    assert result[ERROR].startswith("onnxruntime-cpu: the exported model agrees with the PyTorch one on ")
    assert "validation images" in result[ERROR] and "accuracy" not in result


def test_a_trial_within_budget_keeps_its_export_for_the_re_measurement_and_one_over_budget_does_not(candidate,
                                                                                                   tmp_path):
    _needs("onnxruntime", "onnx", "onnxscript")
    base, _, splits = candidate
    kept = tmp_path / "trials"  # the run folder's trials/: the run folder (tmp_path) is there
    inputs = TrialInputs(base=base, val=splits.val, calib=splits.calib.x, train=splits.train,
                         profile=_profile("onnxruntime-cpu"), limits={"latency_ms": 1e9}, base_latency_ms=1.0,
                         weights_dir=str(kept))
    within = run_trial(RECIPE.to_dict(), inputs, number=3)
    assert "accuracy" in within and holds_export(kept / "3" / "timed_export")
    over = run_trial(RECIPE.to_dict(), dataclasses.replace(inputs, limits={"latency_ms": 1e-9}), number=4)
    assert over["violation:latency_ms"] > 0 and not (kept / "4" / "timed_export").exists()
    run_trial(RECIPE.to_dict(), dataclasses.replace(inputs, profile=_profile("pytorch-cpu")), number=5)
    assert not (kept / "5" / "timed_export").exists()  # nothing exported, nothing kept
    blocked = tmp_path / "a_file"
    blocked.write_text("")  # a trial folder that cannot be made in it: keeping is optional, the trial goes on
    assert "accuracy" in run_trial(RECIPE.to_dict(), dataclasses.replace(inputs, weights_dir=str(blocked)),
                                   number=6)


def test_an_export_that_fails_is_a_failed_trial_not_a_crash(candidate, monkeypatch):
    _needs("onnxruntime", "onnx", "onnxscript")
    base, _, splits = candidate

    def broken(self, model, batch, path):
        raise RuntimeError("Unsupported: aten::something_new\nmore lines")

    monkeypatch.setattr(backends.OnnxRuntimeCpu, "_export", broken)
    with pytest.raises(ExportFailed, match=r"^onnxruntime-cpu: export failed: RuntimeError: Unsupported: "
                                           r"aten::something_new$"):
        measure(base, _profile("onnxruntime-cpu"), example=splits.calib.x)


def test_a_missing_runtime_is_one_line_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(AutocompError) as error:
        require_backend(_profile("openvino-cpu"), source="hw.yaml")
    assert str(error.value) == ("hardware profile hw.yaml: backend openvino-cpu needs openvino, not installed here: "
                                "pip install 'autocomp[openvino]'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_profile_without_cuda_is_refused_before_any_trial(tiny_teacher, tmp_path, capsys):
    profile = yaml.safe_load((ROOT / "hardware_profiles" / "nvidia_h100.yaml").read_text())
    profile["ray_resource"] = None
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(profile))
    job = _job(tmp_path, tiny_teacher[0], tmp_path / "gpu.yaml")
    assert main(["search", str(job), "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"autocomp: error: hardware profile {tmp_path / 'gpu.yaml'}: backend pytorch-cuda needs a "
                          "CUDA GPU")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "run.json").exists()


def test_pytorch_cuda_refuses_autocomps_cpu_only_int8_layers_by_name(candidate):
    _, model, splits = candidate
    with pytest.raises(ExportFailed, match=r"backend pytorch-cuda cannot run blocks\.0\.attn\.qkv \(w8\): "):
        backend_of(HardwareProfile(name="g", device="gpu", backend="pytorch-cuda")).prepare(
            model, splits.calib.x[:2], HardwareProfile(name="g", device="gpu", backend="pytorch-cuda"))


def test_a_model_holding_cpu_only_layers_is_scored_on_the_cpu_wherever_asked(candidate):
    # a trial with a GPU scores there, but autocomp's int8 layers run on the CPU alone (checked without CUDA: asked
    # for cuda, the model would fail to move here)
    _, model, splits = candidate
    assert evaluate(model, splits.val, device="cuda") == evaluate(model, splits.val)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path runs where one exists")
def test_pytorch_cuda_times_and_scores_16_and_4_bit_layers_on_the_gpu(tiny_teacher, digits_splits):
    base = tiny_teacher[1]
    recipe = Recipe(blocks=[{"prune_heads": PruneHeads(keep=2), "quantize": Quantize(weight_bits=16)},
                            {"prune_mlp": PruneMlp(keep=0.5), "quantize": Quantize(weight_bits=4, group_size=16)}])
    model = compress(base, recipe, calibration=digits_splits.calib.x)
    on_gpu = measure(model, _profile("pytorch-cuda", device="gpu"), example=digits_splits.calib.x, reference=base)
    here = measure(model, _profile("pytorch-cpu"), example=digits_splits.calib.x)
    assert on_gpu.latency_ms > 0 and on_gpu.weights_mb == here.weights_mb  # the 16- and 4-bit storage, as held
    on_cpu = evaluate(model, digits_splits.val)
    assert abs(evaluate(model, digits_splits.val, device="cuda") - on_cpu) <= 100 / len(digits_splits.val)  # an image
    assert {tensor.device.type for tensor in model.state_dict().values()} == {"cpu"}  # back where it was


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path runs where one exists")
def test_a_cuda_graph_replays_the_model_on_each_new_input(tiny_teacher, digits_splits):
    from autocomp.runtimes import cuda_graphed

    recipe = Recipe(blocks=[{"prune_heads": PruneHeads(keep=2), "quantize": Quantize(weight_bits=4, group_size=16)},
                            {"prune_mlp": PruneMlp(keep=0.5), "quantize": Quantize(weight_bits=16)}])
    model = compress(tiny_teacher[1], recipe, calibration=digits_splits.calib.x).cuda().eval()
    first, second = digits_splits.val.x[:8].cuda(), digits_splits.val.x[8:16].cuda()
    run = cuda_graphed(model, first)
    with torch.no_grad():
        eager = model(first), model(second)
    assert torch.allclose(run(second), eager[1], atol=1e-4)  # the graph reads each call's images, not the first's
    assert torch.allclose(run(first), eager[0], atol=1e-4)
    profile = _profile("pytorch-cuda", device="gpu", cuda_graphs=True)
    timed = measure(model.cpu(), profile, example=digits_splits.calib.x, reference=tiny_teacher[1])
    assert "CUDA graphs" in timed.runtime and timed.latency_ratio is not None and timed.latency_ms > 0


class _WaitsOnTheCpu(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum())  # a CPU sync: no graph can hold it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path runs where one exists")
def test_a_model_no_cuda_graph_can_hold_fails_its_trial_naming_the_fix():
    profile = _profile("pytorch-cuda", device="gpu", cuda_graphs=True)
    with pytest.raises(ExportFailed, match="could not capture the model in a CUDA graph .*set cuda_graphs: false"):
        backend_of(profile).prepare(_WaitsOnTheCpu(), torch.randn(8, 4), profile)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()  # later work runs on the stream it had


def test_the_uncompressed_model_is_exported_once_however_often_it_is_timed(tiny_teacher, digits_splits, tmp_path,
                                                                          monkeypatch):
    """On a busy machine the uncompressed model is timed up to 3 times, and `autocomp measure` times it 3 times: a
    runtime backend exports it once (seconds to a minute at 224 px), to the cache every trial's reference reads."""
    _needs("onnxruntime", "onnx", "onnxscript")
    from autocomp.search import _before

    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path))  # nothing exported before
    profile = _profile("onnxruntime-cpu")
    written = []
    write = backends.OnnxRuntimeCpu.write
    monkeypatch.setattr(backends.OnnxRuntimeCpu, "write", lambda self, *args: written.append(1) or write(self, *args))
    monkeypatch.setattr(_before, "busy", lambda *args: True)
    assert _before.baseline_cost(tiny_teacher[1], profile, digits_splits)["timings"] == _before.BASELINE_TIMINGS
    assert len(written) == 1
    measure(tiny_teacher[1], profile, example=digits_splits.calib.x, reference=tiny_teacher[1])  # as a trial does
    assert len(written) == 2  # its candidate; the reference read from the cache


def test_a_cuda_profile_says_how_it_times():
    eager, graphs = (_profile("pytorch-cuda", device="gpu", cuda_graphs=flag) for flag in (False, True))
    assert ", eager, CUDA events" in backend_of(eager).options(eager)
    assert ", CUDA graphs, CUDA events" in backend_of(graphs).options(graphs)


def test_calibrating_a_runtime_measures_its_own_kernels():
    _needs("onnxruntime", "onnx", "onnxscript")
    from autocomp.measure.profiling import GemmShape, calibrate

    result = calibrate(backend="onnxruntime-cpu", shapes=(GemmShape(16, 64, 64),), repeats=2, copy_mb=1)
    assert "attention" not in result.details  # kernels' details are PyTorch's only: exports cost seconds
    # ORT's GEMM, MatMulInteger, the static int8 GEMM its QDQ fusion makes, MatMulNBits
    assert set(result.peak_gflops) == {"fp32", "int8", "int8_static", "int4"}
    assert result.op_overhead_us > 0 and result.details["call_us"] > 0
    with pytest.raises(AutocompError, match="autocomp profile calibrates CPU backends"):
        calibrate(backend="pytorch-cuda")


def _job(tmp_path: Path, spec, hardware: Path, *, trials: int = 2) -> Path:
    job = {"model": {"name": spec.name, "kwargs": TINY_KWARGS, "checkpoint": spec.checkpoint},
           "data": dataclasses.asdict(DIGITS), "search_space": str(ROOT / "search_spaces" / "heads_int8.yaml"),
           "hardware": str(hardware), "budget": {"memory": 0.99}, "trials": trials, "workers": 1, "seed": 0,
           "sensitivity": {"images": 0}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_a_search_on_onnx_runtime_records_the_runtime_and_the_export_check(tiny_teacher, tmp_path):
    _needs("onnxruntime", "onnx", "onnxscript")
    job = _job(tmp_path, tiny_teacher[0], ROOT / "hardware_profiles" / "onnxruntime_cpu.yaml", trials=2)
    assert main(["search", str(job), "--out", str(tmp_path / "run")]) == 0
    rows = [r for r in csv.DictReader((tmp_path / "run" / "trials.csv").open()) if r["state"] == "COMPLETE"]
    assert rows
    for row in rows:
        assert row["runtime"].startswith("onnxruntime-cpu (onnxruntime ")
        assert "weights counted in the ONNX file" in row["runtime"]
        assert float(row["export_top1"]) >= 0.9 and float(row["export_max_logit_diff"]) < 2.0  # another model: ~5
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["hardware"]["backend"] == "onnxruntime-cpu"
    # the files the trials timed (undistilled weights) served the re-measurement and are gone: none to deploy by mistake
    assert summary["remeasured"] and not list((tmp_path / "run" / "trials").glob("*/timed_export"))
    assert summary["hardware"]["runtime"].startswith("onnxruntime-cpu (onnxruntime ")
    # an exported trial's metrics keep that check apart, under its own name: not to be read as the export's; its
    # runtime is what its latency was measured on, as best/metrics.json's
    assert main(["export", str(tmp_path / "run"), "--trial", rows[0]["number"], "--out", str(tmp_path / "t")]) == 0
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert not {"export_top1", "export_max_logit_diff"} & set(metrics) and metrics["runtime"] == rows[0]["runtime"]
    check = metrics["search_check"]
    assert check["runtime"] == rows[0]["runtime"] and check["top1_agreement"] == pytest.approx(
        float(rows[0]["export_top1"]), abs=1e-4)


def test_a_search_with_static_activations_measures_them_on_openvino_and_exports_them(tiny_teacher, tmp_path):
    """act_bits in the space: the trials' int8 blocks calibrate their inputs, the export written for OpenVINO
    carries them (its check against PyTorch passes), and an exported trial loads with them."""
    _needs("openvino", "onnx", "onnxscript")
    from autocomp import load
    from autocomp.ops.quantize import QuantizedLinear

    space = tmp_path / "space.yaml"
    space.write_text("heads_keep: [0.5, 1.0]\nweight_bits: [8]\nact_bits: [8]\n")
    job = _job(tmp_path, tiny_teacher[0], ROOT / "hardware_profiles" / "openvino_cpu.yaml", trials=2)
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "search_space": str(space)}))
    assert main(["search", str(job), "--out", str(tmp_path / "run")]) == 0
    rows = [r for r in csv.DictReader((tmp_path / "run" / "trials.csv").open()) if r["state"] == "COMPLETE"]
    assert rows
    for row in rows:
        assert row["runtime"].startswith("openvino-cpu (openvino ")
        assert all(block.split(":")[-1] == "w8a8-sq" for block in row["recipe_summary"].split(" | ")), row
        assert row["int8_activations"] and row["simulated_layers"] == "0"
        assert float(row["export_top1"]) >= 0.9
    assert main(["export", str(tmp_path / "run"), "--trial", rows[0]["number"], "--out", str(tmp_path / "t")]) == 0
    layers = [m for m in load(tmp_path / "t").modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.act_qparams is not None for m in layers)


def test_under_a_memory_budget_a_setting_the_runtime_cannot_run_is_offered_in_no_block(tiny_teacher, tmp_path,
                                                                                      monkeypatch, capsys):
    """No latency pass runs under a memory budget, so each setting is run on the target once instead: one the
    runtime cannot run (OpenVINO's int8 weights on some CPUs; faked here) would otherwise fail every trial."""
    _needs("onnxruntime", "onnx", "onnxscript")
    from autocomp.ops.quantize import Int8Linear
    from autocomp.results import load_run_study
    from autocomp.search import _before

    real, ran = _before.run_once, []

    def run_once(profile, splits, config):
        run = real(profile, splits, config)

        def faked(model):
            ran.append(model)
            if any(isinstance(m, Int8Linear) for m in model.modules()):
                raise ExportFailed("onnxruntime-cpu: the runtime fails on the export: no int8 kernel here")
            run(model)
        return faked

    monkeypatch.setattr(_before, "run_once", run_once)
    job = _job(tmp_path, tiny_teacher[0], ROOT / "hardware_profiles" / "onnxruntime_cpu.yaml", trials=3)
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "sensitivity": {"images": 100}}))
    run = tmp_path / "run"
    assert main(["search", str(job), "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "runtime: weight_bits 8 is offered in no block, the target cannot run it: onnxruntime-cpu: the runtime " \
           "fails on the export: no int8 kernel here" in printed
    assert "the target cannot run weight_bits 8" in printed
    # heads 0.83, 0.5 and int8 once each in the first block alone (not heads 0.67: it keeps as many heads as 0.83, so
    # no block is offered it); int8, which failed there, in every block
    assert [len(model.blocks) for model in ran] == [1, 1, 1, 2]
    allowed = json.loads((run / "sensitivity.json").read_text())
    assert all(allowed[f"b{i}.weight_bits"] == [32] for i in range(2))
    assert 0.5 in allowed["b1.heads_keep"]  # heads 0.5 runs: still offered (block 0 lost it to the sensitivity pass)
    rows = list(csv.DictReader((run / "sensitivity.csv").open()))  # the pass's file says what the search sampled
    int8 = [r for r in rows if r["knob"] == "weight_bits" and float(r["value"]) == 8]
    assert len(int8) == 2 and all(r["offered"] == "False" and r["left_out"] == "the target cannot run it" for r in int8)
    from autocomp.space import heads_kept

    heads = [block.attn.num_heads for block in tiny_teacher[1].blocks]  # a fraction keeping as many heads as one
    assert all((r["offered"] == "True") == any(  # offered is offered (0.67 as 0.83: both keep 3 of 4)
        heads_kept(v, heads[int(r["block"])]) == heads_kept(float(r["value"]), heads[int(r["block"])])
        for v in allowed[f"b{r['block']}.heads_keep"]) for r in rows
        if r["knob"] == "heads_keep" and float(r["accuracy_drop"]) <= 5.0)
    trials = load_run_study(run).get_trials()
    assert trials and not any("quantize" in block for t in trials for block in t.user_attrs["recipe"]["blocks"])
    # a limit only int8 weights could reach: refused once the pass has left them out, before any trial
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "budget": {"memory": 0.9}}))
    assert main(["search", str(job), "--out", str(tmp_path / "tight")]) == 2
    error = capsys.readouterr().err
    assert "budget: memory_mb <= " in error and "cannot be met" in error and "smallest candidate offered to the " \
        "search" in error and "weight_bits 32" in error
    needed = re.search(r"loosen the budget to at least memory: ([\d.]+) \([\d.]+ MB\)", error)  # as it was given
    assert needed and float(needed.group(1)) > 0.9 and "the target cannot run weight_bits 8" in error, error
    assert not (tmp_path / "tight" / "run.json").exists()  # a rerun with another budget starts afresh
