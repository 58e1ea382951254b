"""How many dimensions does chemistry need? Doppelganger rates against K, top-N and clusters.

Book: chapter 6, "How many dimensions?" (notebooks/06_dimensionality.md).

Three scans of the RSCA doppelganger rate (de Mijolla & Ness 2022, Fig. 2, Table 1, Fig. 5):

* against the number K of PPCA components (:func:`rates_vs_k`), with and without
  leave-one-cluster-out cross-validation;
* against the number N of most strongly scaled RSCA dimensions kept (:func:`top_n_rates`);
* against the number of open clusters the metric is trained on (:func:`rates_vs_training_clusters`).

All of them start from one PPCA representation of the field and cluster spectra
(:func:`ppca_representation`), fitted once at the largest K, cached on disk by its inputs,
and truncated for smaller K (:meth:`Representation.truncated`, the *nested* approximation;
the chapter measures how good it is with :func:`principal_angles` and dedicated fits).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["plateau_n", "Representation", "ppca_representation", "principal_angles", "pair_filter",
           "rates_vs_k", "top_n_rates", "summarise_top_n", "rates_vs_training_clusters",
           "latent_recovery"]

_FORMAT = "dimensionality-ppca-v1"


# --------------------------------------------------------------------------------------------
# the representation
# --------------------------------------------------------------------------------------------
@dataclass
class Representation:
    """PPCA coefficients of the field and cluster spectra, with the basis they came from.

    Book: chapter 6, "One fit for every K" (notebooks/06_dimensionality.md).

    Attributes
    ----------
    field : ndarray, shape (n_field, K)
        Posterior-mean coefficients of the field stars (unit prior variance per axis).
    cluster : ndarray, shape (n_members, K)
        The same for the cluster members.
    components : ndarray, shape (K, n_used)
        Orthonormal principal axes, by decreasing variance, over the ``n_used`` pixels of
        ``inputs.pixel_mask`` (the chips minus the interstellar windows).
    explained_variance : ndarray, shape (K,)
        Model variance along each axis (flux units squared).
    noise_variance : float
        PPCA noise variance (flux units squared).
    info : dict
        ``K``, ``n_fit`` (stars the basis was fitted on), ``n_iter``, ``fit_seconds``,
        ``transform_seconds``, ``from_cache``, ``nested_from`` (K of the parent fit, if
        truncated).
    """

    field: np.ndarray
    cluster: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    noise_variance: float
    info: dict = field(default_factory=dict)

    @property
    def K(self) -> int:
        """Number of components."""
        return int(self.field.shape[1])

    def truncated(self, K: int) -> "Representation":
        """The nested approximation of a K-component representation: the first K axes.

        Book: chapter 6, "One fit for every K" (notebooks/06_dimensionality.md).

        The coefficients of the first K principal axes of a K_max fit are kept. For a star
        with every pixel observed they equal the K-component model's coefficients up to a
        per-axis factor (the canonical axes are orthogonal, so the posterior precision is
        diagonal), and a per-axis factor is removed by RSCA's sphering: the metric is then
        exactly the one of the truncated model. With missing pixels the axes couple through
        the unobserved pixels and the result is an approximation; and the ML subspace of a
        dedicated K fit only approaches the top-K subspace of the K_max fit when both have
        converged. The chapter measures both effects.

        Parameters
        ----------
        K : int
            1 <= K <= self.K.

        Returns
        -------
        Representation
        """
        if int(K) != K or not 1 <= K <= self.K:
            raise ValueError(f"K must be an integer between 1 and {self.K}, got {K!r}")
        K = int(K)
        info = dict(self.info, K=K, nested_from=self.K)
        return Representation(self.field[:, :K], self.cluster[:, :K], self.components[:K],
                              self.explained_variance[:K], self.noise_variance, info)


class _PixelColumns:
    """Rows of a (memory-mapped) matrix restricted to some columns, read lazily.

    PPCA reads its data by row blocks (``X[a:b]``) or row lists (``X[rows]``); this gives it
    only the pixels any star may use, without copying the whole matrix.
    """

    def __init__(self, array, columns):
        self.array = array
        self.columns = np.flatnonzero(columns) if np.asarray(columns).dtype == bool else np.asarray(columns)
        self.shape = (array.shape[0], self.columns.size)
        self.dtype = array.dtype
        self.ndim = 2

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        return np.asarray(self.array[rows])[:, self.columns]


def _cache_key(inputs, n_components, n_fit, seed, tol, max_iter) -> str:
    from helpers.ppca import ENGINE_VERSION

    blob = json.dumps({"format": _FORMAT, "engine": ENGINE_VERSION,
                       "inputs": str(getattr(inputs, "path", "")),
                       "inputs_key": getattr(inputs, "path", None) and inputs.path.name,
                       "K": int(n_components), "n_fit": n_fit, "seed": int(seed),
                       "tol": float(tol), "max_iter": int(max_iter)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ppca_representation(inputs, n_components: int, *, n_fit: int | None = None, seed: int = 0,
                        tol: float = 1e-5, max_iter: int = 100, cache: bool = True,
                        chunk_size: int = 2048) -> Representation:
    """Fit PPCA to field spectra once and return the coefficients of field and cluster stars.

    Book: chapter 6, "One fit for every K" (notebooks/06_dimensionality.md).

    The basis is fitted on ``n_fit`` field stars drawn at random (seeded), or on all of
    them, and every field and cluster star is then projected with the posterior mean over
    its observed pixels (:meth:`helpers.ppca.PPCA.transform`). The result is cached in
    ``.cache/dimensionality/<key>.npz``, keyed by the inputs' cache folder and every
    argument, so a second call (or a second execution of the chapter) only reads it.

    Parameters
    ----------
    inputs : helpers.pipeline.RscaInputs
        Selected, censored and masked spectra (:func:`helpers.pipeline.rsca_inputs`).
    n_components : int
        K.
    n_fit : int, optional
        Field stars the basis is fitted on (default: all).
    seed : int
        Seed of the subsample and of PPCA's start.
    tol, max_iter :
        PPCA stopping rule (relative objective change; iterations).
    cache : bool
        Read and write the on-disk cache.
    chunk_size : int
        Stars per chunk in PPCA.

    Returns
    -------
    Representation
    """
    from helpers.paths import cache_dir
    from helpers.ppca import PPCA

    if int(n_components) != n_components or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    n_all = inputs.field_flux.shape[0]
    if n_fit is not None and (int(n_fit) != n_fit or n_fit < 2 * n_components):
        raise ValueError(f"n_fit must be None or an integer >= 2 * n_components, got {n_fit!r}")
    n_fit = None if n_fit is None or n_fit >= n_all else int(n_fit)
    path = cache_dir("dimensionality") / f"{_cache_key(inputs, n_components, n_fit, seed, tol, max_iter)}.npz"
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            info["from_cache"] = True
            return Representation(z["field"], z["cluster"], z["components"],
                                  z["explained_variance"], float(z["noise_variance"]), info)
    t0 = time.perf_counter()
    pixels = np.asarray(inputs.pixel_mask, bool)   # the chips minus the interstellar windows
    X = _PixelColumns(inputs.field_flux, pixels)
    M = _PixelColumns(inputs.field_observed, pixels)
    if n_fit is not None:
        rows = np.sort(np.random.default_rng(seed).choice(n_all, n_fit, replace=False))
        X, M = X[rows], M[rows]
    model = PPCA(int(n_components), tol=tol, max_iter=max_iter, random_state=seed,
                 chunk_size=chunk_size).fit(X, mask=M)
    del X, M
    t1 = time.perf_counter()
    z_field = model.transform(_PixelColumns(inputs.field_flux, pixels),
                              mask=_PixelColumns(inputs.field_observed, pixels))
    z_clust = model.transform(_PixelColumns(inputs.cluster_flux, pixels),
                              mask=_PixelColumns(inputs.cluster_observed, pixels))
    t2 = time.perf_counter()
    info = {"K": int(n_components), "n_fit": int(n_fit or n_all), "n_iter": int(model.n_iter_),
            "converged": bool(model.converged_), "fit_seconds": round(t1 - t0, 2),
            "transform_seconds": round(t2 - t1, 2), "from_cache": False, "nested_from": None}
    rep = Representation(z_field, z_clust, model.components_.astype(np.float32),
                         np.asarray(model.explained_variance_, float), float(model.noise_variance_),
                         info)
    if cache:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, field=rep.field, cluster=rep.cluster, components=rep.components,
                 explained_variance=rep.explained_variance, noise_variance=rep.noise_variance,
                 info=json.dumps(info))
        os.replace(tmp, path)
    return rep


def principal_angles(A, B) -> np.ndarray:
    """Principal angles (degrees) between the row spaces of two bases.

    Book: chapter 6, "One fit for every K" (notebooks/06_dimensionality.md).

    Parameters
    ----------
    A : array_like, shape (Ka, D)
    B : array_like, shape (Kb, D)
        Rows need not be orthonormal (they are orthonormalised here).

    Returns
    -------
    ndarray, shape (min(Ka, Kb),)
        Angles in degrees, increasing.
    """
    A = np.asarray(A, float)
    B = np.asarray(B, float)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"A and B must be 2-D with the same number of columns, got {A.shape}, {B.shape}")
    qa, _ = np.linalg.qr(A.T)
    qb, _ = np.linalg.qr(B.T)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.sort(np.degrees(np.arccos(np.clip(s, -1.0, 1.0))))


def pair_filter(inputs) -> dict:
    """The doppelganger pair filter's arrays (VHELIO_AVG, AK_TARG) of field and members.

    Book: chapter 6, "Fig. 2" (notebooks/06_dimensionality.md).

    Returns
    -------
    dict
        ``vhelio_pop, ak_pop, vhelio_clust, ak_clust`` (float64), ready to pass as keyword
        arguments to :func:`helpers.doppelganger.loco_doppelganger_rates`.
    """
    return {"vhelio_pop": inputs.column("VHELIO_AVG").astype(float),
            "ak_pop": inputs.column("AK_TARG").astype(float),
            "vhelio_clust": inputs.column("VHELIO_AVG", "cluster").astype(float),
            "ak_clust": inputs.column("AK_TARG", "cluster").astype(float)}


def _check_rep(rep):
    if not isinstance(rep, Representation):
        raise TypeError(f"rep must be a Representation (see ppca_representation), got {type(rep).__name__}")


# --------------------------------------------------------------------------------------------
# Fig. 2: rate against K
# --------------------------------------------------------------------------------------------
def rates_vs_k(rep: Representation, labels, K_values, pairs: dict, *, leak: bool = False,
               n_boot: int = 200, random_state: int = 0) -> pd.DataFrame:
    """Global doppelganger rate of full RSCA on the first K axes, for each K.

    Book: chapter 6, "Fig. 2: the rate against K" (notebooks/06_dimensionality.md).

    Parameters
    ----------
    rep : Representation
        Fitted at K >= max(K_values); smaller K use :meth:`Representation.truncated`.
    labels : array_like, shape (n_members,)
    K_values : sequence of int
    pairs : dict
        :func:`pair_filter`.
    leak : bool
        False: leave-one-cluster-out (cross-validated). True: the metric is fitted on all
        clusters, the held-out one included.
    n_boot, random_state :
        Bootstrap over clusters for the spread.

    Returns
    -------
    pandas.DataFrame
        Columns ``K, rate, std, low, high, cv``.
    """
    from helpers.doppelganger import loco_doppelganger_rates

    _check_rep(rep)
    rows = []
    for K in K_values:
        r = rep.truncated(K)
        res = loco_doppelganger_rates(r.field, r.cluster, labels, leak=leak, n_boot=n_boot,
                                      random_state=random_state, **pairs)
        rows.append({"K": int(K), "rate": res.global_rate, "std": res.global_rate_std,
                     "low": res.global_rate_interval[0], "high": res.global_rate_interval[1],
                     "cv": not leak})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Table 1: top-N dimensions
# --------------------------------------------------------------------------------------------
def top_n_rates(rep: Representation, labels, top_n_values, pairs: dict, *, n_repeats: int = 5,
                field_fraction: float = 0.5, seed: int = 0, n_boot: int = 200) -> pd.DataFrame:
    """Cross-validated rate when only the N most strongly scaled RSCA dimensions are kept.

    Book: chapter 6, "Table 1: keeping the top N dimensions" (notebooks/06_dimensionality.md).

    Repeat 0 uses every field star; repeats 1..n_repeats each use a different random
    ``field_fraction`` of the field stars (for the sphering and as doppelganger
    candidates), which gives the spread of the rate due to the field sample. The
    bootstrap over clusters (repeat 0) gives the spread due to the clusters.

    Parameters
    ----------
    rep : Representation
    labels : array_like, shape (n_members,)
    top_n_values : sequence of int or None
        N values; None (or N >= K) keeps every informative dimension ("all").
    pairs : dict
        :func:`pair_filter`.
    n_repeats : int
        Field subsamples.
    field_fraction : float
        Fraction of field stars in each subsample, in (0, 1].
    seed : int
    n_boot : int

    Returns
    -------
    pandas.DataFrame
        One row per (N, repeat): ``top_n`` (K for "all"), ``label``, ``repeat``, ``rate``,
        ``boot_std`` (repeat 0 only), ``n_selected`` (dimensions with non-zero weight when
        fitted on all clusters).
    """
    from helpers.doppelganger import loco_doppelganger_rates
    from helpers.rsca import RelevantScaling

    _check_rep(rep)
    if not 0 < field_fraction <= 1:
        raise ValueError(f"field_fraction must be in (0, 1], got {field_fraction!r}")
    if int(n_repeats) != n_repeats or n_repeats < 0:
        raise ValueError(f"n_repeats must be an integer >= 0, got {n_repeats!r}")
    rng = np.random.default_rng(seed)
    n = rep.field.shape[0]
    subsets = [np.arange(n)] + [np.sort(rng.choice(n, max(2, int(round(field_fraction * n))), replace=False))
                                for _ in range(int(n_repeats))]
    rows = []
    for N in top_n_values:
        top = None if N is None or N >= rep.K else int(N)
        full = RelevantScaling("transformed", top_n=top).fit(rep.field, rep.cluster, labels)
        for i, rows_i in enumerate(subsets):
            p = {"vhelio_pop": pairs["vhelio_pop"][rows_i], "ak_pop": pairs["ak_pop"][rows_i],
                 "vhelio_clust": pairs["vhelio_clust"], "ak_clust": pairs["ak_clust"]}
            res = loco_doppelganger_rates(
                rep.field[rows_i], rep.cluster, labels, fit_fn=_rsca_fit_fn(top),
                n_boot=n_boot if i == 0 else 0, random_state=seed, **p)
            rows.append({"top_n": rep.K if top is None else top,
                         "label": f"all ({rep.K})" if top is None else str(top), "repeat": i,
                         "rate": res.global_rate,
                         "boot_std": res.global_rate_std if i == 0 else np.nan,
                         "n_selected": int(full.selected_.sum())})
    return pd.DataFrame(rows)


def _rsca_fit_fn(top_n):
    """A LOCO ``fit_fn``: full RSCA keeping ``top_n`` dimensions; the field sphering (which
    sees no cluster star) is fitted once per field sample and reused for every fold."""
    import copy

    from helpers.rsca import RelevantScaling

    fitted = {}

    def fit_fn(X_pop, X_train, labels_train):
        if id(X_pop) not in fitted:
            fitted.clear()
            fitted[id(X_pop)] = (X_pop, RelevantScaling("transformed", top_n=top_n).fit_population(X_pop))
        return copy.deepcopy(fitted[id(X_pop)][1]).fit_clusters(X_train, labels_train)

    return fit_fn


def summarise_top_n(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 from :func:`top_n_rates`: rate on all field stars, mean and spread of repeats.

    Book: chapter 6, "Table 1: keeping the top N dimensions" (notebooks/06_dimensionality.md).

    Returns
    -------
    pandas.DataFrame
        Index ``label``; columns ``rate`` (every field star), ``boot_std`` (bootstrap over
        clusters), ``repeat_mean``, ``repeat_std`` (field subsamples, repeats >= 1).
    """
    g = table.groupby("label", sort=False)
    out = pd.DataFrame({
        "top_n": g["top_n"].first(),
        "rate": g.apply(lambda t: t.loc[t.repeat == 0, "rate"].iloc[0], include_groups=False),
        "boot_std": g.apply(lambda t: t.loc[t.repeat == 0, "boot_std"].iloc[0], include_groups=False),
        "repeat_mean": g.apply(lambda t: t.loc[t.repeat > 0, "rate"].mean(), include_groups=False),
        "repeat_std": g.apply(lambda t: t.loc[t.repeat > 0, "rate"].std(ddof=1), include_groups=False),
    })
    return out


