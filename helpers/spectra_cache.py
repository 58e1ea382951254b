"""On-disk, memory-mappable cache of many APOGEE spectra.

A cache is one directory holding, for a selection of N stars::

    manifest.json     format, key, shapes, dtype, creation time, skipped-file report
    catalogue.npz     the catalogue table, one plain numpy array per column (no pickle)
    apogee_ids.npy    (N,) unicode: the APOGEE_ID of every row
    flux.npy          (N, 8575) float32: normalised flux, row i <-> catalogue row i
    error.npy         (N, 8575) float32: its 1-sigma error (1e10 at bad pixels)

``flux.npy`` and ``error.npy`` are standard ``.npy`` files, so ``np.load(...,
mmap_mode='r')`` maps them without reading them into memory.

Guarantees
----------
* **Streaming**: spectra are read in small batches (by worker processes when
  ``n_jobs > 1``) and written straight into the memory-mapped output; at most a few
  batches are ever held in memory.
* **Atomic**: everything is written into a hidden temporary directory next to the
  target (``.<name>.building-<pid>-<token>``), flushed, and renamed into place only when
  complete.  An exception (or a kill) midway leaves no directory at the target path, so
  nothing incomplete can be loaded as a cache.
* **Keyed**: the manifest records a SHA-256 key of what the cache was built from (release,
  APOGEE_IDs, each file's path, size and modification time, plus an optional caller key);
  :func:`build_spectra_cache` reuses an existing cache only when the key matches.
* **Aligned**: the cache stores the APOGEE_IDs; :func:`load_spectra_cache` checks them
  against the catalogue column and, if given, against the caller's expected IDs.

Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import apogee

__all__ = [
    "CACHE_FORMAT", "SpectraCacheError", "SpectraCache", "SpectraCacheWriter",
    "build_spectra_cache", "load_spectra_cache", "cache_key", "is_complete_cache",
]

#: Format tag written to (and required in) every manifest.
CACHE_FORMAT = "stars-ml-book/spectra-cache/1"
MANIFEST = "manifest.json"
CATALOGUE = "catalogue.npz"
IDS = "apogee_ids.npy"
FLUX = "flux.npy"
ERROR = "error.npy"
_CACHE_FILES = (MANIFEST, CATALOGUE, IDS, FLUX, ERROR)


class SpectraCacheError(ValueError):
    """A spectra cache is missing, incomplete, inconsistent or misaligned.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------

def _progress_enabled(progress: bool) -> bool:
    return bool(progress) and not os.environ.get("CI")


def _tqdm(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="spectra", disable=not enabled,
                mininterval=0.5, smoothing=0.1)


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary directories of builds whose process no longer exists."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for kind in ("building", "old"):
        for d in parent.glob(f".{out_dir.name}.{kind}-*"):
            try:
                pid = int(d.name.rsplit("-", 2)[-2])
            except (ValueError, IndexError):
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(d, ignore_errors=True)


def _ids_of(catalogue: pd.DataFrame, id_column: str) -> np.ndarray:
    if id_column not in catalogue.columns:
        raise SpectraCacheError(f"catalogue has no {id_column!r} column (columns: "
                                f"{list(catalogue.columns)[:20]}...)")
    ids = np.asarray(catalogue[id_column].astype(str).str.strip().to_numpy(), dtype=str)
    if np.any(ids == ""):
        raise SpectraCacheError(f"catalogue column {id_column!r} has empty IDs at rows "
                                f"{np.flatnonzero(ids == '')[:10].tolist()}")
    return ids


def _catalogue_to_arrays(catalogue: pd.DataFrame) -> tuple[dict, list[dict]]:
    arrays, spec = {}, []
    for i, name in enumerate(catalogue.columns):
        col = catalogue[name]
        if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
            if col.isna().any() and not pd.api.types.is_float_dtype(col.dtype):
                arr = col.to_numpy(dtype=np.float64)
            else:
                arr = col.to_numpy()
        else:
            arr = np.asarray(col.astype(str).to_numpy(), dtype=str)
        if arr.dtype.kind == "O":
            raise SpectraCacheError(f"catalogue column {name!r} has dtype {col.dtype} that "
                                    f"cannot be stored without pickling")
        key = f"c{i:04d}"
        arrays[key] = arr
        spec.append({"name": str(name), "key": key, "dtype": arr.dtype.str})
    return arrays, spec


def _json_safe(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, Mapping):
            return {str(k): _json_safe(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple, np.ndarray)):
            return [_json_safe(v) for v in list(obj)]
        if isinstance(obj, np.generic):
            return obj.item()
        return str(obj)


