"""Every chapter, executed by papermill at its smoke parameters.

The executed notebooks are written to ``tests/_executed/notebooks/`` where the next
two steps of ``make test`` pick them up: nbval re-executes those with checked cells and
compares the cells marked ``# NBVAL_CHECK_OUTPUT``, and ``tests/build_smoke_book.py``
builds the book from them so that a broken page fails the tests.

``make test`` runs two pytest-xdist workers (the machine has two cores). The chapters are
split into two chains (``notebook_tools.CHAINS``), and each worker runs one chain whole and
in order (the scheduler in tests/conftest.py) beside its share of the unit tests. A chain
keeps together the chapters that reuse what an earlier one cached (chapter 5's PPCA runs in
5b and 6; chapter 7's StarNet encoders in 8); what both chains read, the smoke survey and
its RSCA inputs, is made once by the ``smoke_data`` fixture under a file lock before any
chapter that reads it runs, so the two workers never write the same cache entry at once.
"""

from __future__ import annotations

import nbformat
import papermill as pm
import pytest
from filelock import FileLock

from notebook_tools import REPO, chapters, read_chapter, smoke_params

EXECUTED = REPO / "tests" / "_executed" / "notebooks"
CHAPTERS = chapters()


@pytest.fixture(scope="session")
def smoke_data():
    """The synthetic surveys the chapters' smoke parameters name, and their RSCA inputs.

    Made once per test session, whichever worker asks first; the other waits on the lock
    and then finds them in the cache (``STARS_BOOK_CACHE``, default ``.cache/``).
    """
    from helpers.paths import cache_dir
    from helpers.rsca.pipeline import chapter_source, rsca_inputs

    surveys = {(p["n_field"], p.get("survey_seed", 42)) for p in smoke_params().values()
               if p and "n_field" in p}
    with FileLock(str(cache_dir() / ".smoke-data.lock")):
        for n_field, survey_seed in sorted(surveys):
            rsca_inputs(chapter_source(n_field, survey_seed))
    return sorted(surveys)


@pytest.mark.notebook
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_at_smoke_parameters(path, tmp_path, request):
    params = smoke_params().get(path.stem) or {}
    if "n_field" in params:
        request.getfixturevalue("smoke_data")
    EXECUTED.mkdir(parents=True, exist_ok=True)
    source = tmp_path / f"{path.stem}.ipynb"
    nbformat.write(read_chapter(path), source)
    out = EXECUTED / f"{path.stem}.ipynb"
    pm.execute_notebook(
        str(source), str(out),
        parameters=params,
        cwd=str(path.parent),
        kernel_name="python3",
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
