"""APOGEE DR16/DR17 file formats: wavelength grid, bitmasks, paths, readers and writers.

Everything the book reads from (or writes to look like) the SDSS Science Archive Server
(SAS) goes through this module:

* the log-linear wavelength grid of 8,575 pixels and its three detector chips;
* the ``ASPCAPFLAG`` and ``APOGEE_PIXMASK`` bit names;
* paths of ``allStar`` and ``aspcapStar`` files in the SAS layout, so that one directory
  (``apogee_root``) pointed at a DR16 or a DR17 mirror works unmodified;
* readers and writers for ``allStar`` (element order read from ``ELEM_SYMBOL`` in HDU3,
  never hard-coded), ``aspcapStar`` (flux, error, best-fit model) and the OCCAM DR16
  member and cluster catalogues.

Every reader checks what it reads and raises :class:`ApogeeFormatError` (a ``ValueError``)
whose message names the file and the problem.  Missing files raise ``FileNotFoundError``
naming the file.  Nothing is silently replaced by NaN.

Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "N_PIXELS", "CRVAL1", "CDELT1", "CRPIX1", "CTYPE1", "MISSING",
    "BAD_PIXEL_FLUX", "BAD_PIXEL_ERROR",
    "CHIPS", "DR16_ELEM_SYMBOL", "RSCA_ELEMENTS", "ASPCAPFLAG_BITS", "PIXMASK_BITS",
    "RELEASES", "ApogeeFormatError", "AspcapStar",
    "wavelength_grid", "chip_mask", "flag_set", "flag_names",
    "allstar_path", "aspcapstar_path", "elem_column",
    "read_allstar", "write_allstar", "read_aspcapstar", "write_aspcapstar",
    "read_occam_members", "read_occam_clusters",
    "write_occam_members", "write_occam_clusters",
]

# ---------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------

#: Number of pixels of an APOGEE combined (apStar/aspcapStar) spectrum.
N_PIXELS = 8575
#: log10 of the wavelength (Angstrom) of pixel 0.
CRVAL1 = 4.179
#: Step in log10(wavelength / Angstrom) per pixel.
CDELT1 = 6e-6
#: FITS reference pixel (1-based) of CRVAL1.
CRPIX1 = 1
#: FITS axis type of the grid.
CTYPE1 = "LOG-LINEAR"
#: Sentinel of a missing abundance or probability in allStar and OCCAM files.
MISSING = -9999.99
#: Flux written for a bad pixel in an aspcapStar file.
BAD_PIXEL_FLUX = 1e-4
#: Error written for a bad pixel in an aspcapStar file.
BAD_PIXEL_ERROR = 1e10

#: The three detector chips as 0-based python slices into the 8,575-pixel grid
#: (7,514 pixels in all).  aspcapStar flux is zero outside them.
CHIPS = {
    "blue": slice(246, 3274),
    "green": slice(3585, 6080),
    "red": slice(6344, 8335),
}

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

#: ``APOGEE_ASPCAPFLAG`` bit names (DR16/DR17 definitions of the sdss/apogee bitmask
#: module).  Bits 0-31 are common to DR16 and DR17; bits 32-36, 40 and 41 exist in the
#: 64-bit DR17 flag only.  Bit 15 is unused.
ASPCAPFLAG_BITS = {
    "TEFF_WARN": 0, "LOGG_WARN": 1, "VMICRO_WARN": 2, "M_H_WARN": 3, "ALPHA_M_WARN": 4,
    "C_M_WARN": 5, "N_M_WARN": 6, "STAR_WARN": 7, "CHI2_WARN": 8, "COLORTE_WARN": 9,
    "ROTATION_WARN": 10, "SN_WARN": 11, "SPEC_HOLE_WARN": 12, "ATMOS_HOLE_WARN": 13,
    "VSINI_WARN": 14,
    "TEFF_BAD": 16, "LOGG_BAD": 17, "VMICRO_BAD": 18, "M_H_BAD": 19, "ALPHA_M_BAD": 20,
    "C_M_BAD": 21, "N_M_BAD": 22, "STAR_BAD": 23, "CHI2_BAD": 24, "COLORTE_BAD": 25,
    "ROTATION_BAD": 26, "SN_BAD": 27, "SPEC_HOLE_BAD": 28, "ATMOS_HOLE_BAD": 29,
    "VSINI_BAD": 30, "NO_ASPCAP_RESULT": 31,
    # DR17 only
    "MISSING_APSTAR": 32, "NO_GRID": 33, "BAD_FRAC_LOWSNR": 34, "BAD_FRAC_BADPIX": 35,
    "FERRE_FAIL": 36, "PROBLEM_TARGET": 40, "MULTIPLE_SUSPECT": 41,
}

#: ``APOGEE_PIXMASK`` bit names (bits 0-13).
PIXMASK_BITS = {
    "BADPIX": 0, "CRPIX": 1, "SATPIX": 2, "UNFIXABLE": 3, "BADDARK": 4, "BADFLAT": 5,
    "BADERR": 6, "NOSKY": 7, "LITTROW_GHOST": 8, "PERSIST_HIGH": 9, "PERSIST_MED": 10,
    "PERSIST_LOW": 11, "SIG_SKYLINE": 12, "SIG_TELLURIC": 13,
}

#: SAS sub-directories and file-name tags of each supported data release.
RELEASES = {
    "dr16": {
        "aspcap_dir": ("dr16", "apogee", "spectro", "aspcap", "r12", "l33"),
        "allstar": "allStar-r12-l33.fits",
        "star_prefix": "aspcapStar-r12-",
    },
    "dr17": {
        "aspcap_dir": ("dr17", "apogee", "spectro", "aspcap", "dr17", "synspec_rev1"),
        "allstar": "allStar-dr17-synspec_rev1.fits",
        "star_prefix": "aspcapStar-dr17-",
    },
}

# Columns read by default from allStar HDU1.  REQUIRED ones must exist; the others are
# read when present.  Per-element <EL>_FE columns are added from ELEM_SYMBOL.
ALLSTAR_REQUIRED = ("APOGEE_ID", "TELESCOPE", "FIELD", "TEFF", "LOGG", "FE_H", "X_H",
                    "ASPCAPFLAG")
ALLSTAR_OPTIONAL = ("X_M", "M_H", "ALPHA_M", "STARFLAG", "AK_TARG", "VHELIO_AVG",
                    "VSCATTER", "SNR", "NVISITS", "VISITS")

OCCAM_MEMBER_REQUIRED = ("CLUSTER", "APOGEE_ID", "VHELIO_AVG", "FE_H", "RV_PROB",
                         "FEH_PROB", "PM_PROB", "CG_PROB")
OCCAM_CLUSTER_REQUIRED = ("NAME", "RV", "FE_H", "NUM_STARS", "QUAL")


class ApogeeFormatError(ValueError):
    """A file does not have the APOGEE layout it should have.

    The message always names the file and what was expected.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """


# ---------------------------------------------------------------------------------------
# Grid, chips and bits
# ---------------------------------------------------------------------------------------

def wavelength_grid() -> np.ndarray:
    """Vacuum wavelengths of the APOGEE pixel grid.

    Returns
    -------
    numpy.ndarray, shape (8575,), float64
        ``10**(CRVAL1 + CDELT1 * i)`` for ``i = 0..8574``, vacuum Angstrom
        (15100.80 to 16999.81 A).

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    return 10.0 ** (CRVAL1 + CDELT1 * np.arange(N_PIXELS, dtype=np.float64))


