"""Fast E-step for :class:`helpers.ppca.PPCA` (``method="fast"``): no per-star K x K products.

Book: {ref}`sec-rsca-ppca`

The exact missing-as-latent EM of :mod:`helpers.ppca.exact` needs, for every star ``n``, the
posterior precision ``M_n = A - G_n`` with the shared ``A = sigma2 I + W^T W`` and the
star's ``G_n = W_m^T W_m`` (rows of ``W`` at its missing pixels).  Building ``G_n`` costs
``m_n K^2`` flops per star and its inverse a small LAPACK call per star; at the paper's scale
that, not the large products, dominates an iteration.  This module replaces it by

* **posterior means, exact to a stated tolerance**: ``M_n z_n = b_n`` is solved by
  preconditioned conjugate gradients, batched over a group of stars, with the shared
  preconditioner ``A^{-1}``.  Each CG step needs only ``G_n p = W_m^T (W_m p)`` (two batched
  matrix-vector products over the gathered rows ``W_m``, ``2 m_n K`` flops per star) and
  ``K x K`` products shared by the whole group.  ``A^{-1} M_n = I - A^{-1} G_n`` has its
  spectrum in ``[1 - rho_n, 1]`` with ``rho_n`` about the missing fraction, so CG stops
  (``||r_n||_{A^-1} <= CG_TOL ||b_n||_{A^-1}`` for every star of the group) after 3-5 steps.
  The imputed missing fluxes ``W_m z_n + mu_m`` and the quadratic term of the likelihood
  ``(r2_n - b_n . z_n) / sigma2`` are then exact up to that tolerance.
* **sums over stars of the posterior covariances, by a series**: the M-step and the
  likelihood only need sums over stars of ``M_n^{-1}`` (``sum_n Sigma_n``), of
  ``w_j^T M_n^{-1}`` over the stars missing pixel ``j`` (the covariance correction of the
  imputed fluxes), of ``tr(M_n^{-1} G_n)`` and of ``log det M_n``.  With
  ``M_n^{-1} = A^{-1} + A^{-1} G_n A^{-1} + A^{-1} G_n A^{-1} G_n A^{-1} + ...`` the first-order
  sums need only ``sum_n G_n = W^T diag(c) W`` (``c_j``: number of stars missing pixel j).
  The second-order sums need the co-missing counts ``C_ij`` (stars missing both i and j);
  they are approximated by ``C_ij ~ c_i c_j / N`` for ``i != j`` (missingness independent
  across pixels), exact on the diagonal.  This is the **only approximation** of the fast
  method; what it costs is measured against the exact engine in
  ``benchmarks/README_ppca.md`` and ``tests/test_ppca_fast.py``.  Because of it the fast
  EM is not exactly EM: ``history_`` (whose ``log det`` part is the same series) need not be
  exactly monotone, and the fixed point differs slightly from the maximum-likelihood one.

Everything else (chunked streaming, float32 large products with float64 accumulators, the
complete-data M-step, determinism) is shared with the exact engine.
"""
from __future__ import annotations

import numpy as np

from helpers.ppca.layout import missing_per_pixel
from helpers.ppca.linalg import LOG2PI, logdet_pd
from helpers.ppca.state import FitState

__all__ = ["FastEStep", "series_terms", "fast_params", "fast_posterior_chunk", "fast_fill_chunk",
           "fast_m_step", "CG_TOL", "CG_MAXITER", "SERIES_ORDER"]

#: relative tolerance of the conjugate-gradient solves, in the A^{-1} norm
CG_TOL = 1e-6


#: maximum number of CG steps per group of stars
CG_MAXITER = 30


#: order of the series for the sums of posterior covariances (1 or 2)
SERIES_ORDER = 2


def series_terms(W, s2, c, N, order):
    """Sums over stars needed by the M-step and the likelihood (float64).

    Book: {ref}`sec-rsca-ppca`

    Returns ``(SigSum, Scorr, trMG, logdet_sum)``:

    * ``SigSum ~ sum_n Sigma_n`` (``Sigma_n = s2 M_n^{-1}``), K x K;
    * ``Scorr ~ [sum over stars n missing j of w_j^T Sigma_n]_j``, D x K;
    * ``trMG ~ sum_n tr(Sigma_n G_n)``;
    * ``logdet_sum ~ sum_n log det M_n``.
    """
    K = W.shape[1]
    A = s2 * np.eye(K) + W.T @ W
    Ainv = np.linalg.inv(A)
    Ainv = 0.5 * (Ainv + Ainv.T)
    U = W @ Ainv                                 # rows u_j = A^{-1} w_j
    d = np.einsum("ij,ij->i", W, U)              # P_jj = w_j^T A^{-1} w_j
    Gsum = W.T @ (c[:, None] * W)                # sum_n G_n
    AG = Ainv @ Gsum
    Msum = N * Ainv + AG @ Ainv                  # sum_n M_n^{-1}, first order
    tr1 = float(np.trace(AG))
    Scorr = c[:, None] * U                       # zeroth order
    trMG = tr1
    logdet = N * float(logdet_pd(A)) - tr1
    if order >= 2:
        # T2 = sum_n G_n A^{-1} G_n = W^T (C o P) W, with C_ij ~ c_i c_j / N off the diagonal
        cd = c * d
        T2 = W.T @ ((cd - c * cd / N)[:, None] * W) + (Gsum @ Ainv @ Gsum) / N
        T2 = 0.5 * (T2 + T2.T)
        Msum += Ainv @ T2 @ Ainv
        tr2 = float(np.sum(Ainv * T2))
        trMG += tr2
        logdet -= 0.5 * tr2
        # w_j^T A^{-1} (sum over stars missing j of G_n) A^{-1}
        Scorr += c[:, None] * ((d - cd / N)[:, None] * U + (U @ (Gsum @ Ainv)) / N)
    Msum = 0.5 * (Msum + Msum.T)
    return s2 * Msum, s2 * Scorr, s2 * trMG, logdet


