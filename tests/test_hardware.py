from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from autocomp.errors import AutocompError
from autocomp.measure import profiling
from autocomp.hardware import PRECISIONS, HardwareProfile, read_profile
from autocomp.measure.profiling import cpu_description, load_profile, profile_note, threads_note, usable_cpus
from conftest import shipped_profiles

PROFILES = shipped_profiles()
LOCAL = Path(__file__).parent.parent / "hardware_profiles" / "local_cpu.yaml"
DATASHEET = Path(__file__).parent.parent / "hardware_profiles" / "x86_server_vnni.yaml"


@pytest.mark.parametrize("path", PROFILES)
def test_every_shipped_profile_loads_and_can_predict(path):
    profile = load_profile(path)
    assert profile.missing_device_facts() == []
    assert "fp32" in profile.peak_gflops
    for precision in profile.fast_weight_bits.values():
        assert precision in profile.peak_gflops


@pytest.mark.parametrize("path", PROFILES)
def test_every_device_number_has_a_source(path):
    profile = load_profile(path)
    needed = [f"peak_gflops.{p}" for p in profile.peak_gflops]
    needed += ["memory_bandwidth_gbs", "memory_gb", "op_overhead_us", "fast_weight_bits", "fast_ops", "device"]
    missing = [key for key in needed if not profile.sources.get(key)]
    assert missing == []


def test_the_local_profile_is_measured_on_this_cpu_and_keeps_its_timing_settings():
    template = read_profile(LOCAL)
    assert template.calibrate == "on_first_use" and template.missing_device_facts() != []  # no numbers shipped
    profile = load_profile(LOCAL)
    assert profile.calibrate is None and profile.missing_device_facts() == []
    assert (profile.threads, profile.batch_size, profile.warmup, profile.repeats) == (1, 16, 5, 30)
    assert profile.kernel_precision(8) == "int8"
    assert profile.kernel_precision(4) is None  # unpacked to fp32: saves memory, not time
    assert profile.kernel_precision(32) == "fp32"
    assert profile.measured_on == cpu_description() and profile_note(profile) is None
    for field in ("peak_gflops.fp32", "peak_gflops.int8", "memory_bandwidth_gbs", "op_overhead_us", "memory_gb"):
        assert profile.sources[field].startswith("measured by autocomp profile on "), field


def test_the_local_profile_is_measured_once_per_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path))
    calls = []
    real = profiling.calibrate
    monkeypatch.setattr(profiling, "calibrate", lambda **kw: calls.append(kw) or real(
        shapes=profiling.VIT_GEMMS[:1], repeats=2, copy_mb=1, **kw))
    said = []
    first = load_profile(LOCAL, log=said.append)
    assert len(calls) == 1 and len(said) == 1 and cpu_description() in said[0]
    cached = list((tmp_path / "profiles").glob("local_cpu-*.yaml"))
    assert len(cached) == 1 and str(cached[0]) in said[0]
    assert load_profile(LOCAL) == first and len(calls) == 1  # the cache, not a second measurement
    monkeypatch.setattr(profiling, "cpu_description", lambda: "Another CPU (x86_64, 4 CPUs; avx avx2 fma)")
    other = load_profile(LOCAL)
    assert len(calls) == 2 and len(list((tmp_path / "profiles").glob("local_cpu-*.yaml"))) == 2
    assert other.measured_on == "Another CPU (x86_64, 4 CPUs; avx avx2 fma)"


