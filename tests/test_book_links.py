"""Every helper names the book section that explains it, and that section exists.

A docstring points to the book with ``Book: {ref}`label```, where ``label`` is a MyST target
``(label)=`` written before a heading of a chapter (``notebooks/*.md``) or a book page
(``book/*.md``).  Labels are read from whatever chapters exist, so a chapter that is renamed,
split or added keeps the check honest: a pointer to a section that moved away fails here.
"""

import ast
import re

import pytest

from notebook_tools import REPO

POINTER = re.compile(r"Book:\s*\{ref\}`([^`<>]+)`")
LABEL = re.compile(r"^\(([A-Za-z0-9_.:-]+)\)=\s*$", re.M)
HELPERS = sorted((REPO / "helpers").rglob("*.py"))


def book_labels() -> set:
    """Every ``(label)=`` target of the chapters and book pages."""
    labels = set()
    for page in sorted((REPO / "notebooks").glob("*.md")) + sorted((REPO / "book").glob("*.md")):
        labels |= set(LABEL.findall(page.read_text()))
    return labels


def docstrings(path):
    """``(where, docstring, required)`` for the module, every class, function and method;
    ``required`` for the module and its public top-level functions and classes."""
    tree = ast.parse(path.read_text())
    yield "module", ast.get_docstring(tree) or "", True
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            yield node.name, ast.get_docstring(node) or "", not node.name.startswith("_")
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, ast.FunctionDef):
                        yield f"{node.name}.{sub.name}", ast.get_docstring(sub) or "", False


def test_labels_are_found():
    labels = book_labels()
    assert {"ch-spectra", "ch-survey", "ch-rsca"} <= labels, sorted(labels)[:20]


@pytest.mark.parametrize("path", HELPERS, ids=[str(p.relative_to(REPO / "helpers")) for p in HELPERS])
def test_every_book_pointer_resolves(path):
    if path.name == "__main__.py":
        return
    labels = book_labels()
    missing, unknown = [], []
    for where, doc, required in docstrings(path):
        found = POINTER.findall(doc)
        if required and not found:
            missing.append(where)
        unknown += [f"{where}: {lab}" for lab in found if lab not in labels]
    assert not missing, (f"{path.relative_to(REPO)}: no 'Book: {{ref}}`label`' pointer in the "
                         f"docstring of {missing}")
    assert not unknown, (f"{path.relative_to(REPO)}: pointers to labels that no chapter or book "
                         f"page defines: {unknown}")


def test_the_check_catches_a_broken_pointer(tmp_path):
    """The two rules, on a module written to fail them."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""A module.\n\nBook: {ref}`sec-no-such-section`\n"""\n\n\ndef public():\n    """No pointer."""\n')
    found = {where: (POINTER.findall(doc), required) for where, doc, required in docstrings(bad)}
    assert found["module"][0] == ["sec-no-such-section"] and "sec-no-such-section" not in book_labels()
    assert found["public"] == ([], True)
