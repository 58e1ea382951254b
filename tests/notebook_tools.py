"""What the notebook tests share: chapter discovery, the parameters cell, smoke parameters.

Used by tests/test_harness.py, tests/test_notebooks.py and tests/build_smoke_book.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import jupytext
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SMOKE_PARAMS = Path(__file__).with_name("smoke_params.yml")


#: The two chains of chapters that ``make test`` runs side by side, one per pytest-xdist
#: worker (tests/conftest.py schedules each chain whole, in order). A chain keeps together
#: the chapters that reuse what an earlier one of them cached: chapter 5's PPCA runs in 5b
#: and 6, chapter 7's StarNet encoders in 8. Chain "b" (StarNet, StarCLIP, scaling out) is
#: the shorter at smoke parameters; the unit tests fill both workers. A chapter not listed
#: runs in chain "a".
CHAINS = {"07_starnet": "b", "08_starclip": "b", "09_scaling_out": "b"}
CHAPTER_TEST = "test_notebooks.py::test_chapter_runs_at_smoke_parameters["

#: Unit tests that run at the head of chain "a", before its chapters: chain "b" starts with a
#: chapter that reads the smoke survey, so its worker makes the survey and its RSCA inputs
#: (about 20 s on one core) while chain "a"'s worker runs these, then chapter 1 (which needs
#: no survey), and finds the data ready at chapter 2 (it used to wait for the lock there).
#: test_plate_tag.py: two tests, about 8 s of CPU, each with its own scratch survey in its own
#: cache folder; test_runs_knee.py: about 5 s, tiny surveys in temporary cache folders.
CHAIN_A_HEAD = ("test_plate_tag.py::", "test_runs_knee.py::")

#: Unit tests handed out first once a worker is done with its chain, so that the last tests of
#: the run are short ones and neither worker idles long while the other finishes (in collection
#: order these came last: each of them takes 2-17 s, most single tests well under one).
SLOW_FIRST = ("test_sweep_dask.py::", "test_sweep.py::", "test_ppca_dask.py::", "test_runs_knee.py::")


def chain(stem: str) -> str:
    """The chain (``"chapters-a"`` or ``"chapters-b"``) a chapter runs in."""
    return f"chapters-{CHAINS.get(stem, 'a')}"


def heads_chain_a(nodeid: str) -> bool:
    """Whether a test runs at the head of chain "a" (``CHAIN_A_HEAD``)."""
    return any(head in nodeid for head in CHAIN_A_HEAD)


def run_order(nodeid: str) -> int:
    """Where a test goes in the collection (a stable sort): 0 for the head of chain "a", 1 for
    the slow unit tests (``SLOW_FIRST``), 2 for every other test."""
    if heads_chain_a(nodeid):
        return 0
    return 1 if any(slow in nodeid for slow in SLOW_FIRST) else 2


def chain_of_nodeid(nodeid: str) -> str | None:
    """The chain of a test, from its pytest node id: a chapter's chain, ``"chapters-a"`` for
    the tests at its head, None for any other test."""
    if heads_chain_a(nodeid):
        return "chapters-a"
    if CHAPTER_TEST not in nodeid:
        return None
    return chain(nodeid.split(CHAPTER_TEST, 1)[1].split("]", 1)[0])


def chapters() -> list[Path]:
    """Every chapter source ``notebooks/NN_topic.md``, in order."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]*_*.md"))


def read_chapter(path: Path):
    """The chapter as an nbformat notebook (jupytext, one way: .md -> notebook)."""
    return jupytext.read(path)


def parameter_cells(nb) -> list:
    """Code cells tagged ``parameters``."""
    return [c for c in nb.cells
            if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]


def assigned_names(source: str) -> set[str]:
    """Names assigned at top level of a cell's source."""
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for t in targets:
            if isinstance(t, ast.Name):
                names.add(t.id)
    return names


def smoke_params() -> dict:
    """Smoke parameters of every chapter, keyed by the chapter's stem."""
    with open(SMOKE_PARAMS) as fh:
        return yaml.safe_load(fh) or {}


def toc_files(toc_path: Path = REPO / "_toc.yml") -> list[str]:
    """Every file listed in ``_toc.yml`` (root included), without extension."""
    toc = yaml.safe_load(toc_path.read_text())
    out = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                out.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return out
