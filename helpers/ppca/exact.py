"""The exact E-steps of PPCA: missing fluxes as latent variables, and per-pixel weights.

Book: {ref}`sec-rsca-ppca`

An E-step strategy is made for one fit from its :class:`helpers.ppca.state.FitState` and
called once per EM iteration as ``nll, finish = step(W, m, sigma2)``: ``nll`` is the
observed-data negative log-likelihood at the *input* parameters, and ``finish()`` completes
the iteration and returns the updated ``(W, m, sigma2)``.  The engine calls ``finish`` only
if EM has not converged, so the last iteration costs only the first pass.
:class:`helpers.ppca.fast.FastEStep` follows the same contract.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from helpers.ppca.linalg import (LOG2PI, inv_logdet_pd, logdet_pd, pack_outer, packed_index,
                                 unpack_sym)
from helpers.ppca.state import FitState
from helpers.ppca.threads import blas_threads

__all__ = ["ExactEStep", "WeightedEStep", "exact_params", "posterior_chunk", "impute_chunk_stats",
           "exact_m_step", "weighted_params", "weighted_chunk", "weighted_m_step"]


class ExactEStep:
    """One EM iteration, missing fluxes as latent variables (no weights), in two passes.

    Book: {ref}`sec-rsca-ppca`

    * Pass 1 (likelihood and posteriors), per chunk: one float32 GEMM ``X~ @ [W m]``;
      per group of stars with similar missing counts, one batched product
      ``[W m]_m^T [W m]_m`` (giving ``W_m^T W_m``, ``m_m^T W_m`` and ``m_m . m_m`` at
      once) and one batched Cholesky factorisation and inverse of the ``K x K``
      posterior precisions (:func:`helpers.ppca.linalg.inv_logdet_pd`).  Posterior means
      and covariances are kept for pass 2 (``N K^2`` floats in the working dtype).
    * Pass 2 (M-step statistics), per group: one batched product ``[W m]_m @ [[Sigma,
      z], [0, 1]]`` (the imputed fluxes and ``W_m Sigma`` at once); per chunk one float32
      GEMM ``X~^T @ [Z 1]`` with the imputed fluxes in place.  Then the complete-data
      M-step, a single ``(K+1) x (K+1)`` solve.

    Parameters
    ----------
    state : FitState
    K : int
        Number of components.
    """

    def __init__(self, state: FitState, K: int):
        self.state = state
        self.K = K
        self.post_z = None
        self.post_Minv = None

    def __call__(self, W, m, s2):
        st, K = self.state, self.K
        D, N, dt = st.D, st.N, st.dt
        par = exact_params(W, m, s2, D, K, dt)
        if self.post_z is None:
            self.post_z = np.empty((N, K))
            self.post_Minv = np.empty((N, K, K), dtype=dt)
        Zpost, Mpost = self.post_z, self.post_Minv
        star_cnt = st.star_cnt

        def chunk(a, b, lay, xc):
            return posterior_chunk(xc, lay, st.xx[a:b], star_cnt[a:b], par, Zpost[a:b],
                                   Mpost[a:b])

        nll = float(sum(st.map_chunks(chunk)))

        def finish():
            return self.m_step(par)

        return nll, finish

    def m_step(self, par):
        """Pass 2: sufficient statistics and the M-step; returns the new ``(W, m, sigma2)``."""
        st, K = self.state, self.K
        D, N = st.D, st.N
        Zpost, Mpost = self.post_z, self.post_Minv
        SigS = np.zeros((K, K))             # sum_n Sigma_n, stars with missing pixels
        ex2 = 0.0                           # sum_n E[||x~_n||^2] (all pixels)
        Sxz = np.zeros((D + 1, K + 1))      # (row D: padding, dropped)
        n_full = 0                          # stars without missing pixels

        def chunk(a, b, lay, xc):
            return impute_chunk_stats(xc, lay, st.xx[a:b], Zpost[a:b], Mpost[a:b], par)

        for sig_k, ex2_k, sxz_k, nf_k in st.map_chunks(chunk):
            SigS += sig_k
            ex2 += ex2_k
            Sxz += sxz_k
            n_full += nf_k
        return exact_m_step(SigS, ex2, Sxz, n_full, Zpost.T @ Zpost, Zpost.sum(axis=0), N,
                            float(np.sum(st.star_cnt)), par)


    @staticmethod
    def group_posterior(grp, xx, Y, nobs, par, Z, Minv):
        """Pass 1 for one group of stars: posteriors (written into the chunk's ``Z`` and
        ``Minv``) and the group's negative log-likelihood."""
        stars, idx, _ = grp
        K, s2 = par["K"], par["s2"]
        g, w = idx.shape
        if w:
            WmA = np.take(par["Wext"], idx, axis=0)                 # (g, w, K+1)
            G = np.matmul(WmA.transpose(0, 2, 1), WmA).astype(np.float64)
            M = par["A0"] - G[:, :K, :K]
            bvec = Y[stars, :K] - par["Wtm"] + G[:, K, :K]
            r2 = xx[stars] - 2 * Y[stars, K] + (par["mm_tot"] - G[:, K, K])
            Mi, logdet = inv_logdet_pd(M)
            z = np.matmul(Mi, bvec[:, :, None])[:, :, 0]
            Minv[stars] = Mi
        else:
            bvec = Y[stars, :K] - par["Wtm"]
            r2 = xx[stars] - 2 * Y[stars, K] + par["mm_tot"]
            z = bvec @ par["A0inv"]
            logdet = par["logdet0"]
        Z[stars] = z
        quad = (r2 - np.einsum("ij,ij->i", bvec, z)) / s2
        return 0.5 * float(np.sum(nobs * LOG2PI + (nobs - K) * par["log_s2"] + logdet + quad))

    @staticmethod
    def group_impute(grp, xflat, par, Z, Minv):
        """Pass 2 for one group of stars: imputed fluxes (written into ``xflat``) and the
        group's sums ``(sum Sigma_n, sum ||x^_m||^2, covariance correction, 0)``; for a
        group without missing pixels ``(None, 0, None, g)``."""
        stars, idx, flat = grp
        D, K, dt, s2 = par["D"], par["K"], par["dt"], par["s2"]
        g, w = idx.shape
        if not w:
            return None, 0.0, None, g
        Mi = Minv[stars]
        T = np.zeros((g, K + 1, K + 1), dtype=dt)
        np.multiply(Mi, s2, out=T[:, :K, :K])
        T[:, :K, K] = Z[stars]
        T[:, K, K] = 1
        WmA = np.take(par["Wext"], idx, axis=0)
        RX = np.matmul(WmA, T)              # (g, w, K+1): W_m Sigma | imputed fluxes
        xh = RX[:, :, K]
        xflat[flat] = xh.ravel()            # padding lands in the zero column D
        ex2 = float(np.einsum("ij,ij->", xh, xh, dtype=np.float64))
        P = sp.csc_matrix((np.ones(g * w, dtype=dt), idx.ravel().astype(np.int32),
                           np.arange(g * w + 1, dtype=np.int32)), shape=(D + 1, g * w))
        sig = s2 * Mi.sum(axis=0, dtype=np.float64)
        return sig, ex2, P @ RX.reshape(g * w, K + 1), 0




