"""The house rules of the book, enforced (see the Developers' guide and STYLE.md)."""

import ast
import importlib
import pkgutil
import subprocess

import pytest
import yaml

import helpers
from notebook_tools import (REPO, assigned_names, chapters, parameter_cells, read_chapter,
                            smoke_params, toc_files)

CHAPTERS = chapters()
IDS = [p.stem for p in CHAPTERS]


def test_there_are_chapters():
    assert CHAPTERS, "no notebooks/NN_topic.md found"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_exactly_one_parameters_cell(path):
    cells = parameter_cells(read_chapter(path))
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters', need exactly 1"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_listed_in_toc(path):
    assert f"notebooks/{path.stem}" in toc_files(), f"{path.name} is not listed in _toc.yml"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_has_valid_smoke_parameters(path):
    params = smoke_params()
    assert path.stem in params, f"{path.stem} has no entry in tests/smoke_params.yml"
    names = assigned_names(parameter_cells(read_chapter(path))[0].source)
    unknown = set(params[path.stem] or {}) - names
    assert not unknown, f"smoke parameters {sorted(unknown)} are not in {path.name}'s parameters cell"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_imports_shared_code_from_helpers(path):
    code = "\n".join(c.source for c in read_chapter(path).cells if c.cell_type == "code")
    assert "from helpers" in code or "import helpers" in code, f"{path.name} never imports helpers"
    # no function or class definitions in a chapter: shared code lives in helpers/
    tree = ast.parse("\n".join(line for line in code.splitlines() if not line.startswith(("%", "!"))))
    defs = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert len(defs) <= 2, f"{path.name} defines {defs}: move shared code into helpers/"


def test_every_toc_entry_exists():
    for entry in toc_files():
        assert any((REPO / f"{entry}{ext}").exists() for ext in (".md", ".ipynb")), entry


def test_no_ipynb_committed():
    tracked = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked == [], f"committed notebooks (generate them one way instead): {tracked}"


def test_one_source_per_chapter_in_build():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert "notebooks/*.ipynb" in config["exclude_patterns"]
    assert "notebooks/*.ipynb" in config["execute"]["exclude_patterns"]
    assert config.get("only_build_toc_files") is True


def helper_modules():
    """Every module of the helpers package, subpackages included (``__main__`` modules, which
    run a command line when imported, left out)."""
    return sorted(m.name for m in pkgutil.walk_packages(helpers.__path__, "helpers.")
                  if not m.name.endswith(".__main__"))


_IMPORT_ALL = """
import contextlib, importlib, io, json, sys
said = {}
for name in json.loads(sys.argv[1]):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        module = importlib.import_module(name)
    if buf.getvalue():
        said[name] = buf.getvalue()
    if not (module.__doc__ and "Book:" in module.__doc__):
        said[name] = said.get(name, "") + "(no 'Book:' in the module docstring)"
sys.__stdout__.write(json.dumps(said))
"""


def test_helpers_import_without_side_effects(tmp_path):
    """Importing every helpers module prints nothing, writes nothing, and names its book section.

    All modules are imported in a fresh interpreter whose working folder, cache folder
    (``STARS_BOOK_CACHE``) and home folder are empty temporary folders: after the imports,
    nothing may have been printed (by any module, to stdout or stderr, warnings included) and
    all three folders must still be empty.
    """
    import json
    import os
    import sys

    modules = helper_modules()
    assert len(modules) > 20 and "helpers.ppca.engine" in modules   # subpackages are walked
    folders = {name: tmp_path / name for name in ("cwd", "cache", "home")}
    for folder in folders.values():
        folder.mkdir()
    env = dict(os.environ, STARS_BOOK_CACHE=str(folders["cache"]), HOME=str(folders["home"]),
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("MPLCONFIGDIR", None)
    result = subprocess.run([sys.executable, "-c", _IMPORT_ALL, json.dumps(modules)],
                            cwd=folders["cwd"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"importing helpers wrote to stderr: {result.stderr[:2000]}"
    said = json.loads(result.stdout)
    assert said == {}, f"modules that printed on import (or lack a book section): {said}"
    for name, folder in folders.items():
        created = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
        assert created == [], f"importing helpers created {created} in the {name} folder"


def test_rsca_helpers_do_not_import_scipy_stats():
    """``helpers.rsca`` (every RSCA chapter imports it) leaves scipy.stats unimported: that
    import alone costs 0.6-0.8 s of CPU in each of the ~16 kernels of ``make test`` that read
    helpers.rsca (the knee's normal CDF is scipy.special.ndtr, the function norm.cdf calls)."""
    import sys

    code = "import sys, helpers.rsca; print('scipy.stats' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", "importing helpers.rsca now imports scipy.stats"


def test_public_helpers_have_docstrings():
    for name in helper_modules():
        mod = importlib.import_module(name)
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if callable(obj) and getattr(obj, "__module__", None) == name:
                assert obj.__doc__, f"{name}.{attr} has no docstring"


def _helpers_import_graph():
    """``{module: set of helpers modules it imports}`` from the source (``import`` statements
    anywhere in the module); a submodule importing its own package is not counted."""
    files = {}
    for path in (REPO / "helpers").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    graph = {m: set() for m in files}
    for m, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {t for t in targets if t in files and t != m and not m.startswith(t + ".")}
    return graph, files


def test_helpers_import_graph_has_no_circle():
    graph, _ = _helpers_import_graph()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycle = path[path.index(t):] + [t]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_constants_are_defined_once():
    """The speed of light lives in helpers.constants; no other module types it again."""
    _, files = _helpers_import_graph()
    again = [str(path.relative_to(REPO)) for name, path in files.items()
             if name != "helpers.constants" and "299_792" in path.read_text().replace("299792", "299_792")]
    assert not again, f"define the speed of light once (helpers.constants.C_KMS), not in {again}"


def test_helpers_modules_are_short_or_say_why():
    _, files = _helpers_import_graph()
    for name, path in files.items():
        n_lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert n_lines <= 600 or "Why this module is long:" in doc, \
            f"{path.relative_to(REPO)} has {n_lines} lines: split it by concept, or say in its " \
            "docstring why not ('Why this module is long: ...')"


def test_torch_pinned():
    text = (REPO / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in text
