"""FITS utilities shared by the APOGEE readers and writers.

Book: {ref}`sec-survey-files`

Every failure to read becomes an :class:`ApogeeFormatError` (a ``ValueError``) or a
``FileNotFoundError`` whose message names the file and the problem; every write goes through a
temporary file renamed into place.  astropy is imported when a file is first read or written
(:func:`astropy_fits`), which keeps ``import helpers.apogee`` light.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["ApogeeFormatError", "astropy_fits", "open_fits", "native_column", "table_hdu",
           "require_columns", "dataframe_from_table", "fits_column", "atomic_writeto",
           "read_simple_table", "write_simple_table"]


class ApogeeFormatError(ValueError):
    """A file does not have the APOGEE layout it should have.

    The message always names the file and what was expected.

    Book: {ref}`sec-survey-files`
    """


def astropy_fits():
    """``astropy.io.fits``, imported on first use (keeps ``import helpers.apogee`` light).

    Book: {ref}`sec-survey-files`
    """
    from astropy.io import fits  # local import: keeps `import helpers.apogee` light
    return fits


def open_fits(path, what: str, **kwargs):
    """Open a FITS file, turning every failure into an error naming the file.

    Book: {ref}`sec-survey-files`
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} file {p}: not found")
    if p.is_dir():
        raise ApogeeFormatError(f"{what} file {p}: is a directory, expected a FITS file")
    if not os.access(p, os.R_OK):
        raise PermissionError(f"{what} file {p}: not readable (permission denied)")
    fits = astropy_fits()
    try:
        hdul = fits.open(p, **kwargs)
        len(hdul)  # forces astropy to read every header: catches truncated files now
    except OSError as exc:
        raise ApogeeFormatError(f"{what} file {p}: not a readable FITS file ({exc})") from exc
    except Exception as exc:  # astropy raises assorted errors on corrupt headers
        raise ApogeeFormatError(f"{what} file {p}: corrupt FITS ({type(exc).__name__}: "
                                f"{exc})") from exc
    return hdul


def native_column(arr: np.ndarray) -> np.ndarray:
    """Copy of a FITS column in native byte order; strings decoded and stripped.

    Book: {ref}`sec-survey-files`
    """
    arr = np.asarray(arr)
    if arr.dtype.kind in "SU":
        out = np.char.strip(arr.astype(str))
        return out
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.array(arr, copy=True)


def table_hdu(hdul, index: int, path, what: str):
    """HDU ``index`` of an open file, which must be a table; errors name the file.

    Book: {ref}`sec-survey-files`
    """
    if len(hdul) <= index:
        raise ApogeeFormatError(f"{what} file {path}: has {len(hdul)} HDUs, expected a "
                                f"table in HDU{index}")
    hdu = hdul[index]
    if not hasattr(hdu, "columns"):
        raise ApogeeFormatError(f"{what} file {path}: HDU{index} is not a table")
    return hdu


def require_columns(names: Iterable[str], available: Sequence[str], path, what: str) -> None:
    """Raise ApogeeFormatError naming the file if any of ``names`` is not ``available``.

    Book: {ref}`sec-survey-files`
    """
    missing = [n for n in names if n not in available]
    if missing:
        raise ApogeeFormatError(f"{what} file {path}: missing column(s) {missing} "
                                f"(file has {len(available)} columns)")


def dataframe_from_table(hdu, names: Sequence[str]) -> pd.DataFrame:
    """Columns ``names`` of a FITS table as a DataFrame (array columns split into ``NAME_j``).

    Book: {ref}`sec-survey-files`
    """
    data = hdu.data
    cols = {}
    for n in names:
        arr = native_column(data.field(n))
        if arr.ndim > 1:
            for j in range(arr.shape[1]):
                cols[f"{n}_{j}"] = arr[:, j]
        else:
            cols[n] = arr
    return pd.DataFrame(cols)


def fits_column(name: str, values) -> "object":
    """An astropy Column for a 1-D (or 2-D: array column) numpy array.

    Book: {ref}`sec-survey-files`
    """
    fits = astropy_fits()
    arr = np.asarray(values)
    if arr.dtype.kind in "OUS" or pd.api.types.is_string_dtype(arr.dtype):
        strs = np.asarray(values, dtype=str)
        width = max(1, int(np.char.str_len(strs).max()) if strs.size else 1)
        return fits.Column(name=name, format=f"{width}A", array=np.char.encode(strs, "ascii"))
    kinds = {"f": {4: "E", 8: "D"}, "i": {1: "I", 2: "I", 4: "J", 8: "K"},
             "u": {1: "B", 2: "J", 4: "K", 8: "K"}, "b": {1: "L"}}
    try:
        code = kinds[arr.dtype.kind][arr.dtype.itemsize]
    except KeyError as exc:
        raise TypeError(f"column {name!r}: cannot write dtype {arr.dtype} to FITS") from exc
    if arr.dtype.kind == "u":
        arr = arr.astype(np.int64 if arr.dtype.itemsize >= 4 else np.int32)
    if arr.ndim == 2:
        return fits.Column(name=name, format=f"{arr.shape[1]}{code}", array=arr)
    return fits.Column(name=name, format=code, array=arr)


def atomic_writeto(hdul, path) -> Path:
    """Write an HDUList to ``path`` through a temporary file and os.replace.

    Book: {ref}`sec-survey-files`
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        hdul.writeto(tmp, overwrite=True, output_verify="exception")
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def read_simple_table(path, required: Sequence[str], what: str) -> pd.DataFrame:
    """A one-table FITS file (HDU1) as a DataFrame, checking the ``required`` columns.

    Book: {ref}`sec-survey-files`
    """
    p = Path(path)
    with open_fits(p, what, memmap=True) as hdul:
        hdu = table_hdu(hdul, 1, p, what)
        names = list(hdu.columns.names)
        require_columns(required, names, p, what)
        df = dataframe_from_table(hdu, names)
    df.attrs["source"] = str(p)
    return df


def write_simple_table(path, table, required: Sequence[str], what: str) -> Path:
    """Write ``table`` as a one-table FITS file (HDU1), atomically; ``required`` columns checked.

    Book: {ref}`sec-survey-files`
    """
    fits = astropy_fits()
    df = pd.DataFrame(table)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"write {what}: table is missing column(s) {missing}")
    cols = [fits_column(c, df[c].to_numpy()) for c in df.columns]
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)])
    return atomic_writeto(hdul, path)
