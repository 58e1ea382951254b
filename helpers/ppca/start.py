"""Where EM starts: a rank-K fit of a subsample whose missing entries the fit imputes itself.

Book: {ref}`sec-rsca-ppca`
"""
from __future__ import annotations

import numpy as np

from helpers.memory import release_pages
from helpers.ppca import threads
from helpers.ppca.layout import missing_layout, missing_per_pixel
from helpers.ppca.linalg import max_angle_deg, orth, row_sq
from helpers.ppca.state import FitState

__all__ = ["START_ANGLE_TOL", "START_MAX_ROUNDS", "initial_parameters", "start_fit", "fit_ext",
           "impute_chunk", "fill_subsample_block", "finish_start", "SubsampleChunks",
           "sketch_chunk", "impute_project_chunk"]


#: the start stops refining once the subspace moves by less than this between rounds (degrees)
START_ANGLE_TOL = 0.05


#: at most this many rounds (each: two products with the subsample, one imputation pass)
START_MAX_ROUNDS = 8


def initial_parameters(state: FitState, K: int, n_init_rows: int, random_state, tol: float,
                       chunk_size: int):
    """Starting ``(W, m, sigma2, info)`` of EM: :func:`start_fit` on a seeded subsample.

    Book: {ref}`sec-rsca-ppca`

    With the kept centred copy (``state.buf``) every star is used; otherwise a random
    subsample of ``n_init_rows`` stars (seeded by ``random_state``) is copied, centred on
    ``state.mu0``, with its missing entries set to 0.  ``m`` is returned relative to
    ``state.mu0``.
    """
    X, mask, weights = state.X, state.mask, state.weights
    N, D, dt = state.N, state.D, state.dt
    n_s = min(N, int(n_init_rows))
    rng = np.random.default_rng(random_state)
    if state.kept:
        # every star, already centred with missing entries 0 by the scan
        src = SubsampleChunks(state.buf, state.layouts, state.chunks, state.xx, state.col_sum)
    else:
        mu0_dt = state.mu0_dt
        cs = chunk_size
        rows = np.sort(rng.choice(N, size=n_s, replace=False))
        Xs = np.zeros((n_s, D + 1), dtype=dt)
        xx_s = np.empty(n_s)
        cs_s = np.zeros(D + 1)
        lay_s, chunks_s = [], []
        for i0 in range(0, n_s, cs):
            r = rows[i0:i0 + cs]
            lay, xx_s[i0:i0 + r.size], col = fill_subsample_block(
                Xs[i0:i0 + r.size], X[r], None if mask is None else mask[r],
                None if weights is None else weights[r], mu0_dt)
            cs_s += col
            lay_s.append(lay)
            chunks_s.append((i0, i0 + r.size))
        for arr in (X, mask, weights):      # the random rows touched most of the file's pages
            if arr is not None:
                release_pages(arr, 0, N)
        src = SubsampleChunks(Xs, lay_s, chunks_s, xx_s, cs_s[:D])
    W, m, s2, start_info = start_fit(src, K, rng, tol=tol)
    del src
    return finish_start(W, m, s2, start_info, state.kept, weights is not None,
                        state.w_sum / state.n_obs_total if weights is not None else 1.0,
                        None if state.kept else cs_s[:D],
                        None if state.kept else n_s - missing_per_pixel(lay_s, D))


def fill_subsample_block(blk, xr, obr, wr, mu0_dt):
    """Copy the subsample rows ``xr`` into ``blk`` centred on ``mu0``, missing entries 0.

    Book: {ref}`sec-rsca-ppca`

    Parameters
    ----------
    blk : ndarray, shape (n, D + 1)
        Zero-filled output (the padding column D stays 0).
    xr : array_like, shape (n, D)
        The rows' fluxes.
    obr, wr : array_like, shape (n, D), or None
        Their observed mask and weights (a pixel of weight 0 counts as missing).
    mu0_dt : ndarray, shape (D,)
        The reference spectrum in the working dtype.

    Returns
    -------
    layout, xx (n,), column sums (D + 1,) (float64)
    """
    D = blk.shape[1] - 1
    xs = blk[:, :D]
    np.copyto(xs, xr, casting="unsafe")
    ob = np.asarray(obr) if obr is not None else np.isfinite(xs)
    if wr is not None:
        ob = ob & (np.asarray(wr) > 0)
    np.subtract(xs, mu0_dt, out=xs)
    lay = missing_layout(~ob, D)
    blk.reshape(-1)[lay.flat] = 0
    return lay, row_sq(blk), blk.sum(axis=0, dtype=np.float64)


