"""Build the book from the notebooks papermill executed at smoke parameters.

Third step of ``make test``: a staging copy of the book whose chapters are the
executed ``.ipynb`` (execution off), built with ``-W --keep-going`` so that a
broken page, a missing figure, citation or cross-reference fails the tests.  The built
HTML is then checked to show its equations without a network: every page with math loads
MathJax from the build itself, never from a CDN (``tests/book_checks.py``).

Usage: python tests/build_smoke_book.py tests/_executed
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from book_checks import offline_math_problems
from notebook_tools import REPO, chapters


def main(executed: Path) -> int:
    executed = executed.resolve()
    stage = executed / "book_stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    shutil.copytree(REPO / "book", stage / "book")
    shutil.copy(REPO / "_toc.yml", stage / "_toc.yml")
    (stage / "notebooks").mkdir()
    missing = []
    for path in chapters():
        nb = executed / "notebooks" / f"{path.stem}.ipynb"
        if not nb.exists():
            missing.append(nb)
        else:
            shutil.copy(nb, stage / "notebooks" / nb.name)
    if missing:
        print(f"not executed (run the pytest step first): {[str(m) for m in missing]}", file=sys.stderr)
        return 1
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config["exclude_patterns"] = [p for p in config["exclude_patterns"] if p != "notebooks/*.ipynb"]
    config["execute"]["exclude_patterns"] = []
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    jb = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(jb), "build", str(stage), "-W", "--keep-going", "--path-output",
                             str(executed / "book_build")])
    index = executed / "book_build" / "_build" / "html" / "index.html"
    if result.returncode == 0 and not index.exists():
        print(f"build reported success but {index} is missing", file=sys.stderr)
        return 1
    print(f"smoke book: exit {result.returncode}, {index}")
    if result.returncode:
        return result.returncode
    problems = offline_math_problems(index.parent)
    for p in problems:
        print(f"offline math: {p}", file=sys.stderr)
    print(f"offline math: {'FAILED' if problems else 'every page with math loads MathJax from the build'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/_executed")))
