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