def _group_fast(grp, xx, Y, nobs, par, Z):
    """Pass 1 for one group of stars: CG posterior means (written into the chunk's ``Z``),
    the group's negative log-likelihood (without the log-determinants) and its number of CG
    steps."""
    stars, idx, _ = grp
    K, dt = par["K"], par["dt"]
    A, Ainv = par["A"], par["Ainv"]
    g, w = idx.shape
    if w == 0:
        b = Y[stars, :K] - par["Wtm"]
        r2 = xx[stars] - 2 * Y[stars, K] + par["mm_tot"]
        z = b @ Ainv
        n_cg = 0
    else:
        WmA = np.take(par["Wext"], idx, axis=0)              # (g, w, K+1) float32
        WmT = WmA.transpose(0, 2, 1)
        pe = np.zeros((g, K + 1, 1), dtype=dt)

        def gapply(p):
            """[G_n p_n]_n (p: (g, K) float64) and, with p = e_K, [W_m^T m_m, m_m . m_m]."""
            pe[:, :K, 0] = p
            return np.matmul(WmT, np.matmul(WmA, pe))[:, :, 0].astype(np.float64)

        pe[:, K, 0] = 1
        t = gapply(np.zeros((g, K)))                          # [W_m^T m_m | m_m . m_m]
        pe[:, K, 0] = 0
        b = Y[stars, :K] - par["Wtm"] + t[:, :K]
        r2 = xx[stars] - 2 * Y[stars, K] + (par["mm_tot"] - t[:, K])
        # preconditioned CG on M_n z = b_n, M_n = A - G_n, preconditioner A^{-1}
        z = b @ Ainv
        bn = np.einsum("ij,ij->i", b, z)                       # ||b||^2 in the A^{-1} norm
        r = gapply(z)[:, :K]                                   # b - M z = G z since A z = b
        y = r @ Ainv
        ry = np.einsum("ij,ij->i", r, y)
        p = y.copy()
        thr = (CG_TOL ** 2) * bn
        n_cg = 0
        while n_cg < CG_MAXITER and np.any(ry > thr):
            q = p @ A - gapply(p)[:, :K]
            pq = np.einsum("ij,ij->i", p, q)
            act = ry > thr
            alpha = np.where(act, ry / np.where(act, pq, 1.0), 0.0)
            z += alpha[:, None] * p
            r -= alpha[:, None] * q
            y = r @ Ainv
            ry_new = np.einsum("ij,ij->i", r, y)
            beta = np.where(act, ry_new / np.where(ry > 0, ry, 1.0), 0.0)
            p = y + beta[:, None] * p
            ry = ry_new
            n_cg += 1
    Z[stars] = z
    quad = (r2 - np.einsum("ij,ij->i", b, z)) / par["s2"]
    nll = 0.5 * float(np.sum(nobs * LOG2PI + (nobs - K) * par["log_s2"] + quad))
    return nll, n_cg


def _group_fill(grp, xflat, par, Z):
    """Pass 2 for one group: write the imputed fluxes ``W_m z_n + mu_m`` into ``xflat``
    (padding lands in the zero column D) and return their sum of squares."""
    stars, idx, flat = grp
    if not idx.shape[1]:
        return 0.0
    K = par["K"]
    z = np.ones((stars.size, K + 1, 1), dtype=par["dt"])
    z[:, :K, 0] = Z[stars]
    xh = np.matmul(np.take(par["Wext"], idx, axis=0), z)[:, :, 0]
    xflat[flat] = xh.ravel()
    return float(np.einsum("ij,ij->", xh, xh, dtype=np.float64))



