"""Connecting to a Dask cluster and checking that its workers can do the book's work.

Book: {ref}`sec-scaling-cluster`

The book runs on an existing distributed engine, Dask (``dask.distributed``), rather than a
scheduler of its own.  :func:`connect` returns a client of a running cluster (any deployment:
``dask scheduler``/``dask worker`` by hand, dask SSH, Kubernetes, an HPC job queue through
dask-jobqueue) or of a new :class:`distributed.LocalCluster` on this machine.  Before work is
sent, :func:`check_workers` asks every worker whether it can import the book's package and
see the data paths the work needs, so that a missing install or a worker without the shared
file system is one clear error up front, not a failure (or, worse, silent zeros read from a
missing Zarr chunk) half way through.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["ClusterError", "connect", "check_workers", "data_paths", "path_fingerprint",
           "worker_report"]


class ClusterError(RuntimeError):
    """A Dask scheduler that cannot be reached, or workers that cannot do the work.

    Book: {ref}`sec-scaling-cluster`
    """


def connect(scheduler=None, *, n_workers: int = 2, threads_per_worker: int = 1,
            timeout: float = 10.0, dashboard_address: str | None = ":0", **cluster_kwargs):
    """A ``distributed.Client`` of a running cluster, or of a new local one.

    Book: {ref}`sec-scaling-cluster`

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``; a scheduler file path ending
        in ``.json`` also works).  None or ``"local"``: start a
        :class:`distributed.LocalCluster` on this machine.
    n_workers, threads_per_worker : int
        Size of the local cluster (ignored for a running one).  One thread per worker
        process suits the book's work: the PPCA chunks and chapter kernels are
        NumPy-heavy, and processes avoid the GIL.
    timeout : float
        Seconds to wait for the scheduler (and for a first worker).
    dashboard_address : str or None
        Where the local cluster serves its dashboard (``":0"``: a free port; None: none).
    **cluster_kwargs
        Passed to :class:`distributed.LocalCluster` (e.g. ``memory_limit``). Its
        ``silence_logs`` defaults here to ``logging.ERROR`` (Dask's own default prints
        warnings): the worker processes write to the notebook's standard error, and a local
        cluster closed while a worker still runs a task it no longer needs logs a warning
        for it (expected at shutdown, dask/distributed#8082), which would land in the
        page's output and fail the book's build. Errors are still printed; pass
        ``silence_logs=logging.WARNING`` to see the warnings.

    Returns
    -------
    distributed.Client
        ``client.dashboard_link`` is the dashboard's address.  Close the client (and, for a
        local cluster, ``client.cluster``) when done, or use it as a context manager.

    Raises
    ------
    ClusterError
        The scheduler cannot be reached within ``timeout`` seconds, or has no worker.
    """
    from distributed import Client, LocalCluster  # optional dependency (the 'dask' extra)

    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if scheduler is None or scheduler == "local":
        if int(n_workers) != n_workers or n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
        cluster_kwargs.setdefault("silence_logs", logging.ERROR)
        cluster = LocalCluster(n_workers=int(n_workers), threads_per_worker=int(threads_per_worker),
                               dashboard_address=dashboard_address, **cluster_kwargs)
        client = Client(cluster)
        client.wait_for_workers(1, timeout=max(timeout, 60.0))
        return client
    address = str(scheduler)
    kwargs = ({"scheduler_file": address} if address.endswith(".json")
              else {"address": address})
    try:
        client = Client(timeout=timeout, **kwargs)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({exc}); start "
            f"one with `dask scheduler` and workers with `dask worker {address}`, or leave the "
            f"address out for a local cluster") from exc
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError as exc:
        client.close()
        raise ClusterError(f"the Dask scheduler at {address} has no worker after {timeout:g} s; "
                           f"start some with `dask worker {address}`") from exc
    return client


def path_fingerprint(path) -> str:
    """What identifies a data path across machines: for a folder, the names and sizes of
    its entries (and a Zarr store's or cache's metadata files' contents), for a file its
    contents (up to 1 MB) or its size.

    Book: {ref}`sec-scaling-cluster`

    Two machines that see the same shared file system get the same fingerprint; a worker
    with an empty or different folder at the same path does not.
    """
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        size = p.stat().st_size
        h.update(p.read_bytes() if size <= 2 ** 20 else f"file:{size}".encode())
        return h.hexdigest()[:16]
    if not p.is_dir():
        return "missing"
    for entry in sorted(p.iterdir()):
        if entry.name.startswith("."):
            continue
        h.update(entry.name.encode())
        if entry.is_file():
            h.update(str(entry.stat().st_size).encode())
            if entry.name in ("zarr.json", "manifest.json", "survey.json", "token"):
                h.update(entry.read_bytes())
    return h.hexdigest()[:16]


def worker_report(modules: Sequence[str], paths: Sequence[str]) -> dict:
    """Run on a worker: which of ``modules`` import (and from where) and the fingerprint of
    each of ``paths``.

    Book: {ref}`sec-scaling-cluster`
    """
    mods = {}
    for name in modules:
        try:
            mod = importlib.import_module(name)
            mods[name] = str(getattr(mod, "__file__", "") or "")
        except Exception as exc:  # any import failure is what we report
            mods[name] = f"ImportError: {type(exc).__name__}: {exc}"
    return {"modules": mods, "paths": {p: path_fingerprint(p) for p in paths},
            "host": os.uname().nodename}


def check_workers(client, *, paths: Iterable = (), modules: Sequence[str] = ("helpers",)) -> dict:
    """Check that every worker imports ``modules`` and sees each of ``paths`` as this
    process does.

    Book: {ref}`sec-scaling-cluster`

    Parameters
    ----------
    client : distributed.Client
    paths : iterable of path-like
        Data the work reads or writes (a survey, a spectra cache, a Zarr store, the cache
        folder).  Each must exist here; a worker passes if its fingerprint
        (:func:`path_fingerprint`) equals this process's, i.e. it sees the same shared file
        system at the same path.
    modules : sequence of str
        Modules the tasks need (``helpers``: the book's package, installed on every worker
        with ``pip install -e .`` of the same repository).

    Returns
    -------
    dict
        Worker address -> its report (:func:`worker_report`).

    Raises
    ------
    ClusterError
        No worker, a path missing here, or a worker that cannot import a module or sees a
        path differently; the message names the worker(s) and what is wrong.
    FileNotFoundError
        A path that does not exist in this process.
    """
    paths = [str(Path(p).resolve()) for p in paths]
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"{p} does not exist here, so no worker can read it")
    here = {p: path_fingerprint(p) for p in paths}
    reports = client.run(worker_report, list(modules), paths)
    if not reports:
        raise ClusterError("the Dask cluster has no worker")
    problems = []
    for addr, rep in sorted(reports.items()):
        for name, where in rep["modules"].items():
            if where.startswith("ImportError"):
                problems.append(f"worker {addr} ({rep['host']}) cannot import {name} ({where}); "
                                f"install the book there (pip install -e '.[dask]' in a "
                                f"checkout of the same repository)")
        for p, fp in rep["paths"].items():
            if fp == "missing":
                problems.append(f"worker {addr} ({rep['host']}) has no {p}: the data must be "
                                f"on a file system every worker mounts at the same path")
            elif fp != here[p]:
                problems.append(f"worker {addr} ({rep['host']}) sees other contents at {p} than "
                                f"this process: not the same shared file system")
    if problems:
        raise ClusterError("the Dask workers cannot do this work:\n  " + "\n  ".join(problems))
    return reports


def data_paths(*arrays) -> list[str]:
    """Files and Zarr stores the dask arrays read (found in their task graphs).

    Book: {ref}`sec-scaling-cluster`

    Finds Zarr arrays (``dask.array.from_zarr``, :func:`helpers.apogee.load_zarr_cache`)
    and NumPy memory maps (``dask.array.from_array`` of a memmap); other sources are not
    recognised, so check them with :func:`check_workers` yourself.
    """
    found = []
    for arr in arrays:
        if arr is None or not hasattr(arr, "__dask_graph__"):
            continue
        for value in dict(arr.__dask_graph__()).values():
            value = getattr(value, "value", value)      # DataNode wraps constants
            store = getattr(value, "store", None)
            root = getattr(store, "root", None) if store is not None else None
            if root is not None and type(value).__module__.startswith("zarr"):
                found.append(str(root))         # the store's folder
            elif type(value).__name__ == "memmap" and getattr(value, "filename", None):
                found.append(str(value.filename))
    return sorted(set(found))