# --------------------------------------------------------------------------------------------
# Fig. 5: rate against the number of training clusters
# --------------------------------------------------------------------------------------------
def rates_vs_training_clusters(rep: Representation, labels, n_train_values, pairs: dict, *,
                               n_subsets: int = 50, seed: int = 0) -> pd.DataFrame:
    """Doppelganger rate of held-out clusters when the metric sees only some clusters.

    Book: chapter 6, "Fig. 5: how many clusters?" (notebooks/06_dimensionality.md).

    For each number m of training clusters, ``n_subsets`` random sets of m clusters are
    drawn (seeded by ``seed`` and m, so the same sets are used for every representation);
    the RSCA metric is fitted on the field and on those clusters, and the global rate is
    computed on the clusters left out. A subset whose members give fewer within-cluster
    degrees of freedom, ``sum(n_k - 1)``, than K dimensions (or a dimension with no
    within-cluster scatter at all) defines no metric: its row has ``rate`` NaN and
    ``defined`` False.

    Parameters
    ----------
    rep : Representation
    labels : array_like, shape (n_members,)
    n_train_values : sequence of int
        Each between 1 and (number of clusters - 1).
    pairs : dict
        :func:`pair_filter`.
    n_subsets : int
    seed : int

    Returns
    -------
    pandas.DataFrame
        One row per (n_train, subset): ``n_train, subset, rate, n_test_members, defined``.
    """
    import copy

    from helpers.doppelganger import doppelganger_rate
    from helpers.rsca import RelevantScaling

    _check_rep(rep)
    labels = np.asarray(labels)
    names = np.unique(labels)
    bad = [m for m in n_train_values if int(m) != m or not 1 <= m <= names.size - 1]
    if bad:
        raise ValueError(f"n_train_values must lie in 1..{names.size - 1} (one cluster at least "
                         f"is held out), got {bad}")
    if int(n_subsets) != n_subsets or n_subsets < 1:
        raise ValueError(f"n_subsets must be a positive integer, got {n_subsets!r}")
    base = RelevantScaling("transformed").fit_population(rep.field)
    rows = []
    for m in n_train_values:
        rng = np.random.default_rng([int(seed), int(m)])
        for s in range(int(n_subsets)):
            train_names = rng.choice(names, int(m), replace=False)
            train = np.isin(labels, train_names)
            test = ~train
            # the within-cluster vectors of the training clusters span at most
            # sum(n_k - 1) directions: with fewer than K, some directions have no
            # within-cluster scatter at all and the metric is undefined
            dof = int(train.sum()) - int(m)
            try:
                if dof < rep.K:
                    raise ValueError("too few within-cluster degrees of freedom")
                model = copy.deepcopy(base).fit_clusters(rep.cluster[train], labels[train])
            except ValueError:
                rows.append({"n_train": int(m), "subset": s, "rate": np.nan,
                             "n_test_members": int(test.sum()), "defined": False})
                continue
            res = doppelganger_rate(model.transform(rep.cluster[test]), labels[test],
                                    model.transform(rep.field),
                                    vhelio_pop=pairs["vhelio_pop"], ak_pop=pairs["ak_pop"],
                                    vhelio_clust=pairs["vhelio_clust"][test],
                                    ak_clust=pairs["ak_clust"][test])
            rows.append({"n_train": int(m), "subset": s, "rate": res.global_rate,
                         "n_test_members": int(test.sum()), "defined": True})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# ground truth