def test_a_cache_that_cannot_be_written_keeps_the_measured_profile_for_the_run(monkeypatch, tmp_path):
    """AUTOCOMP_CACHE under a file (unwritable, even for root): the CPU measured is used all the same, said once."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path / "a-file" / "cache"))
    real = profiling.calibrate
    monkeypatch.setattr(profiling, "calibrate", lambda **kw: real(shapes=profiling.VIT_GEMMS[:1], repeats=2,
                                                                  copy_mb=1, **kw))
    said = []
    profile = load_profile(LOCAL, log=said.append)
    assert profile.measured_on == cpu_description() and profile.peak_gflops  # measured on this CPU
    assert len(said) == 2 and "warning: cannot cache the measured profile at" in said[1]
    assert "set AUTOCOMP_CACHE to a folder you can write" in said[1]


def test_a_runtime_profile_is_measured_anew_when_the_form_of_what_it_runs_changes(monkeypatch):
    """A profile calibrated on ONNX Runtime timed the exporter's int8 form of this CPU: another form (under QNNPACK,
    where the scored model takes codes 0..255, a CPU whose kernel is exact with them, or a later autocomp's form) is
    another cache entry; PyTorch's key stays."""
    pytest.importorskip("onnxruntime")
    from autocomp.runtimes import onnx_layers as onnx_export

    ort_profile = LOCAL.with_name("onnxruntime_cpu.yaml")
    keys = {}
    for exact in (True, False):
        monkeypatch.setattr(onnx_export, "ort_u8s8_exact", lambda exact=exact: exact)
        monkeypatch.setattr(onnx_export, "_full_codes_scored", lambda: True)  # QNNPACK: ORT's kernel decides
        keys[exact] = (profiling._calibration_key(ort_profile), profiling._calibration_key(LOCAL))
    assert keys[True][0] != keys[False][0] and keys[True][1] == keys[False][1]


