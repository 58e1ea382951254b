"""Building a spectra cache from aspcapStar files, in parallel (:func:`build_spectra_cache`).

Book: {ref}`sec-survey-files`

Spectra are read in small batches by worker processes (``n_jobs > 1``) and written straight
into the memory-mapped output through :class:`helpers.apogee.cache_writer.SpectraCacheWriter`.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from helpers.apogee.aspcapstar import read_aspcapstar
from helpers.apogee.cache_format import (SpectraCacheError, cache_key, ids_of, is_complete_cache,
                                         progress_bar, read_manifest)
from helpers.apogee.cache_loader import SpectraCache, load_spectra_cache
from helpers.apogee.cache_writer import SpectraCacheWriter
from helpers.apogee.fits_io import ApogeeFormatError
from helpers.apogee.grid import N_PIXELS
from helpers.apogee.sas import aspcapstar_path
from helpers.progress import progress_enabled

__all__ = ["default_n_jobs", "build_spectra_cache"]


#: Workers write spectra straight into the memory-mapped output (True) instead of sending
#: them back to the main process (False); the benchmark compares both.
_WORKERS_WRITE = True


def _read_batch(paths: Sequence[str], start: int | None = None, flux_path=None,
                error_path=None):
    """Worker: read a batch of aspcapStar files.

    With ``flux_path``/``error_path`` (the temporary ``.npy`` files of the cache being
    built) the spectra are written directly into rows ``start .. start+k-1`` of those
    memory maps and ``(None, None, errors)`` is returned; otherwise returns ``(flux (k,
    8575) float32, error (k, 8575) float32, errors)``.  ``errors[j]`` is None or
    ``(exception class name, message)`` for a file that could not be read (its row is left
    as zeros).
    """
    k = len(paths)
    if flux_path is not None:
        fmap = np.load(flux_path, mmap_mode="r+")
        emap = np.load(error_path, mmap_mode="r+")
        flux, error = fmap[start:start + k], emap[start:start + k]
    else:
        flux = np.zeros((k, N_PIXELS), dtype=np.float32)
        error = np.zeros((k, N_PIXELS), dtype=np.float32)
    errors: list = [None] * k
    for j, path in enumerate(paths):
        try:
            s = read_aspcapstar(path, read_table=False)
        except (ApogeeFormatError, OSError) as exc:
            errors[j] = (type(exc).__name__, str(exc))
            continue
        flux[j] = s.flux
        error[j] = s.error
    if flux_path is not None:
        del flux, error, fmap, emap  # unmap; the pages stay in the shared page cache
        return None, None, errors
    return flux, error, errors


_ERROR_TYPES = {"FileNotFoundError": FileNotFoundError, "PermissionError": PermissionError,
                "IsADirectoryError": IsADirectoryError}


def _raise_read_error(kind: str, message: str):
    cls = _ERROR_TYPES.get(kind)
    if cls is not None:
        raise cls(message)
    if kind == "ApogeeFormatError":
        raise ApogeeFormatError(message)
    raise OSError(message)


def _iter_batches(batches: list, n_jobs: int, executor: str, targets=None):
    """Yield _read_batch results in order, keeping at most ~2*n_jobs batches in flight.

    ``batches`` holds (start_row, paths); ``targets`` is None or (flux_path, error_path)
    for workers that write straight into the output.
    """
    extra = () if targets is None else tuple(os.fspath(t) for t in targets)

    def args(b):
        return (b[1],) if targets is None else (b[1], b[0]) + extra

    if n_jobs <= 1:
        for b in batches:
            yield _read_batch(*args(b))
        return
    if executor == "process":
        pool = cf.ProcessPoolExecutor(max_workers=n_jobs)
    elif executor == "thread":
        pool = cf.ThreadPoolExecutor(max_workers=n_jobs)
    else:
        raise ValueError(f"executor must be 'process' or 'thread', got {executor!r}")
    pending: deque = deque()
    it = iter(batches)
    try:
        for b in it:
            pending.append(pool.submit(_read_batch, *args(b)))
            if len(pending) >= 2 * n_jobs:
                break
        while pending:
            res = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_read_batch, *args(nxt)))
            yield res
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def default_n_jobs() -> int:
    """Default worker count: the CPUs available to this process (at most 8).

    Book: {ref}`sec-survey-files`
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def build_spectra_cache(catalogue: pd.DataFrame, out_dir, paths: Sequence | None = None,
                        apogee_root=None, release: str | None = None, skip_bad: bool = False,
                        n_jobs: int | None = None, progress: bool = True, key_extra=None,
                        *, executor: str = "process", batch_size: int = 64,
                        force: bool = False, id_column: str = "APOGEE_ID") -> SpectraCache:
    """Build (or reuse) the spectra cache of a selection of stars from aspcapStar files.

    Files are read in batches of ``batch_size`` by ``n_jobs`` worker processes (or
    threads), each writing its rows straight into the memory-mapped ``.npy`` files inside a
    temporary directory (at most ``2 * n_jobs`` batches are in flight); the main process
    tracks which rows are done, and the directory is renamed to ``out_dir`` only when
    every row is written (see the module docstring for the guarantees).  If ``out_dir``
    already holds a cache with the same key, it is loaded and returned without reading any
    aspcapStar file (pass ``force=True`` to rebuild).

    Parameters
    ----------
    catalogue : pandas.DataFrame, N rows
        The selection, e.g. from :func:`helpers.apogee.read_allstar`; must have
        ``APOGEE_ID`` and, unless ``paths`` is given, ``TELESCOPE`` and ``FIELD``.
    out_dir : str or path-like
        Cache directory to create (or replace).
    paths : sequence of path-like, length N, optional
        aspcapStar file of each row.  Default: :func:`helpers.apogee.aspcapstar_path` of
        ``apogee_root``, ``release`` and the row's TELESCOPE, FIELD, APOGEE_ID.
    apogee_root : str or path-like, optional
        Directory containing ``dr16/`` or ``dr17/`` (needed when ``paths`` is None).
    release : {'dr16', 'dr17'} or str, optional
        Data release (needed when ``paths`` is None; recorded in the key otherwise).
    skip_bad : bool
        False (default): the first missing, unreadable or malformed file raises an error
        naming it, and no cache is written.  True: such stars are left out (of the
        catalogue too) and listed with the reason in ``manifest['skipped']``.
    n_jobs : int, optional
        Worker count; default :func:`default_n_jobs`.  1 reads in this process.
    progress : bool
        Show a tqdm progress bar (off under ``CI`` or ``TQDM_DISABLE=1``:
        :func:`helpers.progress.progress_enabled`).
    key_extra : JSON-serialisable, optional
        Anything else the cache should be keyed by.
    executor : {'process', 'thread'}
        Kind of parallelism (processes measured faster for astropy reads; see
        benchmarks/README_cache.md).
    batch_size : int
        Files per task.
    force : bool
        Rebuild even if a cache with the same key exists.
    id_column : str
        ID column of ``catalogue``.

    Returns
    -------
    SpectraCache
        The loaded cache (flux and error memory-mapped), rows aligned with the catalogue
        minus any skipped rows.

    Raises
    ------
    FileNotFoundError, PermissionError, helpers.apogee.ApogeeFormatError
        A bad input file when ``skip_bad`` is False (message names the file and the
        problem).
    SpectraCacheError
        All files were bad, or ``out_dir`` exists and is not a cache.

    Book: {ref}`sec-survey-files`
    """
    if not isinstance(catalogue, pd.DataFrame):
        raise TypeError("build_spectra_cache: catalogue must be a pandas DataFrame")
    catalogue = catalogue.reset_index(drop=True)
    ids = ids_of(catalogue, id_column)
    paths = _aspcapstar_paths(catalogue, ids, paths, apogee_root, release)
    key, info = cache_key(ids, paths, release, key_extra)
    info["skip_bad"] = bool(skip_bad)
    out = Path(out_dir)
    if not force and is_complete_cache(out) and read_manifest(out).get("key") == key:
        return load_spectra_cache(out)
    n_jobs = default_n_jobs() if n_jobs is None else max(1, int(n_jobs))
    batch_size = max(1, int(batch_size))
    batches = [(s, paths[s:s + batch_size]) for s in range(0, len(paths), batch_size)]
    bar = progress_bar(len(paths), f"cache {out.name}", progress_enabled(progress))
    writer = SpectraCacheWriter(out, catalogue, key=key, release=release,
                                key_info=info, id_column=id_column)
    try:
        with writer, contextlib.closing(_iter_batches(
                batches, n_jobs, executor,
                writer.temp_array_paths() if _WORKERS_WRITE else None)) as results:
            row = 0
            for flux, error, errors in results:
                _record_batch(writer, row, flux, error, errors, paths, skip_bad)
                row += len(errors)
                bar.update(len(errors))
            if len(writer.dropped) == len(ids) and len(ids) > 0:
                raise SpectraCacheError(
                    f"build_spectra_cache: all {len(ids)} files were bad; first: "
                    f"{writer.dropped[0]['path']}: {writer.dropped[0]['reason']}")
    finally:
        bar.close()
    return load_spectra_cache(out, expect_ids=[i for r, i in enumerate(ids)
                                               if r not in writer.dropped])


