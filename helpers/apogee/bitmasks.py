"""The ``ASPCAPFLAG`` and ``APOGEE_PIXMASK`` bit names, and tests of bits.

Book: {ref}`sec-survey-files`
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["ASPCAPFLAG_BITS", "PIXMASK_BITS", "flag_set", "flag_names"]


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

    Book: {ref}`sec-survey-files`
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

    Book: {ref}`sec-survey-files`
    """
    table = ASPCAPFLAG_BITS if bits is None else bits
    v = int(value)
    return [n for n, b in sorted(table.items(), key=lambda kv: kv[1]) if (v >> b) & 1]
