"""The spectra cache as a Zarr store: chunked arrays that the workers of a Dask cluster read.

Book: {ref}`sec-scaling-zarr`

On one machine the memory-mapped cache (:mod:`helpers.apogee.cache_loader`) stays the
default.  Workers on other machines read a chunked format instead: a Zarr (v3) store on a
file system they share, opened lazily as ``dask.array`` s.  A store is one folder::

    zarr.json            group attributes: format, grid, N, id column, source key, catalogue
    flux/, error/        (N, 8575) float32, chunks of ``chunk_rows`` stars x every pixel
    apogee_ids/          (N,) the APOGEE_ID of every row
    catalogue/           one 1-D array per catalogue column (names in the attributes)

The Zarr copy of a cache lives inside that cache's folder as ``spectra.zarr`` (written by
:func:`write_zarr_cache`, by ``python -m helpers.survey cache ... --zarr`` or ``zarr``, and by
the generator with ``zarr=True``).  Its attributes record the wavelength grid (``CRVAL1``,
``CDELT1``, pixel count) and the key of the cache it was copied from, so a reader checks both:
a store on another grid, or one whose ids differ from what the caller expects, raises
:class:`helpers.apogee.cache_format.SpectraCacheError` naming the difference.  Writing is atomic
(a hidden temporary folder renamed into place), like the memory-mapped cache.

The same format holds other row-aligned spectra matrices, e.g. the censored RSCA inputs
(``flux`` and ``observed``) the PPCA benchmark reads: :func:`write_zarr_store` and
:func:`open_zarr_store` take any named (N, D) arrays.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from helpers.apogee.cache_format import (SpectraCacheError, catalogue_to_arrays, json_safe,
                                         progress_bar, read_manifest)
from helpers.apogee.cache_loader import SpectraCache, load_spectra_cache
from helpers.apogee.grid import CDELT1, CRVAL1, N_PIXELS
from helpers.paths import replace_atomically
from helpers.progress import progress_enabled

__all__ = ["ZARR_FORMAT", "ZARR_NAME", "ZARR_CHUNK_ROWS", "APOGEE_GRID", "ZarrSpectra",
           "write_zarr_store", "open_zarr_store", "write_zarr_cache", "load_zarr_cache",
           "zarr_path"]

#: Format tag written to (and required in) every store's attributes.
ZARR_FORMAT = "stars-ml-book/spectra-zarr/1"


#: Name of the Zarr copy inside a spectra cache folder.
ZARR_NAME = "spectra.zarr"


#: Stars per Zarr chunk: 8.8 MB of float32 at 8,575 pixels.  Small chunks read faster than
#: large ones (Zarr reads a chunk's pieces concurrently); a dask array groups several.
ZARR_CHUNK_ROWS = 256


#: The APOGEE grid as stored in (and checked against) a store's attributes.
APOGEE_GRID = {"CRVAL1": CRVAL1, "CDELT1": CDELT1, "n_pixels": N_PIXELS,
               "unit": "Angstrom (vacuum), log10-linear"}


def _zarr():
    import zarr  # optional dependency (the 'dask' extra): imported when a store is used
    return zarr


@contextlib.contextmanager
def _quiet_zarr():
    """Silence Zarr's warning that fixed-width unicode has no v3 specification yet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        yield


@dataclass
class ZarrSpectra:
    """An opened Zarr spectra store: lazy dask arrays plus checked ids and grid.

    Book: {ref}`sec-scaling-zarr`

    Attributes
    ----------
    path : pathlib.Path
        The store folder.
    arrays : dict of str -> dask.array.Array, shape (N, D)
        Every stored spectra matrix (``flux``, ``error`` for a spectra cache), chunked by
        ``chunk_rows`` stars (or the ``chunk_rows`` given to :func:`open_zarr_store`).
    apogee_ids : ndarray of str, shape (N,)
    catalogue : pandas.DataFrame or None
        The catalogue stored with the spectra (None if none was).
    attrs : dict
        The store's attributes (format, grid, source key, ...).
    """

    path: Path
    arrays: dict
    apogee_ids: np.ndarray
    catalogue: pd.DataFrame | None
    attrs: dict

    def __len__(self) -> int:
        return len(self.apogee_ids)

    def __getitem__(self, name):
        return self.arrays[name]

    @property
    def flux(self):
        """The ``flux`` array (dask), shape (N, D), float32."""
        return self.arrays["flux"]

    @property
    def error(self):
        """The ``error`` array (dask), shape (N, D), float32."""
        return self.arrays["error"]

    @property
    def wavelength(self) -> np.ndarray:
        """Vacuum wavelengths of the stored grid (Angstrom), shape (D,)."""
        g = self.attrs["grid"]
        return 10.0 ** (g["CRVAL1"] + g["CDELT1"] * np.arange(g["n_pixels"], dtype=np.float64))