def cache_key(apogee_ids: Sequence[str], paths: Sequence | None = None,
              release: str | None = None, key_extra=None) -> tuple[str, dict]:
    """Key of a spectra cache: a SHA-256 of everything it is built from.

    Parameters
    ----------
    apogee_ids : sequence of str, length N
        Row IDs, in order.
    paths : sequence of path-like, length N, optional
        Source files; each contributes its path, size and modification time (ns), or
        ``None`` if it does not exist.
    release : str, optional
        Data release (``'dr16'``, ``'dr17'``, or e.g. ``'synthetic'``).
    key_extra : JSON-serialisable, optional
        Anything else the content depends on (e.g. the generator's parameters and seed).

    Returns
    -------
    key : str
        64 hex digits.
    info : dict
        Human-readable summary stored next to the key in the manifest.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    h = hashlib.sha256()
    h.update(CACHE_FORMAT.encode())
    h.update(f"|release={release}|n={len(apogee_ids)}|".encode())
    for i in apogee_ids:
        h.update(str(i).encode())
        h.update(b"\0")
    n_missing = 0
    total_bytes = 0
    if paths is not None:
        h.update(b"|files|")
        for p in paths:
            try:
                st = os.stat(p)
                total_bytes += st.st_size
                h.update(f"{os.fspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                n_missing += 1
                h.update(f"{os.fspath(p)}\0None\n".encode())
    extra = json.dumps(_json_safe(key_extra), sort_keys=True)
    h.update(b"|extra|" + extra.encode())
    info = {"release": release, "n_ids": len(apogee_ids),
            "n_files": None if paths is None else len(paths),
            "n_files_missing": n_missing, "total_file_bytes": total_bytes,
            "key_extra": _json_safe(key_extra)}
    return h.hexdigest(), info


def is_complete_cache(path) -> bool:
    """Whether ``path`` holds a complete cache (manifest present and well-formed).

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    p = Path(path)
    try:
        with open(p / MANIFEST) as fh:
            m = json.load(fh)
    except (OSError, ValueError):
        return False
    return m.get("format") == CACHE_FORMAT and m.get("complete") is True and \
        all((p / f).is_file() for f in _CACHE_FILES)


