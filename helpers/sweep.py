"""Run a chapter over a grid of parameters with papermill: parallel, resumable, tidy.

Book: {ref}`page-sweeps`

Usage::

    python -m helpers.sweep notebooks/06_dimensionality.md -p K 10 20 30 --seeds 0 1 2
    python -m helpers.sweep notebooks/06_dimensionality.md -p K 10 20 30 --scheduler tcp://host:8786

Every grid point (the Cartesian product of the ``-p`` values and the seeds) is executed
by papermill into ``OUT/points/<point-id>.ipynb``; the chapter reports its numbers with
:func:`record_result`, which writes them to ``OUT/points/<point-id>.json``. A point whose
JSON says ``"status": "ok"`` is skipped on the next run (resumable); a point that fails is
recorded with its error and does not stop the others. ``OUT/results.csv`` holds one row per
grid point: the parameters, the recorded results, the status and the run time.

Points run in a local process pool, or with ``--scheduler`` on a Dask cluster
({ref}`sec-sweeps-cluster`): each point is then a task on a worker, which executes the
chapter in a child process and sends back its record and executed notebook; this process
writes them into ``OUT`` as each point finishes, so a lost worker or scheduler loses no
finished point.  What the workers need (the book's package and papermill installed, the
cache folder on a shared file system) is checked before any point runs.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import hashlib
import itertools
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from helpers.dask_cluster import ClusterError, check_workers, connect
from helpers.paths import cache_dir
from helpers.sweep_record import RESULTS_ENV, record_result, run_point

__all__ = ["record_result", "grid_points", "point_id", "run_sweep", "run_point_in_child", "main",
           "RESULTS_ENV", "WORKER_MODULES"]

#: What every Dask worker of a sweep must import: the book, papermill and the kernel.
WORKER_MODULES = ("helpers", "papermill", "nbformat", "ipykernel")

def grid_points(params: dict, seeds=None, seed_name: str = "seed") -> list[dict]:
    """The Cartesian product of parameter values (and seeds), as a list of dicts.

    Book: {ref}`page-sweeps`
    """
    grid = dict(params)
    if seeds:
        if seed_name in grid:
            raise ValueError(f"give the seeds either with --seeds or with -p {seed_name}, not both")
        grid[seed_name] = list(seeds)
    if not grid:
        raise ValueError("a sweep needs at least one parameter with values (-p NAME V1 V2 ...)")
    names = list(grid)
    for name in names:
        if not grid[name]:
            raise ValueError(f"parameter {name!r} has no values")
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def point_id(notebook: Path, point: dict) -> str:
    """A stable short name of one grid point: readable parameters plus a hash.

    Book: {ref}`page-sweeps`
    """
    text = json.dumps({"notebook": Path(notebook).stem, **point}, sort_keys=True)
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    readable = "_".join(f"{k}-{v}" for k, v in point.items())
    readable = "".join(c if c.isalnum() or c in "-_." else "" for c in readable)[:60]
    return f"{readable}_{digest}"


def _notebook_parameters(notebook: Path) -> set:
    import jupytext  # optional dependency (the book/test extras)

    nb = jupytext.read(notebook)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook}: needs exactly one cell tagged 'parameters', found {len(cells)}")
    names = set()
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def run_point_in_child(notebook: str, source_text: str, point: dict, timeout: float | None,
                       env: dict) -> tuple:
    """Run one grid point in a child process of this (Dask worker) process.

    Book: {ref}`sec-sweeps-cluster`

    The chapter runs with its own folder as working directory when that folder exists
    here, else in a temporary one; ``env`` (the sweep's cache folder) is added to the
    child's environment, along with the results file of :func:`record_result`, so points
    running side by side on one worker never share it.

    Returns
    -------
    record : dict
        As written by a local sweep (params, results, status, error, seconds).
    executed : str or None
        The executed notebook (JSON text).
    """
    with tempfile.TemporaryDirectory(prefix="sweep-point-") as tmp:
        tmp = Path(tmp)
        src = tmp / "source.ipynb"
        src.write_text(source_text)
        where = Path(notebook) if Path(notebook).parent.is_dir() else tmp / Path(notebook).name
        spec = {"notebook": str(where), "source": str(src), "out_ipynb": str(tmp / "point.ipynb"),
                "out_json": str(tmp / "point.json"), "point": point, "timeout": timeout}
        (tmp / "spec.json").write_text(json.dumps(spec))
        code = ("import json, sys; from helpers.sweep_record import run_point; "
                "s = json.load(open(sys.argv[1])); "
                "run_point(s['notebook'], s['source'], s['out_ipynb'], s['out_json'], "
                "s['point'], s['timeout'])")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code, str(tmp / "spec.json")],
                              env={**os.environ, **env}, capture_output=True, text=True)
        out_json = tmp / "point.json"
        record = json.loads(out_json.read_text()) if out_json.is_file() else {}
        if proc.returncode or record.get("status") not in ("ok", "error"):
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            record = {"notebook": notebook, "params": point, "results": record.get("results", {}),
                      "status": "error",
                      "error": f"the point's process on the worker exited with code "
                               f"{proc.returncode}: {last}",
                      "seconds": round(time.perf_counter() - start, 2)}
        record["notebook"] = notebook
        nb = tmp / "point.ipynb"
        return record, nb.read_text() if nb.is_file() else None


def _save_point(out: Path, pid: str, record: dict, executed: str | None) -> None:
    """Write one point's record (and executed notebook) atomically."""
    if executed is not None:
        tmp = out / "points" / f".{pid}.ipynb.tmp"
        tmp.write_text(executed)
        os.replace(tmp, out / "points" / f"{pid}.ipynb")
    tmp = out / "points" / f".{pid}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / "points" / f"{pid}.json")


def _worker_paths(points) -> list:
    """Paths a chapter's points name (e.g. ``apogee_cache``) that exist here."""
    paths = set()
    for point in points:
        for value in point.values():
            if isinstance(value, str) and (os.sep in value) and Path(value).exists():
                paths.add(str(Path(value).resolve()))
    return sorted(paths)


def _run_on_cluster(client, notebook: Path, source: Path, todo, out: Path, timeout, progress):
    """Run the points as tasks on a Dask cluster; save each as it finishes.  Returns the
    records of the finished points; raises ClusterError if the cluster was lost."""
    from distributed import as_completed  # optional dependency (the 'dask' extra)

    root = cache_dir()
    token = root / f"sweep-check-{os.getpid()}-{secrets.token_hex(6)}.txt"
    token.write_text(secrets.token_hex(16))          # only a shared disk shows it to a worker
    try:
        check_workers(client, paths=[token, *_worker_paths(p for _, p in todo)],
                      modules=WORKER_MODULES)
    finally:
        token.unlink(missing_ok=True)
    env = {"STARS_BOOK_CACHE": str(root)}
    for name in ("CI", "TQDM_DISABLE"):
        if name in os.environ:
            env[name] = os.environ[name]
    text = source.read_text()
    futures = {client.submit(run_point_in_child, str(notebook), text, point, timeout, env,
                             key=f"sweep-{pid}-{secrets.token_hex(4)}", pure=False): pid
               for pid, point in todo}
    records, lost = {}, []
    with client.as_current():             # as_completed finds the client
        done = as_completed(futures)
    for fut in done:
        pid = futures[fut]
        if fut.status == "cancelled":
            lost.append(pid)
            continue
        try:
            record, executed = fut.result()
        except (OSError, TimeoutError):                 # the connection went away
            lost.append(pid)
            continue
        except Exception as exc:  # the task failed on the cluster (e.g. its worker died)
            point = dict(todo)[pid]
            record, executed = {"notebook": str(notebook), "params": point, "results": {},
                                "status": "error", "error": f"{type(exc).__name__}: {exc}",
                                "seconds": None}, None
        _save_point(out, pid, record, executed)
        records[pid] = record
        if progress:
            print(f"  {pid}: {record['status']} ({record.get('seconds') or 0:.1f} s)"
                  + (f" -- {record['error']}" if record.get("error") else ""), file=sys.stderr)
    if lost:
        raise ClusterError(f"the Dask cluster was lost (scheduler gone or futures cancelled) "
                           f"with {len(lost)} of {len(todo)} grid points unfinished; the "
                           f"{len(records)} finished ones are saved in {out / 'points'}; rerun "
                           f"the same command to run the rest")
    return records


def run_sweep(notebook, params: dict, seeds=None, out=None, jobs: int = 2, seed_name: str = "seed",
              timeout: float | None = None, progress: bool = True, scheduler=None,
              connect_timeout: float = 10.0):
    """Execute ``notebook`` at every grid point; return the tidy results table.

    Book: {ref}`page-sweeps`

    Parameters
    ----------
    notebook : path
        A chapter source ``notebooks/NN_topic.md`` (or an ``.ipynb``).
    params : dict of str -> list
        Values of each parameter; every name must be assigned in the chapter's
        ``parameters`` cell.
    seeds : list of int, optional
        Seeds, swept as parameter ``seed_name``.
    out : path, optional
        Output folder (default ``.cache/sweeps/<chapter>``).
    jobs : int
        Grid points executed at once (each in its own process and kernel); with
        ``scheduler="local"``, the workers of the local Dask cluster.
    timeout : float, optional
        Per-cell execution timeout in seconds.
    scheduler : str or distributed.Client, optional
        Run the points on a Dask cluster ({ref}`sec-sweeps-cluster`): the address of a
        running scheduler (``tcp://host:8786``, or a scheduler file ``.json``), ``"local"``
        for a new local cluster of ``jobs`` workers, or a connected client.  Default: a
        local process pool.
    connect_timeout : float
        Seconds to wait for the scheduler.

    Returns
    -------
    pandas.DataFrame
        One row per grid point: parameters, recorded results, ``status``, ``error``,
        ``seconds``, ``point``. Also written to ``OUT/results.csv``.

    Raises
    ------
    helpers.dask_cluster.ClusterError
        The scheduler cannot be reached, its workers cannot run the chapter, or the cluster
        was lost during the sweep (the finished points are saved; ``results.csv`` lists the
        others as ``not run``).
    """
    import jupytext  # optional dependencies (the book/test extras): imported when a sweep runs
    import nbformat

    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"no such chapter: {notebook}")
    if int(jobs) != jobs or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    points = grid_points(params, seeds, seed_name)
    known = _notebook_parameters(notebook)
    unknown = sorted(set(points[0]) - known)
    if unknown:
        raise ValueError(f"{notebook.name} has no parameter(s) {unknown}; its parameters are {sorted(known)}")
    # absolute: each grid point runs with the chapter's folder as working directory
    out = Path(out).resolve() if out else cache_dir("sweeps", notebook.stem)
    (out / "points").mkdir(parents=True, exist_ok=True)
    source = out / f"{notebook.stem}.source.ipynb"
    nbformat.write(jupytext.read(notebook), source)

    todo, records = [], {}
    for point in points:
        pid = point_id(notebook, point)
        js = out / "points" / f"{pid}.json"
        if js.exists():
            rec = json.loads(js.read_text())
            if rec.get("status") == "ok" and rec.get("params") == point:
                records[pid] = rec
                continue
        todo.append((pid, point))
    where = f"{jobs} local worker(s)" if scheduler is None else "the Dask cluster"
    if progress:
        print(f"sweep {notebook.name}: {len(points)} grid points, {len(records)} already done, "
              f"{len(todo)} to run on {where}", file=sys.stderr)
    lost = None
    if todo and scheduler is not None:
        if hasattr(scheduler, "submit"):
            client, own = scheduler, False
        else:
            client = connect(None if scheduler == "local" else scheduler, n_workers=jobs,
                             timeout=connect_timeout)
            own = True
        try:
            records.update(_run_on_cluster(client, notebook, source, todo, out, timeout, progress))
        except ClusterError as exc:
            if "was lost" not in str(exc):
                raise
            lost = exc
            for pid, _ in todo:
                js = out / "points" / f"{pid}.json"
                if pid not in records and js.is_file():
                    records[pid] = json.loads(js.read_text())
        finally:
            if own:
                cluster = getattr(client, "cluster", None)
                client.close()
                if cluster is not None and scheduler == "local":
                    cluster.close()
    elif todo:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=int(jobs), mp_context=ctx) as pool:
            futures = {pool.submit(run_point, str(notebook), str(source),
                                   str(out / "points" / f"{pid}.ipynb"),
                                   str(out / "points" / f"{pid}.json"), point, timeout): pid
                       for pid, point in todo}
            for fut in cf.as_completed(futures):
                pid = futures[fut]
                rec = fut.result()
                records[pid] = rec
                if progress:
                    print(f"  {pid}: {rec['status']} ({rec.get('seconds', 0):.1f} s)"
                          + (f" -- {rec['error']}" if rec.get("error") else ""), file=sys.stderr)
    rows = []
    for point in points:
        pid = point_id(notebook, point)
        rec = records.get(pid, {"status": "not run", "error": None, "seconds": None})
        rows.append({**point, **rec.get("results", {}), "status": rec["status"],
                     "error": rec.get("error"), "seconds": rec.get("seconds"), "point": pid})
    table = pd.DataFrame(rows)
    table.to_csv(out / "results.csv", index=False)
    if lost is not None:
        raise lost
    return table


