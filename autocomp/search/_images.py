"""What a run folder records of an image folder's splits (run.json ``images``: each split's image count and digest),
and the splits read back as its trials had them: by the search that resumes the run, and by ``autocomp export``
rebuilding a trial."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from torch import nn

from autocomp.data import DataConfig, Splits, load_splits

__all__ = ["OLDER", "TRAIN_HISTORY", "record", "recorded", "read_splits", "changed", "note_train_images",
           "changed_for_trial"]

OLDER = "older"  # run.json of a run made before it recorded its images
TRAIN_HISTORY = "train_images"  # study user attr: [[first trial number, training images' digest], ...]

Recorded = Mapping[str, Any] | str | None  # run.json's images; OLDER; None: nothing recorded (a new run, built-ins)


def record(splits: Splits) -> dict[str, dict[str, Any]] | None:
    """What run.json records of an image folder's splits: each one's image count and digest; None for built-ins."""
    if splits.digests is None:
        return None
    counts = {"train": len(splits.train), "calib": len(splits.calib), "val": len(splits.val), "test": len(splits.test)}
    return {name: {"images": counts[name], "digest": digest} for name, digest in splits.digests.items()}


def recorded(run_dir: Path, data: DataConfig) -> Recorded:
    """run.json's ``images`` of a run folder on an image folder (``OLDER`` if it has none); None for built-ins or no
    run.json."""
    path = Path(run_dir) / "run.json"
    if data.dataset != "imagefolder" or not path.is_file():
        return None
    return json.loads(path.read_text()).get("images", OLDER)


def read_splits(data: DataConfig, base: nn.Module, images: Recorded) -> Splits:
    """The data's splits, on an image folder with the held-out sizes the trials had (``images``): those left unset
    depend on the image count, which a removed broken image changes."""
    if not isinstance(images, Mapping) or data.dataset != "imagefolder":
        return load_splits(data, base)
    sizes = {f"{name}_size": images[name]["images"] for name in ("val", "calib", "test")}
    return load_splits(dataclasses.replace(data, **sizes), base)


def changed(images: Recorded, splits: Splits, names: Sequence[str]) -> list[str]:
    """Which of the splits ``names`` hold other images than the trials had (all of them for an ``OLDER`` run)."""
    if images == OLDER:
        return list(names)
    if not isinstance(images, Mapping) or splits.digests is None:
        return []
    return [name for name in names if images[name]["digest"] != splits.digests[name]]


def note_train_images(study: optuna.Study, images: Recorded, splits: Splits) -> None:
    """Remember, in the study, from which trial on a resumed run distils on other training images than its first
    trials did (run.json keeps the first run's record)."""
    if not isinstance(images, Mapping) or splits.digests is None:
        return
    history = study.user_attrs.get(TRAIN_HISTORY) or [[0, images["train"]["digest"]]]
    if history[-1][1] != splits.digests["train"]:
        study.set_user_attr(TRAIN_HISTORY, [*history, [len(study.trials), splits.digests["train"]]])


def changed_for_trial(images: Recorded, splits: Splits, number: int, history: Sequence[Sequence[Any]] | None
                      ) -> list[str]:
    """Which of the calibration and training images differ now from those trial ``number`` was built from
    (``history``: the study's ``TRAIN_HISTORY``, where a resumed run's training images changed)."""
    found = changed(images, splits, ("calib",))
    if isinstance(images, Mapping) and splits.digests is not None:
        then = images["train"]["digest"]
        for first, digest in history or ():
            if first <= number:
                then = digest
        if then != splits.digests["train"]:
            found.append("train")
    elif images == OLDER:
        found.append("train")
    return found