def finish_start(W, m, s2, start_info, kept, weighted, w_scale, cs_s, cnt_s):
    """The start's ``(W, m, sigma2, info)`` relative to the whole data's ``mu0``.

    Book: {ref}`sec-rsca-ppca`

    With weights, ``sigma2`` becomes the factor on ``1/omega`` (``w_scale``: mean weight of
    the observed entries).  Without the kept copy, the subsample's own mean is noisier than
    the observed means ``mu0`` of all N stars: only what imputation changes, its imputed
    minus its observed means (``cs_s / cnt_s``: the subsample's column sums and counts of
    observed entries), is kept.
    """
    if weighted:
        s2 = s2 * w_scale  # sigma2 multiplies 1/omega
    if not kept:
        m = m - np.divide(cs_s, cnt_s, out=m.copy(), where=cnt_s > 0)
    return W, m, s2, start_info


class SubsampleChunks:
    """The start's subsample in memory, its chunks run in a pool of threads.

    Book: {ref}`sec-rsca-ppca`

    What :func:`start_fit` reads its subsample through (a cluster's workers hold theirs in
    :class:`helpers.ppca.dask_engine.DaskSubsample`): ``n``, ``D``, ``dt``, the number of
    observed entries ``n_obs``, ``xx_sum`` and ``col_sum``, and three passes, each a map over
    the chunks (:func:`sketch_chunk`, :func:`impute_project_chunk`, :func:`impute_chunk`)
    followed by a sum or a concatenation.

    Parameters
    ----------
    Xs : ndarray, shape (n, D + 1)
        Centred on ``mu0``, missing entries and the padding column D set to 0.
    layouts, chunks : lists
        Missing-pixel layout and row range ``(a, b)`` of each chunk.
    xx : ndarray, shape (n,)
        Sums of squares of the rows.
    col_sum : ndarray, shape (D,)
        Column sums.
    """

    def __init__(self, Xs, layouts, chunks, xx, col_sum):
        self.Xs, self.layouts, self.chunks = Xs, layouts, chunks
        self.n, self.D = Xs.shape[0], Xs.shape[1] - 1
        self.dt = Xs.dtype
        self.n_obs = float(self.n * self.D - sum(lay.n_miss for lay in layouts))
        self.xx_sum = float(xx.sum())
        self.col_sum = col_sum
        self._map = threads.group_mapper()

    def pass_T(self, Vp):
        """``T = Xs Vp`` (uncentred), float64 (n, p)."""
        Vp_dt = Vp.astype(self.dt)
        T = np.empty((self.n, Vp.shape[1]), dtype=self.dt)

        def job(k):
            a, b = self.chunks[k]
            sketch_chunk(self.Xs[a:b], Vp_dt, out=T[a:b])

        for _ in self._map(job, range(len(self.chunks))):
            pass
        return T.astype(np.float64)

    def pass_Z(self, Tc, fit):
        """Impute with ``fit`` (if any), then ``Z = Xs^T Tc``: ``(Z, new_sum, new_sq)``."""
        Tc_dt = Tc.astype(self.dt)

        def job(k):
            a, b = self.chunks[k]
            fit_k = None if fit is None else (fit[0], fit[1][a:b])
            return impute_project_chunk(self.Xs[a:b], self.layouts[k], Tc_dt[a:b], fit_k)

        Z = np.zeros((self.D, Tc.shape[1]))
        new_sum = np.zeros(self.D + 1) if fit is not None else None
        new_sq = 0.0
        for imp, Zk in self._map(job, range(len(self.chunks))):
            Z += Zk
            if imp is not None:
                new_sum += imp[2]
                new_sq += imp[3]
        return Z, new_sum, new_sq

    def gather(self, fit):
        """The residual at the missing entries (still 0) under ``fit``, summed."""
        def job(k):
            a, b = self.chunks[k]
            return impute_chunk(self.Xs[a:b], self.layouts[k], fit[0], fit[1][a:b], False)

        resid = 0.0
        for so, rs, _, _ in self._map(job, range(len(self.chunks))):
            resid += rs
        return resid