def _parse_value(text: str):
    value = yaml.safe_load(text)
    scalar = (int, float, str, bool)
    if isinstance(value, list) and all(isinstance(v, scalar) for v in value):
        return value  # a list-valued parameter, e.g. -p K_values "[5, 10, 15]" (one grid value)
    return value if isinstance(value, scalar) else text


def main(argv=None) -> int:
    """Command line: ``python -m helpers.sweep CHAPTER -p NAME V1 V2 ... [--seeds S ...]``.

    Book: {ref}`page-sweeps`
    """
    parser = argparse.ArgumentParser(
        prog="python -m helpers.sweep",
        description="Execute a chapter over a grid of parameters with papermill (parallel, "
                    "resumable) and write a tidy results table OUT/results.csv.")
    parser.add_argument("notebook", type=Path, help="chapter source, e.g. notebooks/06_dimensionality.md")
    parser.add_argument("-p", "--param", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter and its values (repeat -p for a grid); values are read as YAML "
                             "(10 is an int, 0.5 a float, true a bool, \"[5, 10]\" one list value)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="S",
                        help="seeds to sweep, passed as the chapter's seed parameter")
    parser.add_argument("--seed-name", default="seed", help="name of the seed parameter (default: seed)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: .cache/sweeps/<chapter>)")
    parser.add_argument("--jobs", type=int, default=2, help="grid points run at once (default: 2)")
    parser.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run the points on a Dask cluster: a running scheduler's address "
                             "(tcp://host:8786, or a scheduler file .json), or 'local' for a "
                             "new local cluster of --jobs workers (default: a process pool)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the scheduler (default 10)")
    args = parser.parse_args(argv)
    params = {}
    for entry in args.param:
        if len(entry) < 2:
            parser.error(f"-p {entry[0]} needs at least one value")
        params[entry[0]] = [_parse_value(v) for v in entry[1:]]
    try:
        table = run_sweep(args.notebook, params, args.seeds, args.out, args.jobs, args.seed_name,
                          args.timeout, scheduler=args.scheduler,
                          connect_timeout=args.connect_timeout)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = table[table["status"] != "ok"]
    print(table.to_string(index=False))
    if len(failed):
        print(f"{len(failed)} of {len(table)} grid points failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
