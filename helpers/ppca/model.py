"""Probabilistic PCA with missing pixels: a deterministic, chunked, float32-friendly engine.

Book: {ref}`sec-rsca-ppca`

The model (Tipping & Bishop 1999) for one spectrum ``x`` of ``D`` pixels is

    x = W z + mu + eps,    z ~ N(0, I_K),    eps ~ N(0, sigma2 * diag(1 / omega)),

with ``W`` the ``(D, K)`` loading matrix, ``mu`` the mean spectrum and ``sigma2`` the noise
variance.  ``omega`` is 1 for an observed pixel and 0 for a missing one (the paper's setting,
isotropic noise); with per-pixel ``weights`` it is the inverse variance of the flux, and
``sigma2`` becomes a dimensionless factor multiplying the reported variances (1 if the flux
errors are right and the rank-K model is complete).

Two EM algorithms are implemented, both exact EM for the likelihood of the *observed* pixels
only (the log-likelihood never decreases, and ``history_`` records it):

* **missing-as-latent EM** (no ``weights``): the missing fluxes are latent variables along with
  ``z``.  The E-step uses each star's exact posterior ``p(z | x_observed)`` (precision
  ``M_n = sigma2 I + W_o^T W_o``, built as ``W^T W - W_m^T W_m`` from the few rows ``W_m`` at
  that star's missing pixels), and the exact conditional moments of the missing fluxes.  The
  M-step is then the complete-data one: a single ``(K+1) x (K+1)`` solve.  The heavy work is
  two float32 matrix-matrix products per chunk of stars, ``X_chunk @ W`` and
  ``X_chunk^T @ Z``; the missing pixels cost ``O(n_missing * K^2)`` in small batched products.
* **weighted EM** (``weights`` given): the per-star precision ``sigma2 I + W^T Omega_n W`` and
  the per-pixel ``(K+1) x (K+1)`` M-step systems are built with dense products against
  packed ``K(K+1)/2`` outer products, costing ``O(N D K^2)`` per iteration: roughly K/2 times
  the unweighted engine.  It is meant for the chapter's comparison at tens of thousands of
  stars, not for the full survey.

Both start deterministically from a rank-K fit of a (seeded) random subsample of at most
``n_init_rows`` stars whose missing entries are imputed by the fit itself (a few cheap rounds
of subspace iteration and hard imputation, :func:`helpers.ppca.start.start_fit`): from there EM usually meets
its tolerance after one M-step, where a start from mean-imputed data leaves the subspace
several degrees away.  They visit chunks in a fixed order and sum per-chunk results in that
order in float64, so that the same ``random_state`` gives the same result bit for bit.

When all stars fit in the start's subsample (N <= ``n_init_rows``) the centred copy made for
the start (float32, N x D) is kept and every pass works on it.  Otherwise the data are
read chunk by chunk and never copied whole: a ``numpy.memmap`` of float32 flux with a separate
boolean mask works as is.  Each EM iteration is two passes: the first gives the objective
and the posteriors, the second (skipped once EM has converged) the M-step.  Chunks run in a
small pool of threads, one BLAS thread each.  Speed, memory and the comparison with the
paper's ``pyppca`` are measured in ``benchmarks/README_ppca.md``.
"""
from __future__ import annotations

import numpy as np

from helpers.ppca.chunks import read_chunk
from helpers.ppca.dask_engine import fit_em_dask, is_dask_array
from helpers.ppca.engine import fit_em
from helpers.ppca.layout import missing_layout
from helpers.ppca.linalg import pack_outer, packed_index, unpack_sym
from helpers.ppca.threads import blas_threads

__all__ = ["PPCA", "fit_ppca", "ENGINE_VERSION"]

#: bumped whenever a change of the engine can change its results (start, stopping, algebra);
#: caches of fitted models include it in their keys
ENGINE_VERSION = "2"


