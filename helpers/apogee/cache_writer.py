"""Writing a spectra cache chunk by chunk, atomically (:class:`SpectraCacheWriter`).

Book: {ref}`sec-survey-files`
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from helpers.apogee.cache_format import (CACHE_FILES, CACHE_FORMAT, CATALOGUE, ERROR, FLUX, IDS,
                                         MANIFEST, SpectraCacheError, cache_key,
                                         catalogue_to_arrays, fsync_path, ids_of, json_safe,
                                         remove_stale_temporaries)
from helpers.apogee.grid import CDELT1, CRVAL1, N_PIXELS
from helpers.memory import release_pages

__all__ = ["SpectraCacheWriter"]


class SpectraCacheWriter:
    """Write a spectra cache chunk by chunk; commit on success, discard on error.

    Use as a context manager::

        with SpectraCacheWriter(out_dir, catalogue, key_extra={"seed": 1}) as w:
            for start in range(0, n, 1000):
                w.write(slice(start, start + 1000), flux_chunk, error_chunk)
        # committed here: out_dir now holds a complete cache

    Every row must be written (or dropped with :meth:`drop`) before the block ends;
    otherwise, or if the block raises, the temporary directory is removed and ``out_dir``
    is left untouched.

    Parameters
    ----------
    out_dir : str or path-like
        Final cache directory.  If it exists it must be a spectra cache (or empty); it is
        replaced atomically on commit.
    catalogue : pandas.DataFrame, N rows
        One row per spectrum, with an ``id_column`` column.
    key : str, optional
        Cache key; default computed by :func:`cache_key` from the IDs, ``release`` and
        ``key_extra``.
    release : str, optional
        Recorded in the manifest (e.g. ``'dr16'``, ``'synthetic'``).
    key_extra : JSON-serialisable, optional
        Caller's description of what the content depends on (goes into the key).
    key_info : dict, optional
        Extra human-readable information stored in the manifest.
    id_column : str
        Catalogue column holding the star IDs (default ``'APOGEE_ID'``).
    n_pixels : int
        Row length (default 8575, the APOGEE grid).

    Attributes
    ----------
    path : pathlib.Path
        ``out_dir``.
    n_rows : int
        N.

    Book: {ref}`sec-survey-files`
    """

    def __init__(self, out_dir, catalogue: pd.DataFrame, *, key: str | None = None,
                 release: str | None = None, key_extra=None, key_info: dict | None = None,
                 id_column: str = "APOGEE_ID", n_pixels: int = N_PIXELS):
        if not isinstance(catalogue, pd.DataFrame):
            raise TypeError("SpectraCacheWriter: catalogue must be a pandas DataFrame")
        self.path = Path(out_dir)
        self.catalogue = catalogue.reset_index(drop=True)
        self.id_column = id_column
        self.ids = ids_of(self.catalogue, id_column)
        self.n_rows = len(self.ids)
        self.n_pixels = int(n_pixels)
        if key is None:
            key, info = cache_key(self.ids, None, release, key_extra)
        else:
            info = {"release": release, "key_extra": json_safe(key_extra)}
        self.key = key
        self.key_info = {**info, **(key_info or {})}
        self.release = release
        self._tmp: Path | None = None
        self._flux = self._error = None
        self._written = np.zeros(self.n_rows, dtype=bool)
        self._dropped: dict[int, dict] = {}
        self._check_target()

    # -- set-up ----------------------------------------------------------------------
    def _check_target(self) -> None:
        p = self.path
        if p.exists():
            if not p.is_dir():
                raise SpectraCacheError(f"cache target {p} exists and is not a directory")
            contents = [c.name for c in p.iterdir()]
            if contents and MANIFEST not in contents:
                raise SpectraCacheError(
                    f"cache target {p} exists and is not a spectra cache (no {MANIFEST}); "
                    f"refusing to replace it")

    def open(self) -> "SpectraCacheWriter":
        """Create the temporary directory and the memory-mapped outputs."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        token = secrets.token_hex(4)
        self._tmp = self.path.parent / f".{self.path.name}.building-{os.getpid()}-{token}"
        self._tmp.mkdir()
        shape = (self.n_rows, self.n_pixels)
        self._flux = open_memmap(self._tmp / FLUX, mode="w+", dtype=np.float32, shape=shape)
        self._error = open_memmap(self._tmp / ERROR, mode="w+", dtype=np.float32, shape=shape)
        return self

    def __enter__(self) -> "SpectraCacheWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    # -- writing -----------------------------------------------------------------------
    def _rows(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            idx = np.arange(self.n_rows)[rows]
        else:
            idx = np.atleast_1d(np.asarray(rows))
            if idx.dtype.kind not in "iu":
                raise TypeError(f"rows must be a slice or integer indices, got {idx.dtype}")
            if idx.size and (idx.min() < 0 or idx.max() >= self.n_rows):
                raise IndexError(f"rows out of range 0..{self.n_rows - 1}")
        return idx

    def write(self, rows, flux, error) -> None:
        """Write spectra for some rows.

        Parameters
        ----------
        rows : slice, int or array of int
            Catalogue rows these spectra belong to (k rows).
        flux, error : array_like, shape (k, n_pixels) (or (n_pixels,) for one row)
            Normalised flux and its 1-sigma error; converted to float32.  Must be finite.
        """
        if self._tmp is None:
            raise RuntimeError("SpectraCacheWriter.write called before open()/with")
        idx = self._rows(rows)
        f = np.asarray(flux, dtype=np.float32).reshape(len(idx), -1) if idx.size else None
        e = np.asarray(error, dtype=np.float32).reshape(len(idx), -1) if idx.size else None
        if not idx.size:
            return
        for name, arr in (("flux", f), ("error", e)):
            if arr.shape != (len(idx), self.n_pixels):
                raise ValueError(f"write: {name} has shape {arr.shape}, expected "
                                 f"({len(idx)}, {self.n_pixels})")
            bad = ~np.isfinite(arr)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise ValueError(f"write: {name} for star {self.ids[idx[r]]} (row "
                                 f"{idx[r]}) is non-finite at pixel {c}")
        if isinstance(rows, slice) and idx.size and np.all(np.diff(idx) == 1):
            sl = slice(int(idx[0]), int(idx[-1]) + 1)
            self._flux[sl] = f
            self._error[sl] = e
        else:
            self._flux[idx] = f
            self._error[idx] = e
        self._written[idx] = True

    def temp_array_paths(self) -> tuple[Path, Path]:
        """The temporary flux and error ``.npy`` files (for workers writing directly)."""
        if self._tmp is None:
            raise RuntimeError("SpectraCacheWriter is not open")
        return self._tmp / FLUX, self._tmp / ERROR

    def mark_written(self, rows) -> None:
        """Record rows written directly into the temporary files by workers."""
        self._written[self._rows(rows)] = True

    def drop(self, row: int, reason: str, path=None) -> None:
        """Leave one row out of the cache (it is removed from the catalogue too).

        Parameters
        ----------
        row : int
            Catalogue row.
        reason : str
            Why; goes into the manifest's ``skipped`` report.
        path : path-like, optional
            The offending file, for the report.
        """
        row = int(row)
        self._dropped[row] = {"row": row, "apogee_id": str(self.ids[row]),
                              "path": None if path is None else os.fspath(path),
                              "reason": str(reason)}
        self._written[row] = False

    @property
    def dropped(self) -> dict:
        """The rows left out so far (:meth:`drop`): row -> ``{'row', 'apogee_id', 'path',
        'reason'}``; read it, do not change it."""
        return self._dropped

    # -- finishing -----------------------------------------------------------------------
    def release_pages(self) -> None:
        """Flush the rows written so far and drop them from this process's resident memory.

        Book: {ref}`sec-survey-files`

        A writer of 18 GB of spectra would otherwise hold every page it wrote until the
        kernel needs them back (see :func:`helpers.memory.release_pages`).
        """
        for arr in (self._flux, self._error):
            if arr is not None:
                release_pages(arr, flush=True)

    def abort(self) -> None:
        """Discard everything written so far (the target is left untouched)."""
        self._flux = self._error = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _compact(self, keep: np.ndarray) -> None:
        """Rewrite flux/error keeping only ``keep`` rows, streaming in blocks."""
        n_keep = int(keep.sum())
        for name, src in ((FLUX, self._flux), (ERROR, self._error)):
            dst_path = self._tmp / f"{name}.compact"
            dst = open_memmap(dst_path, mode="w+", dtype=np.float32,
                              shape=(n_keep, self.n_pixels))
            rows = np.flatnonzero(keep)
            for s in range(0, n_keep, 2048):
                dst[s:s + 2048] = src[rows[s:s + 2048]]
            dst.flush()
            del dst
            os.replace(dst_path, self._tmp / name)
        self._flux = self._error = None

    def commit(self) -> Path:
        """Finish the cache and move it into place atomically.

        Returns
        -------
        pathlib.Path
            The cache directory.
        """
        if self._tmp is None:
            raise RuntimeError("SpectraCacheWriter.commit: nothing open")
        try:
            done = self._written | np.isin(np.arange(self.n_rows), list(self._dropped))
            if not done.all():
                missing = np.flatnonzero(~done)
                raise SpectraCacheError(
                    f"cache {self.path}: {missing.size} of {self.n_rows} rows were never "
                    f"written (first rows {missing[:10].tolist()}); nothing committed")
            keep = self._written.copy()
            self._flux.flush()
            self._error.flush()
            if self._dropped:
                self._compact(keep)
            else:
                self._flux = self._error = None
            catalogue = self.catalogue.loc[keep].reset_index(drop=True)
            ids = self.ids[keep]
            arrays, spec = catalogue_to_arrays(catalogue)
            np.savez(self._tmp / CATALOGUE, **arrays)
            np.save(self._tmp / IDS, ids)
            manifest = {
                "format": CACHE_FORMAT,
                "complete": True,
                "key": self.key,
                "key_info": json_safe(self.key_info),
                "release": self.release,
                "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(
                    timespec="seconds"),
                "n_stars": int(keep.sum()),
                "n_requested": int(self.n_rows),
                "n_pixels": self.n_pixels,
                "dtype": "float32",
                "id_column": self.id_column,
                "wavelength": {"CRVAL1": CRVAL1, "CDELT1": CDELT1,
                               "unit": "Angstrom (vacuum)"},
                "catalogue_columns": spec,
                "catalogue_attrs": json_safe(dict(self.catalogue.attrs)),
                "skipped": [self._dropped[r] for r in sorted(self._dropped)],
                "files": {name: name for name in (CATALOGUE, IDS, FLUX, ERROR)},
            }
            with open(self._tmp / MANIFEST, "w") as fh:
                json.dump(manifest, fh, indent=1)
            for name in CACHE_FILES:
                fsync_path(self._tmp / name)
            fsync_path(self._tmp)
            self._swap_into_place()
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        return self.path

    def _swap_into_place(self) -> None:
        target = self.path
        old = None
        if target.exists():
            self._check_target()
            old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(target, old)
        try:
            os.replace(self._tmp, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)
            raise
        fsync_path(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
