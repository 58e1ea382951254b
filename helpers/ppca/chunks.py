"""Reading a (memory-mapped) flux matrix chunk by chunk for PPCA.

Book: {ref}`sec-rsca-ppca`

The engine never copies the data whole: every pass reads rows ``a:b`` into a small buffer,
checks them, and tells the kernel it no longer needs those pages
(:func:`helpers.memory.release_pages`).
"""
from __future__ import annotations

import numpy as np

from helpers.memory import release_pages
from helpers.ppca.layout import layout_from_entries, nonzero_sparse

__all__ = ["read_chunk", "scan_chunk"]


def read_chunk(X, mask, weights, a, b, dt, check=True):
    """Rows ``a:b`` as ``(flux in dt (fresh copy), observed bool, omega or None)``.

    Book: {ref}`sec-rsca-ppca`

    With ``check``, a non-finite flux at an observed pixel, an infinite flux (NaN is the only
    missing marker without ``mask``) or a negative or non-finite weight raises a
    ``ValueError`` naming the star and pixel.  Pixels of zero weight count as missing.
    """
    xc = np.array(X[a:b], dtype=dt, copy=True)
    if mask is not None:
        obs = np.array(mask[a:b], dtype=bool, copy=True)
        if check:
            bad = obs & ~np.isfinite(xc)
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise ValueError(f"X has a non-finite value ({xc[i, j]}) at star {a + i}, "
                                 f"pixel {j}, which mask marks as observed")
    else:
        fin = np.isfinite(xc)
        obs = fin
        if check:
            inf = np.isinf(xc)
            if inf.any():
                i, j = np.argwhere(inf)[0]
                raise ValueError(f"X has an infinite value at star {a + i}, pixel {j}; "
                                 "only NaN marks a missing pixel")
    om = None
    if weights is not None:
        om = np.array(weights[a:b], dtype=dt, copy=True)
        if check:
            badw = ~np.isfinite(om) | (om < 0)
            if badw.any():
                i, j = np.argwhere(badw)[0]
                raise ValueError(f"weights must be finite and >= 0 (inverse variances); "
                                 f"got {om[i, j]} at star {a + i}, pixel {j}")
        obs &= om > 0
        om[~obs] = 0
    for arr in (X, mask, weights):
        if arr is not None:
            release_pages(arr, a, b)
    return xc, obs, om


def scan_chunk(X, mask, a, b, xc, ref=None):
    """Pass 0 on rows ``a:b`` (no weights): copy them (minus ``ref`` if given) into ``xc``,
    with missing entries 0.

    Book: {ref}`sec-rsca-ppca`

    Returns the chunk's missing-pixel layout, its column sums (float64), and the number
    of missing entries per star and per pixel.  A non-finite value at an observed entry
    shows up in the column sums, so it costs no extra pass to detect.
    """
    n, D = xc.shape
    if ref is None:
        np.copyto(xc, X[a:b], casting="unsafe")
    else:
        np.subtract(X[a:b], ref, out=xc, casting="unsafe")
    if mask is not None:
        miss = np.logical_not(mask[a:b])
    else:
        miss = np.isnan(xc)
    r, c = nonzero_sparse(miss)
    del miss
    xc[r, c] = 0
    s = xc.sum(axis=0)
    if not np.isfinite(s).all():
        bad = np.argwhere(~np.isfinite(xc))
        if bad.size:
            i, j = bad[0]
            if mask is not None:
                raise ValueError(f"X has a non-finite value ({xc[i, j]}) at star {a + i}, "
                                 f"pixel {j}, which mask marks as observed")
            raise ValueError(f"X has an infinite value at star {a + i}, pixel {j}; "
                             "only NaN marks a missing pixel")
        s = xc.sum(axis=0, dtype=np.float64)   # float32 overflow of a huge column
    for arr in (X, mask):
        if arr is not None:
            release_pages(arr, a, b)
    lay = layout_from_entries(r, c, n, D)
    return (lay, s.astype(np.float64), np.bincount(r, minlength=n),
            np.bincount(c, minlength=D))
