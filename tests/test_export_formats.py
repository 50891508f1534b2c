"""autocomp export --format onnx|openvino: the deployable file beside the loadable folder, its bytes, its agreement
with the model autocomp.load gives, and the one-line refusals."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch

import autocomp
from autocomp.cli import build_parser, main
from autocomp.measure import backends
from autocomp.ops import Int8Linear
from autocomp.search._export import CHECK_BATCH
from conftest import skip_where_openvino_lacks_compressed_weights
from test_cli_errors import run_cli
from test_search_e2e import write_job


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_teacher):
    import yaml

    tmp = tmp_path_factory.mktemp("export")
    job = write_job(tmp, tiny_teacher[0], {"memory": 0.99}, trials=3)
    space = tmp / "space.yaml"  # every candidate int8: a compressed trial whatever the sampler draws
    space.write_text("heads_keep: [0.5, 1.0]\nweight_bits: [8]\n")
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "search_space": str(space)}))
    assert main(["search", str(job), "--out", str(tmp / "run"), "--quiet"]) == 0
    rows = list(csv.DictReader((tmp / "run" / "trials.csv").open()))
    # the most compressed complete trial (fewest weight bytes): its file must be smaller than the uncompressed one's
    trial = min((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["weights_mb"]))
    return tmp / "run", int(trial["number"]), float(trial["weights_mb"])


def test_onnx_export_writes_a_checked_file_beside_the_loadable_folder(run, tmp_path, digits_splits, monkeypatch,
                                                                      capsys):
    pytest.importorskip("onnxruntime")
    run_dir, trial, _ = run
    out = tmp_path / "onnx"
    assert main(["export", str(run_dir), "--trial", str(trial), "--out", str(out), "--format", "onnx"]) == 0
    printed = capsys.readouterr().out
    assert "model.onnx:" in printed and "top-1 agreement with the PyTorch model" in printed
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "onnx" and info["file"] == "model.onnx" and info["top1_agreement"] >= 0.9
    assert info["runtime"].startswith("onnxruntime-cpu (onnxruntime ")
    assert info["runtime"].endswith("; as the check ran it (the file takes any batch size)")  # not the file's
    from autocomp.runtimes import compare_outputs, onnx_weight_nbytes, ort_session
    from autocomp.runtimes.onnx import int8_weight_form

    assert info["int8_weights"] == int8_weight_form()  # the form written (the scored model's codes), for a reader
    # a file exact on this CPU alone (codes 0..255, x86 with VNNI or AMX) says so; the portable forms say nothing
    said = "its int8 layers take input codes 0..255" in printed
    assert ("int8_weights_note" in info) == said == (info["int8_weights"] == "matmul_integer")

    assert info["file_weight_nbytes"] == onnx_weight_nbytes(out / "model.onnx")  # the file's, and as ORT holds it
    assert info["weight_nbytes"] == onnx_weight_nbytes(out / "model.onnx", loaded=True) >= info["file_weight_nbytes"]
    assert f"{info['file_weight_nbytes'] / 1e6:.3f} MB of weights in the file" in printed
    model = autocomp.load(out)  # the PyTorch folder is still there and loads
    images = digits_splits.val.tensors()[0][:128]
    agreement = compare_outputs(model, ort_session(out / "model.onnx"), images)
    assert agreement.top1 >= 0.9
    # the file's own accuracy in its runtime, beside the PyTorch model's, on the test images in the check's batches
    from autocomp.runtimes import OrtModule
    from autocomp.train import evaluate

    test, batch = digits_splits.test, CHECK_BATCH
    assert info["test_runtime"] == "onnxruntime-cpu" and info["test_images"] == len(test) > 0
    assert info["test_accuracy"] == evaluate(OrtModule(ort_session(out / "model.onnx")), test, batch_size=batch)
    assert info["test_accuracy_pytorch"] == evaluate(model, test, batch_size=batch)
    assert f"test accuracy in onnxruntime-cpu {info['test_accuracy']:.2f}% (the PyTorch model " \
           f"{info['test_accuracy_pytorch']:.2f}%, on the same {len(test)} test images)" in printed
    # best/, scored by the run on the same images at another batch: its figure beside, and why it may differ
    assert main(["export", str(run_dir), "--out", str(tmp_path / "best"), "--format", "onnx"]) == 0
    printed, best = capsys.readouterr().out, json.loads((run_dir / "best" / "metrics.json").read_text())
    assert best["accuracy_batch"]["test"] != batch and any(isinstance(layer, Int8Linear) and layer.act_qparams is None
                                                           for layer in autocomp.load(run_dir / "best").modules())
    assert (f"; the run scored {best['test_accuracy']:.2f}% on them at batch {best['accuracy_batch']['test']}: its "
            "int8 layers quantize their inputs per batch (dynamic activations)") in printed
    # a sample of the test split (a large test/ folder): the run's figure on all of it beside (a sample scored 2
    # points under it in a user's run, unexplained)
    monkeypatch.setattr("autocomp.search._export.TEST_SCORED", 40)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "sample"), "--format", "onnx"]) == 0
    assert (f"on the same 40 test images); a seeded sample of the {len(test)} test images, on all of which the run "
            f"scored {best['test_accuracy']:.2f}%") in capsys.readouterr().out
    # every trial is int8: the form exact on VNNI CPUs alone, asked for, says so, with the portable form instead
    # (on a CPU without VNNI its outputs are wrong: its check is let pass, to read the note)
    monkeypatch.setattr(backends, "AGREEMENT_MIN", 0.0)
    assert main(["export", str(run_dir), "--trial", str(trial), "--out", str(tmp_path / "full"), "--format", "onnx",
                 "--int8-weights", "matmul_integer"]) == 0
    full = json.loads((tmp_path / "full" / "export.json").read_text())
    from autocomp.ops.quantize import int8_linear_top_code

    portable = ("for a file exact on every CPU, export with int8 weights " + (
        "matmul_integer_u8 (the scored model's input codes, a slower kernel) or matmul_integer_reduce_range"
        if int8_linear_top_code() == 255 else "matmul_integer_reduce_range (the default here: the scored model's own "
                                              "input codes"))
    assert full["int8_weights"] == "matmul_integer" and portable in full["int8_weights_note"]
    assert portable in capsys.readouterr().out


def test_an_export_takes_the_int8_codes_the_run_scored_its_trials_with(run, tmp_path, capsys, monkeypatch):
    """A run scored on another CPU (or before int8 layers took 0..255 where the kernel sums them exactly) records
    its codes in run.json: auto writes the file in those codes, and the export says that the model loaded here
    scores a little differently."""
    pytest.importorskip("onnxruntime")
    import shutil

    from autocomp.ops.quantize import int8_linear_top_code
    from autocomp.runtimes.onnx import int8_weight_form

    run_dir, trial, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    info = json.loads((copy / "run.json").read_text())
    other = 382 - int8_linear_top_code()  # 127 <-> 255
    info["measured_with"]["int8_codes"] = other
    (copy / "run.json").write_text(json.dumps(info))
    assert main(["export", str(copy), "--trial", str(trial), "--out", str(tmp_path / "o"), "--format", "onnx"]) == 0
    exported = json.loads((tmp_path / "o" / "export.json").read_text())
    assert exported["int8_weights"] == int8_weight_form(top=other) != int8_weight_form()
    note = f"the run scored its int8 layers with input codes 0..{other}, which PyTorch here quantizes to "
    assert exported["int8_codes_note"].startswith(note) and note in capsys.readouterr().out
    # the full-code form asked for: its note's exact forms are those of the codes the run scored with
    monkeypatch.setattr(backends, "AGREEMENT_MIN", 0.0)  # saturating on x86 without VNNI: the note is what is read
    assert main(["export", str(copy), "--trial", str(trial), "--out", str(tmp_path / "f"), "--format", "onnx",
                 "--int8-weights", "matmul_integer"]) == 0
    full = json.loads((tmp_path / "f" / "export.json").read_text())["int8_weights_note"]
    assert ("matmul_integer_u8 (the scored model's input codes" in full) == (other == 255)
    assert ("matmul_integer_reduce_range (the default here: the scored model's own input codes" in full) == (
        other == 127)
    del info["measured_with"]["int8_codes"]  # a run from before the record: its export form tells
    info["measured_with"]["forms"] = "int8 weights matmul_integer_reduce_range"
    (copy / "run.json").write_text(json.dumps(info))
    assert main(["export", str(copy), "--trial", str(trial), "--out", str(tmp_path / "p"), "--format", "onnx"]) == 0
    assert json.loads((tmp_path / "p" / "export.json").read_text())["int8_weights"] == "matmul_integer_reduce_range"


def test_an_onnx_export_of_a_compressed_trial_holds_fewer_bytes_than_the_uncompressed(run, tmp_path, tiny_teacher):
    pytest.importorskip("onnxruntime")
    run_dir, trial, weights_mb = run
    base_nbytes = sum(t.numel() * t.element_size() for t in tiny_teacher[1].state_dict().values())
    assert weights_mb * 1e6 < 0.9 * base_nbytes  # the fixture picked a compressed trial
    assert main(["export", str(run_dir), "--trial", str(trial), "--out", str(tmp_path / "c"), "--format",
                 "onnx"]) == 0
    exported = json.loads((tmp_path / "c" / "export.json").read_text())["weight_nbytes"]
    assert exported < 0.9 * base_nbytes


def test_openvino_export_writes_the_ir(run, tmp_path, digits_splits, monkeypatch, capsys):
    pytest.importorskip("openvino")
    from autocomp.runtimes import compare_outputs
    from autocomp.runtimes import openvino
    from autocomp.runtimes.openvino import OvModule, ov_compiled

    run_dir, trial, _ = run
    out = tmp_path / "ov"
    here = openvino.default_precision()
    assert here in ("f32", "bf16", "f16")
    monkeypatch.setattr(openvino, "default_precision", lambda: "bf16")  # as on a CPU with AVX512_BF16 or AMX
    capsys.readouterr()
    exported = main(["export", str(run_dir), "--trial", str(trial), "--out", str(out), "--format", "openvino"])
    if exported != 0 and "OpenVINO cannot compile the export" in (err := capsys.readouterr().err):  # int8 weights
        assert "(ONEDNN_MAX_CPU_ISA=" in err  # the cap is named where it is what refuses them
        skip_where_openvino_lacks_compressed_weights(AssertionError(err))
    assert exported == 0
    assert (out / "model.xml").is_file() and (out / "model.bin").is_file()
    assert not (out / "model.onnx").exists()  # the file the IR was converted from is not left to be mistaken for it
    info = json.loads((out / "export.json").read_text())
    assert info["file"] == "model.xml" and info["top1_agreement"] >= 0.9 and info["images"] > 0
    # its accuracy in OpenVINO: compiled at the check's static batch, the last batch padded, as the export ran it
    batch, test = CHECK_BATCH, digits_splits.test
    compiled, right = OvModule(ov_compiled(out / "model.xml", batch=batch)), 0
    for x, y in test.batches(batch):
        right += int((torch.as_tensor(compiled(backends._fit(x, batch)))[:len(x)].argmax(-1) == y).sum())
    assert info["test_runtime"] == "openvino-cpu" and info["test_images"] == len(test)
    assert info["test_accuracy"] == 100.0 * right / len(test)
    assert "static_batch_note" not in info and "static_batch_properties" not in info  # heads never equal tokens here
    # a user compiling the IR with OpenVINO's defaults there runs another model than the one checked: said, measured
    default = info["default_precision"]
    assert default["precision"] == "bf16" and default["top1_agreement"] >= 0.9 and default["max_logit_diff"] >= 0
    if here == "f32":  # compiled with the plugin's defaults, this CPU runs f32: the model checked
        assert default["top1_agreement"] == pytest.approx(info["top1_agreement"], abs=0.02)
    assert "compile it with {'INFERENCE_PRECISION_HINT': 'f32'} to run the model autocomp scored" in \
        capsys.readouterr().out
    # where the default precision cannot compile the IR (oneDNN capped to AVX2 beside OpenVINO's bf16 default: no
    # bf16 Softmax), the export stands, checked in f32, and says so; it ended in a traceback, without export.json
    compiled = openvino.ov_compiled

    def no_default(path, *, precision="f32", **kwargs):
        if precision is None:
            raise RuntimeError("Supported primitive descriptors list is empty for node: Softmax_1 type: Softmax")
        return compiled(path, precision=precision, **kwargs)

    monkeypatch.setattr(openvino, "ov_compiled", no_default)
    assert main(["export", str(run_dir), "--trial", str(trial), "--out", str(tmp_path / "ov2"), "--format",
                 "openvino"]) == 0
    info = json.loads((tmp_path / "ov2" / "export.json").read_text())
    assert info["top1_agreement"] >= 0.9 and info["default_precision"] == {
        "precision": "bf16", "error": "RuntimeError: Supported primitive descriptors list is empty for node: Softmax_1 "
                                      "type: Softmax"}
    assert "note: OpenVINO's default precision on this CPU, bf16, cannot compile model.xml here" in \
        capsys.readouterr().out
    monkeypatch.setattr(openvino, "ov_compiled", compiled)
    # a block with as many heads as tokens (computed wrongly by the plugin's fused kernels at a static batch): the
    # export.json a deployer reads names the properties to compile it with, and the export says so
    with monkeypatch.context() as patched:
        patched.setattr(openvino, "ir_heads_equal_tokens", lambda path: "4 heads over 4 tokens")
        assert main(["export", str(run_dir), "--trial", str(trial), "--out", str(tmp_path / "ov4"), "--format",
                     "openvino"]) == 0
    info = json.loads((tmp_path / "ov4" / "export.json").read_text())
    assert info["static_batch_properties"] == {"SNIPPETS_MODE": "DISABLE"}
    assert info["static_batch_note"].startswith("its attention has 4 heads over 4 tokens in a block, which OpenVINO's")
    assert f"note: {info['static_batch_note']}" in capsys.readouterr().out
    # an IR OpenVINO cannot compile (a CPU cap): left to look at, without the ONNX file it was converted from
    def uncompilable(self, path, profile):
        raise backends.ExportFailed("openvino-cpu: OpenVINO cannot compile the export: no primitive")

    with monkeypatch.context() as patched:
        patched.setattr(backends.OpenVinoCpu, "load", uncompilable)
        assert main(["export", str(run_dir), "--trial", str(trial), "--out", str(tmp_path / "ov3"), "--format",
                     "openvino"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"model.xml, failed so, is left in {tmp_path / 'ov3'} to look "
                                                    "at (export.json's check says why): not for deployment")
    assert (tmp_path / "ov3" / "model.xml").is_file() and not (tmp_path / "ov3" / "model.onnx").exists()
    # the IR against the loadable folder beside it, checked here rather than taken from export.json: an IR of
    # another model (the uncompressed one, say) gives logits a whole unit or more apart
    agreement = compare_outputs(autocomp.load(out), OvModule(ov_compiled(out / "model.xml")),
                                digits_splits.val.tensors()[0][:128])
    assert agreement.top1 >= 0.9 and agreement.max_logit_diff < 2.0, agreement  # here 0.11; the base: 5.4
    # the same folder again, PyTorch alone: no IR, ONNX file or export.json of the model before is left beside it
    assert main(["export", str(run_dir), "--trial", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "metrics.json", "model.yaml", "preprocessing.json",
                                                     "recipe.yaml", "weights.safetensors"]


def test_a_missing_runtime_is_refused_before_anything_is_rebuilt(run, tmp_path, monkeypatch, capsys):
    run_dir, trial, _ = run
    real = importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    err = run_cli(["export", str(run_dir), "--trial", str(trial), "--out", str(tmp_path / "x"), "--format", "onnx"],
                  capsys)
    assert err == ("autocomp: error: --format onnx: backend onnxruntime-cpu needs onnxruntime, not installed here: "
                   "pip install 'autocomp[onnx]'")
    assert not (tmp_path / "x").exists()


def test_an_unknown_format_is_refused_by_the_parser(run, tmp_path, capsys):
    run_dir, trial, _ = run
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(run_dir), "--trial", str(trial), "--out", str(tmp_path / "x"), "--format", "tflite"])
    assert exit_.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


def test_an_export_that_disagrees_with_pytorch_fails_in_one_line_and_leaves_its_files(run, tmp_path, monkeypatch,
                                                                                        capsys):
    pytest.importorskip("onnxruntime")
    run_dir, trial, _ = run
    out = tmp_path / "bad"
    monkeypatch.setattr(backends, "AGREEMENT_MIN", 1.01)  # no export can agree on more than 100%
    err = run_cli(["export", str(run_dir), "--trial", str(trial), "--out", str(out), "--format", "onnx"], capsys)
    assert err.startswith("autocomp: error: onnxruntime-cpu: the exported model agrees with the PyTorch one on ")
    assert "(top-1; at least 101% required), largest logit difference " in err
    left = f"; model.onnx, failed so, is left in {out} to look at (export.json's check says why): not for deployment"
    assert err.endswith(left)  # where the files are, and that they are not to be deployed
    info = json.loads((out / "export.json").read_text())  # the failed check is recorded for the user to read
    assert info["file"] == "model.onnx" and info["check"] == err.removeprefix("autocomp: error: ").removesuffix(left)
    assert (out / "model.onnx").is_file()
    assert autocomp.load(out) is not None  # the loadable folder was written before the check
    # an export that failed before writing export.json (Ctrl-C) leaves a model.onnx too: the next export into the
    # folder removes it all the same
    (out / "export.json").unlink()
    assert main(["export", str(run_dir), "--trial", str(trial), "--out", str(out)]) == 0
    assert not (out / "model.onnx").exists()
    # a file the runtime cannot load (OpenVINO under a CPU cap) is said so beside it too: it left model.xml/.bin
    # with no export.json, to be deployed by mistake

    def unloadable(self, path, profile):
        raise backends.ExportFailed("onnxruntime-cpu: ONNX Runtime cannot load the export: no kernel for it")

    monkeypatch.setattr(backends.OnnxRuntimeCpu, "load", unloadable)
    err = run_cli(["export", str(run_dir), "--trial", str(trial), "--out", str(out), "--format", "onnx"], capsys)
    assert err == "autocomp: error: onnxruntime-cpu: ONNX Runtime cannot load the export: no kernel for it" + left
    assert json.loads((out / "export.json").read_text())["check"] == \
        err.removeprefix("autocomp: error: ").removesuffix(left)


def test_the_default_export_is_the_best_model_as_saved_after_any_final_distillation(run, tmp_path, capsys):
    """best/ may hold weights no trial scored (final_distill_steps): exporting 'best' takes them, not a rebuild."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    pytest.importorskip("onnxruntime")
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    weights = run_dir / "best" / "weights.safetensors"
    changed = {k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    save_file(changed, str(weights))
    out = tmp_path / "best_onnx"
    assert main(["export", str(run_dir), "--out", str(out), "--format", "onnx"]) == 0
    assert "the best model written to" in capsys.readouterr().out
    exported = load_file(str(out / "weights.safetensors"))
    assert exported.keys() == changed.keys() and all(torch.equal(exported[k], changed[k]) for k in changed)
    assert (out / "recipe.yaml").read_text() == (run_dir / "best" / "recipe.yaml").read_text()
    assert json.loads((out / "export.json").read_text())["top1_agreement"] >= 0.9
    shutil.rmtree(run_dir / "best")  # as when no candidate met the budget
    err = run_cli(["export", str(run_dir), "--out", str(tmp_path / "none")], capsys)
    assert "has no best/ model" in err and "--trial N" in err
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), "--trial", "last", "--out", str(tmp_path / "x")])
    assert "expected a trial number or 'best', got 'last'" in capsys.readouterr().err