def _aspcapstar_paths(catalogue: pd.DataFrame, ids: np.ndarray, paths, apogee_root,
                      release) -> list:
    """The aspcapStar file of each catalogue row, as str: ``paths`` if given, else found
    from ``apogee_root``, ``release`` and the rows' TELESCOPE, FIELD and ``ids``.

    Book: {ref}`sec-survey-files`

    Raises
    ------
    ValueError
        Neither ``paths`` nor both ``apogee_root`` and ``release``, or as many paths as rows.
    SpectraCacheError
        The catalogue lacks TELESCOPE or FIELD (needed without ``paths``).
    """
    if paths is None:
        if apogee_root is None or release is None:
            raise ValueError("build_spectra_cache: give either paths or both apogee_root "
                             "and release")
        for c in ("TELESCOPE", "FIELD"):
            if c not in catalogue.columns:
                raise SpectraCacheError(f"catalogue has no {c!r} column, needed to locate "
                                        f"aspcapStar files (or pass paths=)")
        tel = catalogue["TELESCOPE"].astype(str).to_numpy()
        fld = catalogue["FIELD"].astype(str).to_numpy()
        paths = [aspcapstar_path(apogee_root, release, t, f, i)
                 for t, f, i in zip(tel, fld, ids)]
    paths = [os.fspath(p) for p in paths]
    if len(paths) != len(ids):
        raise ValueError(f"build_spectra_cache: {len(paths)} paths for {len(ids)} "
                         f"catalogue rows")
    return paths