def chip_mask() -> np.ndarray:
    """Which pixels of the grid fall on one of the three detector chips.

    Returns
    -------
    numpy.ndarray, shape (8575,), bool
        True for the 7,514 pixels inside :data:`CHIPS`.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    mask = np.zeros(N_PIXELS, dtype=bool)
    for sl in CHIPS.values():
        mask[sl] = True
    return mask


def _bit_of(name: str, bits: Mapping[str, int] | None) -> tuple[int, str]:
    if bits is not None:
        table, label = bits, "the given bit table"
    elif name in ASPCAPFLAG_BITS:
        table, label = ASPCAPFLAG_BITS, "ASPCAPFLAG_BITS"
    elif name in PIXMASK_BITS:
        table, label = PIXMASK_BITS, "PIXMASK_BITS"
    else:
        raise KeyError(f"unknown flag name {name!r}: expected one of ASPCAPFLAG_BITS "
                       f"{sorted(ASPCAPFLAG_BITS)} or PIXMASK_BITS {sorted(PIXMASK_BITS)}")
    if name not in table:
        raise KeyError(f"unknown flag name {name!r} in {label}: expected one of "
                       f"{sorted(table)}")
    return table[name], label


def flag_set(values, name: str, bits: Mapping[str, int] | None = None) -> np.ndarray:
    """Whether the named bit is set in integer bitmask values.

    Parameters
    ----------
    values : array_like of int, any shape
        ``ASPCAPFLAG`` values (one per star) or ``APOGEE_PIXMASK`` values (one per pixel).
    name : str
        Bit name, e.g. ``'STAR_BAD'`` or ``'SIG_TELLURIC'``; looked up in ``bits``, else in
        :data:`ASPCAPFLAG_BITS`, else in :data:`PIXMASK_BITS`.
    bits : mapping, optional
        Name -> bit number table to use instead.

    Returns
    -------
    numpy.ndarray of bool, same shape as ``values``

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    bit, _ = _bit_of(name, bits)
    arr = np.asarray(values)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"flag_set: values must be integers, got dtype {arr.dtype}")
    return (arr.astype(np.uint64) >> np.uint64(bit)) & np.uint64(1) == 1


