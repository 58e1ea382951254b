"""Relevant Scaled Component Analysis (RSCA): the metric-learning steps 2-4.

Book: {ref}`sec-rsca-math`

De Mijolla & Ness (2022, ApJ, "Measuring chemical likeness of stars with RSCA",
arXiv:2110.02250) learn a Euclidean metric on a K-dimensional representation of stars
(PPCA coefficients of spectra, or abundances) from open-cluster members, in three linear
steps on top of the representation:

2. **Sphering.**  With the field mean ``mu`` and covariance ``C = U S U^T``,
   ``z = S^{-1/2} U^T (x - mu)``: the field covariance becomes the identity.
3. **Reparametrisation.**  Centre every cluster on its own mean (in sphered space), take the
   PCA of the pooled centred vectors, ``V``; rotate ``z' = V^T z``.  The within-cluster
   covariance becomes diagonal while the field covariance stays the identity.
4. **Rescaling.**  Per new dimension r, a pooled robust within-cluster scatter
   ``sigma_clust,r`` (1.4826 x MAD about each cluster's median, pooled with weights
   ``n_k - 1``), and the coordinate is divided by

       sigma_r = sqrt(sigma_clust^2 sigma_pop^2 / (sigma_pop^2 - sigma_clust^2)),

   i.e. multiplied by ``w_r = 1 / sigma_r = sqrt(1/sigma_clust^2 - 1/sigma_pop^2)``, with
   ``sigma_pop = 1`` after sphering.

**Source of the sigma_r formula.**  The authors' code (github.com/drd13/RSCA,
``apoNN/src/fitters.py``: ``relative_modifier(sigma1, sigma2=1) = sqrt(|sigma1^2 sigma2^2 /
(sigma1^2 - sigma2^2)|)``, the scaling factor dividing the reparametrised coordinates, with
``sigma1`` the pooled MAD scatter clipped to 0.9999 when it is >= 1).  It also follows from a
likelihood ratio: in one dimension the difference ``d`` of two members of the same cluster
is ``N(0, 2 sigma_clust^2)`` and that of two random field stars ``N(0, 2 sigma_pop^2)``, so

    log p(d | same cluster) - log p(d | random pair)
        = -(d^2 / 4) (1/sigma_clust^2 - 1/sigma_pop^2) + const
        = -(d / sigma_r)^2 / 4 + const.

Summed over independent (diagonalised) dimensions, the squared RSCA distance is, up to a
factor and a constant, minus the log-likelihood ratio "same birth cluster" vs "random pair".
The population variance along r is the between-cluster variance plus the within-cluster
one, so ``w_r^2 = sigma_between^2 / (sigma_clust^2 sigma_pop^2)``: a dimension in which
clusters are no tighter than the field (``sigma_clust >= sigma_pop``) carries no
information and gets weight **exactly 0** here (suppressed; the authors' code gives it a
tiny but non-zero weight through the 0.9999 clip), never NaN or inf.

Everything is linear, so the learned metric is one ``K x K`` matrix ``linear_map_`` and an
offset; composed with PPCA (class :class:`RSCA`) it is a ``K x n_pixels`` map.
"""
from __future__ import annotations

import numpy as np

from helpers.ppca.model import PPCA
from helpers.rsca.checks import as_2d_finite, check_labels

__all__ = [
    "MAD_TO_SIGMA",
    "pooled_mad_scatter",
    "relative_weights",
    "RelevantScaling",
    "RSCA",
]

#: Factor turning a median absolute deviation into a Gaussian standard deviation.
MAD_TO_SIGMA = 1.4826

_MODES = {
    # mode: (standardise, rotate, rescale)
    "raw": (None, False, False),
    "sphered": ("full", False, False),
    "scaled": ("diag", False, True),
    "transformed": ("full", True, True),
}