def _read_manifest(p: Path) -> dict:
    try:
        with open(p / MANIFEST) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------

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

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """

    def __init__(self, out_dir, catalogue: pd.DataFrame, *, key: str | None = None,
                 release: str | None = None, key_extra=None, key_info: dict | None = None,
                 id_column: str = "APOGEE_ID", n_pixels: int = apogee.N_PIXELS):
        if not isinstance(catalogue, pd.DataFrame):
            raise TypeError("SpectraCacheWriter: catalogue must be a pandas DataFrame")
        self.path = Path(out_dir)
        self.catalogue = catalogue.reset_index(drop=True)
        self.id_column = id_column
        self.ids = _ids_of(self.catalogue, id_column)
        self.n_rows = len(self.ids)
        self.n_pixels = int(n_pixels)
        if key is None:
            key, info = cache_key(self.ids, None, release, key_extra)
        else:
            info = {"release": release, "key_extra": _json_safe(key_extra)}
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
        from numpy.lib.format import open_memmap
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.path)
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

    def _temp_array_paths(self) -> tuple[Path, Path]:
        """The temporary flux and error ``.npy`` files (for workers writing directly)."""
        if self._tmp is None:
            raise RuntimeError("SpectraCacheWriter is not open")
        return self._tmp / FLUX, self._tmp / ERROR

    def _mark_written(self, rows) -> None:
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

    # -- finishing -----------------------------------------------------------------------
    def abort(self) -> None:
        """Discard everything written so far (the target is left untouched)."""
        self._flux = self._error = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _compact(self, keep: np.ndarray) -> None:
        """Rewrite flux/error keeping only ``keep`` rows, streaming in blocks."""
        from numpy.lib.format import open_memmap
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
            arrays, spec = _catalogue_to_arrays(catalogue)
            np.savez(self._tmp / CATALOGUE, **arrays)
            np.save(self._tmp / IDS, ids)
            manifest = {
                "format": CACHE_FORMAT,
                "complete": True,
                "key": self.key,
                "key_info": _json_safe(self.key_info),
                "release": self.release,
                "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(
                    timespec="seconds"),
                "n_stars": int(keep.sum()),
                "n_requested": int(self.n_rows),
                "n_pixels": self.n_pixels,
                "dtype": "float32",
                "id_column": self.id_column,
                "wavelength": {"CRVAL1": apogee.CRVAL1, "CDELT1": apogee.CDELT1,
                               "unit": "Angstrom (vacuum)"},
                "catalogue_columns": spec,
                "catalogue_attrs": _json_safe(dict(self.catalogue.attrs)),
                "skipped": [self._dropped[r] for r in sorted(self._dropped)],
                "files": {name: name for name in (CATALOGUE, IDS, FLUX, ERROR)},
            }
            with open(self._tmp / MANIFEST, "w") as fh:
                json.dump(manifest, fh, indent=1)
            for name in _CACHE_FILES:
                _fsync_path(self._tmp / name)
            _fsync_path(self._tmp)
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
        _fsync_path(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------

@dataclass
class SpectraCache:
    """A loaded spectra cache.

    Attributes
    ----------
    path : pathlib.Path
        Cache directory.
    catalogue : pandas.DataFrame, N rows
        The catalogue, row i describing spectrum i.
    flux : numpy.memmap, shape (N, 8575), float32
        Normalised flux (memory-mapped read-only by default).
    error : numpy.memmap, shape (N, 8575), float32
        1-sigma flux error (1e10 at bad pixels, 0 outside the chips).
    apogee_ids : numpy.ndarray of str, shape (N,)
    manifest : dict
        Contents of manifest.json (key, creation time, skipped-file report, ...).

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """

    path: Path
    catalogue: pd.DataFrame
    flux: np.ndarray
    error: np.ndarray
    apogee_ids: np.ndarray
    manifest: dict

    def __len__(self) -> int:
        return len(self.apogee_ids)

    @property
    def wavelength(self) -> np.ndarray:
        """Vacuum wavelength grid in Angstrom, shape (8575,), float64."""
        return apogee.wavelength_grid()

    @property
    def skipped(self) -> list[dict]:
        """Rows left out at build time: dicts with row, apogee_id, path, reason."""
        return list(self.manifest.get("skipped", []))


def load_spectra_cache(path, expect_ids: Sequence[str] | None = None,
                       mmap_mode: str | None = "r") -> SpectraCache:
    """Open a spectra cache and check that it is complete and aligned.

    Parameters
    ----------
    path : str or path-like
        Cache directory written by :func:`build_spectra_cache` or
        :class:`SpectraCacheWriter`.
    expect_ids : sequence of str, optional
        The APOGEE_IDs the caller expects, in order; a different length or any different
        entry raises :class:`SpectraCacheError` naming the first mismatch.
    mmap_mode : {'r', 'r+', 'c', None}
        Passed to ``np.load`` for flux and error; ``None`` reads them into memory.

    Returns
    -------
    SpectraCache

    Raises
    ------
    FileNotFoundError
        No directory at ``path``.
    SpectraCacheError
        Incomplete cache (no manifest, wrong format, missing file), shapes or dtype not as
        in the manifest, or IDs that disagree with the catalogue or ``expect_ids``.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    p = Path(path)
    if not p.is_dir():
        leftovers = sorted(p.parent.glob(f".{p.name}.building-*")) if p.parent.is_dir() \
            else []
        hint = (f"; {len(leftovers)} interrupted build(s) left {leftovers[0].name}, which is "
                f"not a cache") if leftovers else ""
        raise FileNotFoundError(f"no spectra cache at {p}{hint}")
    manifest = _read_manifest(p)
    if not manifest:
        raise SpectraCacheError(f"spectra cache {p}: no readable {MANIFEST}; the directory "
                                f"is not a complete cache")
    if manifest.get("format") != CACHE_FORMAT or manifest.get("complete") is not True:
        raise SpectraCacheError(f"spectra cache {p}: manifest format "
                                f"{manifest.get('format')!r} / complete="
                                f"{manifest.get('complete')!r}, expected {CACHE_FORMAT!r} "
                                f"and complete=true")
    missing = [f for f in _CACHE_FILES if not (p / f).is_file()]
    if missing:
        raise SpectraCacheError(f"spectra cache {p}: missing file(s) {missing}")
    n = int(manifest["n_stars"])
    n_pix = int(manifest["n_pixels"])
    try:
        flux = np.load(p / FLUX, mmap_mode=mmap_mode, allow_pickle=False)
        error = np.load(p / ERROR, mmap_mode=mmap_mode, allow_pickle=False)
        ids = np.load(p / IDS, allow_pickle=False)
        with np.load(p / CATALOGUE, allow_pickle=False) as z:
            cols = {c["name"]: z[c["key"]] for c in manifest["catalogue_columns"]}
    except (OSError, ValueError, KeyError) as exc:
        raise SpectraCacheError(f"spectra cache {p}: cannot read its arrays ({exc})") from exc
    for name, arr in (("flux", flux), ("error", error)):
        if arr.shape != (n, n_pix) or arr.dtype != np.float32:
            raise SpectraCacheError(f"spectra cache {p}: {name}.npy has shape {arr.shape} "
                                    f"dtype {arr.dtype}, manifest says ({n}, {n_pix}) "
                                    f"float32")
    catalogue = pd.DataFrame(cols)
    catalogue.attrs.update(manifest.get("catalogue_attrs", {}))
    if ids.shape != (n,) or len(catalogue) != n:
        raise SpectraCacheError(f"spectra cache {p}: {ids.shape[0]} ids and "
                                f"{len(catalogue)} catalogue rows, manifest says {n}")
    id_col = manifest.get("id_column", "APOGEE_ID")
    cat_ids = _ids_of(catalogue, id_col)
    _check_same_ids(ids, cat_ids, f"spectra cache {p}: stored apogee_ids vs catalogue "
                                  f"column {id_col}")
    if expect_ids is not None:
        exp = np.asarray([str(i).strip() for i in expect_ids], dtype=str)
        _check_same_ids(ids, exp, f"spectra cache {p}: stored apogee_ids vs expect_ids")
    return SpectraCache(path=p, catalogue=catalogue, flux=flux, error=error, apogee_ids=ids,
                        manifest=manifest)


