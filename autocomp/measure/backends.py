"""Backends: how a candidate is run and timed on the target, chosen by the hardware profile's ``backend``.

=================  ===============================================================================================
``pytorch-cpu``    PyTorch eager on the CPU, ``threads`` intra-op threads (autocomp's own quantized kernels).
``onnxruntime-cpu`` the candidate exported to ONNX with autocomp's own numbers (:mod:`autocomp.runtimes.onnx`) and
                   run by ONNX Runtime's CPU provider; its weights are the bytes the file holds, bf16 and fp16
                   ones as the fp32 ONNX Runtime widens them to when it loads the file.
``openvino-cpu``   the same export converted to OpenVINO IR (:mod:`autocomp.runtimes.openvino`), compiled for the
                   CPU plugin at the profile's batch size; its weights are the bytes the IR holds, half as fp32.
``pytorch-cuda``   PyTorch on the first CUDA GPU, timed with CUDA events after a synchronize: eager, or each model
                   captured once in a CUDA graph and replayed where the profile says ``cuda_graphs: true``.
=================  ===============================================================================================

Every backend times a candidate interleaved with the uncompressed model prepared the same way (the reference is
exported once per model and cached under ``<cache>/exports/``), and counts activation memory as the peak bytes
PyTorch allocates in one forward pass (the runtimes do not report theirs; a runtime's count leaves out the temporary
fp32 weights PyTorch's 2-6 bit layers unpack to, as the runtime computes on the packed weights;
:attr:`Prepared.weights_from` and :meth:`Backend.describe` say where each number comes from).

A runtime backend also checks what it deploys: the exported model against the PyTorch one on validation images
(top-1 agreement, largest logit difference). A candidate that fails to export, or agrees on fewer than
``AGREEMENT_MIN`` of the images, raises :class:`ExportFailed` (the trial fails, with that reason in trials.csv).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import nn

from autocomp._io import hash_weights
from autocomp._paths import cache_dir
from autocomp._timeout import check_time
from autocomp.errors import AutocompError
from autocomp.hardware import HardwareProfile
from autocomp._timing import num_threads, time_models, weight_nbytes

__all__ = ["Backend", "Prepared", "Agreement", "ExportFailed", "backend_of", "require_backend", "check_images",
           "holds_export", "NBYTES_FILE", "AGREEMENT_MIN", "CHECK_IMAGES"]

# top-1 agreement of an exported candidate with its PyTorch model below which the trial fails. An export bug agrees
# far less; ONNX Runtime's int8 kernels round differently from PyTorch's (dynamic activation scales, accumulation), and
# through several int8 blocks with token merging (whose matching flips on a near tie) an undistilled demo candidate
# was seen agreeing on 94.9% of 256 images. The agreement of every trial is recorded either way.
AGREEMENT_MIN = 0.9
CHECK_IMAGES = 256    # validation images a runtime backend compares the exported candidate on, at most ...
CHECK_BYTES = 32e6    # ... and at most this many bytes of them (a measurement on a Ray node ships them each time)


class ExportFailed(AutocompError):
    """A candidate the backend cannot run as autocomp evaluated it: its export failed, the runtime refused an
    operator, or the exported model's outputs disagree with the PyTorch model's."""


class Prepared(NamedTuple):
    """A model ready to time on the backend.

    Attributes:
        run: called on an input batch (a CPU tensor), returns the logits.
        weight_nbytes: bytes of weights the deployed form holds.
        weights_from: where ``weight_nbytes`` was counted (``PyTorch tensors``, ``ONNX file``, ``OpenVINO IR``).
    """

    run: Callable[[torch.Tensor], Any]
    weight_nbytes: int
    weights_from: str
EXPORTING = 5  # raised when autocomp writes another file for the same model, or counts its weights otherwise
# (2: bf16 and fp16 counted as the fp32 the runtimes hold; 3: int8 weights in the scored model's input codes on
# every x86 CPU; 4: codes 0..255 on CPUs whose int8 kernels sum them exactly; 5: ONNX files without the shapes
# between nodes, which ran 2-10% slower): no export cached or kept before is reused
NBYTES_FILE = f"weight_nbytes.{EXPORTING}"  # written last in an export's folder: the weight bytes it holds loaded


@dataclass(frozen=True)
class Agreement:
    """The exported model against the PyTorch one: top-1 agreement, largest absolute logit difference, images."""

    top1: float
    max_logit_diff: float
    images: int


class Backend:
    """One way of running a model on the target. Subclasses say what they need and how they prepare and time."""

    name = ""
    device = "cpu"
    packages: tuple[str, ...] = ()  # modules that must be importable
    extra = ""                      # the pip extra that installs them
    versions: tuple[str, ...] = ("torch",)  # distributions whose versions the description names
    exports = False                 # runs an exported file (whose agreement with PyTorch is checked)
    widens_half = False             # holds fp16 and bf16 tensors as fp32 (they shrink its file, not its memory)

    def require(self) -> None:
        """Raise one clear line if this machine cannot run the backend."""
        missing = [name for name in self.packages if importlib.util.find_spec(name) is None]
        if missing:
            raise AutocompError(f"backend {self.name} needs {', '.join(missing)}, not installed here: "
                                f"pip install 'autocomp[{self.extra}]'")

    def describe(self, profile: HardwareProfile) -> str:
        """The runtime, its version, the device and the options a measurement uses, in one line."""
        return f"{self.name} ({self.runtime_versions()}) on {self.device}: {self.options(profile)}"

    def runtime_versions(self, *, besides_torch: bool = False) -> str:
        """``onnxruntime 1.32.0, onnx 1.23.2, torch 2.14.1``: the libraries whose versions decide the numbers."""
        return ", ".join(f"{name} {_version(name)}" for name in self.versions if not (besides_torch
                                                                                     and name == "torch"))

    def options(self, profile: HardwareProfile) -> str:
        return f"{profile.threads} thread(s), batch {profile.batch_size}"

    def export_forms(self) -> str:
        """What decides the file a backend that exports times, besides the runtimes' versions: part of the cache key
        of a profile calibrated on it, so that a new export form is measured anew. Empty where nothing is exported."""
        return ""

    def prepare(self, model: nn.Module, batch: torch.Tensor, profile: HardwareProfile, *,
                keep: Path | None = None) -> Prepared:
        """``model`` in the backend's form (the caller's model is not changed). ``keep``: a folder where a backend
        that exports keeps its file, or reads it from if an earlier call kept it there (the caller's promise: the same
        model); other backends ignore it."""
        raise NotImplementedError

    def prepare_reference(self, model: nn.Module, batch: torch.Tensor, profile: HardwareProfile) -> Prepared:
        """:meth:`prepare` for the uncompressed model, which every trial times against: cached where preparing
        costs seconds."""
        return self.prepare(model, batch, profile)

    def time(self, runs: Sequence[Callable[[torch.Tensor], Any]], batch: torch.Tensor,
             profile: HardwareProfile) -> list[list[float]]:
        """Seconds per run per round, interleaved (:func:`autocomp.measure.time_models`)."""
        return time_models(runs, batch, warmup=profile.warmup, repeats=profile.repeats, threads=profile.threads)

    def check(self, model: nn.Module, prepared: Prepared, images: torch.Tensor,
              profile: HardwareProfile) -> Agreement | None:
        """The prepared model against ``model`` on ``images``; None where they are the same model."""
        return None


class PyTorchCpu(Backend):
    name = "pytorch-cpu"

    def prepare(self, model: nn.Module, batch: torch.Tensor, profile: HardwareProfile, *,
                keep: Path | None = None) -> Prepared:
        return Prepared(run=model, weight_nbytes=weight_nbytes(model), weights_from="PyTorch tensors")


class PyTorchCuda(Backend):
    """PyTorch on ``cuda:0``, eager or replaying a CUDA graph (``cuda_graphs``); autocomp's int8 layers (CPU
    kernels) cannot run there."""

    name, device = "pytorch-cuda", "cuda"

    def require(self) -> None:
        if not torch.cuda.is_available():
            raise AutocompError("backend pytorch-cuda needs a CUDA GPU, and this machine has none that torch "
                                f"{torch.__version__} can use; measure on the GPU's node (ray_resource in the "
                                "profile), or use a CPU profile")

    def options(self, profile: HardwareProfile) -> str:
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        return (f"{name}, CUDA {torch.version.cuda}, batch {profile.batch_size}, "
                f"{'CUDA graphs' if profile.cuda_graphs else 'eager'}, CUDA events")

    def prepare(self, model: nn.Module, batch: torch.Tensor, profile: HardwareProfile, *,
                keep: Path | None = None) -> Prepared:
        from autocomp.ops.quantize import Int8Linear, QuantizedLinear

        for name, module in model.named_modules():
            if isinstance(module, Int8Linear) or (isinstance(module, QuantizedLinear)
                                                  and module.act_qparams is not None):
                raise ExportFailed(f"backend pytorch-cuda cannot run {name} ({module.config.tag()}): autocomp's "
                                   "int8 kernels are CPU kernels; search weight bits 16 or 2-6 on a GPU profile")
        on_gpu = copy.deepcopy(model).to("cuda").eval()
        run = lambda x: on_gpu(x.to("cuda", non_blocking=True))  # noqa: E731
        if profile.cuda_graphs:
            from autocomp.runtimes.cuda import cuda_graphed

            try:
                run = cuda_graphed(on_gpu, batch)
            except RuntimeError as error:  # a forward pass that waits on the CPU, or makes data-dependent shapes
                raise ExportFailed(f"backend pytorch-cuda could not capture the model in a CUDA graph "
                                   f"({str(error).splitlines()[0]}); set cuda_graphs: false in the profile to time "
                                   "it eager") from None
        return Prepared(run=run, weight_nbytes=weight_nbytes(model), weights_from="PyTorch tensors")

    def time(self, runs: Sequence[Callable[[torch.Tensor], Any]], batch: torch.Tensor,
             profile: HardwareProfile) -> list[list[float]]:
        batch = batch.to("cuda")
        times: list[list[float]] = [[] for _ in runs]
        order = list(range(len(runs)))
        with torch.no_grad():
            for run in runs:
                for _ in range(profile.warmup):
                    run(batch)
            torch.cuda.synchronize()
            for round_ in range(profile.repeats):
                check_time()
                for index in (order if round_ % 2 == 0 else order[::-1]):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    runs[index](batch)
                    end.record()
                    end.synchronize()
                    times[index].append(start.elapsed_time(end) / 1e3)
        return times


class _Exported(Backend):
    """A backend that runs an exported file: candidates exported to a temporary folder (or the folder the caller
    keeps them in), the reference to the cache."""

    suffix = ".onnx"
    exports = True
    static_batch = False  # compiled for the profile's batch size only

    widens_half = True  # the runtimes' CPU kernels run fp32: bf16 weights, fp16 scales widened as the file loads

    def _export(self, model: nn.Module, batch: torch.Tensor, path: Path) -> int:
        """Write ``model`` to ``path``; returns the weight bytes the runtime holds once it loads the file."""
        raise NotImplementedError

    def weight_nbytes_in(self, path: Path, *, loaded: bool = True) -> int:
        """The weight bytes of the file at ``path``: as the runtime holds them once loaded, or (``loaded`` False) as
        the file holds them."""
        raise NotImplementedError

    def load(self, path: Path, profile: HardwareProfile) -> nn.Module:
        """The written file ready to run (a module taking and returning torch tensors)."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, batch: torch.Tensor, profile: HardwareProfile, *,
                keep: Path | None = None) -> Prepared:
        if keep is not None:
            return self._kept(model, batch, profile, keep)
        folder = Path(tempfile.mkdtemp(prefix="autocomp-export-"))
        try:
            nbytes = self.write(model, batch, folder / f"model{self.suffix}")
            return Prepared(run=self.load(folder / f"model{self.suffix}", profile), weight_nbytes=nbytes,
                            weights_from=self.weights_from)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the session holds what it needs

    def prepare_reference(self, model: nn.Module, batch: torch.Tensor, profile: HardwareProfile) -> Prepared:
        try:
            return self._kept(model, batch, profile,
                              cache_dir() / "exports" / f"{self.name}-{_fingerprint(model, batch)}")
        except OSError:  # a cache folder that cannot be written: exported for this use only
            return self.prepare(model, batch, profile)

    def _kept(self, model: nn.Module, batch: torch.Tensor, profile: HardwareProfile, folder: Path) -> Prepared:
        """``model`` exported into ``folder``, or read from there if it holds an export already."""
        path = folder / f"model{self.suffix}"
        if not holds_export(folder):
            scratch = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=_mkdir(folder.parent)))
            try:
                (scratch / NBYTES_FILE).write_text(str(self.write(model, batch, scratch / path.name)))
                try:
                    scratch.rename(folder)  # atomic
                except OSError:
                    pass  # a concurrent trial won the race with the same model's export, and that is fine
            finally:
                shutil.rmtree(scratch, ignore_errors=True)  # left only by a failed export or a lost race
        return Prepared(run=self.load(path, profile), weight_nbytes=int((folder / NBYTES_FILE).read_text()),
                        weights_from=self.weights_from)

    def write(self, model: nn.Module, batch: torch.Tensor, path: Path) -> int:
        """Export ``model`` (input shaped like ``batch``) to ``path``; returns the weight bytes the runtime holds
        once it loads the file (the file's, bf16 and fp16 as fp32).

        Raises:
            ExportFailed: the exporter or converter failed (its first line).
        """
        try:
            return self._export(model, batch, path)
        except AutocompError as exc:
            raise ExportFailed(f"{self.name}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - the exporter's and the converter's own errors: the trial fails
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ExportFailed(f"{self.name}: export failed: {type(exc).__name__}: {first}") from exc

    @torch.no_grad()
    def check(self, model: nn.Module, prepared: Prepared, images: torch.Tensor,
              profile: HardwareProfile) -> Agreement | None:
        if not len(images):
            return None
        batch, same, largest = profile.batch_size, 0, 0.0
        for start in range(0, len(images), batch):
            expected, got = self.outputs(model, prepared, images[start:start + batch], profile)
            same += int((expected.argmax(-1) == got.argmax(-1)).sum())
            largest = max(largest, float((expected - got).abs().max()))
        agreement = Agreement(top1=same / len(images), max_logit_diff=largest, images=len(images))
        if agreement.top1 < AGREEMENT_MIN:
            raise ExportFailed(f"{self.name}: the exported model agrees with the PyTorch one on "
                               f"{100 * agreement.top1:.1f}% of {agreement.images} validation images (top-1; at least "
                               f"{100 * AGREEMENT_MIN:.0f}% required), largest logit difference "
                               f"{agreement.max_logit_diff:.3g}")
        return agreement

    @torch.no_grad()
    def outputs(self, model: nn.Module, prepared: Prepared, images: torch.Tensor,
                profile: HardwareProfile) -> tuple[torch.Tensor, torch.Tensor]:
        """The PyTorch model's and the exported file's logits on ``images`` (at most the profile's batch size), as
        the file runs where it is measured: the profile's threads and batch.

        Raises:
            ExportFailed: the runtime fails on the file.
        """
        x = images.contiguous()
        with num_threads(profile.threads):
            expected = model(x).float()
            # a static batch is padded: int8 activation scales are taken over the batch, so pad only if needed
            try:
                got = prepared.run(_fit(x, profile.batch_size) if self.static_batch else x)
            except Exception as exc:  # noqa: BLE001 - the runtime fails on the export: the trial fails
                raise ExportFailed(f"{self.name}: the runtime fails on the export: {_reason(exc)}") from exc
        return expected, torch.as_tensor(got)[:len(x)].float()


class OnnxRuntimeCpu(_Exported):
    name = "onnxruntime-cpu"
    packages, extra = ("onnx", "onnxscript", "onnxruntime"), "onnx"
    versions = ("onnxruntime", "onnx", "torch")
    weights_from = "ONNX file, bf16 and fp16 as the fp32 ONNX Runtime holds"

    def options(self, profile: HardwareProfile) -> str:
        return (f"CPUExecutionProvider, intra_op_num_threads={profile.threads}, sequential, ORT_ENABLE_ALL, "
                f"no spinning, batch {profile.batch_size}")

    def __init__(self, int8_weights: str = "auto") -> None:
        self.int8_weights = int8_weights  # the form of int8 weights in the file (OnnxExportConfig.int8_weights)

    def export_forms(self) -> str:
        from autocomp.runtimes.onnx import int8_weight_form

        # the file without shapes between its nodes ran 2-10% faster (EXPORTING 5): calibrated and compared anew
        return f"int8 weights {int8_weight_form(self.int8_weights)}, no shapes between nodes"

    def _export(self, model: nn.Module, batch: torch.Tensor, path: Path) -> int:
        from autocomp.runtimes.onnx import OnnxExportConfig, export_onnx

        export_onnx(model, batch, path, config=OnnxExportConfig(int8_weights=self.int8_weights))
        return self.weight_nbytes_in(path)

    def weight_nbytes_in(self, path: Path, *, loaded: bool = True) -> int:
        from autocomp.runtimes.onnx import onnx_weight_nbytes

        return onnx_weight_nbytes(path, loaded=loaded)

    def load(self, path: Path, profile: HardwareProfile) -> nn.Module:
        from autocomp.runtimes.ort import OrtModule, ort_session

        try:
            return OrtModule(ort_session(path, threads=profile.threads))
        except Exception as exc:  # noqa: BLE001 - ORT refuses an operator it has no kernel for
            raise ExportFailed(f"{self.name}: ONNX Runtime cannot load the export: {_reason(exc)}") from exc


class OpenVinoCpu(_Exported):
    name = "openvino-cpu"
    packages, extra = ("onnx", "onnxscript", "openvino"), "openvino"
    versions = ("openvino", "onnx", "torch")
    weights_from = "OpenVINO IR, bf16 and fp16 as the fp32 the CPU plugin holds"
    suffix = ".xml"
    static_batch = True

    def options(self, profile: HardwareProfile) -> str:
        return (f"CPU plugin, INFERENCE_NUM_THREADS={profile.threads}, 1 stream, LATENCY, f32 precision, static "
                f"batch {profile.batch_size}")

    def _export(self, model: nn.Module, batch: torch.Tensor, path: Path) -> int:
        from autocomp.runtimes.openvino import export_openvino

        export_openvino(model, batch, path)
        return self.weight_nbytes_in(path)

    def weight_nbytes_in(self, path: Path, *, loaded: bool = True) -> int:
        from autocomp.runtimes.openvino import ir_weight_nbytes

        return ir_weight_nbytes(path, loaded=loaded)

    def load(self, path: Path, profile: HardwareProfile) -> nn.Module:
        from autocomp.runtimes.openvino import OvModule, capped_isa, ov_compiled

        try:
            return OvModule(ov_compiled(path, threads=profile.threads, batch=profile.batch_size))
        except Exception as exc:  # noqa: BLE001 - the CPU plugin refuses an operator
            raise ExportFailed(f"{self.name}: OpenVINO cannot compile the export: {_reason(exc)}" + capped_isa(
                "capped so, the plugin refuses layers a real CPU of that kind compiles, int8 and 2-6 bit weights "
                "among them; unset it to see whether the cap is the cause")) from exc


def _reason(exc: BaseException) -> str:
    """A runtime's error in one line: its last line that is not a "where it was raised" line (OpenVINO stacks
    ``Exception from src/...`` lines above the reason)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith("Exception from ")]
    return ((reasons or lines or [type(exc).__name__])[-1])[:300]


_BACKENDS = {backend.name: backend for backend in (PyTorchCpu(), PyTorchCuda(), OnnxRuntimeCpu(), OpenVinoCpu())}


def backend_of(profile: HardwareProfile) -> Backend:
    """The backend a profile names (validated by :class:`autocomp.hardware.HardwareProfile`)."""
    return _BACKENDS[profile.backend]


def require_backend(profile: HardwareProfile, *, source: str | Path | None = None) -> str:
    """Check that this machine can run the profile's backend; returns its description (:meth:`Backend.describe`).

    Raises:
        AutocompError: a missing runtime (with its install line) or device, naming the profile file.
    """
    backend = backend_of(profile)
    try:
        backend.require()
    except AutocompError as exc:
        raise AutocompError(f"hardware profile {source or profile.name}: {exc}") from None
    return backend.describe(profile)


def check_images(profile: HardwareProfile, images: Callable[[int], torch.Tensor], input_numel: int) -> \
        torch.Tensor | None:
    """The validation images a trial's export is checked on (``images(count)`` gives the first ``count``), or None
    where the backend runs the PyTorch model itself."""
    if not backend_of(profile).exports:
        return None
    return images(int(max(1, min(CHECK_IMAGES, CHECK_BYTES // (4 * max(1, input_numel))))))


def holds_export(folder: Path) -> bool:
    """Whether ``folder`` holds a finished export (as :meth:`Backend.prepare` keeps one): its last file is written."""
    return (folder / NBYTES_FILE).is_file()


def _fit(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` padded (repeating its last image) to ``size`` images, for a runtime compiled at a static batch."""
    if len(x) >= size:
        return x
    return torch.cat([x, x[-1:].expand(size - len(x), *x.shape[1:])]).contiguous()


def _fingerprint(model: nn.Module, batch: torch.Tensor) -> str:
    """What an exported reference depends on: the model's structure and weights, the input shape, the versions
    of the libraries that write and read the file, and autocomp's own way of writing it (``EXPORTING``)."""
    digest = hashlib.blake2b(digest_size=10)
    digest.update(f"autocomp exporting {EXPORTING}".encode())
    digest.update(repr(model).encode())
    digest.update(repr(tuple(batch.shape[1:])).encode())
    digest.update(" ".join(f"{name}={_version(name)}" for name in ("torch", "onnx", "onnxscript", "onnxruntime",
                                                                    "openvino")).encode())
    hash_weights(model, digest)
    return digest.hexdigest()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"

