"""What runs inside one point of a parameter sweep: the chapter's record and its execution.

Book: {ref}`sec-sweeps-record`

A chapter reports its headline numbers with :func:`record_result`; the process that executes
a grid point (a local pool's child or a Dask worker's child process) runs :func:`run_point`.
Both live here, apart from :mod:`helpers.sweep` (the grid, the pool, the cluster, the table),
because every point pays for what its processes import: this module needs only the standard
library (and papermill, inside :func:`run_point`), while :mod:`helpers.sweep` imports pandas
and YAML, about 0.4 s of CPU in each process of each point.  :mod:`helpers.sweep` re-exports
:func:`record_result`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

__all__ = ["RESULTS_ENV", "record_result", "run_point"]

#: Environment variable through which a sweep tells a chapter where to record its results.
RESULTS_ENV = "STARS_BOOK_RESULTS"


def record_result(**values) -> dict:
    """Record a chapter's headline numbers for a parameter sweep.

    Book: {ref}`sec-sweeps-record`

    Inside a sweep (environment variable ``STARS_BOOK_RESULTS`` set by
    :func:`helpers.sweep.run_sweep`) the values are merged into that JSON file; otherwise nothing is
    written. Values must be JSON numbers, strings or booleans (numpy scalars are
    converted).

    Returns
    -------
    dict
        The recorded values (so a chapter can also display them).
    """
    clean = {}
    for key, value in values.items():
        if hasattr(value, "item"):
            value = value.item()
        if not isinstance(value, (int, float, str, bool)) and value is not None:
            raise TypeError(f"record_result: {key}={value!r} is not a number, string or bool")
        clean[key] = value
    path = os.environ.get(RESULTS_ENV)
    if path:
        p = Path(path)
        data = json.loads(p.read_text()) if p.exists() else {}
        data.setdefault("results", {}).update(clean)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, p)
    return clean


def run_point(notebook: str, source_ipynb: str, out_ipynb: str, out_json: str, point: dict,
              timeout: float | None) -> dict:
    """Execute one grid point in this process (papermill); return its record.

    Book: {ref}`sec-sweeps-record`

    The point's record goes to ``out_json`` (:data:`RESULTS_ENV` points the chapter's
    :func:`record_result` there); a point that fails is recorded with its error.
    """
    import papermill as pm  # optional dependency (the book/test extras)

    os.environ[RESULTS_ENV] = out_json
    record = {"notebook": notebook, "params": point, "status": "running", "results": {}}
    Path(out_json).write_text(json.dumps(record))
    start = time.perf_counter()
    try:
        pm.execute_notebook(source_ipynb, out_ipynb, parameters=point, cwd=str(Path(notebook).parent),
                            kernel_name="python3", progress_bar=False, execution_timeout=timeout)
        status, error = "ok", None
    except Exception as exc:  # the point failed: record why, keep the others going
        status, error = "error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    record = json.loads(Path(out_json).read_text())
    record.update(status=status, error=error, seconds=round(time.perf_counter() - start, 2))
    Path(out_json).write_text(json.dumps(record, indent=1))
    return record