class PPCA:
    """Probabilistic PCA with missing pixels (and optional per-pixel error weights).

    Book: {ref}`sec-rsca-ppca`

    Parameters
    ----------
    n_components : int
        Number of latent dimensions K (the paper uses K = 30).
    tol : float, default 1e-5
        Stopping tolerance on the **relative change of the objective**, the negative
        log-likelihood of the observed pixels ``L``: EM stops as soon as
        ``|L_t - L_{t-1}| <= tol * |L_t|`` (``L_t`` after t M-steps).  This is the same kind
        of criterion as pyppca's (which uses 1e-4 on its own, variational, objective).  The
        largest principal angle between successive subspaces is recorded too
        (``angle_history_``).  With float32 data the objective itself is resolved to about
        1e-6 relative (rounding in ``x . x - b . z``), so tolerances below ~1e-6 need
        ``dtype=np.float64``.  A small objective change does not mean that weakly
        determined trailing components have stopped rotating: check ``angle_history_``.
    max_iter : int, default 500
        Maximum number of EM iterations (M-steps).
    random_state : int, default 0
        Seed of the subsample and of the random sketch used to start EM.  Same seed, same
        data: same result bit for bit.
    chunk_size : int, default 2048
        Stars per chunk.  Memory is ``O(chunk_size * D)`` plus ``O(D K^2)`` accumulators,
        independent of N (plus the missing-pixel index, 4 bytes per missing entry).
    dtype : numpy dtype, default float32
        Precision of the data and of the large matrix products.  Accumulators, the K x K
        algebra and the parameters are always float64.
    n_init_rows : int, default 20000
        Size of the seeded random subsample of stars whose rank-K fit (missing entries
        imputed by the fit) gives the starting point.  With N <= n_init_rows every star is
        used and the centred float32 copy is kept for the whole fit (4 N D bytes).
    verbose : bool, default False
        Print the objective and timing at each iteration.
    method : {"exact", "fast"}, default "exact"
        E-step of the (unweighted) missing-pixel EM.  ``"exact"``: each star's exact
        posterior (per-star K x K algebra).  ``"fast"``: posterior means by batched
        conjugate gradients (exact to 1e-6 relative) and the sums over stars of the posterior
        covariances by a second-order series around ``sigma2 I + W^T W`` (see
        :mod:`helpers.ppca.fast`; measured differences to ``"exact"`` in
        ``benchmarks/README_ppca.md``).  Not available with ``weights``.

    Attributes
    ----------
    components_ : ndarray, shape (K, D)
        Orthonormal principal axes, sorted by decreasing variance (signs fixed so that the
        largest-magnitude entry of each axis is positive).
    explained_variance_ : ndarray, shape (K,)
        Variance along each axis in the model, ``s_k^2 + noise_variance_``.
    mean_ : ndarray, shape (D,)
        Maximum-likelihood mean spectrum.
    noise_variance_ : float
        ``sigma2`` (flux units squared; a dimensionless factor on ``1/weights`` if weights
        were used).
    W_ : ndarray, shape (D, K)
        Loading matrix in the canonical rotation ``components_.T * sqrt(explained - sigma2)``.
    n_iter_ : int
        Number of EM iterations (M-steps) run.
    history_ : ndarray, shape (n_iter_ + 1,)
        Negative log-likelihood of the observed pixels after 0, 1, ... M-steps (nats).
    angle_history_ : ndarray, shape (n_iter_,)
        Largest principal angle (degrees) between subspaces of successive iterations.
    converged_ : bool
        Whether the tolerance was reached before ``max_iter``.
    timings_ : dict
        Wall time of the set-up pass (``scan``), the ``start``, and each iteration
        (``iterations``; the last entry is the objective-only pass that found convergence
        or hit ``max_iter``), in seconds.
    start_info_ : dict
        ``rounds`` of the start, the largest principal angle (degrees) between the subspaces
        of successive rounds (``angles_deg``) and the noise variance after each of them
        (``sigma2``).
    """

    def __init__(self, n_components, *, tol=1e-5, max_iter=500, random_state=0,
                 chunk_size=2048, dtype=np.float32, n_init_rows=20000, verbose=False,
                 method="exact"):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.chunk_size = chunk_size
        self.dtype = dtype
        self.n_init_rows = n_init_rows
        self.verbose = verbose
        self.method = method

    # ---------------------------------------------------------------------------- checks
    def _check_params(self):
        K = self.n_components
        if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 1:
            raise ValueError(f"n_components must be a positive integer, got {K!r}")
        if not (np.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        nir = self.n_init_rows
        if not isinstance(nir, (int, np.integer)) or isinstance(nir, bool) or nir <= K:
            raise ValueError(f"n_init_rows must be an integer > n_components={K} (the start fits "
                             f"K components to that many stars), got {nir!r}")
        if not isinstance(self.chunk_size, (int, np.integer)) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size!r}")
        dt = np.dtype(self.dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {dt}")
        if self.method not in ("exact", "fast"):
            raise ValueError(f"method must be 'exact' or 'fast', got {self.method!r}")
        return dt

    @staticmethod
    def _check_arrays(X, mask, weights, D_expected=None):
        if not hasattr(X, "shape") or not hasattr(X, "dtype"):
            X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be a 2-D array (n_stars, n_pixels), got shape {X.shape}")
        if not np.issubdtype(X.dtype, np.floating):
            if np.issubdtype(X.dtype, np.number):
                X = np.asarray(X, dtype=np.float64)
            else:
                raise TypeError(f"X must hold floating-point fluxes, got dtype {X.dtype}")
        N, D = X.shape
        if N == 0 or D == 0:
            raise ValueError(f"X is empty (shape {X.shape})")
        if D_expected is not None and D != D_expected:
            raise ValueError(f"X has {D} pixels per star but the model was fitted with "
                             f"{D_expected}")
        if mask is not None:
            if not hasattr(mask, "shape"):
                mask = np.asarray(mask)
            if mask.shape != X.shape:
                raise ValueError(f"mask has shape {mask.shape} but X has shape {X.shape}; "
                                 "they must match (mask[i, j] True = pixel j of star i observed)")
            if mask.dtype != np.bool_:
                raise TypeError(f"mask must be boolean (True = observed), got dtype {mask.dtype}")
        if weights is not None:
            if not hasattr(weights, "shape"):
                weights = np.asarray(weights)
            if weights.shape != X.shape:
                raise ValueError(f"weights has shape {weights.shape} but X has shape {X.shape}; "
                                 "they must match (one inverse variance per flux)")
        return X, mask, weights

    # ---------------------------------------------------------------------------- fit
    def fit(self, X, mask=None, weights=None):
        """Fit the model by EM.

        Book: {ref}`sec-rsca-ppca`

        Parameters
        ----------
        X : array_like or numpy.memmap, shape (N, D)
            Fluxes, one star per row.  Missing pixels are NaN, or are given by ``mask``
            (then their stored value is ignored, e.g. 0 in gaps of a memmap).  Read chunk by
            chunk; never copied whole.
        mask : array_like of bool, shape (N, D), optional
            True where the flux is observed.  If given, NaN is not treated as missing and
            must not occur at observed pixels.
        weights : array_like, shape (N, D), optional
            Per-pixel inverse variances (>= 0; 0 = missing).  Switches to the weighted EM
            (noise variance ``noise_variance_ / weights``), which costs ``O(N D K^2)`` per
            iteration.

        Returns
        -------
        self : PPCA

        Notes
        -----
        A ``dask.array`` ``X`` (with ``mask`` and ``weights`` as dask arrays too) is fitted
        on the Dask cluster this process is connected to (:mod:`helpers.ppca.dask_engine`,
        {ref}`sec-rsca-ppca`): each row block is one chunk, read and processed on a
        worker, and the results agree with the single-machine fit up to float rounding.
        ``chunk_size`` is then not used.
        """
        dt = self._check_params()
        X, mask, weights = self._check_arrays(X, mask, weights)
        if weights is not None and self.method == "fast":
            raise ValueError("method='fast' supports no weights; use method='exact'")
        if is_dask_array(X):
            for name, arr in (("mask", mask), ("weights", weights)):
                if arr is not None and not is_dask_array(arr):
                    raise TypeError(f"X is a dask array, so {name} must be one too (e.g. "
                                    f"dask.array.from_zarr); got {type(arr).__name__}")
            fitted = fit_em_dask(X, mask, weights, n_components=self.n_components,
                                 tol=self.tol, max_iter=self.max_iter,
                                 random_state=self.random_state, dtype=dt,
                                 n_init_rows=self.n_init_rows, verbose=self.verbose,
                                 method=self.method)
            for name, value in fitted.items():
                setattr(self, name, value)
            return self
        with blas_threads(1):
            fitted = fit_em(X, mask, weights, n_components=self.n_components, tol=self.tol,
                            max_iter=self.max_iter, random_state=self.random_state,
                            chunk_size=self.chunk_size, dtype=dt, n_init_rows=self.n_init_rows,
                            verbose=self.verbose, method=self.method)
        for name, value in fitted.items():
            setattr(self, name, value)
        return self

    # ---------------------------------------------------------------------------- transform
    def _check_fitted(self):
        if not hasattr(self, "components_"):
            raise RuntimeError("this PPCA instance is not fitted yet; call fit first")

    def transform(self, X, mask=None, weights=None):
        """Posterior mean of the latent coordinates, using only each star's observed pixels.

        Book: {ref}`sec-rsca-ppca`

        Parameters
        ----------
        X : array_like, shape (N, D)
            Spectra; NaN (or ``mask`` False) marks missing pixels.
        mask : array_like of bool, shape (N, D), optional
            True where observed.
        weights : array_like, shape (N, D), optional
            Inverse variances, for a model fitted with weights (noise variance
            ``noise_variance_ / weights``).  Without them every observed pixel has noise
            variance ``noise_variance_``.

        Returns
        -------
        Z : ndarray, shape (N, K)
            ``E[z | x_observed] = M^{-1} W_o^T (x_o - mean_o)`` with
            ``M = noise_variance_ I + W_o^T Omega_o W_o``, in the canonical basis of ``W_``
            (axis k of ``components_`` scaled by ``sqrt(explained_variance_[k] -
            noise_variance_)``; unit prior variance).
        """
        self._check_fitted()
        X, mask, weights = self._check_arrays(X, mask, weights, D_expected=self.n_features_in_)
        N, D = X.shape
        K = self.W_.shape[1]
        dt = np.dtype(self.dtype)
        W = self.W_
        s2 = self.noise_variance_
        eyeK = np.eye(K)
        WtW = W.T @ W
        iu = packed_index(K)
        Pw = pack_outer(W, iu).astype(dt)
        Wdt = W.astype(dt)
        out = np.empty((N, K))
        for a in range(0, N, self.chunk_size):
            b = min(a + self.chunk_size, N)
            xc, obs, om = read_chunk(X, mask, weights, a, b, dt)
            np.subtract(xc, self.mean_.astype(dt), out=xc)
            xc[~obs] = 0
            if om is not None:
                bvec = ((xc * om) @ Wdt).astype(np.float64)
                M = s2 * eyeK + unpack_sym((om @ Pw).astype(np.float64), K, iu)
            else:
                bvec = (xc @ Wdt).astype(np.float64)
                M = np.broadcast_to(s2 * eyeK + WtW, (b - a, K, K)).copy()
                lay = missing_layout(~obs, D)
                Wext = np.zeros((D + 1, K), dtype=dt)
                Wext[:D] = Wdt
                for stars, idx, _ in lay.groups():
                    if idx.shape[1]:
                        Wm = np.take(Wext, idx, axis=0)
                        M[stars] -= np.matmul(Wm.transpose(0, 2, 1), Wm).astype(np.float64)
            out[a:b] = np.linalg.solve(M, bvec[:, :, None])[:, :, 0]
        return out

    def fit_transform(self, X, mask=None, weights=None):
        """Fit, then return ``transform(X, mask, weights)``.

        Book: {ref}`sec-rsca-ppca`

        Returns
        -------
        Z : ndarray, shape (N, K)
        """
        return self.fit(X, mask=mask, weights=weights).transform(X, mask=mask, weights=weights)

    def inverse_transform(self, Z):
        """Model spectra ``Z @ W_.T + mean_`` for latent coordinates ``Z``.

        Book: {ref}`sec-rsca-ppca`

        Parameters
        ----------
        Z : array_like, shape (N, K)

        Returns
        -------
        X : ndarray, shape (N, D)
        """
        self._check_fitted()
        Z = np.asarray(Z, dtype=np.float64)
        K = self.W_.shape[1]
        if Z.ndim != 2 or Z.shape[1] != K:
            raise ValueError(f"Z must have shape (n, {K}), got {Z.shape}")
        return Z @ self.W_.T + self.mean_


def fit_ppca(X, n_components, *, mask=None, weights=None, **kwargs):
    """Fit :class:`PPCA` and return the fitted estimator.

    Book: {ref}`sec-rsca-ppca`

    Parameters
    ----------
    X : array_like or numpy.memmap, shape (N, D)
        Fluxes; NaN or ``mask`` False marks missing pixels.
    n_components : int
        K.
    mask, weights : optional
        See :meth:`PPCA.fit`.
    **kwargs
        Passed to :class:`PPCA` (``tol``, ``max_iter``, ``random_state``, ``chunk_size``,
        ``dtype``, ``n_init_rows``, ``verbose``, ``method``).

    Returns
    -------
    PPCA
    """
    return PPCA(n_components, **kwargs).fit(X, mask=mask, weights=weights)
