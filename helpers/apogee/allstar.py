"""The allStar catalogue: reader and writer (element order read from ``ELEM_SYMBOL``).

Book: {ref}`sec-survey-files`
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from helpers.apogee.fits_io import (ApogeeFormatError, astropy_fits, atomic_writeto, fits_column,
                                    native_column, open_fits, require_columns, table_hdu)
from helpers.apogee.grid import MISSING
from helpers.apogee.sas import release_layout

__all__ = ["DR16_ELEM_SYMBOL", "RSCA_ELEMENTS", "ALLSTAR_REQUIRED", "ALLSTAR_OPTIONAL",
           "elem_column", "read_allstar", "write_allstar"]


#: Element order of ``ELEM_SYMBOL`` in the DR16 allStar file (HDU3).  Code must read the
#: order from the file; this constant is for writing DR16-like synthetic files and for
#: tests.  The DR17 list is *not* given here: pass the file's own list instead.
DR16_ELEM_SYMBOL = (
    "C", "CI", "N", "O", "Na", "Mg", "Al", "Si", "P", "S", "K", "Ca", "Ti", "TiII", "V",
    "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Ge", "Rb", "Ce", "Nd", "Yb",
)


#: The 21 abundances used by de Mijolla & Ness (2022, RSCA).
RSCA_ELEMENTS = (
    "C", "CI", "N", "O", "Na", "Mg", "Al", "Si", "S", "K", "Ca", "Ti", "TiII", "V", "Cr",
    "Mn", "Fe", "Co", "Ni", "Cu", "Ce",
)


# Columns read by default from allStar HDU1.  REQUIRED ones must exist; the others are
# read when present.  Per-element <EL>_FE columns are added from ELEM_SYMBOL.
ALLSTAR_REQUIRED = ("APOGEE_ID", "TELESCOPE", "FIELD", "TEFF", "LOGG", "FE_H", "X_H",
                    "ASPCAPFLAG")


ALLSTAR_OPTIONAL = ("X_M", "M_H", "ALPHA_M", "STARFLAG", "AK_TARG", "VHELIO_AVG",
                    "VSCATTER", "SNR", "NVISITS", "VISITS")


def elem_column(symbol: str) -> str:
    """Name of the allStar per-element abundance column of an ELEM_SYMBOL entry.

    Parameters
    ----------
    symbol : str
        Element symbol as in ``ELEM_SYMBOL`` (e.g. ``'TiII'``).

    Returns
    -------
    str
        ``'<SYMBOL.upper()>_FE'`` ([X/Fe], dex), except ``'FE_H'`` for iron.

    Book: {ref}`sec-survey-files`
    """
    s = symbol.strip().upper()
    return "FE_H" if s == "FE" else f"{s}_FE"


def _read_elem_symbol(hdul, path) -> list[str]:
    hdu = table_hdu(hdul, 3, path, "allStar")
    if "ELEM_SYMBOL" not in hdu.columns.names:
        raise ApogeeFormatError(f"allStar file {path}: HDU3 has no ELEM_SYMBOL column "
                                f"(columns {hdu.columns.names})")
    col = np.asarray(hdu.data.field("ELEM_SYMBOL"))
    if col.ndim == 2:  # the SAS layout: one row holding the vector of symbols
        col = col[0]
    syms = [str(s.decode() if isinstance(s, bytes) else s).strip() for s in col]
    if not syms or any(not s for s in syms):
        raise ApogeeFormatError(f"allStar file {path}: ELEM_SYMBOL in HDU3 is empty or "
                                f"has blank entries: {syms}")
    if len(set(syms)) != len(syms):
        raise ApogeeFormatError(f"allStar file {path}: ELEM_SYMBOL has duplicates: {syms}")
    return syms


def read_allstar(path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read an allStar catalogue (DR16 or DR17 layout) into a DataFrame.

    The element order of the array columns ``X_H``, ``X_M`` (and ``X_H_ERR``,
    ``X_M_ERR``) is read from ``ELEM_SYMBOL`` in HDU3 of the file; it is never
    hard-coded.  Array columns whose length equals the number of elements are expanded
    into one column per element, ``<COL>_<EL>`` (e.g. ``X_H_Mg``, ``X_H_TiII``); other
    array columns into ``<COL>_<j>``.  String columns are stripped.  Values are kept as
    in the file: missing abundances stay -9999.99 (:data:`MISSING`).

    Parameters
    ----------
    path : str or path-like
        allStar FITS file (HDU1 the table, HDU3 ``ELEM_SYMBOL``).
    columns : sequence of str, optional
        HDU1 columns to read; every one must exist.  Default: ``APOGEE_ID, TELESCOPE,
        FIELD, TEFF, LOGG, FE_H, X_H, ASPCAPFLAG`` (required), plus ``X_M, M_H, ALPHA_M,
        STARFLAG, AK_TARG, VHELIO_AVG, VSCATTER, SNR, NVISITS, VISITS`` and the
        per-element ``<EL>_FE`` columns when present.

    Returns
    -------
    pandas.DataFrame, one row per allStar row
        ``df.attrs['elem_symbol']`` is the file's ELEM_SYMBOL list (in file order),
        ``df.attrs['source']`` the path.  TEFF in K, LOGG in dex (cgs), abundances in dex,
        VHELIO_AVG and VSCATTER in km/s, AK_TARG in mag.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ApogeeFormatError
        Corrupt FITS, missing HDU or column, ELEM_SYMBOL missing or inconsistent with the
        width of X_H.

    Book: {ref}`sec-survey-files`
    """
    p = Path(path)
    with open_fits(p, "allStar", memmap=True) as hdul:
        table = table_hdu(hdul, 1, p, "allStar")
        elems = _read_elem_symbol(hdul, p)
        available = list(table.columns.names)
        if columns is None:
            require_columns(ALLSTAR_REQUIRED, available, p, "allStar")
            wanted = list(ALLSTAR_REQUIRED)
            wanted += [c for c in ALLSTAR_OPTIONAL if c in available]
            wanted += [elem_column(e) for e in elems
                       if elem_column(e) in available and elem_column(e) not in wanted]
        else:
            wanted = list(dict.fromkeys(columns))
            require_columns(wanted, available, p, "allStar")
        data = table.data
        cols: dict[str, np.ndarray] = {}
        for name in wanted:
            arr = native_column(data.field(name))
            if arr.ndim == 1:
                cols[name] = arr
                continue
            if arr.ndim != 2:
                raise ApogeeFormatError(f"allStar file {p}: column {name} has shape "
                                        f"{arr.shape}; only scalar and 1-D array "
                                        f"columns are supported")
            if name in ("X_H", "X_M", "X_H_ERR", "X_M_ERR") and arr.shape[1] != len(elems):
                raise ApogeeFormatError(
                    f"allStar file {p}: column {name} has {arr.shape[1]} entries per row "
                    f"but ELEM_SYMBOL in HDU3 lists {len(elems)} elements")
            labels = elems if arr.shape[1] == len(elems) else range(arr.shape[1])
            for j, lab in enumerate(labels):
                cols[f"{name}_{lab}"] = arr[:, j]
    df = pd.DataFrame(cols)
    df.attrs["elem_symbol"] = list(elems)
    df.attrs["source"] = str(p)
    return df