# --------------------------------------------------------------------------------------------
def plateau_n(rates, top_n_values, tolerance: float = 0.15) -> int:
    """The smallest N whose rate is within ``tolerance`` of the best rate (Table 1's knee).

    Book: chapter 6, "Ground truth: how many dimensions are there?" (notebooks/06_dimensionality.md).

    Parameters
    ----------
    rates : array_like, shape (n,)
        Doppelganger rate keeping the top N dimensions, for each N of ``top_n_values``.
    top_n_values : sequence of int, length n
    tolerance : float
        Relative distance to the minimum that counts as levelled off.
    """
    rates = np.asarray(rates, dtype=float)
    if rates.shape != (len(top_n_values),) or not np.all(np.isfinite(rates)):
        raise ValueError(f"rates must be {len(top_n_values)} finite values, one per N; got {rates!r}")
    return int(top_n_values[int(np.flatnonzero(rates <= (1 + tolerance) * rates.min())[0])])


def latent_recovery(Z, latent) -> np.ndarray:
    """How much of each true chemical coordinate a representation captures linearly (R^2).

    Book: chapter 6, "Ground truth: how many dimensions are there?" (notebooks/06_dimensionality.md).

    Parameters
    ----------
    Z : array_like, shape (n_stars, n_dims)
        E.g. the top-N RSCA coordinates of field stars (columns of zeros are ignored).
    latent : array_like, shape (n_stars, n_latent)
        The survey's true latent chemical coordinates of the same stars.

    Returns
    -------
    ndarray, shape (n_latent,)
        Coefficient of determination of a least-squares fit (with intercept) of each true
        coordinate on ``Z``.
    """
    Z = np.asarray(Z, float)
    L = np.asarray(latent, float)
    if Z.ndim != 2 or L.ndim != 2 or Z.shape[0] != L.shape[0]:
        raise ValueError(f"Z and latent must be 2-D with one row per star, got {Z.shape}, {L.shape}")
    Z = Z[:, np.any(Z != 0, axis=0)]
    A = np.column_stack([np.ones(Z.shape[0]), Z])
    coef, *_ = np.linalg.lstsq(A, L, rcond=None)
    resid = L - A @ coef
    return 1.0 - resid.var(axis=0) / L.var(axis=0)
