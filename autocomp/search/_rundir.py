"""The run folder a search writes into and resumes from: the lock one search holds on it while it runs, and the job
it holds (config.yaml, run.json, base.safetensors for a model given as an nn.Module), against which a search into the
folder again is resumed, or refused as a different job."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import yaml
from torch import nn

from autocomp._io import tensor_bytes, write_json, write_safetensors, write_yaml
from autocomp._paths import resolve_path
from autocomp.config import JobConfig, given_folder
from autocomp.data import Splits, load_splits
from autocomp.errors import AutocompError
from autocomp.hardware import read_profile
from autocomp.results import study_file
from autocomp.models import model_structure
from autocomp.saving import GIVEN_AS, STRUCTURE
from autocomp.search import _images as run_images
from autocomp.space import SearchSpace, load_space

try:
    import fcntl
except ImportError:  # Windows: a search runs without the run folder's lock (said)
    fcntl = None

__all__ = ["BASE_WEIGHTS", "one_search_at_a_time", "job_identity", "earlier_fingerprint", "moved", "previous_run",
           "require_same_model", "run_splits", "measured_otherwise", "space_otherwise", "resolved_space",
           "record_space", "seed_otherwise",
           "write_run_info", "record_move", "PACKED"]

BASE_WEIGHTS = "base.safetensors"  # the weights of a model given as an nn.Module
REMEASURED = "remeasured.json"  # the best candidates' second measurements, for a rerun (search/_finish.py)
LOCK = ".lock"  # held by the search running into the folder; it names that search's process and host


@contextmanager
def one_search_at_a_time(run_dir: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Create ``run_dir`` and hold its lock for the block: a second search into the same folder (which would run the
    trials again beside the first's, and write the same files) is refused while the first one runs. On a file
    system without locks (some network ones) the search runs unlocked, said through ``log``. A folder created here
    that holds nothing but the lock and a study without trials after the block (no run.json: a search refused
    before it wrote anything of its own) is removed.

    Raises:
        AutocompError: a folder that cannot be created or written, or one another search holds.
    """
    import errno
    import socket

    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(run_dir / LOCK, "a+")
        except PermissionError:  # another user's lock file in a shared folder: locked as well through reading
            handle = open(run_dir / LOCK)
    except OSError as exc:
        raise AutocompError(f"cannot write the run folder {run_dir} ({exc.strerror or exc}); give a run folder (--out) "
                            "you can write, not a file nor one under a file") from None
    with handle:
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "this system has no fcntl locks")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise AutocompError(f"another search is running into {run_dir} ({holder}); wait for it to end (the "
                                "same command then resumes the run, if trials are left) or give another run folder "
                                "(--out)") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            log(f"note: the file system of {run_dir} takes no locks ({exc.strerror}): nothing stops a second search "
                "into this folder while this one runs")
        if handle.writable():
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()}")
            handle.flush()
        try:
            yield  # closing the file releases the lock; the file stays, as another search may hold it by then
        finally:
            if handle.writable():  # still held: emptied, so that the file names no process once none runs
                handle.seek(0)
                handle.truncate()
                handle.flush()
            scratch = {LOCK, study_file(run_dir).name}  # the lock (still held), the study before run.json: empty
            if created and not (run_dir / "run.json").exists() and {p.name for p in run_dir.iterdir()} <= scratch:
                try:  # refused before it wrote anything of its own; a failure here must not hide why
                    for name in scratch:
                        (run_dir / name).unlink(missing_ok=True)
                    run_dir.rmdir()
                except OSError:
                    pass