def exact_params(W, m, s2, D, K, dt) -> dict:
    """What every chunk of an exact E-step shares: ``[W m]`` and the K x K algebra.

    Book: {ref}`sec-rsca-ppca`

    Returns a dict with ``Wext`` ((D+1, K+1) in dtype ``dt``: ``[W m]`` and a zero padding
    row D), ``A0 = s2 I + W^T W`` and its inverse and log-determinant, ``W^T m``, ``m . m``
    and ``sigma2``; small enough to send to every worker of a cluster.
    """
    Wext = np.zeros((D + 1, K + 1), dtype=dt)
    Wext[:D, :K] = W
    Wext[:D, K] = m
    A0 = s2 * np.eye(K) + W.T @ W
    return dict(D=D, K=K, dt=dt, s2=s2, Wext=Wext, A0=A0, A0inv=np.linalg.inv(A0),
                logdet0=float(logdet_pd(A0)), Wtm=W.T @ m, mm_tot=float(m @ m),
                log_s2=np.log(s2))


def posterior_chunk(xc, lay, xx, nobs, par, Z, Minv):
    """Pass 1 of the exact E-step on one chunk: posteriors and negative log-likelihood.

    Book: {ref}`sec-rsca-ppca`

    Parameters
    ----------
    xc : ndarray, shape (n, D + 1)
        The chunk centred on ``mu0``, missing entries and the padding column 0.
    lay : MissingChunk
        Its missing-pixel layout.
    xx : ndarray, shape (n,)
        Each star's sum of squares (of ``xc``).
    nobs : ndarray of int, shape (n,)
        Observed pixels per star.
    par : dict
        :func:`exact_params`.
    Z : ndarray, shape (n, K), float64
        Filled with the posterior means.
    Minv : ndarray, shape (n, K, K)
        Filled with ``M_n^{-1}`` for the stars with missing pixels.

    Returns
    -------
    float
        The chunk's negative log-likelihood (nats).
    """
    Y = (xc @ par["Wext"]).astype(np.float64)  # (n, K+1): W^T x~_o, m . x~_o
    return sum(ExactEStep.group_posterior(grp, xx, Y, nobs[grp[0]], par, Z, Minv)
               for grp in lay.groups())


