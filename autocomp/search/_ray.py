"""The Ray a search runs on: the caller's, an existing cluster joined by address, or an embedded local one."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from autocomp.errors import AutocompError
from autocomp.measure.placement import import_ray

__all__ = ["ray_session"]


@contextmanager
def ray_session(*, workers: int, ray_address: str | None) -> Iterator[None]:
    """Ray for the duration of the block: the caller's, if Ray is already initialized; else joined at
    ``ray_address`` or started embedded, and shut down on exit."""
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    try:
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
    except ConnectionError as exc:
        raise AutocompError(f"cannot join the Ray cluster at {ray_address!r}: {exc}; check the address "
                            "(ray status shows it) or omit --ray-address for an embedded local Ray") from None
    try:
        yield
    finally:
        ray.shutdown()