def _check_same_ids(have: np.ndarray, want: np.ndarray, what: str) -> None:
    if have.shape != want.shape:
        raise SpectraCacheError(f"{what}: {have.shape[0]} vs {want.shape[0]} rows")
    diff = np.flatnonzero(have != want)
    if diff.size:
        i = int(diff[0])
        raise SpectraCacheError(f"{what}: {diff.size} rows differ, first at row {i} "
                                f"({have[i]!r} != {want[i]!r}); rows would be misaligned")


# ---------------------------------------------------------------------------------------
# Building from aspcapStar files
# ---------------------------------------------------------------------------------------

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
        flux = np.zeros((k, apogee.N_PIXELS), dtype=np.float32)
        error = np.zeros((k, apogee.N_PIXELS), dtype=np.float32)
    errors: list = [None] * k
    for j, path in enumerate(paths):
        try:
            s = apogee.read_aspcapstar(path, read_table=False)
        except (apogee.ApogeeFormatError, OSError) as exc:
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
        raise apogee.ApogeeFormatError(message)
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

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
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
        Show a tqdm progress bar (always off when the environment variable ``CI`` is set).
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

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    if not isinstance(catalogue, pd.DataFrame):
        raise TypeError("build_spectra_cache: catalogue must be a pandas DataFrame")
    catalogue = catalogue.reset_index(drop=True)
    ids = _ids_of(catalogue, id_column)
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
        paths = [apogee.aspcapstar_path(apogee_root, release, t, f, i)
                 for t, f, i in zip(tel, fld, ids)]
    paths = [os.fspath(p) for p in paths]
    if len(paths) != len(ids):
        raise ValueError(f"build_spectra_cache: {len(paths)} paths for {len(ids)} "
                         f"catalogue rows")
    key, info = cache_key(ids, paths, release, key_extra)
    info["skip_bad"] = bool(skip_bad)
    out = Path(out_dir)
    if not force and is_complete_cache(out) and _read_manifest(out).get("key") == key:
        return load_spectra_cache(out)
    n_jobs = default_n_jobs() if n_jobs is None else max(1, int(n_jobs))
    batch_size = max(1, int(batch_size))
    batches = [(s, paths[s:s + batch_size]) for s in range(0, len(paths), batch_size)]
    bar = _tqdm(len(paths), f"cache {out.name}", _progress_enabled(progress))
    writer = SpectraCacheWriter(out, catalogue, key=key, release=release,
                                key_info=info, id_column=id_column)
    try:
        with writer, contextlib.closing(_iter_batches(
                batches, n_jobs, executor,
                writer._temp_array_paths() if _WORKERS_WRITE else None)) as results:
            row = 0
            for flux, error, errors in results:
                k = len(errors)
                if any(e is not None for e in errors):
                    if not skip_bad:
                        j = next(j for j, e in enumerate(errors) if e is not None)
                        _raise_read_error(*errors[j])
                    for j, e in enumerate(errors):
                        if e is not None:
                            writer.drop(row + j, e[1], paths[row + j])
                    good = np.array([e is None for e in errors])
                    if good.any():
                        if flux is None:
                            writer._mark_written(row + np.flatnonzero(good))
                        else:
                            writer.write(row + np.flatnonzero(good), flux[good],
                                         error[good])
                elif flux is None:  # the workers wrote the rows themselves
                    writer._mark_written(slice(row, row + k))
                else:
                    writer.write(slice(row, row + k), flux, error)
                row += k
                bar.update(k)
            if len(writer._dropped) == len(ids) and len(ids) > 0:
                raise SpectraCacheError(
                    f"build_spectra_cache: all {len(ids)} files were bad; first: "
                    f"{writer._dropped[0]['path']}: {writer._dropped[0]['reason']}")
    finally:
        bar.close()
    return load_spectra_cache(out, expect_ids=[i for r, i in enumerate(ids)
                                               if r not in writer._dropped])
