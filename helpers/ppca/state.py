"""What one PPCA fit holds across its passes over the data, and the scan that builds it.

Book: {ref}`sec-rsca-ppca`

:func:`scan` reads the data once (pass 0): it checks every value, counts the observed pixels
of each star and each pixel column, builds the missing-pixel layout of every chunk and the
reference spectrum ``mu0`` the data are centred on.  The resulting :class:`FitState` is what
the start and the E-steps work from; :meth:`FitState.map_chunks` runs a function on every
chunk, centred, with its missing entries zeroed, in a pool of threads.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import numpy as np

from helpers.memory import release_pages
from helpers.ppca import threads
from helpers.ppca.chunks import read_chunk, scan_chunk
from helpers.ppca.layout import MissingChunk
from helpers.ppca.linalg import row_sq

__all__ = ["FitState", "scan", "scan_weighted_chunk"]


@dataclass
class FitState:
    """The data of one fit and what pass 0 learned about them.

    Book: {ref}`sec-rsca-ppca`

    Attributes
    ----------
    X, mask, weights : array_like, shape (N, D)
        The data as given to :meth:`helpers.ppca.PPCA.fit` (``mask``, ``weights`` or None).
    dt : numpy.dtype
        Working precision of the large products.
    chunks : list of (int, int)
        Row ranges ``(a, b)`` of the chunks.
    layouts : list of MissingChunk
        Missing-pixel layout of each chunk (unweighted fits only).
    mu0 : ndarray, shape (D,)
        Reference spectrum the data are centred on (EM fits the mean relative to it).
    star_cnt : ndarray of int, shape (N,)
        Observed pixels per star.
    col_sum, col_cnt : ndarray, shape (D,)
        Per-pixel sums of the observed (centred, when ``buf`` is kept) values and counts.
    logw_sum : ndarray, shape (N,) or None
        Sum of the log weights of each star's observed pixels (weighted fits).
    w_sum : float
        Sum of all weights (weighted fits).
    xx : ndarray, shape (N,) or None
        Each star's sum of squares, centred, missing entries 0 (filled by the first pass
        that reads the data when not known from the scan).
    buf : ndarray, shape (N, D + 1) or None
        The kept centred copy (when the start uses every star), missing entries and the
        padding column D set to 0.
    """

    X: object
    mask: object
    weights: object
    dt: np.dtype
    chunks: list
    layouts: list
    mu0: np.ndarray
    star_cnt: np.ndarray
    col_sum: np.ndarray
    col_cnt: np.ndarray
    logw_sum: np.ndarray | None
    w_sum: float
    xx: np.ndarray | None
    buf: np.ndarray | None
    chunk_buffers: threads.BufferPool | None = None

    @property
    def N(self) -> int:
        """Number of stars."""
        return self.star_cnt.size

    @property
    def D(self) -> int:
        """Number of pixels."""
        return self.mu0.size

    @property
    def kept(self) -> bool:
        """Whether the centred copy ``buf`` is kept (every pass works on it)."""
        return self.buf is not None

    @property
    def n_obs_total(self) -> float:
        """Number of observed entries."""
        return float(self.star_cnt.sum())

    @property
    def mu0_dt(self) -> np.ndarray:
        """``mu0`` in the working dtype."""
        return self.mu0.astype(self.dt)

    def map_chunks(self, fn):
        """``[fn(a, b, layout, xc) for each chunk]``, chunks spread over a pool of threads.

        Book: {ref}`sec-rsca-ppca`

        ``xc`` is ``(b - a, D + 1)`` in the working dtype: rows a:b centred on ``mu0``,
        missing entries and the padding column D set to 0; ``fn`` may write imputed fluxes
        into it (at the layout's flat positions).  It is the kept copy when the scan made
        one, otherwise one of a few reused buffers refilled from ``X``.  The first visit of
        a streamed matrix also records each star's sum of squares in ``xx``.

        Each chunk runs on one thread with one BLAS thread (the fit holds BLAS at one
        thread): whole chunks in parallel scale better than multi-threaded BLAS calls
        interleaved with many small products, and avoid BLAS threads spinning while the
        small products run.  Results come back in chunk order, so sums over them do not
        depend on the number of threads.
        """
        D = self.D
        buf = self.buf
        first = self.xx is None
        if first:
            self.xx = np.zeros(self.N)
        pool = None
        if buf is None:
            pool = self.chunk_buffers
            if pool is None:
                cs = max(b - a for a, b in self.chunks)
                pool = self.chunk_buffers = threads.BufferPool((cs, D + 1), self.dt)
        mu0_dt = self.mu0_dt

        def task(k):
            a, b = self.chunks[k]
            lay = self.layouts[k]
            with contextlib.nullcontext(buf[a:b]) if pool is None else pool.borrow(b - a) as xc:
                if pool is not None:
                    self.load_centered(a, b, xc[:, :D], mu0_dt)
                xc.reshape(-1)[lay.flat] = 0
                if first:
                    self.xx[a:b] = row_sq(xc)
                return fn(a, b, lay, xc)

        return list(threads.group_mapper()(task, range(len(self.chunks))))

    def load_centered(self, a, b, out, mu0_dt=None):
        """Rows a:b of X minus mu0 into ``out`` (dtype dt); missing entries are left as read.

        Book: {ref}`sec-rsca-ppca`
        """
        mu0_dt = self.mu0_dt if mu0_dt is None else mu0_dt
        src = self.X[a:b]
        if src.dtype == out.dtype:
            np.subtract(src, mu0_dt, out=out)
        else:
            np.copyto(out, src, casting="unsafe")
            np.subtract(out, mu0_dt, out=out)
        release_pages(self.X, a, b)

    def chunk_centered(self, k):
        """Chunk k centred on mu0 (float32/64), with its observed mask and weights.

        Book: {ref}`sec-rsca-ppca`
        """
        a, b = self.chunks[k]
        xc, obs, om = read_chunk(self.X, self.mask, self.weights, a, b, self.dt, check=False)
        np.subtract(xc, self.mu0.astype(self.dt), out=xc)
        return xc, obs, om


def check_observed(col_cnt, star_cnt) -> None:
    """Refuse data with a pixel column or a star that has no observed value.

    Book: {ref}`sec-rsca-ppca`

    Parameters
    ----------
    col_cnt : ndarray, shape (D,)
        Observed stars per pixel.
    star_cnt : ndarray, shape (N,)
        Observed pixels per star.
    """
    empty_cols = np.flatnonzero(col_cnt == 0)
    if empty_cols.size:
        raise ValueError(f"X: {empty_cols.size} pixel column(s) are missing for every star "
                         f"(first: {empty_cols[:5].tolist()}); drop them before fitting")
    empty_rows = np.flatnonzero(star_cnt == 0)
    if empty_rows.size:
        raise ValueError(f"X: {empty_rows.size} star(s) have no observed pixel "
                         f"(first rows: {empty_rows[:5].tolist()}); drop them before fitting")


def scan_weighted_chunk(X, mask, weights, a, b, dt):
    """Pass 0 of a weighted fit on rows ``a:b`` (checked by :func:`read_chunk`).

    Book: {ref}`sec-rsca-ppca`

    Returns the column sums (float64) and counts of the observed values, the observed
    pixels of each star, the sum of the log weights of each star's observed pixels and the
    sum of all weights.
    """
    xc, obs, om = read_chunk(X, mask, weights, a, b, dt)
    x0 = np.where(obs, xc, 0)
    return (x0.sum(axis=0, dtype=np.float64), obs.sum(axis=0), obs.sum(axis=1),
            np.log(np.where(obs, om, 1), dtype=np.float64).sum(axis=1),
            om.sum(dtype=np.float64))


def scan(X, mask, weights, dt, chunk_size, keep) -> FitState:
    """Pass 0: check the data, count observed pixels, build the missing-pixel layouts.

    Book: {ref}`sec-rsca-ppca`

    Parameters
    ----------
    X, mask, weights : array_like, shape (N, D)
        Checked by :meth:`helpers.ppca.PPCA.fit` for shapes and dtypes.
    dt : numpy.dtype
        Working precision.
    chunk_size : int
        Stars per chunk.
    keep : bool
        Keep a centred copy of every star (no weights only): the start uses every star and
        every pass then works on that copy instead of re-reading ``X``.

    Returns
    -------
    FitState

    Raises
    ------
    ValueError
        A pixel column missing for every star, a star without an observed pixel, a
        non-finite flux at an observed pixel or a bad weight.
    """
    N, D = X.shape
    cs = chunk_size
    chunks = [(a, min(a + cs, N)) for a in range(0, N, cs)]
    buf = np.zeros((N, D + 1), dtype=dt) if keep else None
    col_sum = np.zeros(D)
    col_cnt = np.zeros(D)
    star_cnt = np.zeros(N, dtype=np.int64)
    logw_sum = np.zeros(N) if weights is not None else None
    w_sum = 0.0
    layouts: list[MissingChunk] = []
    xx = np.empty(N) if keep else None
    ref = None
    if weights is None:
        pool = None if keep else threads.BufferPool((chunks[0][1], D), dt)

        def scan_one(k):
            a, b = chunks[k]
            with contextlib.nullcontext(buf[a:b, :D]) if keep else pool.borrow(b - a) as xc:
                out = scan_chunk(X, mask, a, b, xc, ref)
                if keep and ref is not None:
                    xx[a:b] = row_sq(buf[a:b])
                return out

        first = scan_one(0)
        if keep:
            # The kept copy is centred as it is read, on the observed means of the
            # first chunk (EM fits the mean offset; the start estimates it).
            a, b = chunks[0]
            lay, s, cnt_r, cnt_c = first
            cnt0 = (b - a) - cnt_c
            ref = np.divide(s, cnt0, out=np.zeros(D), where=cnt0 > 0).astype(dt)
            xc = buf[a:b, :D]
            np.subtract(xc, ref, out=xc)
            buf[a:b].reshape(-1)[lay.flat] = 0
            xx[a:b] = row_sq(buf[a:b])
            first = (lay, xc.sum(axis=0, dtype=np.float64), cnt_r, cnt_c)
        rest = threads.group_mapper()(scan_one, range(1, len(chunks)))
        for (a, b), (lay, s, cnt_r, cnt_c) in zip(chunks, itertools.chain([first], rest)):
            layouts.append(lay)
            star_cnt[a:b] = D - cnt_r
            col_cnt += (b - a) - cnt_c
            col_sum += s
        del pool
    else:
        for a, b in chunks:
            cs_k, cc_k, star_cnt[a:b], logw_sum[a:b], ws_k = scan_weighted_chunk(
                X, mask, weights, a, b, dt)
            col_sum += cs_k
            col_cnt += cc_k
            w_sum += ws_k
    check_observed(col_cnt, star_cnt)
    # reference spectrum the data are centred on (EM fits the mean relative to it)
    mu0 = ref.astype(np.float64) if keep else col_sum / col_cnt
    return FitState(X=X, mask=mask, weights=weights, dt=dt, chunks=chunks, layouts=layouts,
                    mu0=mu0, star_cnt=star_cnt, col_sum=col_sum, col_cnt=col_cnt,
                    logw_sum=logw_sum, w_sum=float(w_sum), xx=xx, buf=buf)