def job_identity(config: JobConfig, base: nn.Module) -> tuple[dict[str, Any], str, str]:
    """The job as written to config.yaml, the model's identity (its weights' hash for a model given as an
    ``nn.Module``) and a fingerprint of everything that decides a trial's result."""
    if isinstance(config.model, nn.Module):
        model: dict[str, Any] = {GIVEN_AS: "nn.Module", "weights": BASE_WEIGHTS}
        # the values alone (an earlier form than model_digest's, kept: existing runs of modules resume by it)
        identity = hashlib.sha256(b"".join(tensor_bytes(v) if isinstance(v, torch.Tensor) else repr(v).encode()
                                           for v in base.state_dict().values())).hexdigest()
    else:
        model = config.model.to_dict()
        identity = json.dumps({key: value for key, value in model.items() if key != "path"}, sort_keys=True)
    # data settings left unset stay out: one a later version adds (None by default) keeps an earlier run's job
    data = {key: value for key, value in vars(config.data).items() if value is not None}
    job = {"model": model, "data": data, "search_space": str(config.search_space),
           "hardware": str(config.hardware), "budget": {k: v for k, v in vars(config.budget).items() if v is not None}}
    return job, identity, _fingerprint(config, identity, job)


def _fingerprint(config: JobConfig, identity: str, job: Mapping[str, Any]) -> str:
    """What decides a trial's result: the model's identity, the job, the search space's and profile's text. Not
    where a factory's module is imported from (``model.path``, set only where Python does not find it on its own)."""
    if isinstance(job.get("model"), Mapping) and "path" in job["model"]:
        job = {**job, "model": {key: value for key, value in job["model"].items() if key != "path"}}
    parts = [identity, job, Path(config.search_space).read_text(), Path(config.hardware).read_text()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def earlier_fingerprint(config: JobConfig, identity: str, job: Mapping[str, Any], run_dir: Path) -> str | None:
    """The fingerprint versions before 2026-12-02 gave the same job: every data setting, unset ones too, but none
    added since (``crop_mode``: None where one is set, a job those versions could not run), and ``data.root`` as the
    job's YAML wrote it (recorded in the run's config.yaml) where it names the same folder."""
    if config.data.crop_mode is not None:
        return None
    written = (_written(run_dir) or {}).get("data", {})
    data = {key: value for key, value in vars(config.data).items() if key != "crop_mode"}
    if isinstance(written, Mapping) and _same_root(config, written.get("root")):
        data["root"] = written["root"]
    return _fingerprint(config, identity, {**job, "data": data})


PATHS = (("model", "checkpoint"), ("model", "path"), ("data", "root"), ("search_space",), ("hardware",))  # its files


def _at(job: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        job = job.get(key) if isinstance(job, Mapping) else None
    return job


def moved(config: JobConfig, identity: str, job: Mapping[str, Any], run_dir: Path) -> str | None:
    """The fingerprint of a job whose files or image folder moved since its run's trials ran (the project folder
    moved, or copied to another machine), with the paths the run's config.yaml recorded; None where no path differs.
    The paths alone: what they hold is checked apart (the files' contents by the fingerprint, the checkpoint's weights
    by :func:`require_same_model`, the images by :func:`run_splits`), so a checkpoint moved is taken only from a run
    that recorded its model's digest."""
    written = _written(run_dir)
    if written is None:
        return None
    then = json.loads(json.dumps(job, default=str))
    keys_moved = [keys for keys in PATHS if _moved(_at(written, keys), _at(then, keys))]
    if not keys_moved:
        return None
    if ("model", "checkpoint") in keys_moved and "model" not in _run_info(run_dir):
        return None
    for keys in keys_moved:
        _at(then, keys[:-1])[keys[-1]] = _at(written, keys)  # keys[:-1] empty: the job itself
    if not isinstance(config.model, nn.Module):  # a timm model's identity is its settings, the checkpoint's path too
        identity = json.dumps({key: value for key, value in then["model"].items() if key != "path"}, sort_keys=True)
    return _fingerprint(config, identity, then)


def _moved(was: Any, now: Any) -> bool:
    """Whether a path setting names another place (a path added or removed is another job, not a move)."""
    return isinstance(was, str) and isinstance(now, str) and was != now


def record_move(run_dir: Path, config: JobConfig, job: Mapping[str, Any], fingerprint: str,
                log: Callable[[str], None] = print) -> None:
    """Where the run being resumed recorded other paths than its job's (it moved: :func:`moved`; or only the folder
    its factory's module is imported from changed), the new paths into its config.yaml and the fingerprint into its
    run.json, saying so; where its search space file's text alone changed (:func:`_space_text_alone`), its new digest
    into run.json, saying so; nothing otherwise."""
    _, paths = _job_changes(run_dir, job, config)
    if paths:
        log(f"note: the job's files moved since the trials in {run_dir} ran ({'; '.join(paths)}); what they hold is "
            "the same: resuming, with the new paths recorded")
    written = _written(run_dir)
    now = json.loads(json.dumps({part: job[part] for part in JOB_PARTS}, default=str))  # as YAML holds it
    module = _at(now, ("model", "path"))
    if written is not None and (paths or module not in (None, _at(written, ("model", "path")))):
        write_yaml(run_dir / "config.yaml", {**written, **now})  # model.path too: where export finds the module
    info = _run_info(run_dir)
    files = _file_digests(config)
    recorded = info.get("files") if isinstance(info.get("files"), Mapping) else files  # none before 2026-12-03
    for key in (key for key in FILES if recorded.get(key) != files[key]):
        if key == "search_space":  # the same space (_space_text_alone)
            log(f"note: the search space file {config.search_space} changed since the trials in {run_dir} ran, but "
                "only in its text (a comment or a blank line): it resolves to the same space; resuming, with its new "
                "text recorded")
        else:  # the same text read (the fingerprint's): another form of it, e.g. its line endings
            log(f"note: the {FILES[key]} file {getattr(config, key)} differs from the one the trials in {run_dir} "
                "ran with in its bytes alone (its text reads the same: line endings, say); resuming")
    if info.get("fingerprint") != fingerprint or info.get("files", files) != files:
        # an earlier version's fingerprint, the paths before a move, or the space file's text before an edit
        write_json(run_dir / "run.json", {**info, "fingerprint": fingerprint,
                                          **({"files": files} if "files" in info else {})})


def _run_info(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


def _written(run_dir: Path) -> Mapping[str, Any] | None:
    """The job as the run's config.yaml holds it; None where it has none, or not a mapping."""
    try:
        written = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return written if isinstance(written, Mapping) else None


def _same_root(config: JobConfig, written: Any) -> bool:
    """Whether ``written``, a ``data.root`` as a run's config.yaml holds it (versions before 2026-12-02 wrote it as
    the job did, often relative to the job's file), names the job's image folder."""
    if not written or not config.data.root:
        return False
    folder = config.source.parent if config.source else None
    return resolve_path(written, base=folder, must_exist=False, keep_links=True) == Path(config.data.root)


def previous_run(run_dir: Path, fingerprints: Sequence[str | None], job: Mapping[str, Any] | None = None,
                  config: JobConfig | None = None, digest: str | None = None) -> dict[str, Any] | None:
    """The run.json of an earlier search of the same job in ``run_dir`` (its fingerprint one of ``fingerprints``:
    this version's, or an earlier version's for the same job, or another only in the search space file's text, which
    resolves to the same space); a different job there is refused, saying what differs from the ``job`` recorded in
    its config.yaml, or from the model's ``digest`` recorded in run.json."""
    info, study = run_dir / "run.json", study_file(run_dir)
    if not (info.is_file() and study.is_file()):
        return None
    previous = json.loads(info.read_text())
    if previous.get("fingerprint") not in [fingerprint for fingerprint in fingerprints if fingerprint]:
        settings, paths = _job_changes(run_dir, job, config)
        recorded = previous.get("model")  # the model's digest (runs before 2026-11 recorded none)
        if not settings and digest is not None and digest == recorded and _space_text_alone(previous, config):
            return previous  # the same job: record_move records the file's new text
        if settings:
            changes = "; ".join(settings)
        elif digest is not None and recorded is not None and digest != recorded:
            changes = ("the weights of the model given as an nn.Module changed" if config is None
                       or isinstance(config.model, nn.Module) else "the model's weights (its checkpoint) changed")
        elif files := _changed_files(previous, config, paths):
            changes = files
        elif paths:  # moved, but not taken as a move (a run that recorded no model digest)
            changes = "; ".join(paths)
        elif digest is None or recorded is None:
            changes = ("the contents of the search space or hardware profile file changed, or the weights of a "
                       "model given as an nn.Module")
        else:
            changes = "the contents of the search space or hardware profile file changed"
        raise AutocompError(f"{run_dir} holds a search of a different job ({changes}); rerun with the job as it was "
                            "to resume it, or search into a new run folder (--out)")
    return previous


FILES = {"search_space": "search space", "hardware": "hardware profile"}  # the job's files, read whole


def _file_digests(config: JobConfig) -> dict[str, str]:
    return {key: hashlib.sha256(Path(getattr(config, key)).read_bytes()).hexdigest()[:16] for key in FILES}


def _space_text_alone(previous: Mapping[str, Any], config: JobConfig | None) -> bool:
    """Whether, of the job's files, only the search space's text differs from what run.json recorded, and it resolves
    to the space the run recorded (a comment or a blank line edited): the trials to come sample what the earlier did."""
    recorded = previous.get("files")
    if config is None or not isinstance(recorded, Mapping) or not isinstance(previous.get("space"), Mapping):
        return False
    now = _file_digests(config)
    if [key for key in FILES if recorded.get(key) != now[key]] != ["search_space"]:
        return False
    try:
        space = resolved_space(load_space(config.search_space))
    except AutocompError:
        return False
    return as_recorded(previous["space"], space) == space


def _changed_files(previous: Mapping[str, Any], config: JobConfig | None, paths: Sequence[str] = ()) -> str | None:
    """Which of the job's files has other contents than run.json recorded (runs before 2026-12-03 recorded none):
    another file where the job names another path (``paths``: those :func:`_job_changes` found moved), and for the
    search space, what resolves otherwise (run.json's ``space``), or that nothing does (its text alone changed)."""
    recorded = previous.get("files")
    if not isinstance(recorded, Mapping) or config is None:
        return None
    now = _file_digests(config)
    changed = [key for key in FILES if recorded.get(key) != now[key]]
    if not changed:
        return None
    said = []
    for key in changed:
        moved = next((p for p in paths if p.startswith(f"{key} was ")), None)
        text = (f"the contents of the {FILES[key]} file {getattr(config, key)} differ from the run's ({moved})" if moved
                else f"the contents of the {FILES[key]} file {getattr(config, key)} changed")
        space = None
        if key == "search_space" and isinstance(previous.get("space"), Mapping):
            try:
                space = resolved_space(load_space(config.search_space))
            except AutocompError:
                pass
        earlier = as_recorded(previous["space"], space) if space is not None else {}
        differ = [f"{k} {earlier.get(k)!r}, now {v!r}" for k, v in (space or {}).items() if earlier.get(k) != v]
        said.append(text + (" (" + "; ".join(differ) + ")" if differ else
                            " (its text alone: it resolves to the same space, but a comment or a blank line counts)"
                            if space is not None else " (its text: a comment or a blank line counts)"))
    return " and ".join(said)


def require_same_model(previous: Mapping[str, Any], digest: str, config: JobConfig, run_dir: Path) -> None:
    """Refuse to resume a run whose model (the same checkpoint path or module: the same job) now holds other weights
    or heads than its trials had: ``digest`` (:func:`~autocomp.models.model_digest`) against run.json's ``model``,
    which runs before 2026-11 did not record."""
    if previous.get("model", digest) == digest:
        return
    fix = ("give model.checkpoint (a model without one starts from other random weights in every run)"
           if getattr(config.model, "checkpoint", "") is None else "put the model back as it was")
    raise AutocompError(f"the model's weights or heads changed since the trials in {run_dir} ran (its checkpoint "
                        "or module holds others), so their scores would not compare with new ones; "
                        f"{fix}, or search into a new run folder (--out)")


JOB_PARTS = ("model", "data", "search_space", "hardware", "budget")


def _job_changes(run_dir: Path, job: Mapping[str, Any] | None, config: JobConfig | None
                 ) -> tuple[list[str], list[str]]:
    """What differs between the job recorded in ``run_dir``'s config.yaml and ``job``: each setting, as it was and
    is, apart from the paths of the job's files and image folder (:data:`PATHS`), which come second."""
    written = _written(run_dir)
    if written is None or job is None:
        return ["model, data, search space, hardware or budget changed"], []
    now = json.loads(json.dumps({part: job[part] for part in JOB_PARTS}, default=str))  # as YAML holds it
    data = written.get("data")
    if isinstance(data, Mapping) and config is not None and _same_root(config, data.get("root")):
        written = {**written, "data": {**data, "root": now["data"].get("root")}}  # as an earlier version wrote it
    changed = {}
    for part in JOB_PARTS:
        was, is_ = written.get(part), now[part]
        if isinstance(was, Mapping) and isinstance(is_, Mapping):
            changed |= {(part, key): f"{part}.{key} was {was.get(key)!r}, now {is_.get(key)!r}"
                        for key in sorted(set(was) | set(is_)) if was.get(key) != is_.get(key)}
        elif was != is_:
            changed[(part,)] = f"{part} was {was!r}, now {is_!r}"

    for part in FILES:  # settings given in a job or in Python, not a file: which of them changed, not the paths
        if (part,) in changed and (was := _given_settings(part, written.get(part))) is not None \
                and (is_ := _given_settings(part, now[part])) is not None:
            del changed[(part,)]
            changed |= {(part, key): f"{part}.{key} was {was[key]!r}, now {is_[key]!r}" for key in was
                        if was[key] != is_[key]}

    def moved_only(keys: tuple[str, ...]) -> bool:  # a path to another place, not one added or removed
        return keys in PATHS and _moved(_at(written, keys), _at(now, keys))

    module = ("model", "path")  # where a factory's module is found: never what makes another job
    return ([said for keys, said in changed.items() if not moved_only(keys) and keys != module],
            [said for keys, said in changed.items() if moved_only(keys)])


def _given_settings(part: str, path: Any) -> dict[str, Any] | None:
    """Every setting of a search space or profile given as settings (:func:`autocomp.config.given_file`), by the
    path its file was written to; None for a file of the user's, or one no longer in the cache."""
    if not isinstance(path, str) or Path(path).parent != given_folder() or not Path(path).is_file():
        return None
    try:
        given = load_space(path) if part == "search_space" else read_profile(path)
    except AutocompError:
        return None
    return json.loads(json.dumps(dataclasses.asdict(given), default=str))


def run_splits(config: JobConfig, base: nn.Module, recorded: run_images.Recorded, run_dir: Path,
                log: Callable[[str], None]) -> Splits:
    """The data's splits; resuming on an image folder, with the held-out sizes the trials had, and checked against
    the images the trials had (``recorded``: run.json's ``images``; None for a new run): refused where they were
    scored or calibrated on other images (validation, test, calibration), or on images drawn before the order of
    :mod:`autocomp.data`'s image folders was stable (``OLDER``); said where only training images changed (the trials
    to come distil on them)."""
    if recorded is None or config.data.dataset != "imagefolder":
        return load_splits(config.data, base)
    if recorded == run_images.OLDER:
        raise AutocompError(f"{run_dir} was searched by an earlier autocomp, which drew an image folder's validation, "
                            "test and calibration images another way: new trials would be scored on other images than "
                            "its trials; search into a new run folder (--out) (autocomp export still reads this one)")
    splits = run_images.read_splits(config.data, base, recorded)
    held_out = run_images.changed(recorded, splits, ("val", "test", "calib"))
    if held_out:
        raise AutocompError(f"the images of the {' and '.join(held_out)} split{'s' if len(held_out) > 1 else ''} "
                            f"changed since the trials in {run_dir} ran, so their scores would not compare with new "
                            "ones; put the images back as they were, or search into a new run folder (--out)")
    if run_images.changed(recorded, splits, ("train",)):
        log("note: the training images changed since the earlier trials ran (validation, test and calibration did "
            "not); the trials to come distil on the new ones")
    return splits


def scored_int8_codes(measured_with: Mapping[str, Any] | None) -> int | None:
    """The top input code the run's int8 layers (``Int8Linear``) were scored with: run.json's record, or, for a run
    from before it, what its ONNX export form implies; None where unknown."""
    if not measured_with:
        return None
    if measured_with.get("int8_codes") in (127, 255):
        return int(measured_with["int8_codes"])
    forms = str(measured_with.get("forms") or "")
    if "matmul_integer_reduce_range" in forms:
        return 127
    return 255 if "matmul_integer" in forms else None


PACKED = "packed"  # measured_with["activations"]: a runtime backend's, counted without PyTorch's unpacked weights


def measured_otherwise(earlier: Mapping[str, Any] | None, now: Mapping[str, Any], *,
                       packed: bool = True) -> str | None:
    """How the earlier trials of a resumed run were measured, against how the trials to come are (run.json's
    ``measured_with``: the backend's description with its runtimes' versions and options, how autocomp counts,
    :data:`~autocomp.measure.COUNTING`, and the form of what an exporting backend times, e.g. its int8 weights, and
    how it counts activations, :data:`PACKED`, which ``packed`` False, a space without 2-6 bit weights, leaves
    aside); None where alike."""
    if earlier is None:
        return "by an earlier autocomp, which did not record how"
    changed = [f"{what} {earlier.get(key)!r}, now {now[key]!r}" for key, what in
               (("backend", "on"), ("counting", "by autocomp's counting"), ("forms", "with the export's"))
               if earlier.get(key, "") != now.get(key, "")]  # "": nothing exported (a run from before "forms" too)
    if packed and earlier.get("activations") != now.get("activations") and now.get("activations") == PACKED:
        changed.append("with the fp32 weights 2-6 bit layers unpack to in PyTorch counted in their activations, now "
                       "not (the runtime computes on the packed weights)")
    codes = scored_int8_codes(earlier), scored_int8_codes(now)
    if None not in codes and codes[0] != codes[1]:  # their accuracy too: int8 layers quantize their inputs otherwise
        changed.append(f"with int8 input codes 0..{codes[0]}, now 0..{codes[1]} (accuracy too)")
    return "; ".join(changed) or None


def resolved_space(space: SearchSpace) -> dict[str, Any]:
    """The search space as the trials sample it, every setting the file leaves out at this version's default."""
    return json.loads(json.dumps(dataclasses.asdict(space)))


# search-space keys added after run.json began to record the space, each at the value that does what the versions
# before it did: a run recorded without one sampled exactly that (a key whose default changed what the trials
# sample, such as ``smooth``, is not listed: its absence is a difference)
ADDED_AS_BEFORE: dict[str, Any] = {"lowrank_layers": ["qkv", "proj", "fc1", "fc2"], "group_size": 64, "blocks": {}}


def as_recorded(earlier: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """A space run.json recorded (resolved), with the keys of ``now`` added since at what they did before them."""
    return {**{key: value for key, value in ADDED_AS_BEFORE.items() if key in now}, **earlier}


def space_otherwise(earlier: Mapping[str, Any] | None, now: Mapping[str, Any]) -> str | None:
    """How the search space the earlier trials of a resumed run sampled (run.json's ``space``, resolved) differs
    from the one the trials to come sample: a default a later version changed or added (``smooth``); None where
    alike. The file's text is the same (else the run is another job)."""
    if earlier is None:
        return ("the earlier trials ran under an autocomp that did not record its search space's defaults; the "
                "settings the file leaves out may be filled in otherwise now")
    earlier = as_recorded(earlier, now)
    changed = [f"{key} {earlier[key]!r}, now {now[key]!r}" if key in earlier
               else f"{key} none in that version, now {now[key]!r}"
               for key in now if earlier.get(key, object()) != now[key]]
    return ("the search space's defaults differ from the earlier trials': " + "; ".join(changed)) if changed else None


def record_space(run_dir: Path, space: SearchSpace) -> None:
    """Into the run.json of a run from before it recorded its space: the space as resolved now, marked as recorded
    on a resume (the trials before it may have sampled other defaults)."""
    write_json(run_dir / "run.json", {**_run_info(run_dir), "space": resolved_space(space), "space_recorded": "late"})


def write_run_info(run_dir: Path, config: JobConfig, base: nn.Module, job: dict[str, Any], fingerprint: str,
                   baseline: dict, limits: dict, recorded: Mapping[str, Any] | None,
                   measured_with: Mapping[str, Any], digest: str, space: SearchSpace) -> None:
    """run.json (fingerprint, baseline, limits, the images, how the trials are measured, the model's digest and
    the search space resolved),
    config.yaml (the job with resolved paths) and, for a model given as an nn.Module, its weights
    (base.safetensors; never a pickle): what export and resume need."""
    if isinstance(config.model, nn.Module):
        write_safetensors(run_dir / BASE_WEIGHTS, base.state_dict())
    (run_dir / REMEASURED).unlink(missing_ok=True)  # a study started afresh: measured against another baseline
    write_json(run_dir / "run.json", {"fingerprint": fingerprint, "baseline": baseline, "limits": limits,
                                      "images": recorded, "measured_with": measured_with,
                                      "model": digest, "files": _file_digests(config),
                                      "space": resolved_space(space),
                                      **({STRUCTURE: model_structure(base)} if isinstance(config.model, nn.Module)
                                         else {})})
    write_yaml(run_dir / "config.yaml", {**job, **_settings(config)})
    if config.source and config.source.resolve() != (run_dir / "config.yaml").resolve():
        shutil.copyfile(config.source, run_dir / "config.source.yaml")


def _settings(config: JobConfig) -> dict[str, Any]:
    """The search settings that are not the job (a rerun with others resumes it), as config.yaml holds them."""
    return {"trials": config.trials, "workers": config.workers, "seed": config.seed,
            "skip_margin": config.skip_margin, "resources": vars(config.resources), "retries": config.retries,
            "start_points": config.start_points, "sampler": config.sampler, "coarse": config.coarse,
            "local": config.local, "fidelity": vars(config.fidelity) if config.fidelity is not None else None,
            "sensitivity": vars(config.sensitivity),
            "trial_timeout_s": config.trial_timeout_s, "measure_timeout_s": config.measure_timeout_s}


def seed_otherwise(run_dir: Path, config: JobConfig, *, done: int, remaining: int) -> str | None:
    """What another seed than the run's last (config.yaml's ``seed``) does on a resume: it draws only the trials
    still to run (None where the seed is the same, or the run's config.yaml names none)."""
    written = _written(run_dir)
    ran = written.get("seed") if written is not None else None
    if not isinstance(ran, int) or isinstance(ran, bool) or ran == config.seed:
        return None
    if remaining:
        return (f"note: seed {config.seed} is not this run's ({ran}): it draws the {remaining} trial"
                f"{'s' if remaining != 1 else ''} still to run; the {done} already run stay as they are (a search "
                f"with seed {config.seed} from the start: another run folder, --out)")
    return (f"note: seed {config.seed} is not this run's ({ran}), but no trial is left to run ({done} of trials "
            f"{config.trials} done): for a search with seed {config.seed}, give another run folder (--out), or raise "
            "--trials to add trials drawn with it")


def record_resumed_settings(run_dir: Path, config: JobConfig, *, pass_kept: bool,
                            log: Callable[[str], None] = print) -> None:
    """A resumed search's settings (trials, seed, workers, ...: :func:`_settings`) into the run's config.yaml, which
    kept the first run's, so that it says how the run's trials were last searched and a search from it resumes
    alike. Where the run's sensitivity pass is kept (``pass_kept``: its choices shaped the trials already run), a
    changed ``sensitivity`` section is not taken: the log says so, and config.yaml keeps the one the pass ran with."""
    written = _written(run_dir)
    if written is None:
        return
    now = json.loads(json.dumps(_settings(config), default=str))  # as YAML holds it
    ran = written.get("sensitivity")
    # the settings the pass recorded (a config.yaml of an earlier version lacks those added since)
    changed = ", ".join(f"{key} {ran[key]} -> {value}" for key, value in now["sensitivity"].items()
                        if key in ran and ran[key] != value) if isinstance(ran, Mapping) else ""
    if pass_kept and changed:
        log(f"note: the sensitivity settings changed since this run's sensitivity pass ({changed}); the choices it "
            "left are kept, as the trials already run were drawn from them: search into a new run folder (--out) "
            "for a pass with the new settings")
    if pass_kept and isinstance(ran, Mapping):
        now["sensitivity"] = ran
    if any(written.get(key) != value for key, value in now.items()):
        write_yaml(run_dir / "config.yaml", {**written, **now})