def flag_names(value: int, bits: Mapping[str, int] | None = None) -> list[str]:
    """Names of the bits set in one bitmask value.

    Parameters
    ----------
    value : int
        One ``ASPCAPFLAG`` (default table) or other bitmask value.
    bits : mapping, optional
        Name -> bit table; default :data:`ASPCAPFLAG_BITS`.

    Returns
    -------
    list of str, in bit order.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    table = ASPCAPFLAG_BITS if bits is None else bits
    v = int(value)
    return [n for n, b in sorted(table.items(), key=lambda kv: kv[1]) if (v >> b) & 1]


# ---------------------------------------------------------------------------------------
# Paths (SAS layout)
# ---------------------------------------------------------------------------------------

def _release(release: str) -> dict:
    key = str(release).lower()
    if key not in RELEASES:
        raise ValueError(f"unknown APOGEE release {release!r}: expected one of "
                         f"{sorted(RELEASES)}")
    return RELEASES[key]


def allstar_path(apogee_root, release: str) -> Path:
    """Path of the allStar catalogue inside a SAS mirror.

    Parameters
    ----------
    apogee_root : str or path-like
        The directory that *contains* ``dr16/`` or ``dr17/`` (the SAS root, as in
        ``https://data.sdss.org/sas/``), not the ``dr16`` directory itself.
    release : {'dr16', 'dr17'}

    Returns
    -------
    pathlib.Path
        DR16: ``apogee_root/dr16/apogee/spectro/aspcap/r12/l33/allStar-r12-l33.fits``;
        DR17: ``apogee_root/dr17/apogee/spectro/aspcap/dr17/synspec_rev1/allStar-dr17-synspec_rev1.fits``.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    rel = _release(release)
    return Path(apogee_root).joinpath(*rel["aspcap_dir"], rel["allstar"])


def aspcapstar_path(apogee_root, release: str, telescope: str, field: str,
                    apogee_id: str) -> Path:
    """Path of one star's aspcapStar file inside a SAS mirror.

    Parameters
    ----------
    apogee_root : str or path-like
        The directory that *contains* ``dr16/`` or ``dr17/`` (the SAS root).
    release : {'dr16', 'dr17'}
    telescope : str
        allStar ``TELESCOPE`` (e.g. ``'apo25m'``, ``'lco25m'``).
    field : str
        allStar ``FIELD`` (e.g. ``'120+12'``).
    apogee_id : str
        allStar ``APOGEE_ID`` (e.g. ``'2M00000002+7417074'``).

    Returns
    -------
    pathlib.Path
        DR16: ``.../dr16/apogee/spectro/aspcap/r12/l33/{TELESCOPE}/{FIELD}/aspcapStar-r12-{APOGEE_ID}.fits``;
        DR17: ``.../dr17/apogee/spectro/aspcap/dr17/synspec_rev1/{TELESCOPE}/{FIELD}/aspcapStar-dr17-{APOGEE_ID}.fits``.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    rel = _release(release)
    parts = {"telescope": telescope, "field": field, "apogee_id": apogee_id}
    for k, v in parts.items():
        s = str(v).strip()
        if not s or "/" in s or s in (".", ".."):
            raise ValueError(f"aspcapstar_path: {k}={v!r} cannot be a path component")
        parts[k] = s
    return Path(apogee_root).joinpath(*rel["aspcap_dir"], parts["telescope"],
                                      parts["field"],
                                      f"{rel['star_prefix']}{parts['apogee_id']}.fits")


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

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    s = symbol.strip().upper()
    return "FE_H" if s == "FE" else f"{s}_FE"


# ---------------------------------------------------------------------------------------
# FITS helpers
# ---------------------------------------------------------------------------------------

def _fits():
    from astropy.io import fits  # local import: keeps `import helpers.apogee` light
    return fits


def _open_fits(path, what: str, **kwargs):
    """Open a FITS file, turning every failure into an error naming the file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} file {p}: not found")
    if p.is_dir():
        raise ApogeeFormatError(f"{what} file {p}: is a directory, expected a FITS file")
    if not os.access(p, os.R_OK):
        raise PermissionError(f"{what} file {p}: not readable (permission denied)")
    fits = _fits()
    try:
        hdul = fits.open(p, **kwargs)
        len(hdul)  # forces astropy to read every header: catches truncated files now
    except OSError as exc:
        raise ApogeeFormatError(f"{what} file {p}: not a readable FITS file ({exc})") from exc
    except Exception as exc:  # astropy raises assorted errors on corrupt headers
        raise ApogeeFormatError(f"{what} file {p}: corrupt FITS ({type(exc).__name__}: "
                                f"{exc})") from exc
    return hdul


