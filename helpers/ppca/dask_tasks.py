"""The chunk tasks of PPCA on a Dask cluster: what each worker runs on its chunks.

Book: {ref}`sec-scaling-ppca`

Each task is a pure function of its inputs (a chunk's state, its row blocks read from the
array's source, and the small shared parameters) and calls the engine's own chunk functions
(:mod:`helpers.ppca.chunks`, :mod:`helpers.ppca.start`, :mod:`helpers.ppca.exact`,
:mod:`helpers.ppca.fast`): nothing of the math is written twice.  The driver that maps them
over the chunks and reduces their results is :mod:`helpers.ppca.dask_engine`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helpers.ppca.chunks import read_chunk, scan_chunk
from helpers.ppca.exact import impute_chunk_stats, posterior_chunk, weighted_chunk
from helpers.ppca.fast import fast_fill_chunk, fast_posterior_chunk
from helpers.ppca.layout import MissingChunk, missing_per_pixel
from helpers.ppca.linalg import row_sq
from helpers.ppca.start import fill_subsample_block, impute_chunk, impute_project_chunk, sketch_chunk
from helpers.ppca.state import scan_weighted_chunk
from helpers.ppca.threads import blas_threads

__all__ = ["ChunkState", "SubChunk", "as_block", "centred_chunk", "scan_task", "recentre_task",
           "scan_weighted_task", "subsample_task", "sketch_task", "impute_project_task",
           "gather_task", "exact_pass1_task", "exact_pass2_task", "fast_pass1_task",
           "fast_pass2_task", "weighted_task", "sum_parts"]


@dataclass
class ChunkState:
    """What one chunk keeps on its worker between passes.

    Book: {ref}`sec-scaling-ppca`

    Attributes
    ----------
    a, b : int
        Its rows in the whole array.
    lay : MissingChunk or None
        Missing-pixel layout (unweighted fits).
    nobs : ndarray of int, shape (b - a,)
        Observed pixels per star.
    logw_sum : ndarray, shape (b - a,) or None
        Sum of the log weights of each star's observed pixels (weighted fits).
    buf : ndarray, shape (b - a, D + 1) or None
        The centred copy, missing entries 0, when every star is in the start (kept).
    xx : ndarray, shape (b - a,) or None
        Sums of squares of ``buf``'s rows (kept).
    """

    a: int
    b: int
    lay: MissingChunk | None
    nobs: np.ndarray
    logw_sum: np.ndarray | None = None
    buf: np.ndarray | None = None
    xx: np.ndarray | None = None


@dataclass
class SubChunk:
    """A chunk of the start's subsample on a worker: rows centred, missing entries 0.

    Book: {ref}`sec-scaling-ppca`
    """

    xs: np.ndarray
    lay: MissingChunk


# ------------------------------------------------------------------------------ worker tasks
def as_block(x):
    """A block as a NumPy array (None stays None).

    Book: {ref}`sec-scaling-ppca`
    """
    return None if x is None else np.asarray(x)


def centred_chunk(st, xb, mu0_dt, dt):
    """The chunk centred on mu0 with missing entries and the padding column 0 (a new array).

    Book: {ref}`sec-scaling-ppca`
    """
    if st.buf is not None:
        xc = st.buf.copy()
    else:
        xb = np.asarray(xb)
        n, D = xb.shape
        xc = np.empty((n, D + 1), dtype=dt)
        xc[:, D] = 0
        if xb.dtype == dt:
            np.subtract(xb, mu0_dt, out=xc[:, :D])
        else:
            np.copyto(xc[:, :D], xb, casting="unsafe")
            np.subtract(xc[:, :D], mu0_dt, out=xc[:, :D])
    xc.reshape(-1)[st.lay.flat] = 0
    return xc


def scan_task(rows, xb, mb, wb, ref, keep, dt):
    """Pass 0 of one chunk (no weights, rows ``(a, b)``): its state, (column sums, missing
    per column) and the observed pixels per star.

    Book: {ref}`sec-scaling-ppca`
    """
    a, b = rows
    xb, mb = np.asarray(xb), as_block(mb)
    n, D = xb.shape
    buf = np.zeros((n, D + 1), dtype=dt)
    try:
        lay, s, cnt_r, cnt_c = scan_chunk(xb, mb, 0, n, buf[:, :D], ref)
    except ValueError as exc:
        raise ValueError(f"{exc} (star counted from row {a}, the first row of its chunk)") from None
    st = ChunkState(a, b, lay, D - cnt_r, buf=buf if keep else None,
                    xx=row_sq(buf) if keep and ref is not None else None)
    return st, (s, cnt_c), st.nobs


def recentre_task(st, xb, mb, wb, ref):
    """Chunk 0 of a kept fit: centre on its own observed means, as the scan does.

    Book: {ref}`sec-scaling-ppca`
    """
    D = st.buf.shape[1] - 1
    cnt_c = missing_per_pixel([st.lay], D)
    buf = st.buf.copy()
    xc = buf[:, :D]
    np.subtract(xc, ref, out=xc)
    buf.reshape(-1)[st.lay.flat] = 0
    st = ChunkState(st.a, st.b, st.lay, st.nobs, buf=buf, xx=row_sq(buf))
    return st, (xc.sum(axis=0, dtype=np.float64), cnt_c), st.nobs


def scan_weighted_task(rows, xb, mb, wb, dt):
    """Pass 0 of one chunk of a weighted fit: its state and (column sums, counts, sum of weights).

    Book: {ref}`sec-scaling-ppca`
    """
    a, b = rows
    xb, mb, wb = np.asarray(xb), as_block(mb), as_block(wb)
    try:
        cs, cc, nobs, logw, ws = scan_weighted_chunk(xb, mb, wb, 0, xb.shape[0], dt)
    except ValueError as exc:
        raise ValueError(f"{exc} (star counted from row {a}, the first row of its chunk)") from None
    return ChunkState(a, b, None, nobs, logw_sum=logw), (cs, cc, ws), nobs


def subsample_task(st, xb, mb, wb, mu0_dt, dt, rows):
    """The start's subsample rows of one chunk, centred: the SubChunk and (xx, column sums, missing entries, missing per pixel).

    Book: {ref}`sec-scaling-ppca`
    """
    if st.buf is not None:                 # kept: every star, centred by the scan
        return SubChunk(st.buf, st.lay), (st.xx, None, st.lay.n_miss, None)
    xb = np.asarray(xb)
    D = xb.shape[1]
    blk = np.zeros((rows.size, D + 1), dtype=dt)
    lay, xx, col = fill_subsample_block(blk, xb[rows], None if mb is None else np.asarray(mb)[rows],
                                        None if wb is None else np.asarray(wb)[rows], mu0_dt)
    return SubChunk(blk, lay), (xx, col, lay.n_miss, missing_per_pixel([lay], D))


def sketch_task(sub, xb, mb, wb, Vp_dt):
    """The start's product ``xs Vp`` on one subsample chunk.

    Book: {ref}`sec-scaling-ppca`
    """
    with blas_threads(1):
        return sketch_chunk(sub.xs, Vp_dt)


def impute_project_task(sub, xb, mb, wb, Vext, Tc_dt, Text):
    """One round of the start on one subsample chunk: impute (a copy), then ``xs^T Tc``.

    Book: {ref}`sec-scaling-ppca`
    """
    with blas_threads(1):
        if Vext is None:
            return sub, impute_project_chunk(sub.xs, sub.lay, Tc_dt, None)
        xs = sub.xs.copy()
        return SubChunk(xs, sub.lay), impute_project_chunk(xs, sub.lay, Tc_dt, (Vext, Text))


def gather_task(sub, xb, mb, wb, Vext, Text):
    """The residual at one subsample chunk's missing entries under a fit.

    Book: {ref}`sec-scaling-ppca`
    """
    return impute_chunk(sub.xs, sub.lay, Vext, Text, False)[1]


def exact_pass1_task(st, xb, mb, wb, mu0_dt, par):
    """Pass 1 of the exact E-step on one chunk: (nll, (Z, Minv, xx)).

    Book: {ref}`sec-scaling-ppca`
    """
    with blas_threads(1):
        xc = centred_chunk(st, xb, mu0_dt, par["dt"])
        xx = st.xx if st.xx is not None else row_sq(xc)
        n, K = xc.shape[0], par["K"]
        Z = np.empty((n, K))
        Minv = np.empty((n, K, K), dtype=par["dt"])
        nll = posterior_chunk(xc, st.lay, xx, st.nobs, par, Z, Minv)
        return nll, (Z, Minv, xx)


def exact_pass2_task(st, xb, mb, wb, mu0_dt, par, post):
    """Pass 2 of the exact E-step on one chunk: its M-step sums and Z^T Z, sum of Z.

    Book: {ref}`sec-scaling-ppca`
    """
    with blas_threads(1):
        Z, Minv, xx = post
        xc = centred_chunk(st, xb, mu0_dt, par["dt"])
        sig, ex2, sxz, nf = impute_chunk_stats(xc, st.lay, xx, Z, Minv, par)
        return sig, ex2, sxz, nf, Z.T @ Z, Z.sum(axis=0)


def fast_pass1_task(st, xb, mb, wb, mu0_dt, par):
    """Pass 1 of the fast E-step on one chunk: ((nll, CG steps), (Z, xx)).

    Book: {ref}`sec-scaling-ppca`
    """
    with blas_threads(1):
        xc = centred_chunk(st, xb, mu0_dt, par["dt"])
        xx = st.xx if st.xx is not None else row_sq(xc)
        Z = np.empty((xc.shape[0], par["K"]))
        nll, n_cg = fast_posterior_chunk(xc, st.lay, xx, st.nobs, par, Z)
        return (nll, n_cg), (Z, xx)


def fast_pass2_task(st, xb, mb, wb, mu0_dt, par, post):
    """Pass 2 of the fast E-step on one chunk: its M-step sums and Z^T Z, sum of Z.

    Book: {ref}`sec-scaling-ppca`
    """
    with blas_threads(1):
        Z, xx = post
        xc = centred_chunk(st, xb, mu0_dt, par["dt"])
        ex2, sxz = fast_fill_chunk(xc, st.lay, xx, Z, par)
        return ex2, sxz, Z.T @ Z, Z.sum(axis=0)


def weighted_task(st, xb, mb, wb, mu0_dt, wp):
    """The weighted E-step on one chunk: (nll, A, B, wx2).

    Book: {ref}`sec-scaling-ppca`
    """
    with blas_threads(1):
        xb = np.asarray(xb)
        xc, obs, om = read_chunk(xb, as_block(mb), as_block(wb), 0, xb.shape[0], wp["dt"],
                                 check=False)
        np.subtract(xc, mu0_dt, out=xc)
        nll, A, B, wx2, _ = weighted_chunk(xc, obs, om, None, st.nobs, st.logw_sum, wp)
        return nll, A, B, wx2


def sum_parts(*parts):
    """Element-wise sum of equally shaped results (tuples of arrays, numbers or None).

    Book: {ref}`sec-scaling-ppca`
    """
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return type(first)(sum_parts(*[p[i] for p in parts]) for i in range(len(first)))
    total = first
    for p in parts[1:]:
        total = total + p
    return total