def test_the_best_model_exports_without_the_data_with_the_preprocessing_it_was_scored_with(run, tmp_path,
                                                                                           monkeypatch):
    """On a deployment machine the training images are not there: best/ alone needs none of them."""
    from autocomp.search import _export

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read")

    monkeypatch.setattr(_export, "load_splits", no_data)
    out = tmp_path / "deploy"
    assert main(["export", str(run[0]), "--out", str(out)]) == 0
    assert (out / "preprocessing.json").read_text() == (run[0] / "best" / "preprocessing.json").read_text()
    assert (out / "classes.json").read_text() == (run[0] / "best" / "classes.json").read_text()
    assert (out / "weights.safetensors").read_bytes() == (run[0] / "best" / "weights.safetensors").read_bytes()

def test_exporting_a_best_model_over_budget_as_measured_again_says_so(run, tmp_path, capsys):
    """Where no candidate held its budget on re-measurement, best/ is the trials' own best: the search warns, and an
    export of it says so too (it said nothing, and its metrics.json's violations read 'met')."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    path = run_dir / "best" / "metrics.json"
    metrics = json.loads(path.read_text())
    assert main(["export", str(run_dir), "--out", str(tmp_path / "held")]) == 0
    assert "not as measured again" not in capsys.readouterr().out
    assert metrics["remeasured_memory_mb"] > 0  # best/ records both figures measured again
    path.write_text(json.dumps({**metrics, "within_budget_again": False,
                                "remeasured_memory_mb": 1.05 * metrics["memory_mb"]}))  # the run's memory budget
    assert main(["export", str(run_dir), "--out", str(tmp_path / "over")]) == 0
    said = capsys.readouterr().out
    assert (f"note: best/ (trial {metrics['trial']}) is within the run's budget as its trial measured it "
            f"({metrics['latency_ms']:.4g} ms, {metrics['memory_mb']:.4g} MB), not as measured again before it was "
            f"named ({metrics['remeasured_latency_ms']:.4g} ms, {1.05 * metrics['memory_mb']:.4g} MB; metrics.json "
            "within_budget_again)") in said


def test_a_digits_run_recorded_before_pixel_max_exports_the_scale_it_was_scored_with(run, tmp_path):
    """sklearn's digits (0..16) are divided by 16; a record from before pixel_max said 255 (a deployer following it
    fed the model a sixteenth of its input): the export writes the data set's own."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    path = run_dir / "best" / "preprocessing.json"
    recorded = json.loads(path.read_text())
    assert recorded["pixel_max"] == 16  # the tests' runs are on digits
    path.write_text(json.dumps({k: v for k, v in recorded.items() if k != "pixel_max"}))  # as written before
    assert main(["export", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "preprocessing.json").read_text()) == recorded