# --------------------------------------------------------------------------------------------
# step 4 building blocks
# --------------------------------------------------------------------------------------------
def pooled_mad_scatter(Z, codes, n_clusters=None, robust=True):
    """Pooled within-cluster scatter per dimension.

    Book: {ref}`sec-rsca-math`

    Per cluster k and dimension r, ``s_k,r = 1.4826 * median_i |z_i,r - median_k,r|`` (or the
    ``ddof=1`` standard deviation if ``robust=False``); pooled as
    ``sigma_r^2 = sum_k (n_k - 1) s_k,r^2 / sum_k (n_k - 1)``.

    Parameters
    ----------
    Z : ndarray, shape (n_members, K)
        Cluster members' coordinates.
    codes : ndarray of int, shape (n_members,)
        Cluster index of each member, 0 .. n_clusters-1; each cluster needs >= 2 members.
    n_clusters : int, optional
        Number of clusters (default ``codes.max() + 1``).
    robust : bool, default True
        MAD (x 1.4826) if True, standard deviation otherwise.

    Returns
    -------
    sigma : ndarray, shape (K,)
        Pooled within-cluster scatter.
    """
    Z = np.asarray(Z, dtype=np.float64)
    codes = np.asarray(codes)
    if n_clusters is None:
        n_clusters = int(codes.max()) + 1
    num = np.zeros(Z.shape[1])
    den = 0
    for k in range(n_clusters):
        Zk = Z[codes == k]
        nk = Zk.shape[0]
        if nk < 2:
            raise ValueError(f"cluster {k} has {nk} member(s); at least two are needed")
        if robust:
            s = MAD_TO_SIGMA * np.median(np.abs(Zk - np.median(Zk, axis=0)), axis=0)
        else:
            s = np.std(Zk, axis=0, ddof=1)
        num += (nk - 1) * s ** 2
        den += nk - 1
    return np.sqrt(num / den)


def relative_weights(sigma_clust, sigma_pop=1.0):
    """RSCA weights ``w = 1 / sigma_r = sqrt(1/sigma_clust^2 - 1/sigma_pop^2)``, 0 if suppressed.

    Book: {ref}`sec-rsca-math`

    ``sigma_r = sqrt(sigma_clust^2 sigma_pop^2 / (sigma_pop^2 - sigma_clust^2))`` (authors'
    code, ``relative_modifier``; see the module docstring for the likelihood-ratio
    derivation).  Where ``sigma_clust >= sigma_pop`` the dimension carries no information:
    the weight is exactly 0 and ``sigma_r`` is reported as ``inf``.

    Parameters
    ----------
    sigma_clust : array_like, shape (K,)
        Pooled within-cluster scatter; must be finite and > 0.
    sigma_pop : float or array_like, shape (K,), default 1
        Population scatter (1 after sphering).

    Returns
    -------
    weights : ndarray, shape (K,)
        Multiplicative scale of each coordinate (>= 0, finite).
    sigma_r : ndarray, shape (K,)
        ``1 / weights`` (``inf`` where suppressed).
    suppressed : ndarray of bool, shape (K,)
        True where ``sigma_clust >= sigma_pop``.
    """
    sc = np.asarray(sigma_clust, dtype=np.float64)
    sp = np.broadcast_to(np.asarray(sigma_pop, dtype=np.float64), sc.shape)
    if not np.all(np.isfinite(sc)) or np.any(sc <= 0):
        bad = np.flatnonzero(~np.isfinite(sc) | (sc <= 0))
        raise ValueError(f"sigma_clust must be finite and > 0; dimension(s) {bad.tolist()} are "
                         f"{sc[bad].tolist()} (all cluster members identical along them?)")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError("sigma_pop must be finite and > 0")
    suppressed = sc >= sp
    w2 = np.where(suppressed, 0.0, 1.0 / sc ** 2 - 1.0 / sp ** 2)
    weights = np.sqrt(np.maximum(w2, 0.0))
    with np.errstate(divide="ignore"):
        sigma_r = np.where(suppressed, np.inf, 1.0 / np.where(suppressed, 1.0, weights))
    return weights, sigma_r, suppressed


