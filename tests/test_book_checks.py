"""The checks run on the built book fail where they should (tests/book_checks.py)."""

from book_checks import offline_math_problems

MATH = '<span class="math notranslate nohighlight">\\(x\\)</span>'


def _page(path, script, math=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><head>{script}</head><body>{MATH if math else ''}</body></html>")


def test_local_mathjax_passes(tmp_path):
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("//")
    _page(tmp_path / "notebooks" / "a.html", '<script defer="defer" src="../_static/mathjax/tex-chtml.js"></script>')
    _page(tmp_path / "index.html", "", math=False)
    assert offline_math_problems(tmp_path) == []


def test_cdn_missing_file_and_missing_script_fail(tmp_path):
    _page(tmp_path / "cdn.html", '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>')
    _page(tmp_path / "proto.html", '<script src="//cdn.example.org/mathjax/tex-chtml.js"></script>')
    _page(tmp_path / "gone.html", '<script src="_static/mathjax/tex-chtml.js"></script>')
    _page(tmp_path / "none.html", "")
    problems = offline_math_problems(tmp_path)
    assert len(problems) == 4
    assert any("cdn.jsdelivr" in p for p in problems) and any("not in the build" in p for p in problems)
    assert any("loads no MathJax" in p for p in problems)


def test_a_book_without_math_is_not_a_pass(tmp_path):
    _page(tmp_path / "index.html", "", math=False)
    assert offline_math_problems(tmp_path)
