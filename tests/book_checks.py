"""Checks on the built HTML book (run by tests/build_smoke_book.py after the smoke build)."""

from __future__ import annotations

import re
from pathlib import Path

MATHJAX_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=\"([^\"]*mathjax[^\"]*)\"", re.I)
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)


def offline_math_problems(html_dir: Path) -> list[str]:
    """What keeps the built book from showing its equations without a network.

    Every page with math (``class="math ..."`` elements) must load MathJax, every MathJax
    script must be a path inside the build (not a CDN or any other URL), and the file it
    names must exist there.  A build with no math at all is a problem too (the check would
    check nothing).

    Parameters
    ----------
    html_dir : pathlib.Path
        ``_build/html`` of a Jupyter Book build.

    Returns
    -------
    list of str
        One line per problem; empty when the math works offline.
    """
    problems, n_math = [], 0
    for page in sorted(html_dir.rglob("*.html")):
        text = page.read_text(errors="replace")
        sources = MATHJAX_SCRIPT.findall(text)
        if 'class="math' in text:
            n_math += 1
            if not sources:
                problems.append(f"{page.relative_to(html_dir)}: has math but loads no MathJax")
        for src in sources:
            if REMOTE.match(src):
                problems.append(f"{page.relative_to(html_dir)}: MathJax from the network ({src})")
            elif not (page.parent / src.split("?")[0].split("#")[0]).resolve().is_file():
                problems.append(f"{page.relative_to(html_dir)}: MathJax script {src} is not in the build")
    if n_math == 0:
        problems.append(f"{html_dir}: no page with math found")
    return problems