# --------------------------------------------------------------------------------------------
# the metric learner
# --------------------------------------------------------------------------------------------
class RelevantScaling:
    """The RSCA metric on a K-dimensional representation (steps 2-4).

    Book: {ref}`sec-rsca-math`

    Parameters
    ----------
    mode : {"transformed", "scaled", "sphered", "raw"}, default "transformed"
        Which steps to use (the paper's Fig. 4 compares "raw", "scaled", "transformed"):

        * ``"transformed"``: sphering + reparametrisation + rescaling (full RSCA);
        * ``"scaled"``: per-dimension standardisation by the field standard deviation (no
          rotation, no decorrelation) + rescaling in the original axes;
        * ``"sphered"``: sphering only;
        * ``"raw"``: identity (the input coordinates, centred on the field mean).
    top_n : int, optional
        Keep only the ``top_n`` informative dimensions with the smallest ``sigma_clust``
        (most strongly scaled); the others get weight 0.  Only with rescaling.
    robust : bool, default True
        Pooled MAD scatter (paper) if True, pooled standard deviation otherwise.
    eig_floor : float, default 1e-12
        Field covariance eigenvalues below ``eig_floor * largest`` make sphering ill-posed:
        an error names the rank deficiency.

    Attributes
    ----------
    mean_ : ndarray, shape (K,)
        Field mean ``mu``.
    sphering_ : ndarray, shape (K, K)
        ``S^{-1/2} U^T`` (``"full"``), ``diag(1/std)`` (``"scaled"``) or identity.
    rotation_ : ndarray, shape (K, K)
        ``V^T`` (rows = within-cluster principal axes in sphered space), identity if unused.
    sigma_clust_ : ndarray, shape (K,)
        Pooled within-cluster scatter along each output axis (computed in every mode, as a
        diagnostic; it sets the weights only in modes with rescaling).
    sigma_r_ : ndarray, shape (K,)
        ``sigma_clust sigma_pop / sqrt(sigma_pop^2 - sigma_clust^2)``; ``inf`` if suppressed.
    scale_ : ndarray, shape (K,)
        Weights ``1 / sigma_r_`` (0 for suppressed or unselected dimensions).
    suppressed_ : ndarray of bool, shape (K,)
        ``sigma_clust_ >= 1``: uninformative dimensions.
    selected_ : ndarray of bool, shape (K,)
        Dimensions with non-zero weight.
    linear_map_ : ndarray, shape (K, K)
        ``A = diag(scale_) rotation_ sphering_``: coordinates ``= (x - mean_) @ A.T``.
    offset_ : ndarray, shape (K,)
        ``-A mean_``: coordinates ``= x @ linear_map_.T + offset_``.
    n_clusters_, cluster_names_ :
        Training clusters.
    """

    def __init__(self, mode="transformed", *, top_n=None, robust=True, eig_floor=1e-12):
        self.mode = mode
        self.top_n = top_n
        self.robust = robust
        self.eig_floor = eig_floor

    # ------------------------------------------------------------------ helpers
    def _steps(self):
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, got {self.mode!r}")
        std, rot, resc = _MODES[self.mode]
        if self.top_n is not None:
            if not resc:
                raise ValueError(f"top_n needs the rescaling step; mode {self.mode!r} has none")
            if not isinstance(self.top_n, (int, np.integer)) or isinstance(self.top_n, bool) \
                    or self.top_n < 1:
                raise ValueError(f"top_n must be a positive integer, got {self.top_n!r}")
        return std, rot, resc

    def _check_fitted(self, what="linear_map_"):
        if not hasattr(self, what):
            raise RuntimeError("this RelevantScaling is not fitted yet; call fit first")

    # ------------------------------------------------------------------ fitting
    def fit_population(self, X_pop):
        """Step 2 only: learn the field mean and the sphering (needs no cluster star).

        Book: {ref}`sec-rsca-math`

        Parameters
        ----------
        X_pop : array_like, shape (N_field, K)
            Field representation.

        Returns
        -------
        self
        """
        std, _, _ = self._steps()
        X = as_2d_finite(X_pop, "X_pop")
        N, K = X.shape
        if N < 2:
            raise ValueError(f"X_pop needs at least two stars to estimate a covariance, got {N}")
        mu = X.mean(axis=0)
        if std is None:
            T = np.eye(K)
        else:
            # covariance, accumulated chunk by chunk (no full centred copy of a big field)
            C = np.zeros((K, K))
            for a in range(0, N, 65536):
                Xc = X[a:a + 65536] - mu
                C += Xc.T @ Xc
            C /= N - 1
            if std == "diag":
                var = np.diag(C)
                if np.any(var <= self.eig_floor * var.max()):
                    bad = np.flatnonzero(var <= self.eig_floor * var.max())
                    raise ValueError(f"X_pop has (near) zero variance in column(s) {bad.tolist()}; "
                                     "cannot standardise")
                T = np.diag(1.0 / np.sqrt(var))
            else:
                S, U = np.linalg.eigh(C)
                S, U = S[::-1], U[:, ::-1]
                if S[-1] <= self.eig_floor * S[0]:
                    raise ValueError(
                        f"the field covariance of X_pop is (numerically) singular: smallest "
                        f"eigenvalue {S[-1]:.3g} vs largest {S[0]:.3g}; the representation has "
                        "fewer independent dimensions than columns, so it cannot be sphered")
                # deterministic signs: largest-magnitude entry of each eigenvector positive
                sg = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(K)])
                sg[sg == 0] = 1
                U = U * sg
                T = (U / np.sqrt(S)).T
        self.mean_ = mu
        self.sphering_ = T
        self.n_features_in_ = K
        self.n_field_ = N
        return self

    def fit_clusters(self, X_clust, cluster_labels):
        """Steps 3-4: learn rotation and rescaling from cluster members (after ``fit_population``).

        Book: {ref}`sec-rsca-math`

        Parameters
        ----------
        X_clust : array_like, shape (n_members, K)
            Representation of the training cluster members.
        cluster_labels : array_like, shape (n_members,)
            Cluster of each member (any hashable, sortable labels); >= 2 members each.

        Returns
        -------
        self
        """
        self._check_fitted("sphering_")
        _, rot, resc = self._steps()
        K = self.n_features_in_
        Xc = as_2d_finite(X_clust, "X_clust", K)
        _, names, codes = check_labels(cluster_labels, Xc.shape[0])
        nk = len(names)
        Zs = (Xc - self.mean_) @ self.sphering_.T
        # centre every cluster on its own mean
        means = np.zeros((nk, K))
        np.add.at(means, codes, Zs)
        counts = np.bincount(codes, minlength=nk)
        means /= counts[:, None]
        Zcen = Zs - means[codes]
        if rot:
            # PCA of the within-cluster vectors (their overall mean is exactly 0); the full
            # basis is only needed with fewer vectors than dimensions (and the full SVD costs
            # 100x more under a busy multi-threaded BLAS)
            _, sv, Vt = np.linalg.svd(Zcen, full_matrices=Zcen.shape[0] < K)
            sg = np.sign(Vt[np.arange(K), np.argmax(np.abs(Vt), axis=1)])
            sg[sg == 0] = 1
            R = Vt * sg[:, None]
        else:
            R = np.eye(K)
        Zr = Zs @ R.T
        if resc:
            sigma_clust = pooled_mad_scatter(Zr, codes, nk, robust=self.robust)
            w, sigma_r, suppressed = relative_weights(sigma_clust, 1.0)
            selected = ~suppressed
            if self.top_n is not None:
                order = np.argsort(np.where(suppressed, np.inf, sigma_clust), kind="stable")
                keep = np.zeros(K, bool)
                keep[order[:self.top_n]] = True
                selected &= keep
            w = np.where(selected, w, 0.0)
        else:
            sigma_clust = pooled_mad_scatter(Zr, codes, nk, robust=self.robust)
            sigma_r = np.ones(K)
            suppressed = np.zeros(K, bool)
            selected = np.ones(K, bool)
            w = np.ones(K)
        self.rotation_ = R
        self.sigma_clust_ = sigma_clust
        self.sigma_r_ = sigma_r
        self.scale_ = w
        self.suppressed_ = suppressed
        self.selected_ = selected
        self.linear_map_ = (w[:, None] * R) @ self.sphering_
        self.offset_ = -self.linear_map_ @ self.mean_
        self.cluster_names_ = names
        self.n_clusters_ = nk
        self.n_members_ = int(Xc.shape[0])
        return self

    def fit(self, X_pop, X_clust, cluster_labels):
        """Learn the metric: sphering from the field, rotation and scales from the clusters.

        Book: {ref}`sec-rsca-math`

        Parameters
        ----------
        X_pop : array_like, shape (N_field, K)
            Field representation (defines the population mean and covariance).
        X_clust : array_like, shape (n_members, K)
            Training cluster members.
        cluster_labels : array_like, shape (n_members,)
            Their clusters (>= 2 members per cluster).

        Returns
        -------
        self
        """
        return self.fit_population(X_pop).fit_clusters(X_clust, cluster_labels)

    def transform(self, X):
        """Rescaled coordinates ``(x - mean_) @ linear_map_.T``.

        Book: {ref}`sec-rsca-math`

        Parameters
        ----------
        X : array_like, shape (N, K)

        Returns
        -------
        Z : ndarray, shape (N, K)
            Euclidean distances between rows are RSCA distances; suppressed / unselected
            dimensions are identically 0.
        """
        self._check_fitted()
        X = as_2d_finite(X, "X", self.n_features_in_)
        return X @ self.linear_map_.T + self.offset_

    def sphere(self, X):
        """Step-2 coordinates ``(x - mean_) @ sphering_.T`` (field covariance = identity).

        Book: {ref}`sec-rsca-math`

        Parameters
        ----------
        X : array_like, shape (N, K)

        Returns
        -------
        Z : ndarray, shape (N, K)
        """
        self._check_fitted("sphering_")
        X = as_2d_finite(X, "X", self.n_features_in_)
        return (X - self.mean_) @ self.sphering_.T

    def reparametrize(self, X):
        """Step-3 coordinates ``sphere(X) @ rotation_.T`` (before rescaling).

        Book: {ref}`sec-rsca-math`

        Parameters
        ----------
        X : array_like, shape (N, K)

        Returns
        -------
        Z : ndarray, shape (N, K)
        """
        self._check_fitted()
        return self.sphere(X) @ self.rotation_.T