def test_onnx_int8_weights_can_be_written_for_another_cpu(run, tmp_path):
    """--int8-weights matmul_integer_u8: every int8 weight as uint8 with a zero point, whatever this CPU prefers."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from autocomp.runtimes.onnx import INT8_WEIGHT_FORMS

    run_dir, trial, _ = run
    out = tmp_path / "u8"
    assert main(["export", str(run_dir), "--trial", str(trial), "--out", str(out), "--format", "onnx",
                 "--int8-weights", "matmul_integer_u8"]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["int8_weights"] == "matmul_integer_u8" and info["top1_agreement"] >= 0.9
    assert "int8_weights_note" not in info  # exact on every CPU
    graph = onnx.load(str(out / "model.onnx")).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert matmuls and all(initializers[n.input[1]].dtype.name == "uint8" and len(n.input) == 4 for n in matmuls)
    for form in INT8_WEIGHT_FORMS:  # the CLI offers every form the exporter knows
        assert build_parser().parse_args(["export", "r", "--out", "o", "--int8-weights", form]).int8_weights == form


def test_int8_weights_is_refused_with_another_format(run, tmp_path, capsys):
    run_dir, trial, _ = run
    err = run_cli(["export", str(run_dir), "--trial", str(trial), "--out", str(tmp_path / "x"), "--format",
                   "openvino", "--int8-weights", "matmul_integer"], capsys)
    assert err == ("autocomp: error: --int8-weights is a choice of the ONNX file; with --format openvino leave it "
                   "out")
    assert not (tmp_path / "x").exists()


def test_an_export_is_refused_onto_a_file_or_into_the_run_folder(run, tmp_path, capsys):
    """Into the run folder (its best/ above all) an export would replace what the search wrote."""
    run_dir, trial, _ = run
    (tmp_path / "a_file").write_text("mine")
    err = run_cli(["export", str(run_dir), "--trial", str(trial), "--out", str(tmp_path / "a_file")], capsys)
    assert err == f"autocomp: error: --out {tmp_path / 'a_file'} is a file; give a folder to write the model to"
    for inside in (run_dir / "best", run_dir):
        err = run_cli(["export", str(run_dir), "--trial", str(trial), "--out", str(inside)], capsys)
        assert err.startswith(f"autocomp: error: --out {inside} is inside the run folder {run_dir}")
    under = tmp_path / "a_file" / "model"  # refused before the trial is rebuilt
    err = run_cli(["export", str(run_dir), "--trial", str(trial), "--out", str(under)], capsys)
    assert err.startswith(f"autocomp: error: cannot write --out {under} (") and err.endswith("give a folder you can "
                                                                                             "write")
    assert (tmp_path / "a_file").read_text() == "mine"



def test_exporting_a_trial_that_did_not_run_says_why(tmp_path):
    """A trial drawn again (its recipe ran as another), skipped by the cost model or failed is named with its
    reason."""
    import optuna

    from autocomp.errors import AutocompError
    from autocomp.results import STUDY_NAME, study_storage
    from autocomp.search._export import _complete_trial

    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(tmp_path, writer=True),
                                directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[90.0, 1.0]))
    for attrs in ({"duplicate_of": 0}, {"skipped_reason": "predicted latency_ms 9 is 80% over the limit 5"}):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs=attrs))
    with pytest.raises(AutocompError, match=r"trial 1 is not a complete trial of .* \(its recipe was drawn again, "
                                            r"not run: trial 0 has it\); complete trials: \[0\]"):
        _complete_trial(tmp_path, 1)
    with pytest.raises(AutocompError, match=r"\(skipped by the cost model: predicted latency_ms 9 is 80% over"):
        _complete_trial(tmp_path, 2)
    with pytest.raises(AutocompError, match=r"trial 7 is not a complete trial of [^(]*; complete trials: \[0\]"):
        _complete_trial(tmp_path, 7)
    # a trial a stopped search left behind, its recipe run again by a later one; one failing with its error
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    study.add_trial(optuna.trial.create_trial(values=[89.0, 1.0], user_attrs={"retry_of": 3}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"error": "boom"}))
    with pytest.raises(AutocompError, match=r"trial 3 is not a complete trial of .* \(failed: interrupted: the search "
                                            r"stopped while it ran \(its recipe runs again on resume\); trial 4 ran "
                                            r"its recipe again\); complete trials: \[0, 4\]"):
        _complete_trial(tmp_path, 3)
    with pytest.raises(AutocompError, match=r"\(failed: boom\); complete trials"):
        _complete_trial(tmp_path, 5)