def impute_chunk_stats(xc, lay, xx, Z, Minv, par):
    """Pass 2 of the exact E-step on one chunk: imputed fluxes and the M-step sums.

    Book: {ref}`sec-rsca-ppca`

    Writes the imputed fluxes into ``xc`` (at the layout's missing entries) and returns
    ``[sum Sigma_n (K, K), sum E||x~_n||^2, sum E[x~ z~^T] ((D+1, K+1)), stars without
    missing pixels]``; ``Z``, ``Minv`` from :func:`posterior_chunk`.
    """
    K, dt = par["K"], par["dt"]
    D = par["D"]
    n = xc.shape[0]
    Za = np.empty((n, K + 1), dtype=dt)
    Za[:, :K] = Z
    Za[:, K] = 1
    xflat = xc.reshape(-1)
    out = [np.zeros((K, K)), 0.0, np.zeros((D + 1, K + 1)), 0]
    for grp in lay.groups():
        sig_g, ex2_g, sc_g, nf = ExactEStep.group_impute(grp, xflat, par, Z, Minv)
        if sc_g is None:
            out[3] += nf
            continue
        out[0] += sig_g
        out[1] += ex2_g
        out[2][:, :K] += sc_g[:, :K]    # column K: the imputed fluxes, already in xc
    out[1] += float(xx.sum())
    out[2] += (xc.T @ Za).astype(np.float64)
    return out


def exact_m_step(SigS, ex2, Sxz, n_full, ZtZ, zsum, N, n_obs, par):
    """The complete-data M-step of the exact E-step from its sums over all stars.

    Book: {ref}`sec-rsca-ppca`

    ``SigS, ex2, Sxz, n_full`` are the sums of :func:`impute_chunk_stats` over the chunks,
    ``ZtZ = sum_n z_n z_n^T`` and ``zsum = sum_n z_n`` of the posterior means, ``n_obs`` the
    number of observed entries.  Returns the new ``(W, m, sigma2)``.
    """
    K, D, s2 = par["K"], par["D"], par["s2"]
    Szz = SigS + n_full * s2 * par["A0inv"] + ZtZ
    # sum_n tr(Sigma_n G_n) = tr(A0 sum_n Sigma_n) - s2 K (per star with missing pixels)
    n_part = N - n_full
    ex2 = ex2 + (float(np.sum(SigS * par["A0"])) - s2 * K * n_part)
    ex2 += float(N * D - n_obs) * s2
    Sxz = Sxz[:D]
    # M-step (complete-data, augmented with the mean offset)
    A = np.empty((K + 1, K + 1))
    A[:K, :K] = Szz
    A[:K, K] = zsum
    A[K, :K] = zsum
    A[K, K] = N
    Wt = np.linalg.solve(A, Sxz.T).T       # (D, K+1)
    s2_new = (ex2 - float(np.sum(Wt * Sxz))) / (N * D)
    s2_new = max(s2_new, 1e-12 * s2)
    return Wt[:, :K].copy(), Wt[:, K].copy(), s2_new


class WeightedEStep:
    """One EM iteration of the weighted (heteroscedastic) model, observed-data EM, one pass.

    Book: {ref}`sec-rsca-ppca`

    The per-star precision ``sigma2 I + W^T Omega_n W`` and the per-pixel ``(K+1) x (K+1)``
    M-step systems are built with dense products against packed ``K(K+1)/2`` outer products,
    costing ``O(N D K^2)`` per iteration.  The M-step is computed in the same pass, so
    ``finish`` only hands it back.  Runs with the machine's BLAS threads.

    Parameters
    ----------
    state : FitState
    K : int
    """

    def __init__(self, state: FitState, K: int):
        self.state = state
        self.K = K

    def __call__(self, W, m, s2):
        with blas_threads(None):
            nll, W_new, m_new, s2_new = self.step(W, m, s2)
        return nll, lambda: (W_new, m_new, s2_new)

    def step(self, W, m, s2):
        """``(nll, W, m, sigma2)``: the objective at the input and the updated parameters."""
        st, K = self.state, self.K
        first = st.xx is None
        if first:
            st.xx = np.zeros(st.N)
        wp = weighted_params(W, m, s2, st.D, K, st.dt)
        A = np.zeros((st.D, K + 1))
        B = np.zeros((st.D, wp["iu1"][0].size))
        wx2 = 0.0
        nll = 0.0
        for k, (a, b) in enumerate(st.chunks):
            xc, obs, om = st.chunk_centered(k)
            nll_k, A_k, B_k, wx2_k, xx = weighted_chunk(
                xc, obs, om, None if first else st.xx[a:b], st.star_cnt[a:b],
                st.logw_sum[a:b], wp)
            if first:
                st.xx[a:b] = xx
            nll += nll_k
            A += A_k
            B += B_k
            wx2 += wx2_k
        W_new, m_new, s2_new = weighted_m_step(A, B, wx2, st.n_obs_total, wp)
        return nll, W_new, m_new, s2_new