class FastEStep:
    """One fast EM iteration (missing fluxes latent, no weights).

    Book: {ref}`sec-rsca-ppca`

    Same contract as :class:`helpers.ppca.exact.ExactEStep`: ``nll, finish = step(W, m,
    sigma2)`` returns the (series-approximated) observed-data negative log-likelihood at the
    input parameters and a function that completes the iteration (imputed fluxes, second
    product, M-step) and returns the new parameters.

    Parameters
    ----------
    state : FitState
    K : int

    Attributes
    ----------
    cg_steps : list of int
        Largest number of CG steps of any group, per iteration.
    """

    def __init__(self, state: FitState, K: int):
        self.state = state
        self.K = K
        self.post_z = None
        self.cg_steps = []
        self._c = None

    def missing_counts(self):
        """c_j = number of stars missing pixel j (from the missing-pixel layouts)."""
        if self._c is None:
            self._c = missing_per_pixel(self.state.layouts, self.state.D)
        return self._c

    def __call__(self, W, m, s2):
        st, K = self.state, self.K
        D, N, dt = st.D, st.N, st.dt
        c = self.missing_counts()
        par = fast_params(W, m, s2, D, K, dt)
        if self.post_z is None:
            self.post_z = np.empty((N, K))
        Zall = self.post_z
        star_cnt = st.star_cnt

        def chunk1(a, b, lay, xc):
            return fast_posterior_chunk(xc, lay, st.xx[a:b], star_cnt[a:b], par, Zall[a:b])

        res = st.map_chunks(chunk1)
        nll = float(sum(r[0] for r in res))
        n_cg_max = max(r[1] for r in res)
        series = series_terms(W, s2, c, N, SERIES_ORDER)
        nll += 0.5 * series[3]
        self.cg_steps.append(n_cg_max)

        def finish():
            def chunk2(a, b, lay, xc):
                return fast_fill_chunk(xc, lay, st.xx[a:b], Zall[a:b], par)

            Sxz = np.zeros((D + 1, K + 1))
            ex2 = 0.0
            for ex2_k, sxz_k in st.map_chunks(chunk2):
                ex2 += ex2_k
                Sxz += sxz_k
            return fast_m_step(ex2, Sxz, Zall.T @ Zall, Zall.sum(axis=0), series, c, N, par)

        return nll, finish


def fast_params(W, m, s2, D, K, dt) -> dict:
    """What every chunk of a fast E-step shares: ``[W m]`` and ``A = s2 I + W^T W``.

    Book: {ref}`sec-rsca-ppca`
    """
    A = s2 * np.eye(K) + W.T @ W
    Ainv = np.linalg.inv(A)
    Ainv = 0.5 * (Ainv + Ainv.T)
    Wext = np.zeros((D + 1, K + 1), dtype=dt)
    Wext[:D, :K] = W
    Wext[:D, K] = m
    return dict(D=D, K=K, dt=dt, s2=s2, log_s2=np.log(s2), A=A, Ainv=Ainv, Wext=Wext,
                Wtm=W.T @ m, mm_tot=float(m @ m))


def fast_posterior_chunk(xc, lay, xx, nobs, par, Z):
    """Pass 1 of the fast E-step on one chunk (arguments as
    :func:`helpers.ppca.exact.posterior_chunk`): posterior means into ``Z`` (n, K).

    Book: {ref}`sec-rsca-ppca`

    Returns
    -------
    nll : float
        The chunk's negative log-likelihood without the log-determinants.
    n_cg : int
        The largest number of CG steps of its groups.
    """
    Y = (xc @ par["Wext"]).astype(np.float64)
    res = [_group_fast(grp, xx, Y, nobs[grp[0]], par, Z) for grp in lay.groups()]
    return sum(r[0] for r in res), max(r[1] for r in res)


def fast_fill_chunk(xc, lay, xx, Z, par):
    """Pass 2 of the fast E-step on one chunk: imputed fluxes written into ``xc``; returns
    ``(sum E||x~_n||^2 without the covariance terms, sum x~ [z 1]^T ((D+1, K+1)))``.

    Book: {ref}`sec-rsca-ppca`
    """
    K, dt = par["K"], par["dt"]
    xflat = xc.reshape(-1)
    ex2 = sum(_group_fill(grp, xflat, par, Z) for grp in lay.groups())
    ex2 += float(xx.sum())
    Za = np.empty((xc.shape[0], K + 1), dtype=dt)
    Za[:, :K] = Z
    Za[:, K] = 1
    return ex2, (xc.T @ Za).astype(np.float64)


def fast_m_step(ex2, Sxz, ZtZ, zsum, series, c, N, par):
    """The M-step of the fast E-step from the chunks' sums and :func:`series_terms`.

    Book: {ref}`sec-rsca-ppca`

    Returns the new ``(W, m, sigma2)``.
    """
    K, D, s2 = par["K"], par["D"], par["s2"]
    SigSum, Scorr, trMG, _ = series
    Szz = SigSum + ZtZ
    ex2 += float(c.sum()) * s2 + trMG
    Sxz = Sxz[:D].copy()
    Sxz[:, :K] += Scorr
    Am = np.empty((K + 1, K + 1))
    Am[:K, :K] = Szz
    Am[:K, K] = zsum
    Am[K, :K] = zsum
    Am[K, K] = N
    Wt = np.linalg.solve(Am, Sxz.T).T
    s2_new = (ex2 - float(np.sum(Wt * Sxz))) / (N * D)
    s2_new = max(s2_new, 1e-12 * s2)
    return Wt[:, :K].copy(), Wt[:, K].copy(), s2_new
