"""Every chapter, executed by papermill at its smoke parameters.

The executed notebooks are written to ``tests/_executed/notebooks/`` where the next
two steps of ``make test`` pick them up: nbval re-executes them and checks the cells
marked ``# NBVAL_CHECK_OUTPUT``, and ``tests/build_smoke_book.py`` builds the book
from them so that a broken page fails the tests.
"""



import nbformat
import papermill as pm
import pytest

from notebook_tools import REPO, chapters, read_chapter, smoke_params

EXECUTED = REPO / "tests" / "_executed" / "notebooks"
CHAPTERS = chapters()


@pytest.mark.notebook
@pytest.mark.xdist_group("chapters")   # in order, in one worker, beside the unit tests
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_at_smoke_parameters(path, tmp_path):
    EXECUTED.mkdir(parents=True, exist_ok=True)
    source = tmp_path / f"{path.stem}.ipynb"
    nbformat.write(read_chapter(path), source)
    out = EXECUTED / f"{path.stem}.ipynb"
    pm.execute_notebook(
        str(source), str(out),
        parameters=smoke_params().get(path.stem) or {},
        cwd=str(path.parent),
        kernel_name="python3",
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