def _native(arr: np.ndarray) -> np.ndarray:
    """Copy of a FITS column in native byte order; strings decoded and stripped."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "SU":
        out = np.char.strip(arr.astype(str))
        return out
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.array(arr, copy=True)


def _table_hdu(hdul, index: int, path, what: str):
    if len(hdul) <= index:
        raise ApogeeFormatError(f"{what} file {path}: has {len(hdul)} HDUs, expected a "
                                f"table in HDU{index}")
    hdu = hdul[index]
    if not hasattr(hdu, "columns"):
        raise ApogeeFormatError(f"{what} file {path}: HDU{index} is not a table")
    return hdu


def _require(names: Iterable[str], available: Sequence[str], path, what: str) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        raise ApogeeFormatError(f"{what} file {path}: missing column(s) {missing} "
                                f"(file has {len(available)} columns)")


def _df_from_fits_table(hdu, names: Sequence[str]) -> pd.DataFrame:
    data = hdu.data
    cols = {}
    for n in names:
        arr = _native(data.field(n))
        if arr.ndim > 1:
            for j in range(arr.shape[1]):
                cols[f"{n}_{j}"] = arr[:, j]
        else:
            cols[n] = arr
    return pd.DataFrame(cols)


def _fits_column(name: str, values) -> "object":
    """An astropy Column for a 1-D (or 2-D: array column) numpy array."""
    fits = _fits()
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


def _atomic_writeto(hdul, path) -> Path:
    """Write an HDUList to ``path`` through a temporary file and os.replace."""
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


# ---------------------------------------------------------------------------------------
# allStar
# ---------------------------------------------------------------------------------------

def _read_elem_symbol(hdul, path) -> list[str]:
    hdu = _table_hdu(hdul, 3, path, "allStar")
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

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    p = Path(path)
    with _open_fits(p, "allStar", memmap=True) as hdul:
        table = _table_hdu(hdul, 1, p, "allStar")
        elems = _read_elem_symbol(hdul, p)
        available = list(table.columns.names)
        if columns is None:
            _require(ALLSTAR_REQUIRED, available, p, "allStar")
            wanted = list(ALLSTAR_REQUIRED)
            wanted += [c for c in ALLSTAR_OPTIONAL if c in available]
            wanted += [elem_column(e) for e in elems
                       if elem_column(e) in available and elem_column(e) not in wanted]
        else:
            wanted = list(dict.fromkeys(columns))
            _require(wanted, available, p, "allStar")
        data = table.data
        cols: dict[str, np.ndarray] = {}
        for name in wanted:
            arr = _native(data.field(name))
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

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    fits = _fits()
    _release(release)
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
        cols.append(_fits_column(name, np.asarray(table[name])))
        written.add(name)
    cols.append(_fits_column("X_H", x_h))
    cols.append(_fits_column("X_M", x_m))
    for j, e in enumerate(elems):
        cname = elem_column(e)
        if cname in written:
            continue
        vals = np.where(bad[:, j] | (fe_h == np.float32(MISSING)), np.float32(MISSING),
                        x_h[:, j] - fe_h).astype(np.float32)
        cols.append(_fits_column(cname, vals))
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
    return _atomic_writeto(fits.HDUList([primary, hdu1, hdu2, hdu3]), path)


# ---------------------------------------------------------------------------------------
# aspcapStar
# ---------------------------------------------------------------------------------------

@dataclass
class AspcapStar:
    """One aspcapStar spectrum.

    Attributes
    ----------
    flux : numpy.ndarray, shape (8575,), float32
        Pseudo-continuum-normalised flux (dimensionless); 0 outside the chips, 1e-4 at bad
        pixels.
    error : numpy.ndarray, shape (8575,), float32
        1-sigma error of ``flux``; 1e10 at bad pixels.
    model : numpy.ndarray, shape (8575,), float32
        ASPCAP best-fit model spectrum (normalised).
    header : astropy.io.fits.Header
        Header of HDU1 (the flux).
    path : pathlib.Path
        The file read.
    apogee_id : str or None
        ``APOGEE_ID`` from the HDU4 table, when present.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """

    flux: np.ndarray
    error: np.ndarray
    model: np.ndarray
    header: object
    path: Path
    apogee_id: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def wavelength(self) -> np.ndarray:
        """Vacuum wavelengths in Angstrom, shape (8575,), float64."""
        return wavelength_grid()

    def bad_pixels(self) -> np.ndarray:
        """Pixels written as bad (error >= 1e10), bool shape (8575,)."""
        return self.error >= np.float32(BAD_PIXEL_ERROR) * np.float32(0.999)


def _check_grid_header(hdr, path, hdu_index: int) -> None:
    what = f"aspcapStar file {path}: HDU{hdu_index}"
    if hdr.get("NAXIS") != 1:
        raise ApogeeFormatError(f"{what} has NAXIS={hdr.get('NAXIS')}, expected a 1-D "
                                f"spectrum of {N_PIXELS} pixels")
    if hdr.get("NAXIS1") != N_PIXELS:
        raise ApogeeFormatError(f"{what} has NAXIS1={hdr.get('NAXIS1')} pixels, expected "
                                f"{N_PIXELS}")
    for key, want, tol in (("CRVAL1", CRVAL1, 1e-9), ("CDELT1", CDELT1, 1e-12)):
        if key not in hdr:
            raise ApogeeFormatError(f"{what} lacks the {key} keyword (expected {want})")
        try:
            got = float(hdr[key])
        except (TypeError, ValueError):
            raise ApogeeFormatError(f"{what} has non-numeric {key}={hdr[key]!r}, "
                                    f"expected {want}") from None
        if abs(got - want) > tol:
            raise ApogeeFormatError(f"{what} has {key}={got!r}, expected {want} (the "
                                    f"APOGEE log-linear grid)")
    crpix = hdr.get("CRPIX1", 1)
    if crpix != CRPIX1:
        raise ApogeeFormatError(f"{what} has CRPIX1={crpix!r}, expected {CRPIX1}")


def read_aspcapstar(path, check_finite: bool = True, read_table: bool = True) -> AspcapStar:
    """Read one aspcapStar file and check its layout.

    Parameters
    ----------
    path : str or path-like
        aspcapStar FITS file: HDU1 flux, HDU2 error, HDU3 best-fit model, HDU4 one-row
        table.
    check_finite : bool
        Raise if flux, error or model contain NaN or inf (default True).
    read_table : bool
        Read ``APOGEE_ID`` from the HDU4 table (default True; the cache builder skips it
        for speed).

    Returns
    -------
    AspcapStar
        ``flux``, ``error``, ``model`` as float32 arrays of shape (8575,).

    Raises
    ------
    FileNotFoundError, PermissionError
        Missing or unreadable file (message names it).
    ApogeeFormatError
        Corrupt FITS, missing HDU, wrong NAXIS1 / CRVAL1 / CDELT1 / CRPIX1, or non-finite
        values; the message names the file and the problem.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    p = Path(path)
    with _open_fits(p, "aspcapStar", memmap=False, lazy_load_hdus=True) as hdul:
        if len(hdul) < 4:
            raise ApogeeFormatError(f"aspcapStar file {p}: has {len(hdul)} HDUs, expected "
                                    f"at least 4 (primary, flux, error, model)")
        arrays = []
        for i, name in ((1, "flux"), (2, "error"), (3, "model")):
            hdu = hdul[i]
            _check_grid_header(hdu.header, p, i)
            try:
                data = hdu.data
            except Exception as exc:
                raise ApogeeFormatError(f"aspcapStar file {p}: cannot read {name} data in "
                                        f"HDU{i} ({type(exc).__name__}: {exc})") from exc
            if data is None or data.shape != (N_PIXELS,):
                shape = None if data is None else data.shape
                raise ApogeeFormatError(f"aspcapStar file {p}: {name} in HDU{i} has shape "
                                        f"{shape}, expected ({N_PIXELS},)")
            arr = np.asarray(data, dtype=np.float32)
            if check_finite and not np.all(np.isfinite(arr)):
                nbad = int(np.count_nonzero(~np.isfinite(arr)))
                first = int(np.flatnonzero(~np.isfinite(arr))[0])
                raise ApogeeFormatError(f"aspcapStar file {p}: {name} (HDU{i}) has {nbad} "
                                        f"non-finite value(s), first at pixel {first}")
            arrays.append(arr)
        header = hdul[1].header.copy()
        apogee_id = None
        if read_table and len(hdul) > 4 and hasattr(hdul[4], "columns") \
                and "APOGEE_ID" in hdul[4].columns.names:
            apogee_id = str(_native(hdul[4].data.field("APOGEE_ID"))[0])
    return AspcapStar(flux=arrays[0], error=arrays[1], model=arrays[2], header=header,
                      path=p, apogee_id=apogee_id)