def _collect_array(table, name: str, elems: Sequence[str], n: int):
    """X_H-like array (n, n_elem) from a mapping/DataFrame, or None if absent."""
    if isinstance(table, Mapping) and name in table:
        arr = np.asarray(table[name], dtype=np.float32)
    elif isinstance(table, pd.DataFrame) and name in table.columns:
        arr = np.stack(table[name].to_numpy()).astype(np.float32)
    else:
        keys = [f"{name}_{e}" for e in elems]
        have = [k in table for k in keys] if isinstance(table, Mapping) else \
            [k in table.columns for k in keys]
        if not any(have):
            return None
        if not all(have):
            missing = [k for k, h in zip(keys, have) if not h]
            raise ValueError(f"write_allstar: per-element columns {missing} missing for "
                             f"array {name} (elements {list(elems)})")
        arr = np.column_stack([np.asarray(table[k], dtype=np.float32) for k in keys])
    if arr.shape != (n, len(elems)):
        raise ValueError(f"write_allstar: {name} has shape {arr.shape}, expected "
                         f"({n}, {len(elems)}) for {len(elems)} elements")
    return arr


def write_allstar(path, table, elem_symbol: Sequence[str], release: str = "dr16") -> Path:
    """Write a DR16- or DR17-like allStar file (the synthetic survey's catalogue).

    Layout: HDU0 empty primary (``RELEASE`` keyword); HDU1 the star table with ``X_H``
    and ``X_M`` as array columns in ``elem_symbol`` order and one ``<EL>_FE`` column per
    element (``FE_H`` for iron); HDU2 a one-row table ``PARAM_SYMBOL``; HDU3 a one-row
    table with the ``ELEM_SYMBOL`` vector and ``ELEMTOH`` (1 where the element is fitted
    relative to H).  The file is written atomically (temporary file, then rename).

    Parameters
    ----------
    path : str or path-like
        Output file; parent directories are created.
    table : pandas.DataFrame or mapping of column name -> array
        Must contain ``APOGEE_ID``, ``TELESCOPE``, ``FIELD``, ``TEFF``, ``LOGG``,
        ``FE_H``, ``ASPCAPFLAG`` and ``X_H`` as an (n, n_elem) array or as columns
        ``X_H_<EL>`` (the form :func:`read_allstar` returns).  ``X_M`` likewise; when absent
        it is computed as ``X_H - M_H`` (``X_H - FE_H`` when there is no ``M_H``), keeping
        -9999.99 where X_H is missing.  Missing ``<EL>_FE`` columns are computed as
        ``X_H - FE_H`` (-9999.99 where either is missing).  Any other scalar columns are
        written as they are.
    elem_symbol : sequence of str
        Element order of the array columns (e.g. :data:`DR16_ELEM_SYMBOL` for DR16).  For a
        DR17-like file pass the DR17 list; it is written to HDU3 and readers use it.
    release : {'dr16', 'dr17'}
        Written as the ``RELEASE`` keyword of HDU0.

    Returns
    -------
    pathlib.Path
        The written file.

    Book: {ref}`sec-survey-files`
    """
    fits = astropy_fits()
    release_layout(release)
    elems = [str(e).strip() for e in elem_symbol]
    if not elems or len(set(elems)) != len(elems):
        raise ValueError(f"write_allstar: elem_symbol must be non-empty and unique, got "
                         f"{elems}")
    if isinstance(table, pd.DataFrame):
        names = list(table.columns)
    elif isinstance(table, Mapping):
        names = list(table.keys())
    else:
        raise TypeError("write_allstar: table must be a DataFrame or a mapping")
    base_required = ["APOGEE_ID", "TELESCOPE", "FIELD", "TEFF", "LOGG", "FE_H", "ASPCAPFLAG"]
    missing = [c for c in base_required if c not in names]
    if missing:
        raise ValueError(f"write_allstar: table is missing column(s) {missing}")
    n = len(np.asarray(table["APOGEE_ID"]))
    x_h = _collect_array(table, "X_H", elems, n)
    if x_h is None:
        raise ValueError("write_allstar: table has neither an X_H array column nor "
                         f"X_H_<EL> columns for elements {elems}")
    bad = x_h == np.float32(MISSING)
    x_m = _collect_array(table, "X_M", elems, n)
    if x_m is None:
        ref = np.asarray(table["M_H"] if "M_H" in names else table["FE_H"],
                         dtype=np.float32)
        x_m = np.where(bad | (ref == np.float32(MISSING))[:, None], np.float32(MISSING),
                       x_h - ref[:, None]).astype(np.float32)
    fe_h = np.asarray(table["FE_H"], dtype=np.float32)
    array_parts = {f"{a}_{e}" for a in ("X_H", "X_M") for e in elems} | {"X_H", "X_M"}
    cols = []
    written = set()
    for name in names:
        if name in array_parts or name in written:
            continue
        cols.append(fits_column(name, np.asarray(table[name])))
        written.add(name)
    cols.append(fits_column("X_H", x_h))
    cols.append(fits_column("X_M", x_m))
    for j, e in enumerate(elems):
        cname = elem_column(e)
        if cname in written:
            continue
        vals = np.where(bad[:, j] | (fe_h == np.float32(MISSING)), np.float32(MISSING),
                        x_h[:, j] - fe_h).astype(np.float32)
        cols.append(fits_column(cname, vals))
        written.add(cname)
    primary = fits.PrimaryHDU()
    primary.header["RELEASE"] = (release.lower(), "APOGEE data release layout")
    hdu1 = fits.BinTableHDU.from_columns(cols)
    params = ["TEFF", "LOGG", "VMICRO", "M_H", "C_M", "N_M", "ALPHA_M", "VSINI", "O"]
    hdu2 = fits.BinTableHDU.from_columns([
        fits.Column(name="PARAM_SYMBOL", format=f"{len(params) * 8}A", dim=f"(8,{len(params)})",
                    array=np.array([params], dtype="S8"))])
    width = max(len(e) for e in elems)
    elemtoh = np.array([[0 if e in ("C", "CI", "N", "O", "Fe") else 1 for e in elems]],
                       dtype=np.int16)
    hdu3 = fits.BinTableHDU.from_columns([
        fits.Column(name="ELEM_SYMBOL", format=f"{len(elems) * width}A",
                    dim=f"({width},{len(elems)})", array=np.array([elems], dtype=f"S{width}")),
        fits.Column(name="ELEMTOH", format=f"{len(elems)}I", array=elemtoh),
    ])
    return atomic_writeto(fits.HDUList([primary, hdu1, hdu2, hdu3]), path)