def weighted_params(W, m, s2, D, K, dt) -> dict:
    """What every chunk of a weighted E-step shares: packed outer products of ``[W m]``.

    Book: {ref}`sec-rsca-ppca`
    """
    iu = packed_index(K)
    iu1 = packed_index(K + 1)
    kp = iu[0].size
    # columns: packed w_d w_d^T | m_d w_d | m_d^2
    Pm = np.empty((D, kp + K + 1), dtype=dt)
    Pm[:, :kp] = pack_outer(W, iu)
    Pm[:, kp:kp + K] = W * m[:, None]
    Pm[:, kp + K] = m * m
    WA = np.empty((D, K + 1), dtype=dt)
    WA[:, :K] = W
    WA[:, K] = m
    return dict(D=D, K=K, dt=dt, s2=s2, log_s2=np.log(s2), iu=iu, iu1=iu1, kp=kp, Pm=Pm,
                WA=WA)


def weighted_chunk(xc, obs, om, xx, nobs, logw_sum, wp):
    """One chunk of the weighted E-step: its objective and its M-step sums.

    Book: {ref}`sec-rsca-ppca`

    Parameters
    ----------
    xc : ndarray, shape (n, D)
        The chunk centred on ``mu0`` (values at missing pixels are ignored).
    obs : ndarray of bool, shape (n, D)
        Observed pixels.
    om : ndarray, shape (n, D)
        Inverse variances (0 where missing).
    xx : ndarray, shape (n,) or None
        Each star's weighted sum of squares (computed if None).
    nobs, logw_sum : ndarray, shape (n,)
        Observed pixels per star and the sum of their log weights.
    wp : dict
        :func:`weighted_params`.

    Returns
    -------
    nll, A ((D, K+1)), B ((D, (K+1)(K+2)/2)), sum of xx, xx
    """
    K, dt, s2, iu, iu1, kp = wp["K"], wp["dt"], wp["s2"], wp["iu"], wp["iu1"], wp["kp"]
    eyeK = np.eye(K)
    xc[~obs] = 0
    xw = xc * om
    if xx is None:
        xx = np.einsum("ij,ij->i", xw, xc, dtype=np.float64)
    Y = (xw @ wp["WA"]).astype(np.float64)
    Gp = (om @ wp["Pm"]).astype(np.float64)
    G = unpack_sym(Gp[:, :kp], K, iu)
    M = s2 * eyeK + G
    bvec = Y[:, :K] - Gp[:, kp:kp + K]
    r2 = xx - 2 * Y[:, K] + Gp[:, kp + K]
    Minv = np.linalg.inv(M)
    logdet = logdet_pd(M)
    z = np.matmul(Minv, bvec[:, :, None])[:, :, 0]
    quad = (r2 - np.einsum("ij,ij->i", bvec, z)) / s2
    nll = 0.5 * float(np.sum(nobs * LOG2PI - logw_sum + (nobs - K) * wp["log_s2"] + logdet
                             + quad))
    S = s2 * Minv + z[:, :, None] * z[:, None, :]
    n = xc.shape[0]
    St = np.empty((n, K + 1, K + 1))
    St[:, :K, :K] = S
    St[:, :K, K] = z
    St[:, K, :K] = z
    St[:, K, K] = 1
    Za = np.empty((n, K + 1), dtype=dt)
    Za[:, :K] = z
    Za[:, K] = 1
    A = (xw.T @ Za).astype(np.float64)
    B = (om.T @ St[:, iu1[0], iu1[1]].astype(dt)).astype(np.float64)
    return nll, A, B, float(xx.sum()), xx


def weighted_m_step(A, B, wx2, n_obs, wp):
    """The weighted M-step (one (K+1) x (K+1) solve per pixel) from the chunks' sums.

    Book: {ref}`sec-rsca-ppca`

    Returns the new ``(W, m, sigma2)``.
    """
    K, s2, iu1 = wp["K"], wp["s2"], wp["iu1"]
    Bf = unpack_sym(B, K + 1, iu1)
    ridge = 1e-10 * np.trace(Bf, axis1=1, axis2=2) / (K + 1)
    Bf[:, np.arange(K + 1), np.arange(K + 1)] += ridge[:, None]
    Wt = np.linalg.solve(Bf, A[:, :, None])[:, :, 0]
    s2_new = (wx2 - float(np.sum(Wt * A))) / n_obs
    s2_new = max(s2_new, 1e-12 * s2)
    return Wt[:, :K].copy(), Wt[:, K].copy(), s2_new