def _record_batch(writer: SpectraCacheWriter, row: int, flux, error, errors: list,
                  paths: list, skip_bad: bool) -> None:
    """Record one batch of :func:`_read_batch` (catalogue rows ``row``, ``row + 1``, ...) in
    ``writer``: its spectra (or, when the workers wrote them, that they are written), and
    its unreadable files, dropped with their reason when ``skip_bad`` and raised otherwise.

    Book: {ref}`sec-survey-files`

    Parameters
    ----------
    writer : SpectraCacheWriter
        The open cache.
    row : int
        Catalogue row of the batch's first file.
    flux, error : ndarray, shape (k, 8575), float32, or None
        The batch's spectra; None when the workers wrote them into the cache themselves.
    errors : list of None or (str, str), length k
        Per file: None, or the exception's class name and message.
    paths : list of str
        Every row's aspcapStar file (for the report of a dropped row).
    skip_bad : bool
        Drop unreadable files (True) or raise the first one's error (False).
    """
    k = len(errors)
    if not any(e is not None for e in errors):
        if flux is None:  # the workers wrote the rows themselves
            writer.mark_written(slice(row, row + k))
        else:
            writer.write(slice(row, row + k), flux, error)
        return
    if not skip_bad:
        j = next(j for j, e in enumerate(errors) if e is not None)
        _raise_read_error(*errors[j])
    for j, e in enumerate(errors):
        if e is not None:
            writer.drop(row + j, e[1], paths[row + j])
    good = np.array([e is None for e in errors])
    if good.any():
        if flux is None:
            writer.mark_written(row + np.flatnonzero(good))
        else:
            writer.write(row + np.flatnonzero(good), flux[good], error[good])