def test_capped_cpu_capability_is_said_not_to_hold_for_onnx_runtime_openvino_or_fbgemm(monkeypatch):
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA emulate a CPU without AVX-512 or VNNI for PyTorch; ONNX Runtime reads
    neither, OpenVINO only in part, nor does FBGEMM, PyTorch's dynamic int8 Linear on its default quantized engine:
    a user emulating their target there was told nothing."""
    from autocomp.measure.profiling import cap_note

    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(name, raising=False)
    assert cap_note("onnxruntime-cpu") is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")  # oneDNN's own "no cap": nothing to say
    assert cap_note("onnxruntime-cpu") is None and cap_note("openvino-cpu") is None
    from autocomp.runtimes.openvino import capped_isa

    assert capped_isa("x") == ""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert capped_isa("x") == " (ONEDNN_MAX_CPU_ISA=AVX2 is set here, which OpenVINO follows in part: x)"
    assert cap_note("onnxruntime-cpu").startswith("ONEDNN_MAX_CPU_ISA=AVX2 cap PyTorch's kernels; ONNX Runtime reads "
                                                  "none of them")
    assert "OpenVINO follows" in cap_note("openvino-cpu")
    import torch

    if not {"onednn", "x86"} <= set(torch.backends.quantized.supported_engines):
        return  # an ARM build: neither engine, nor FBGEMM
    monkeypatch.setattr(torch.backends.quantized, "engine", "onednn")
    assert cap_note(load_profile(LOCAL).backend) is None  # PyTorch on the CPU, int8 on oneDNN: the caps hold
    monkeypatch.setattr(torch.backends.quantized, "engine", "x86")  # PyTorch's default: FBGEMM picks its own
    assert cap_note("pytorch-cpu").startswith("ONEDNN_MAX_CPU_ISA=AVX2 cap PyTorch's kernels; PyTorch's dynamic int8 "
                                              "Linear (quantized engine 'x86': FBGEMM) reads only "
                                              "FBGEMM_ENABLE_INSTRUCTIONS (e.g. AVX2), which is not set, so dynamic "
                                              "int8 layers' latencies and input codes (and the profile's int8 peak) "
                                              "are measured as this CPU runs them")
    # the input codes int8 layers are scored with follow FBGEMM on every backend: so does an export's int8 form
    assert cap_note("onnxruntime-cpu").endswith(
        "so onnxruntime-cpu latencies and the int8 layers' input codes (and so the export's int8 form) are measured as "
        "this CPU runs them, not as the CPU the caps emulate (measure there for its figures)")
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")  # FBGEMM's own cap: the caps hold for it too
    assert cap_note("pytorch-cpu") is None
    assert cap_note("onnxruntime-cpu").startswith("ONEDNN_MAX_CPU_ISA=AVX2 and FBGEMM_ENABLE_INSTRUCTIONS=AVX2 cap "
                                                  "PyTorch's kernels; ONNX Runtime reads none of them, so "
                                                  "onnxruntime-cpu latencies are measured as this CPU runs them")


def test_a_profile_measured_on_another_cpu_says_so():
    profile = dataclasses.replace(load_profile(LOCAL), measured_on="Some other CPU (x86_64, 2 CPUs; avx fma)")
    note = profile_note(profile)
    assert note.startswith("hardware profile 'local-cpu' was measured on Some other CPU (x86_64, 2 CPUs; avx fma), "
                           f"but this is {cpu_description()}")
    assert "autocomp profile" in note
    assert profile_note(load_profile(DATASHEET)) is None  # a datasheet's numbers claim no machine


def test_a_profile_of_another_cpu_timed_on_this_machine_says_whose_latencies_they_are(tmp_path):
    """A hand-written profile of another CPU without ray_resource is timed here: its run reported this machine's
    latencies as the device's, without a word (summary.json's hardware note was null)."""
    own = read_profile(_write(tmp_path, lambda d: d.update(ray_resource=None)))
    note = profile_note(own)
    assert note.startswith(f"hardware profile {own.name!r} describes a CPU of its own (its figures were not measured "
                           f"here: no calibrate, no measured_on) and names no ray_resource, so its candidates are "
                           f"timed where the trials run, on {cpu_description()}: the latencies are that CPU's")
    assert "name it in ray_resource" in note and "set calibrate: on_first_use" in note
    cpus = usable_cpus()
    assert threads_note(cpus, "x") is None
    assert threads_note(cpus + 2, "hardware profile 'x'").startswith(
        f"hardware profile 'x' times with {cpus + 2} threads, but this machine gives this process {cpus} CPU(s)")


def test_only_a_cpu_profile_can_be_measured_on_first_use(tmp_path):
    path = _write(tmp_path, lambda d: d.update(calibrate="on_first_use", backend="pytorch-cuda", device="gpu"))
    with pytest.raises(AutocompError, match="calibrate: on_first_use measures this machine's CPU; it needs device: "
                                            "cpu and a CPU backend, got gpu and pytorch-cuda"):
        read_profile(path)
    path = _write(tmp_path, lambda d: d.update(calibrate="always"))
    with pytest.raises(AutocompError, match=r"calibrate must be one of \['on_first_use'\] or null, got 'always'"):
        read_profile(path)


def test_a_timing_only_profile_built_in_code_still_works_for_measuring():
    profile = HardwareProfile(name="t", batch_size=4, repeats=15, warmup=2)
    assert profile.missing_device_facts() == ["peak_gflops", "memory_bandwidth_gbs", "memory_gb"]


def _write(tmp_path, edit):
    data = yaml.safe_load(DATASHEET.read_text())
    edit(data)
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _drop(key):
    return lambda d: d.pop(key)


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _peak(precision, value):
    return lambda d: d["peak_gflops"].__setitem__(precision, value)


BAD = [
    ("missing bandwidth", _drop("memory_bandwidth_gbs"), "missing key(s) ['memory_bandwidth_gbs']"),
    ("missing peaks", _drop("peak_gflops"), "missing key(s) ['peak_gflops']"),
    ("missing capacity", _drop("memory_gb"), "missing key(s) ['memory_gb']"),
    ("empty peaks", _set("peak_gflops", None), "missing key(s) ['peak_gflops']"),
    ("missing name", _drop("name"), "missing key(s) ['name']"),
    ("zero bandwidth", _set("memory_bandwidth_gbs", 0), "memory_bandwidth_gbs must be a positive number, got 0"),
    ("negative bandwidth", _set("memory_bandwidth_gbs", -5), "memory_bandwidth_gbs must be a positive number, got -5"),
    ("negative capacity", _set("memory_gb", -1), "memory_gb must be a positive number, got -1"),
    ("zero throughput", _peak("int8", 0), "peak_gflops.int8 must be a positive number, got 0"),
    ("negative throughput", _peak("fp32", -170), "peak_gflops.fp32 must be a positive number, got -170"),
    ("text throughput", _peak("fp32", "fast"), "peak_gflops.fp32 must be a positive number, got 'fast'"),
    ("unknown precision", _peak("fp12", 10), "peak_gflops: unknown precision(s) ['fp12']"),
    ("no fp32 peak", _set("peak_gflops", {"int8": 400}), "peak_gflops must give fp32"),
    ("unknown field", _set("clock_ghz", 2.6), "unknown key(s) ['clock_ghz']"),
    ("bad bit-width", _set("fast_weight_bits", {5: "int8"}), "fast_weight_bits: 5 is not a weight bit-width"),
    ("kernel precision", _set("fast_weight_bits", {8: "int9"}), "fast_weight_bits.8: unknown precision 'int9'"),
    ("kernel without peak", _set("fast_weight_bits", {16: "fp16"}), "fast_weight_bits.16 computes at fp16 but "
                                                                     "peak_gflops has no fp16"),
    ("unknown op", _set("fast_ops", ["flash"]), "fast_ops: unknown op(s) ['flash']"),
    ("negative overhead", _set("op_overhead_us", -1), "op_overhead_us must be a number of microseconds >= 0"),
    ("bad device", _set("device", "tpu"), "device must be one of ['cpu', 'gpu', 'npu'], got 'tpu'"),
    ("backend typo", _set("backend", "pytorch_cpu"),
     ("backend must be one of ['pytorch-cpu', 'onnxruntime-cpu', 'openvino-cpu', 'pytorch-cuda'], got "
      "'pytorch_cpu'; did you mean 'pytorch-cpu'?")),
    ("backend not built", _set("backend", "tensorrt"), "backend must be one of"),
    ("backend on another device", _set("backend", "pytorch-cuda"),
     "backend pytorch-cuda runs on a gpu, but the profile says device: cpu; set device: gpu, or a cpu backend: "
     "['pytorch-cpu', 'onnxruntime-cpu', 'openvino-cpu']"),
    ("zero threads", _set("threads", 0), "threads must be a whole number >= 1, got 0"),
    ("graphs on a CPU", _set("cuda_graphs", True), "cuda_graphs: true is how backend pytorch-cuda times a model, and "
                                                  "this profile's backend is pytorch-cpu; remove cuda_graphs"),
    ("graphs as text", _set("cuda_graphs", "yes"), "cuda_graphs must be true or false, got 'yes'"),
    ("source of nothing", _set("sources", {"clock": "ark"}), "sources: unknown field(s) ['clock']"),
]


@pytest.mark.parametrize("edit, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_profiles_are_refused_naming_the_file_and_the_field(tmp_path, edit, message):
    path = _write(tmp_path, edit)
    with pytest.raises(AutocompError) as error:
        load_profile(path)
    assert f"hardware profile {path}" in str(error.value)
    assert message in str(error.value)


@pytest.mark.parametrize("text, message", [("", "is empty; the keys are ['name', 'device', "),
                                           ("- name: x\n", "is a list; write 'key: value' lines, not '- ' items")])
def test_a_profile_that_is_no_mapping_says_what_it_is(tmp_path, text, message):
    path = tmp_path / "hw.yaml"
    path.write_text(text)
    with pytest.raises(AutocompError) as error:
        read_profile(path)
    assert f"hardware profile {path} {message}" in str(error.value)


def test_a_bad_value_is_reported_before_missing_device_facts(tmp_path):
    path = tmp_path / "hw.yaml"
    path.write_text("name: x\nthreads: 0\n")
    with pytest.raises(AutocompError, match="threads must be a whole number >= 1, got 0"):
        load_profile(path)


def test_precision_names_are_the_documented_ones():
    assert set(PRECISIONS) >= {"fp32", "fp16", "bf16", "int8"}


def test_calibration_returns_profile_numbers():
    from autocomp.measure.profiling import GemmShape, calibrate

    from autocomp.ops.quantize import int8_static_range

    result = calibrate(shapes=(GemmShape(8, 32, 32),), precisions=("fp32", "int8", "int8_static"), repeats=2,
                       copy_mb=1)
    # static int8 where oneDNN's kernel runs it (elsewhere the layer is simulated: no rate to measure)
    assert set(result.peak_gflops) == {"fp32", "int8"} | ({"int8_static"} if int8_static_range() else set())
    assert min(result.peak_gflops.values()) > 0
    assert result.memory_bandwidth_gbs > 0 and result.op_overhead_us > 0
    assert {"attention", "layernorm", "softmax"} <= set(result.details)