# --------------------------------------------------------------------------------------------
# PPCA + metric
# --------------------------------------------------------------------------------------------
class RSCA:
    """PPCA compression of spectra followed by the RSCA metric (steps 1-4).

    Book: {ref}`sec-rsca-math`

    Parameters
    ----------
    n_components : int, default 30
        PPCA dimension K (paper: 30).
    mode, top_n, robust :
        Passed to :class:`RelevantScaling`.
    ppca_on : {"field", "field+clusters"}, default "field"
        Stars the PPCA basis is fitted on.  ``"field"`` keeps the cluster stars (and thus a
        held-out cluster) out of step 1; ``"field+clusters"`` mimics the authors' code, which
        compressed field and OCCAM spectra together (a leak under leave-one-cluster-out).
    ppca_kwargs : dict, optional
        Extra arguments of :class:`helpers.ppca.PPCA` (``tol``, ``max_iter``,
        ``random_state``, ``chunk_size``, ``dtype``, ...).

    Attributes
    ----------
    ppca_ : helpers.ppca.PPCA
        Fitted compression.
    metric_ : RelevantScaling
        Fitted metric on the PPCA coefficients.
    pixel_map_ : ndarray, shape (K, n_pixels)
        ``linear_map_ @ M^{-1} W^T`` with ``M = noise_variance I + W^T W``: for a complete
        spectrum, coordinates ``= (flux - pixel_mean_) @ pixel_map_.T + pixel_offset_``.
    pixel_mean_ : ndarray, shape (n_pixels,)
        The PPCA mean spectrum.
    pixel_offset_ : ndarray, shape (K,)
        ``linear_map_ @ (z0 - metric_.mean_)`` -- here ``z0 = 0`` (posterior mean of the
        mean spectrum), so ``-linear_map_ @ metric_.mean_``.
    """

    def __init__(self, n_components=30, *, mode="transformed", top_n=None, robust=True,
                 ppca_on="field", ppca_kwargs=None):
        self.n_components = n_components
        self.mode = mode
        self.top_n = top_n
        self.robust = robust
        self.ppca_on = ppca_on
        self.ppca_kwargs = ppca_kwargs

    def _make_ppca(self):
        return PPCA(self.n_components, **(self.ppca_kwargs or {}))

    def fit(self, flux_pop, flux_clust, cluster_labels, *, mask_pop=None, mask_clust=None,
            weights_pop=None, weights_clust=None):
        """Fit PPCA (step 1) and the metric (steps 2-4).

        Book: {ref}`sec-rsca-math`

        Parameters
        ----------
        flux_pop : array_like, shape (N_field, n_pixels)
            Field spectra; NaN (or ``mask_pop`` False) marks missing pixels.
        flux_clust : array_like, shape (n_members, n_pixels)
            Cluster members' spectra.
        cluster_labels : array_like, shape (n_members,)
            Cluster of each member (>= 2 per cluster).
        mask_pop, mask_clust : array_like of bool, optional
            True where observed (same shapes as the fluxes).
        weights_pop, weights_clust : array_like, optional
            Inverse variances for a weighted PPCA (both or neither).

        Returns
        -------
        self
        """
        if self.ppca_on not in ("field", "field+clusters"):
            raise ValueError(f"ppca_on must be 'field' or 'field+clusters', got {self.ppca_on!r}")
        fp = np.asarray(flux_pop) if not hasattr(flux_pop, "shape") else flux_pop
        fc = np.asarray(flux_clust) if not hasattr(flux_clust, "shape") else flux_clust
        if fp.ndim != 2 or fc.ndim != 2:
            raise ValueError(f"flux_pop and flux_clust must be 2-D (n_stars, n_pixels), got "
                             f"shapes {fp.shape} and {fc.shape}")
        if fp.shape[1] != fc.shape[1]:
            raise ValueError(f"flux_pop has {fp.shape[1]} pixels but flux_clust has "
                             f"{fc.shape[1]}; they must share one wavelength grid")
        check_labels(cluster_labels, fc.shape[0])
        if (weights_pop is None) != (weights_clust is None):
            raise ValueError("give both weights_pop and weights_clust, or neither")
        ppca = self._make_ppca()
        if self.ppca_on == "field":
            ppca.fit(fp, mask=mask_pop, weights=weights_pop)
        else:
            both = np.concatenate([np.asarray(fp), np.asarray(fc)])
            mb = None if mask_pop is None and mask_clust is None else np.concatenate([
                np.ones(fp.shape, bool) if mask_pop is None else np.asarray(mask_pop),
                np.ones(fc.shape, bool) if mask_clust is None else np.asarray(mask_clust)])
            wb = None if weights_pop is None else np.concatenate(
                [np.asarray(weights_pop), np.asarray(weights_clust)])
            ppca.fit(both, mask=mb, weights=wb)
        Z_pop = ppca.transform(fp, mask=mask_pop, weights=weights_pop)
        Z_clust = ppca.transform(fc, mask=mask_clust, weights=weights_clust)
        metric = RelevantScaling(self.mode, top_n=self.top_n, robust=self.robust)
        metric.fit(Z_pop, Z_clust, cluster_labels)
        self.ppca_ = ppca
        self.metric_ = metric
        W = ppca.W_
        M = ppca.noise_variance_ * np.eye(W.shape[1]) + W.T @ W
        post = np.linalg.solve(M, W.T)                     # (K, D) posterior-mean map
        self.pixel_map_ = metric.linear_map_ @ post
        self.pixel_mean_ = np.asarray(ppca.mean_, dtype=np.float64)
        self.pixel_offset_ = metric.offset_.copy()
        self.Z_pop_ = Z_pop
        self.Z_clust_ = Z_clust
        return self

    def coefficients(self, flux, mask=None, weights=None):
        """PPCA posterior-mean coefficients (step 1), honouring missing pixels.

        Book: {ref}`sec-rsca-ppca`

        Parameters
        ----------
        flux : array_like, shape (N, n_pixels)
        mask, weights : optional, shape (N, n_pixels)

        Returns
        -------
        Z : ndarray, shape (N, K)
        """
        if not hasattr(self, "ppca_"):
            raise RuntimeError("this RSCA is not fitted yet; call fit first")
        return self.ppca_.transform(flux, mask=mask, weights=weights)

    def transform(self, flux, mask=None, weights=None):
        """RSCA coordinates of spectra (PPCA posterior mean, then the metric).

        Book: {ref}`sec-rsca-math`

        Spectra with missing pixels go through PPCA's posterior mean over the observed
        pixels; for complete spectra this equals
        ``(flux - pixel_mean_) @ pixel_map_.T + pixel_offset_``.

        Parameters
        ----------
        flux : array_like, shape (N, n_pixels)
        mask, weights : optional, shape (N, n_pixels)

        Returns
        -------
        Z : ndarray, shape (N, K)
        """
        return self.metric_.transform(self.coefficients(flux, mask=mask, weights=weights))