def _spectrum_arg(name: str, values, apogee_id) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if arr.shape != (N_PIXELS,):
        raise ValueError(f"write_aspcapstar({apogee_id}): {name} has shape {arr.shape}, "
                         f"expected ({N_PIXELS},)")
    return arr.copy()


def write_aspcapstar(path, flux, error, model, apogee_id: str, *, bad=None,
                     telescope: str | None = None, field: str | None = None,
                     params: Mapping[str, float] | None = None,
                     header_extra: Mapping[str, object] | None = None) -> Path:
    """Write one spectrum in the aspcapStar layout.

    HDU0 empty primary; HDU1 flux, HDU2 error, HDU3 model (float32, with CRVAL1=4.179,
    CDELT1=6e-6, CRPIX1=1, CTYPE1='LOG-LINEAR'); HDU4 a one-row table (``APOGEE_ID``, and
    ``TELESCOPE``, ``FIELD`` and ``params`` when given).  Bad pixels are written as flux 1e-4
    and error 1e10; outside the three chips flux, error and model are written as 0.  The
    file is written atomically.

    Parameters
    ----------
    path : str or path-like
        Output file (use :func:`aspcapstar_path` for the SAS layout).
    flux, error, model : array_like, shape (8575,)
        Normalised flux, its 1-sigma error, best-fit model.  Must be finite inside the
        chips except at ``bad`` pixels.
    apogee_id : str
        Star identifier written to HDU4.
    bad : array_like of bool, shape (8575,), optional
        Pixels to write as bad (flux 1e-4, error 1e10).
    telescope, field : str, optional
        Written to HDU4.
    params : mapping str -> float, optional
        Extra scalar columns of HDU4 (e.g. ``{'TEFF': 4500.0}``).
    header_extra : mapping, optional
        Extra keywords for the HDU1 header.

    Returns
    -------
    pathlib.Path
        The written file.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    fits = _fits()
    f = _spectrum_arg("flux", flux, apogee_id)
    e = _spectrum_arg("error", error, apogee_id)
    m = _spectrum_arg("model", model, apogee_id)
    inside = chip_mask()
    badm = np.zeros(N_PIXELS, bool) if bad is None else np.asarray(bad, dtype=bool)
    if badm.shape != (N_PIXELS,):
        raise ValueError(f"write_aspcapstar({apogee_id}): bad has shape {badm.shape}, "
                         f"expected ({N_PIXELS},)")
    badm = badm & inside
    for name, arr in (("flux", f), ("error", e), ("model", m)):
        nonfinite = ~np.isfinite(arr) & inside & ~badm
        if name == "model":
            nonfinite = ~np.isfinite(arr) & inside
        if nonfinite.any():
            raise ValueError(f"write_aspcapstar({apogee_id}): {name} has "
                             f"{int(nonfinite.sum())} non-finite in-chip value(s) not "
                             f"marked bad, first at pixel {int(np.flatnonzero(nonfinite)[0])}")
    f[badm] = BAD_PIXEL_FLUX
    e[badm] = BAD_PIXEL_ERROR
    for arr in (f, e, m):
        arr[~inside] = 0.0

    def image(arr, what):
        hdu = fits.ImageHDU(arr.astype(">f4"))
        h = hdu.header
        h["CRVAL1"] = (CRVAL1, "log10(lambda/Angstrom) of pixel CRPIX1")
        h["CDELT1"] = (CDELT1, "log10(lambda/Angstrom) step per pixel")
        h["CRPIX1"] = (CRPIX1, "reference pixel")
        h["CTYPE1"] = (CTYPE1, "")
        h["DC-FLAG"] = (1, "log-linear wavelength scale")
        h["BUNIT"] = (what, "")
        h["OBJID"] = (str(apogee_id), "APOGEE_ID")
        return hdu

    hdu1 = image(f, "normalised flux")
    if header_extra:
        for k, v in header_extra.items():
            hdu1.header[k] = v
    cols = [_fits_column("APOGEE_ID", np.array([str(apogee_id)]))]
    if telescope is not None:
        cols.append(_fits_column("TELESCOPE", np.array([str(telescope)])))
    if field is not None:
        cols.append(_fits_column("FIELD", np.array([str(field)])))
    for k, v in (params or {}).items():
        cols.append(_fits_column(k, np.array([v])))
    hdul = fits.HDUList([fits.PrimaryHDU(), hdu1, image(e, "flux error"),
                         image(m, "best-fit model"), fits.BinTableHDU.from_columns(cols)])
    return _atomic_writeto(hdul, path)


# ---------------------------------------------------------------------------------------
# OCCAM
# ---------------------------------------------------------------------------------------

def _read_simple_table(path, required: Sequence[str], what: str) -> pd.DataFrame:
    p = Path(path)
    with _open_fits(p, what, memmap=True) as hdul:
        hdu = _table_hdu(hdul, 1, p, what)
        names = list(hdu.columns.names)
        _require(required, names, p, what)
        df = _df_from_fits_table(hdu, names)
    df.attrs["source"] = str(p)
    return df


def read_occam_members(path) -> pd.DataFrame:
    """Read the OCCAM DR16 member catalogue (``occam_member-DR16.fits``).

    Parameters
    ----------
    path : str or path-like
        FITS file with the member table in HDU1.

    Returns
    -------
    pandas.DataFrame, one row per (cluster, star) candidate
        All columns of the file; required ``CLUSTER``, ``APOGEE_ID``, ``VHELIO_AVG``
        (km/s), ``FE_H`` (dex), ``RV_PROB``, ``FEH_PROB``, ``PM_PROB``, ``CG_PROB``
        (probabilities; ``CG_PROB`` = -9999.99 where Cantat-Gaudin et al. give none).
        Strings are stripped of blanks.  Note the member file spells cluster names with
        spaces ('NGC 6791') where the cluster file may use underscores.

    Raises
    ------
    FileNotFoundError, ApogeeFormatError
        Missing file; corrupt FITS or a missing required column.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    return _read_simple_table(path, OCCAM_MEMBER_REQUIRED, "OCCAM member")