class _NoBar:
    """What write_zarr_store updates when no progress bar is shown."""

    def update(self, n):
        pass

    def close(self):
        pass


def zarr_path(cache_path) -> Path:
    """Where the Zarr copy of the spectra cache at ``cache_path`` lives.

    Book: {ref}`sec-scaling-zarr`
    """
    return Path(cache_path) / ZARR_NAME


def write_zarr_store(out, arrays: Mapping[str, object], apogee_ids: Sequence[str], *,
                     grid: Mapping | None = None, catalogue: pd.DataFrame | None = None,
                     attrs: Mapping | None = None, chunk_rows: int = ZARR_CHUNK_ROWS,
                     compress: Sequence[str] = (), progress: bool = True) -> Path:
    """Write row-aligned spectra matrices into a new Zarr store, atomically.

    Book: {ref}`sec-scaling-zarr`

    Parameters
    ----------
    out : path-like
        The store folder to create; an existing store there is replaced only on success
        (a folder that is not a store is refused).
    arrays : mapping of str -> array_like, shape (N, D)
        The matrices (numpy arrays or memory maps, read ``chunk_rows * 8`` rows at a time),
        stored in their own dtype.
    apogee_ids : sequence of str, length N
        Row ids, stored and checked by the reader.
    grid : mapping, optional
        ``CRVAL1``, ``CDELT1``, ``n_pixels`` (and ``unit``) of the pixel grid; default the
        APOGEE grid.  ``n_pixels`` must equal D.
    catalogue : pandas.DataFrame, optional
        N rows, stored column by column (no pickle).
    attrs : mapping, optional
        Extra JSON-serialisable attributes (e.g. the source cache's key).
    chunk_rows : int
        Stars per chunk.
    compress : sequence of str
        Names of the arrays to compress with Zstandard.  Flux and errors are stored raw by
        default: noisy float32 compresses little and decompressing halves the read speed
        (measured in ``benchmarks/README_dask.md``); boolean masks compress ~50x.
    progress : bool
        tqdm bar (quiet under ``CI`` or ``TQDM_DISABLE=1``).

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    zarr = _zarr()
    out = Path(out)
    grid = dict(APOGEE_GRID if grid is None else grid)
    ids = np.asarray([str(i).strip() for i in apogee_ids], dtype=str)
    if not arrays:
        raise ValueError("write_zarr_store: no arrays to write")
    n = len(ids)
    for name, arr in arrays.items():
        if getattr(arr, "ndim", None) != 2 or arr.shape[0] != n:
            raise ValueError(f"write_zarr_store: array {name!r} has shape "
                             f"{getattr(arr, 'shape', None)}, expected ({n}, D) for {n} ids")
        if arr.shape[1] != int(grid["n_pixels"]):
            raise ValueError(f"write_zarr_store: array {name!r} has {arr.shape[1]} pixels "
                             f"per row but the grid has {grid['n_pixels']}")
    if int(chunk_rows) != chunk_rows or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    unknown = set(compress) - set(arrays)
    if unknown:
        raise ValueError(f"compress names {sorted(unknown)}, not among the arrays "
                         f"{sorted(arrays)}")
    if out.exists() and not (out / "zarr.json").is_file() and any(out.iterdir()):
        raise SpectraCacheError(f"{out} exists and is not a Zarr store; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{secrets.token_hex(4)}"
    n_rows_total = n * len(arrays)
    # tqdm only when a bar is shown: in a kernel without ipywidgets its import warns
    bar = (progress_bar(n_rows_total, f"zarr {out.name}", True) if progress_enabled(progress)
           else _NoBar())
    try:
        with _quiet_zarr():
            _write_group(zarr, tmp, arrays, ids, grid, catalogue, attrs, chunk_rows, compress,
                         bar)
        replace_atomically(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return out


def _write_group(zarr, folder, arrays, ids, grid, catalogue, attrs, chunk_rows, compress, bar):
    """Write the arrays, ids, catalogue and attributes of a store into ``folder``."""
    n = len(ids)
    g = zarr.open_group(folder, mode="w")
    for name, arr in arrays.items():
        codecs = "auto" if name in compress else None
        z = g.create_array(name, shape=arr.shape, dtype=np.dtype(arr.dtype),
                           chunks=(int(chunk_rows), arr.shape[1]), compressors=codecs)
        step = int(chunk_rows) * 8
        for a in range(0, n, step):
            z[a:a + step] = np.asarray(arr[a:a + step])
            bar.update(min(step, n - a))
    g.create_array("apogee_ids", data=ids)
    spec = []
    if catalogue is not None:
        if len(catalogue) != n:
            raise ValueError(f"write_zarr_store: catalogue has {len(catalogue)} rows for "
                             f"{n} ids")
        cols, spec = catalogue_to_arrays(catalogue.reset_index(drop=True))
        cg = g.create_group("catalogue")
        for key, col in cols.items():
            cg.create_array(key, data=col)
    g.attrs.update(json_safe({
        "format": ZARR_FORMAT, "n_stars": n, "grid": grid,
        "arrays": {name: str(np.dtype(a.dtype)) for name, a in arrays.items()},
        "chunk_rows": int(chunk_rows), "catalogue_columns": spec,
        "catalogue_attrs": dict(catalogue.attrs) if catalogue is not None else {},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(attrs or {})}))


def _same_grid(have: Mapping, want: Mapping) -> bool:
    return (int(have.get("n_pixels", -1)) == int(want["n_pixels"])
            and np.isclose(float(have.get("CRVAL1", np.nan)), float(want["CRVAL1"]),
                           rtol=0, atol=1e-9)
            and np.isclose(float(have.get("CDELT1", np.nan)), float(want["CDELT1"]),
                           rtol=1e-9, atol=0))


def open_zarr_store(path, *, grid: Mapping | None = None, expect_ids: Sequence[str] | None = None,
                    chunk_rows: int | None = None) -> ZarrSpectra:
    """Open a Zarr spectra store lazily, checking its format, grid and ids.

    Book: {ref}`sec-scaling-zarr`

    Parameters
    ----------
    path : path-like
        The store folder (on a file system every worker of a cluster sees, if a cluster is
        to read it).
    grid : mapping, optional
        The grid the caller works on (``CRVAL1``, ``CDELT1``, ``n_pixels``); default the
        APOGEE grid.
    expect_ids : sequence of str, optional
        The row ids the caller expects, in order.
    chunk_rows : int, optional
        Stars per dask chunk (a multiple of the store's chunk is best); default the
        store's own chunk.

    Returns
    -------
    ZarrSpectra

    Raises
    ------
    FileNotFoundError
        No folder at ``path``.
    SpectraCacheError
        Not a store of this format, a store on another grid (names both grids), arrays
        whose shapes disagree with the ids, or ids other than ``expect_ids``.
    """
    import dask.array as da  # optional dependency (the 'dask' extra)

    zarr = _zarr()
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"no Zarr spectra store at {p}")
    with _quiet_zarr():
        try:
            g = zarr.open_group(p, mode="r")
            attrs = dict(g.attrs)
        except Exception as exc:  # zarr raises several kinds for a folder that is no store
            raise SpectraCacheError(f"{p} is not a readable Zarr store ({exc})") from exc
        if attrs.get("format") != ZARR_FORMAT:
            raise SpectraCacheError(f"Zarr store {p}: format {attrs.get('format')!r}, expected "
                                    f"{ZARR_FORMAT!r}")
        want = dict(APOGEE_GRID if grid is None else grid)
        have = attrs.get("grid", {})
        if not _same_grid(have, want):
            raise SpectraCacheError(
                f"Zarr store {p} is on another wavelength grid: CRVAL1={have.get('CRVAL1')}, "
                f"CDELT1={have.get('CDELT1')}, {have.get('n_pixels')} pixels; expected "
                f"CRVAL1={want['CRVAL1']}, CDELT1={want['CDELT1']}, {want['n_pixels']} pixels")
        ids = np.asarray(g["apogee_ids"][:], dtype=str)
        n = int(attrs["n_stars"])
        if ids.shape != (n,):
            raise SpectraCacheError(f"Zarr store {p}: {ids.size} ids, attributes say {n}")
        arrays = {}
        for name in attrs.get("arrays", {}):
            z = g[name]
            if z.shape != (n, int(have["n_pixels"])):
                raise SpectraCacheError(f"Zarr store {p}: array {name!r} has shape {z.shape}, "
                                        f"expected ({n}, {have['n_pixels']})")
            rows = int(chunk_rows) if chunk_rows else z.chunks[0]
            arrays[name] = da.from_zarr(z, chunks=(rows, z.shape[1]))
        catalogue = None
        if attrs.get("catalogue_columns"):
            cg = g["catalogue"]
            catalogue = pd.DataFrame({c["name"]: cg[c["key"]][:]
                                      for c in attrs["catalogue_columns"]})
            catalogue.attrs.update(attrs.get("catalogue_attrs", {}))
    if expect_ids is not None:
        exp = np.asarray([str(i).strip() for i in expect_ids], dtype=str)
        if exp.shape != ids.shape or np.any(exp != ids):
            diff = np.flatnonzero(exp != ids) if exp.shape == ids.shape else [0]
            i = int(diff[0])
            raise SpectraCacheError(
                f"Zarr store {p}: its ids differ from the expected ones ({ids.size} vs "
                f"{exp.size} rows; first difference at row {i}: "
                f"{ids[i] if i < ids.size else None!r} != {exp[i] if i < exp.size else None!r})")
    return ZarrSpectra(path=p, arrays=arrays, apogee_ids=ids, catalogue=catalogue, attrs=attrs)


def write_zarr_cache(cache, out=None, *, chunk_rows: int = ZARR_CHUNK_ROWS,
                     progress: bool = True, force: bool = False) -> Path:
    """Write (or reuse) the Zarr copy of a memory-mapped spectra cache.

    Book: {ref}`sec-scaling-zarr`

    Parameters
    ----------
    cache : SpectraCache or path-like
        The cache (:func:`helpers.apogee.load_spectra_cache`) or its folder.
    out : path-like, optional
        Store folder; default ``<cache>/spectra.zarr``.
    chunk_rows : int
        Stars per Zarr chunk.
    progress : bool
        tqdm bar (quiet under ``CI`` or ``TQDM_DISABLE=1``).
    force : bool
        Rewrite even if ``out`` already holds the copy of this cache (same key).

    Returns
    -------
    pathlib.Path
        The store folder.
    """
    if not isinstance(cache, SpectraCache):
        cache = load_spectra_cache(cache)
    out = zarr_path(cache.path) if out is None else Path(out)
    key = cache.manifest["key"]
    if not force and out.is_dir():
        try:
            have = open_zarr_store(out)
            if have.attrs.get("source_key") == key and len(have) == len(cache):
                return out
        except SpectraCacheError:
            pass
    return write_zarr_store(
        out, {"flux": cache.flux, "error": cache.error}, cache.apogee_ids,
        catalogue=cache.catalogue, chunk_rows=chunk_rows, progress=progress,
        attrs={"source_key": key, "source_release": cache.manifest.get("release"),
               "id_column": cache.manifest.get("id_column", "APOGEE_ID"),
               "skipped": cache.manifest.get("skipped", [])})


def load_zarr_cache(path, expect_ids: Sequence[str] | None = None,
                    chunk_rows: int | None = None) -> ZarrSpectra:
    """Open the Zarr copy of a spectra cache (a store folder, or a cache folder holding one).

    Book: {ref}`sec-scaling-zarr`

    The store must be on the APOGEE grid; when it sits inside a memory-mapped cache, its
    recorded source key must be that cache's key (a stale copy of an older cache raises).

    Returns
    -------
    ZarrSpectra
        ``.flux``, ``.error`` as dask arrays, ``.catalogue``, ``.apogee_ids``.
    """
    p = Path(path)
    if (p / ZARR_NAME).is_dir():
        p = p / ZARR_NAME
    store = open_zarr_store(p, expect_ids=expect_ids, chunk_rows=chunk_rows)
    parent = read_manifest(p.parent) if p.name == ZARR_NAME else {}
    if parent and parent.get("key") != store.attrs.get("source_key"):
        raise SpectraCacheError(f"Zarr store {p} was copied from another cache (key "
                                f"{store.attrs.get('source_key')!r}) than the one it sits in "
                                f"({parent.get('key')!r}); rewrite it with write_zarr_cache")
    return store
