"""The spectra cache: its on-disk format, its key, and small shared utilities.

An on-disk, memory-mappable cache of many APOGEE spectra.

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

Book: {ref}`sec-survey-files`
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["CACHE_FORMAT", "MANIFEST", "CATALOGUE", "IDS", "FLUX", "ERROR",
           "SpectraCacheError", "progress_bar", "fsync_path", "pid_alive",
           "remove_stale_temporaries", "ids_of", "catalogue_to_arrays", "json_safe",
           "cache_key", "is_complete_cache", "read_manifest"]


#: Format tag written to (and required in) every manifest.
CACHE_FORMAT = "stars-ml-book/spectra-cache/1"


MANIFEST = "manifest.json"


CATALOGUE = "catalogue.npz"


IDS = "apogee_ids.npy"


FLUX = "flux.npy"


ERROR = "error.npy"


CACHE_FILES = (MANIFEST, CATALOGUE, IDS, FLUX, ERROR)


class SpectraCacheError(ValueError):
    """A spectra cache is missing, incomplete, inconsistent or misaligned.

    Book: {ref}`sec-survey-files`
    """


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar counting spectra (``disable`` unless ``enabled``).

    Book: {ref}`sec-survey-files`
    """
    from tqdm.auto import tqdm  # on first use: in a Jupyter kernel without ipywidgets it warns
    return tqdm(total=total, desc=desc, unit="spectra", disable=not enabled,
                mininterval=0.5, smoothing=0.1)


def fsync_path(path: Path) -> None:
    """Flush a file or folder to disk (best effort: errors are ignored).

    Book: {ref}`sec-survey-files`
    """
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


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (one of another user counts as alive).

    Book: {ref}`sec-survey-files`
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary directories of builds whose process no longer exists.

    Book: {ref}`sec-survey-files`
    """
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for kind in ("building", "old"):
        for d in parent.glob(f".{out_dir.name}.{kind}-*"):
            try:
                pid = int(d.name.rsplit("-", 2)[-2])
            except (ValueError, IndexError):
                continue
            if pid != os.getpid() and not pid_alive(pid):
                shutil.rmtree(d, ignore_errors=True)


def ids_of(catalogue: pd.DataFrame, id_column: str) -> np.ndarray:
    """The stripped ``id_column`` of a catalogue as a str array; empty IDs raise SpectraCacheError.

    Book: {ref}`sec-survey-files`
    """
    if id_column not in catalogue.columns:
        raise SpectraCacheError(f"catalogue has no {id_column!r} column (columns: "
                                f"{list(catalogue.columns)[:20]}...)")
    ids = np.asarray(catalogue[id_column].astype(str).str.strip().to_numpy(), dtype=str)
    if np.any(ids == ""):
        raise SpectraCacheError(f"catalogue column {id_column!r} has empty IDs at rows "
                                f"{np.flatnonzero(ids == '')[:10].tolist()}")
    return ids


def catalogue_to_arrays(catalogue: pd.DataFrame) -> tuple[dict, list[dict]]:
    """A catalogue as plain numpy arrays (no pickle) and the column spec to rebuild it.

    Book: {ref}`sec-survey-files`
    """
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


def json_safe(obj):
    """``obj`` with everything JSON cannot hold turned into lists, numbers or strings.

    Book: {ref}`sec-survey-files`
    """
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, Mapping):
            return {str(k): json_safe(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple, np.ndarray)):
            return [json_safe(v) for v in list(obj)]
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

    Book: {ref}`sec-survey-files`
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
    extra = json.dumps(json_safe(key_extra), sort_keys=True)
    h.update(b"|extra|" + extra.encode())
    info = {"release": release, "n_ids": len(apogee_ids),
            "n_files": None if paths is None else len(paths),
            "n_files_missing": n_missing, "total_file_bytes": total_bytes,
            "key_extra": json_safe(key_extra)}
    return h.hexdigest(), info


def is_complete_cache(path) -> bool:
    """Whether ``path`` holds a complete cache (manifest present and well-formed).

    Book: {ref}`sec-survey-files`
    """
    p = Path(path)
    try:
        with open(p / MANIFEST) as fh:
            m = json.load(fh)
    except (OSError, ValueError):
        return False
    return m.get("format") == CACHE_FORMAT and m.get("complete") is True and \
        all((p / f).is_file() for f in CACHE_FILES)


def read_manifest(p: Path) -> dict:
    """The manifest of the cache folder ``p`` ({} if missing or unreadable).

    Book: {ref}`sec-survey-files`
    """
    try:
        with open(p / MANIFEST) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}