def read_occam_clusters(path) -> pd.DataFrame:
    """Read the OCCAM DR16 cluster catalogue (``occam_cluster-DR16.fits``).

    Parameters
    ----------
    path : str or path-like
        FITS file with the cluster table in HDU1.

    Returns
    -------
    pandas.DataFrame, one row per cluster
        All columns of the file; required ``NAME``, ``RV`` (km/s), ``FE_H`` (dex),
        ``NUM_STARS``, ``QUAL``; per-element ``<EL>_FE`` (dex) when present.

    Raises
    ------
    FileNotFoundError, ApogeeFormatError
        Missing file; corrupt FITS or a missing required column.

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    return _read_simple_table(path, OCCAM_CLUSTER_REQUIRED, "OCCAM cluster")


def _write_simple_table(path, table, required: Sequence[str], what: str) -> Path:
    fits = _fits()
    df = pd.DataFrame(table)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"write {what}: table is missing column(s) {missing}")
    cols = [_fits_column(c, df[c].to_numpy()) for c in df.columns]
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)])
    return _atomic_writeto(hdul, path)


def write_occam_members(path, table) -> Path:
    """Write an OCCAM-like member catalogue (HDU1 table, all columns of ``table``).

    Parameters
    ----------
    path : str or path-like
    table : pandas.DataFrame or mapping
        Must hold the columns :func:`read_occam_members` requires; ``CG_PROB`` uses
        -9999.99 for "none".

    Returns
    -------
    pathlib.Path

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    return _write_simple_table(path, table, OCCAM_MEMBER_REQUIRED, "OCCAM member")


def write_occam_clusters(path, table) -> Path:
    """Write an OCCAM-like cluster catalogue (HDU1 table, all columns of ``table``).

    Parameters
    ----------
    path : str or path-like
    table : pandas.DataFrame or mapping
        Must hold the columns :func:`read_occam_clusters` requires.

    Returns
    -------
    pathlib.Path

    Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
    """
    return _write_simple_table(path, table, OCCAM_CLUSTER_REQUIRED, "OCCAM cluster")
