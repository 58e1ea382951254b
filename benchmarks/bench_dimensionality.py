"""Benchmark: the RSCA chapters 5, 5b and 6 end to end with papermill, on a cold cache.

Book: chapters 5 ("RSCA"), 5b ("Is the rate honest?") and 6 ("How many dimensions does
chemistry need?"): notebooks/05_rsca.md, 05b_honest_rate.md, 06_dimensionality.md.

Runs the three chapters one after the other, as ``make book`` does, at the paper's scale
(``n_field = 238400`` generated, about 151,000 selected giants; every other parameter at its
default) and records for each:

* its wall time and its slowest cells (papermill's per-cell durations);
* the numbers chapter 6 reports through ``helpers.sweep.record_result``.

**Cold** means: no PPCA fit, no cached result, no scratch survey exists yet.  The survey and
chapter 4's RSCA inputs are taken as given (earlier chapters make them): the script makes
sure they exist in the cache in use, then runs the chapters against a fresh temporary cache
folder that links to them (``surveys/<key>`` and ``rsca_inputs/<key>``), so nothing of the
cache in use is deleted.  ``--warm`` runs against the cache in use instead.

Results go to ``benchmarks/results/dimensionality.json``. Target: <= 12 minutes for the three.

Run:  .venv/bin/python benchmarks/bench_dimensionality.py [--n-field 238400] [--warm] [--only 06_dimensionality]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = ("05_rsca", "05b_honest_rate", "06_dimensionality")
TARGET_S = 720.0


def _cells(out):
    import nbformat

    cells = []
    if out.exists():
        nb = nbformat.read(out, as_version=4)
        for i, c in enumerate(nb.cells):
            d = c.metadata.get("papermill", {}).get("duration")
            if c.cell_type == "code" and d:
                first = next((line for line in c.source.splitlines() if line.strip() and not line.startswith("#")), "")
                cells.append({"cell": i, "seconds": round(d, 1), "first_line": first[:70]})
        cells.sort(key=lambda r: -r["seconds"])
    return cells[:6]


def main(argv=None) -> int:
    """Run the benchmark and write the JSON (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-field", type=int, default=None, help="field stars generated (default: paper scale)")
    parser.add_argument("--warm", action="store_true", help="use the cache in use (default: a cold one)")
    parser.add_argument("--only", nargs="+", default=list(CHAPTERS), choices=CHAPTERS,
                        help="chapters to run (default: all three)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dimensionality.json")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="another parameter of every chapter (YAML value), e.g. -p n_runs 3")
    args = parser.parse_args(argv)

    import jupytext
    import nbformat
    import papermill as pm
    import yaml

    from helpers.paths import cache_dir
    from helpers.rsca.pipeline import PAPER_N_FIELD, chapter_source, rsca_inputs
    from helpers.survey.generate import survey_dir
    from helpers.sweep import RESULTS_ENV

    n_field = args.n_field or PAPER_N_FIELD
    params = {"n_field": n_field, **{k: yaml.safe_load(v) for k, v in args.p}}
    t0 = time.perf_counter()
    source = chapter_source(n_field, 42)
    inputs = rsca_inputs(source)
    inputs_s = time.perf_counter() - t0

    work = Path(tempfile.mkdtemp(prefix="bench_rsca_"))
    env_before = os.environ.get("STARS_BOOK_CACHE")
    if not args.warm:
        cold = work / "cache"
        for sub, path in (("surveys", survey_dir(source)), ("rsca_inputs", inputs.path)):
            (cold / sub).mkdir(parents=True, exist_ok=True)
            (cold / sub / path.name).symlink_to(path.resolve())
        for memo in cache_dir("ism_curves").glob("*.npz"):   # chapter 4's curve, as make book leaves it
            (cold / "ism_curves").mkdir(exist_ok=True)
            (cold / "ism_curves" / memo.name).symlink_to(memo.resolve())
        os.environ["STARS_BOOK_CACHE"] = str(cold)
    report = {"params": params, "cold_cache": not args.warm, "inputs_ready_s": round(inputs_s, 1),
              "n_field_giants": int(inputs.field_flux.shape[0]), "load_at_start": list(os.getloadavg()),
              "chapters": {}}
    try:
        for name in args.only:
            src, out, res = work / f"{name}.ipynb", work / f"{name}_out.ipynb", work / f"{name}.json"
            nbformat.write(jupytext.read(REPO / "notebooks" / f"{name}.md"), src)
            os.environ[RESULTS_ENV] = str(res)
            t = time.perf_counter()
            status, error = "ok", None
            try:
                pm.execute_notebook(str(src), str(out), parameters=params, cwd=str(REPO / "notebooks"),
                                    kernel_name="python3", progress_bar=False)
            except Exception as exc:  # record the failure, keep the timings
                status, error = "error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"
            wall = time.perf_counter() - t
            report["chapters"][name] = {
                "status": status, "error": error, "wall_s": round(wall, 1), "slowest_cells": _cells(out),
                "results": json.loads(res.read_text()).get("results", {}) if res.exists() else {},
                "load_at_end": list(os.getloadavg())}
            print(f"{name}: {status} in {wall:.0f} s", flush=True)
    finally:
        os.environ.pop(RESULTS_ENV, None)
        if env_before is None:
            os.environ.pop("STARS_BOOK_CACHE", None)
        else:
            os.environ["STARS_BOOK_CACHE"] = env_before
        if not args.warm:
            shutil.rmtree(work / "cache", ignore_errors=True)    # links and the cold run's own files
    total = sum(c["wall_s"] for c in report["chapters"].values())
    report.update({
        "total_s": round(total, 1), "target_s": TARGET_S,
        "pass": all(c["status"] == "ok" for c in report["chapters"].values()) and total <= TARGET_S,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "2 cores shared with other engineers' jobs; see load averages"},
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "executed_notebooks": str(work)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("total_s", "target_s", "pass", "load_at_start")}, indent=1))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
