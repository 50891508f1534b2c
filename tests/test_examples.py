"""The example jobs load as the search reads them, and `make demo` runs one of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autocomp.config import load_config
from autocomp.hardware import read_profile
from autocomp.search._space import load_space

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
