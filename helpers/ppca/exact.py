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

__all__ = ["ExactEStep", "WeightedEStep"]


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
        WtW = W.T @ W
        Wtm = W.T @ m
        mm_tot = float(m @ m)
        # extended [W m] with a zero row D (padding of the missing-pixel index lists)
        Wext = np.zeros((D + 1, K + 1), dtype=dt)
        Wext[:D, :K] = W
        Wext[:D, K] = m
        A0 = s2 * np.eye(K) + WtW
        A0inv = np.linalg.inv(A0)
        logdet0 = float(logdet_pd(A0))
        star_cnt = st.star_cnt
        if self.post_z is None:
            self.post_z = np.empty((N, K))
            self.post_Minv = np.empty((N, K, K), dtype=dt)
        Zpost, Mpost = self.post_z, self.post_Minv
        par = dict(D=D, K=K, dt=dt, s2=s2, Wext=Wext, A0=A0, A0inv=A0inv, logdet0=logdet0,
                   Wtm=Wtm, mm_tot=mm_tot, log_s2=np.log(s2), Zpost=Zpost, Mpost=Mpost)

        def chunk(a, b, lay, xc):
            Y = (xc @ Wext).astype(np.float64)  # (n, K+1): W^T x~_o, m . x~_o
            xx = st.xx[a:b]
            return sum(self.group_posterior(grp, xx, Y, star_cnt[a + grp[0]], a, par)
                       for grp in lay.groups())

        nll = float(sum(st.map_chunks(chunk)))

        def finish():
            return self.m_step(par)

        return nll, finish

    def m_step(self, par):
        """Pass 2: sufficient statistics and the M-step; returns the new ``(W, m, sigma2)``."""
        st, K = self.state, self.K
        D, N, dt, s2 = st.D, st.N, st.dt, par["s2"]
        Zpost = par["Zpost"]
        star_cnt = st.star_cnt
        # sum_n E[x~_n z~_n^T] including, at missing (n, d), [w_d^T Sigma_n | x^_nd]
        Sxz = np.zeros((D + 1, K + 1))      # (row D: padding, dropped)
        SigS = np.zeros((K, K))             # sum_n Sigma_n, stars with missing pixels
        ex2 = 0.0                           # sum_n E[||x~_n||^2] (all pixels)
        n_full = 0                          # stars without missing pixels

        def chunk(a, b, lay, xc):
            Za = np.empty((b - a, K + 1), dtype=dt)
            Za[:, :K] = Zpost[a:b]
            Za[:, K] = 1
            xflat = xc.reshape(-1)
            out = [np.zeros((K, K)), 0.0, np.zeros((D + 1, K + 1)), 0]
            for grp in lay.groups():
                sig_g, ex2_g, sc_g, nf = self.group_impute(grp, xflat, a, par)
                if sc_g is None:
                    out[3] += nf
                    continue
                out[0] += sig_g
                out[1] += ex2_g
                out[2][:, :K] += sc_g[:, :K]    # column K: the imputed fluxes, already in xc
            out[1] += float(st.xx[a:b].sum())
            out[2] += (xc.T @ Za).astype(np.float64)
            return out

        for sig_k, ex2_k, sxz_k, nf_k in st.map_chunks(chunk):
            SigS += sig_k
            ex2 += ex2_k
            Sxz += sxz_k
            n_full += nf_k
        Zall = Zpost
        Szz = SigS + n_full * s2 * par["A0inv"] + Zall.T @ Zall
        zsum = Zall.sum(axis=0)
        # sum_n tr(Sigma_n G_n) = tr(A0 sum_n Sigma_n) - s2 K (per star with missing pixels)
        n_part = N - n_full
        ex2 += float(np.sum(SigS * par["A0"])) - s2 * K * n_part
        ex2 += float(N * D - np.sum(star_cnt)) * s2
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

    @staticmethod
    def group_posterior(grp, xx, Y, nobs, a, par):
        """Pass 1 for one group of stars: posteriors (kept in ``par``) and the group's
        negative log-likelihood.  Groups write disjoint rows, so they can run in threads."""
        stars, idx, _ = grp
        K, s2 = par["K"], par["s2"]
        g, w = idx.shape
        if w:
            WmA = np.take(par["Wext"], idx, axis=0)                 # (g, w, K+1)
            G = np.matmul(WmA.transpose(0, 2, 1), WmA).astype(np.float64)
            M = par["A0"] - G[:, :K, :K]
            bvec = Y[stars, :K] - par["Wtm"] + G[:, K, :K]
            r2 = xx[stars] - 2 * Y[stars, K] + (par["mm_tot"] - G[:, K, K])
            Minv, logdet = inv_logdet_pd(M)
            z = np.matmul(Minv, bvec[:, :, None])[:, :, 0]
            par["Mpost"][a + stars] = Minv
        else:
            bvec = Y[stars, :K] - par["Wtm"]
            r2 = xx[stars] - 2 * Y[stars, K] + par["mm_tot"]
            z = bvec @ par["A0inv"]
            logdet = par["logdet0"]
        par["Zpost"][a + stars] = z
        quad = (r2 - np.einsum("ij,ij->i", bvec, z)) / s2
        return 0.5 * float(np.sum(nobs * LOG2PI + (nobs - K) * par["log_s2"] + logdet + quad))

    @staticmethod
    def group_impute(grp, xflat, a, par):
        """Pass 2 for one group of stars: imputed fluxes (written into ``xflat``) and the
        group's sums ``(sum Sigma_n, sum ||x^_m||^2, covariance correction, 0)``; for a
        group without missing pixels ``(None, 0, None, g)``."""
        stars, idx, flat = grp
        D, K, dt, s2 = par["D"], par["K"], par["dt"], par["s2"]
        g, w = idx.shape
        if not w:
            return None, 0.0, None, g
        Minv = par["Mpost"][a + stars]
        T = np.zeros((g, K + 1, K + 1), dtype=dt)
        np.multiply(Minv, s2, out=T[:, :K, :K])
        T[:, :K, K] = par["Zpost"][a + stars]
        T[:, K, K] = 1
        WmA = np.take(par["Wext"], idx, axis=0)
        RX = np.matmul(WmA, T)              # (g, w, K+1): W_m Sigma | imputed fluxes
        xh = RX[:, :, K]
        xflat[flat] = xh.ravel()            # padding lands in the zero column D
        ex2 = float(np.einsum("ij,ij->", xh, xh, dtype=np.float64))
        P = sp.csc_matrix((np.ones(g * w, dtype=dt), idx.ravel().astype(np.int32),
                           np.arange(g * w + 1, dtype=np.int32)), shape=(D + 1, g * w))
        sig = s2 * Minv.sum(axis=0, dtype=np.float64)
        return sig, ex2, P @ RX.reshape(g * w, K + 1), 0


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
        D, N, dt = st.D, st.N, st.dt
        first = st.xx is None
        if first:
            st.xx = np.zeros(N)
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
        eyeK = np.eye(K)
        A = np.zeros((D, K + 1))
        B = np.zeros((D, iu1[0].size))
        wx2 = 0.0
        nll = 0.0
        log_s2 = np.log(s2)
        for k, (a, b) in enumerate(st.chunks):
            xc, obs, om = st.chunk_centered(k)
            xc[~obs] = 0
            xw = xc * om
            if first:
                st.xx[a:b] = np.einsum("ij,ij->i", xw, xc, dtype=np.float64)
            xx = st.xx[a:b]
            Y = (xw @ WA).astype(np.float64)
            Gp = (om @ Pm).astype(np.float64)
            G = unpack_sym(Gp[:, :kp], K, iu)
            M = s2 * eyeK + G
            bvec = Y[:, :K] - Gp[:, kp:kp + K]
            r2 = xx - 2 * Y[:, K] + Gp[:, kp + K]
            Minv = np.linalg.inv(M)
            logdet = logdet_pd(M)
            z = np.matmul(Minv, bvec[:, :, None])[:, :, 0]
            nobs = st.star_cnt[a:b]
            quad = (r2 - np.einsum("ij,ij->i", bvec, z)) / s2
            nll += 0.5 * float(np.sum(nobs * LOG2PI - st.logw_sum[a:b]
                                      + (nobs - K) * log_s2 + logdet + quad))
            S = s2 * Minv + z[:, :, None] * z[:, None, :]
            n = b - a
            St = np.empty((n, K + 1, K + 1))
            St[:, :K, :K] = S
            St[:, :K, K] = z
            St[:, K, :K] = z
            St[:, K, K] = 1
            Za = np.empty((n, K + 1), dtype=dt)
            Za[:, :K] = z
            Za[:, K] = 1
            A += (xw.T @ Za).astype(np.float64)
            B += (om.T @ St[:, iu1[0], iu1[1]].astype(dt)).astype(np.float64)
            wx2 += float(xx.sum())
        Bf = unpack_sym(B, K + 1, iu1)
        ridge = 1e-10 * np.trace(Bf, axis1=1, axis2=2) / (K + 1)
        Bf[:, np.arange(K + 1), np.arange(K + 1)] += ridge[:, None]
        Wt = np.linalg.solve(Bf, A[:, :, None])[:, :, 0]
        s2_new = (wx2 - float(np.sum(Wt * A))) / st.n_obs_total
        s2_new = max(s2_new, 1e-12 * s2)
        return nll, Wt[:, :K].copy(), Wt[:, K].copy(), s2_new