def sketch_chunk(xs, Vp_dt, out=None):
    """``xs[:, :D] @ Vp`` for one chunk of the start's subsample (into ``out`` if given).

    Book: {ref}`sec-rsca-ppca`
    """
    D = xs.shape[1] - 1
    return np.matmul(xs[:, :D], Vp_dt, out=out)


def impute_project_chunk(xs, lay, Tc_dt, fit):
    """Impute one chunk with ``fit`` (``(Vext, Text rows of the chunk)`` or None), writing
    into ``xs``, then ``xs^T Tc``: ``(impute_chunk's sums or None, Z_k (D, p) float64)``.

    Book: {ref}`sec-rsca-ppca`
    """
    D = xs.shape[1] - 1
    imp = None
    if fit is not None:
        imp = impute_chunk(xs, lay, fit[0], fit[1], True)
    return imp, (xs[:, :D].T @ Tc_dt).astype(np.float64)


def start_fit(src, K, rng, tol=0.0):
    """Starting ``(W, m, sigma2)``: a rank-K fit of the subsample ``Xs`` with its missing
    entries imputed by the fit itself.

    Book: {ref}`sec-rsca-ppca`

    ``src`` holds the subsample (:class:`SubsampleChunks` in memory, or
    :class:`helpers.ppca.dask_engine.DaskSubsample` on a cluster's workers): ``n`` rows
    centred on the reference spectrum ``mu0``, missing entries 0, their sums of squares and
    column sums, and the three chunk passes this function needs.  Each round is one step of
    subspace iteration on ``p`` columns (K + 2 rounded up to a multiple of 8) of the imputed
    matrix ``X`` centred on its mean ``m``, in two passes over ``Xs`` with chunks in
    parallel: the first imputes every missing entry by the previous round's fit
    ``m_d + TK_n . VK_d`` and forms ``Z = X^T T`` on the same rows; the second forms
    ``T = X Vp`` with ``Vp = orth(Z)`` (the centring is applied as rank-one corrections).  A
    Rayleigh-Ritz rotation of ``T`` gives the K leading axes ``VK`` and scores ``TK``.  The
    first ``T`` comes from a random sketch.  This is EM for PCA with missing values (hard
    imputation): the fit converges to the rank-K least-squares fit of the observed entries,
    close to the PPCA maximum, at about the missing fraction per round.  Mean imputation alone leaves the subspace several degrees
    and the mean a few noise units / sqrt(N) away, which costs EM an extra pass over the
    data.  Rounds stop when the next change of the subspace, extrapolated from the last two,
    falls below ``START_ANGLE_TOL`` degrees (only axes whose variance stands above the noise
    bulk, 1.5 times its edge ``sigma2 (1 + sqrt(D / n))^2``, count: axes inside the bulk turn
    freely without changing the fit), or when the change of the Gaussian objective implied by
    ``sigma2`` between rounds falls below half of EM's relative tolerance ``tol``.

    ``sigma2`` is the mean squared residual of the *observed* entries (scaled by
    ``D / (D - K)`` for the fitted dimensions), computed without a pass over the residual:
    ``||Xc - TK VK^T||^2 = ||Xc||^2 - ||TK||^2``, minus the residual at the missing entries
    (the last change of their imputed values, negligible).  Returns ``(W, m, sigma2, info)``,
    ``m`` relative to ``mu0``.
    """
    n, D, dt = src.n, src.D, src.dt
    p = min(-(-(K + 2) // 8) * 8, n, D)   # a multiple of 8: BLAS runs skinny products faster
    n_obs = src.n_obs
    xx_sum = src.xx_sum
    col_sum = src.col_sum
    miss_sum = np.zeros(D + 1)              # per-pixel sums of the imputed values

    Om = rng.standard_normal((D, p))        # a random sketch to begin with
    m = col_sum / n
    Tc = src.pass_T(Om) - m @ Om
    fit = None
    VK_prev = None
    angles = []
    sq_now = 0.0                            # sum of squares of the values at missing entries
    s2_hist = []
    for r in range(START_MAX_ROUNDS):
        Z, new_sum, new_sq = src.pass_Z(Tc, fit)
        if new_sum is not None:
            miss_sum, sq_now = new_sum, new_sq
        m = (col_sum + miss_sum[:D]) / n     # mean of the matrix as now imputed
        Tc, VK, TK, ev = _rayleigh_ritz(src, Z, Tc, m, K)
        done = r == START_MAX_ROUNDS - 1
        if VK_prev is not None:
            tot = xx_sum + sq_now - n * float(m @ m)
            s2_hist.append(_sigma2(tot, ev, 0.0, n_obs, D, K))
            done = _round_settled(VK_prev, VK, ev, n, D, n_obs, angles, s2_hist, tol) or done
        imputed = fit is not None
        fit = fit_ext(VK, TK, m, dt)
        if done:
            sq_old, resid = sq_now, 0.0
            if not imputed:
                # missing entries still 0: their residual under this fit counts in full
                resid = src.gather(fit)
            # (after imputation, their residual is the last change of the imputed values,
            # about 1e-5 of the residual of the observed entries: neglected)
            break
        VK_prev = VK
    # residual of the observed entries, for the imputed matrix as it was in the last round
    tot = xx_sum + sq_old - n * float(m @ m)
    s2 = max(_sigma2(tot, ev, resid, n_obs, D, K), 1e-12 * tot / n_obs, 1e-30)
    lam = np.maximum(ev, 0.0) / n
    frac = n_obs / (n * D)          # imputed entries carry no noise
    W = VK * np.sqrt(np.maximum(lam - frac * s2, 1e-3 * lam))
    return W, m, s2, {"rounds": r + 1, "angles_deg": angles, "sigma2": s2_hist}


def _rayleigh_ritz(src, Z, Tc, m, K):
    """One step of subspace iteration after the imputation pass: ``Vp = orth(Z)`` with
    ``Z`` centred on ``m`` (in place), ``T = Xc Vp`` and its Rayleigh-Ritz rotation.

    Book: {ref}`sec-rsca-ppca`

    Parameters
    ----------
    src : SubsampleChunks or helpers.ppca.dask_engine.DaskSubsample
        The subsample.
    Z : ndarray, shape (D, p)
        ``Xs^T Tc`` of the pass just made (changed in place).
    Tc : ndarray, shape (n, p)
        The centred scores that ``Z`` was made with.
    m : ndarray, shape (D,)
        The mean of the imputed matrix.
    K : int

    Returns
    -------
    Tc : ndarray, shape (n, p)
        The new centred scores ``Xc Vp``.
    VK : ndarray, shape (D, K)
        The K leading axes.
    TK : ndarray, shape (n, K)
        Their scores.
    ev : ndarray, shape (K,)
        Their eigenvalues of ``Tc^T Tc``, decreasing.
    """
    Z -= np.outer(m, Tc.sum(axis=0))
    Vp = orth(Z)
    Tc = src.pass_T(Vp) - m @ Vp
    ev, U = np.linalg.eigh(Tc.T @ Tc)
    U = U[:, ::-1][:, :K]
    ev = ev[::-1][:K]
    return Tc, Vp @ U, Tc @ U, ev


def _sigma2(tot, ev, resid, n_obs, D, K):
    """Mean squared residual of the observed entries, ``(||Xc||^2 - sum(ev) - resid) /
    n_obs`` (at least 0), scaled by ``D / (D - K)`` for the fitted dimensions.

    Book: {ref}`sec-rsca-ppca`

    ``tot`` is ``||Xc||^2`` of the imputed matrix, ``ev`` the K eigenvalues kept and
    ``resid`` the residual at the missing entries that ``tot - sum(ev)`` still holds.
    """
    return max(tot - float(np.sum(ev)) - resid, 0.0) / n_obs * D / max(D - K, 1)


def _round_settled(VK_prev, VK, ev, n, D, n_obs, angles, s2_hist, tol):
    """Whether the start can stop after this round; appends the round's subspace change
    (degrees) to ``angles`` (``s2_hist`` holds every round's sigma2, this one's last).

    Book: {ref}`sec-rsca-ppca`

    It can stop when the next change of the subspace, extrapolated from the last two, falls
    below :data:`START_ANGLE_TOL`, counting only axes whose variance stands above 1.5 times
    the noise bulk's edge ``n sigma2 (1 + sqrt(D / n))^2`` (axes inside the bulk, when K is
    larger than the data's rank, keep turning without changing the fit), or when the
    Gaussian objective implied by sigma2 changed by less than half of EM's relative
    tolerance ``tol``.
    """
    edge = n * s2_hist[-1] * (1.0 + np.sqrt(D / n)) ** 2
    k_sig = max(1, int(np.count_nonzero(ev > 1.5 * edge)))
    angles.append(max_angle_deg(VK_prev[:, :k_sig], VK[:, :k_sig]))
    a = angles[-1]
    # the error left is about the next change: a * (a / previous a) when converging
    pred = a * a / angles[-2] if len(angles) > 1 and angles[-2] > a else a
    done = pred < START_ANGLE_TOL
    if len(s2_hist) > 1 and s2_hist[-1] > 0 and s2_hist[-2] > 0:
        # the fit's objective, as far as sigma2 shows it, has settled well within
        # EM's tolerance: what the subspace still does hardly changes the likelihood
        nll_r = 0.5 * n_obs * (np.log(2 * np.pi * s2_hist[-1]) + 1.0)
        dnll = 0.5 * n_obs * abs(np.log(s2_hist[-1] / s2_hist[-2]))
        done = done or dnll < 0.5 * tol * max(abs(nll_r), 0.5 * n_obs)
    return done


def fit_ext(VK, TK, m, dt):
    """``[VK m]`` with a zero row D (padding) and ``[TK 1]``, in the working dtype.

    Book: {ref}`sec-rsca-ppca`
    """
    D, K = VK.shape
    Vext = np.zeros((D + 1, K + 1), dtype=dt)
    Vext[:D, :K] = VK
    Vext[:D, K] = m
    Text = np.ones((TK.shape[0], K + 1), dtype=dt)
    Text[:, :K] = TK
    return Vext, Text


def impute_chunk(xc, lay, Vext, Text, write):
    """Impute the missing entries of one chunk by ``m_d + TK_n . VK_d`` (see
    :func:`start_fit`); ``Vext``/``Text`` from :func:`fit_ext`, ``Text`` the chunk's rows.

    Book: {ref}`sec-rsca-ppca`

    Returns, over the chunk's missing entries, the sum of the old values squared and of the
    squared change (both before writing), and (with ``write``) the per-pixel sums of the new
    values (length D + 1, padding in the last entry zeroed) and the sum of their squares.
    """
    D = Vext.shape[0] - 1
    xflat = xc.reshape(-1)
    sq_old = resid = sq_new = 0.0
    sums = np.zeros(D + 1) if write else None
    for stars, idx, flat in lay.groups():
        if not idx.shape[1]:
            continue
        new = np.matmul(np.take(Vext, idx, axis=0), Text[stars][:, :, None]).reshape(-1)
        old = xflat[flat]
        d = old - new
        sq_old += float(np.dot(old.astype(np.float64), old))
        resid += float(np.dot(d.astype(np.float64), d))
        if write:
            xflat[flat] = new
            sums += np.bincount(idx.reshape(-1), weights=new, minlength=D + 1)
            sq_new += float(np.dot(new.astype(np.float64), new))
    if write:
        sums[D] = 0.0
    return sq_old, resid, sums, sq_new
