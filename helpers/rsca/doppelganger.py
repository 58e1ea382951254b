"""Doppelganger rates and leave-one-cluster-out validation of a chemical-likeness metric.

Book: {ref}`sec-rsca-rates`

De Mijolla & Ness (2022) judge a metric by its **doppelganger rate**.  For a cluster k:

* threshold ``t_k`` = median Euclidean distance over all pairs of its members;
* rate ``r_k`` = fraction of (member, field star) pairs, among the pairs allowed by the
  pair filter (``|dVHELIO_AVG| < 5 km/s`` and ``|dAK_TARG| < 0.05`` by default; these
  remove pairs whose spectra would differ for reasons other than chemistry), whose distance
  is below ``t_k`` (strictly);
* global rate = mean of ``r_k`` weighted by member count.

Under **leave-one-cluster-out** (LOCO) the metric used for cluster k is fitted on the other
clusters only.  ``leak=True`` reproduces the evaluation in which the held-out cluster also
enters the fitted steps (the authors' published code compressed all spectra, OCCAM members
included, with one PPCA before the loop, and ``leave_out=False`` fits the metric on all
clusters), so that the chapter can quantify how much such a leak flatters the rate.

Distances are computed block by block in float64 with the expansion
``|a-b|^2 = |a|^2 + |b|^2 - 2 a.b`` after centring on the cluster mean; pairs whose squared
distance is within rounding error of the threshold are recomputed exactly from differences,
so ties are decided as by direct subtraction.  When velocities are given, the field is
sorted by VHELIO_AVG once and each cluster only looks at the field window within
``dv_max`` of its members.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from helpers.rsca.checks import as_2d_finite, check_labels
from helpers.rsca.metric import RelevantScaling
from helpers.rsca.pairs import FieldIndex, PairFilter

__all__ = [
    "DoppelgangerResult",
    "LocoFit",
    "loco_pair_distances",
    "doppelganger_rate",
    "leave_one_cluster_out_splits",
    "loco_doppelganger_rates",
    "weighted_bootstrap",
]

_REL_EPS = 64 * np.finfo(np.float64).eps


# --------------------------------------------------------------------------------------------
# result container
# --------------------------------------------------------------------------------------------
@dataclass
class DoppelgangerResult:
    """Per-cluster and global doppelganger rates.

    Book: {ref}`sec-rsca-rates`

    Attributes
    ----------
    table : pandas.DataFrame
        One row per cluster (sorted by label): ``cluster``, ``n_members``, ``threshold``
        (median member-pair distance), ``n_pairs`` (allowed member-field pairs),
        ``n_below`` (of which closer than the threshold), ``rate``.
    global_rate : float
        Member-count-weighted mean of the per-cluster rates (clusters without any allowed
        pair are left out, with a warning in ``notes``).
    global_rate_std : float
        Bootstrap (over clusters) standard deviation of ``global_rate``; NaN if not computed.
    global_rate_interval : tuple of float
        16th-84th percentile bootstrap interval; (NaN, NaN) if not computed.
    bootstrap : ndarray, shape (n_boot,)
        Bootstrap replicates of the global rate (empty if not computed).
    leak : bool
        Whether held-out clusters were allowed into the fitted model (LOCO only).
    notes : list of str
        Warnings (e.g. clusters with no allowed field pair).
    """

    table: pd.DataFrame
    global_rate: float
    global_rate_std: float = float("nan")
    global_rate_interval: tuple = (float("nan"), float("nan"))
    bootstrap: np.ndarray = field(default_factory=lambda: np.zeros(0))
    leak: bool = False
    notes: list = field(default_factory=list)

    @property
    def rates(self):
        """Per-cluster rates as a ``pandas.Series`` indexed by cluster.

        Book: {ref}`sec-rsca-rates`
        """
        return self.table.set_index("cluster")["rate"]

    def to_dict(self):
        """JSON-friendly summary (per-cluster rows as a list of dicts).

        Book: {ref}`sec-rsca-rates`

        Returns
        -------
        dict
        """
        rows = self.table.to_dict(orient="records")
        for r in rows:
            for k, v in list(r.items()):
                if isinstance(v, np.generic):
                    r[k] = v.item()
        return {
            "global_rate": float(self.global_rate),
            "global_rate_std": float(self.global_rate_std),
            "global_rate_interval": [float(x) for x in self.global_rate_interval],
            "leak": bool(self.leak),
            "clusters": rows,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------
# core counting
# --------------------------------------------------------------------------------------------
def _median_pair_distance(Zm):
    """Median Euclidean distance over all unordered pairs of rows (exact differences)."""
    n = Zm.shape[0]
    i, j = np.triu_indices(n, k=1)
    d = np.sqrt(np.einsum("ij,ij->i", Zm[i] - Zm[j], Zm[i] - Zm[j]))
    return float(np.median(d))


def _count_below(Zm, Zf, thr, allowed=None, block=8192):
    """Count allowed pairs (member, field) and those with distance < thr.

    Parameters
    ----------
    Zm : (n, K) members, Zf : (W, K) field candidates, allowed : (n, W) bool or None.

    Returns
    -------
    n_pairs, n_below : int
    """
    c = Zm.mean(axis=0)
    A = Zm - c
    na = np.einsum("ij,ij->i", A, A)
    thr2 = thr * thr
    n_pairs = 0
    n_below = 0
    for s in range(0, Zf.shape[0], block):
        B = Zf[s:s + block] - c
        nb = np.einsum("ij,ij->i", B, B)
        # D2 - thr^2, built in place: |a|^2 + |b|^2 - 2 a.b - thr^2
        E = A @ B.T
        E *= -2.0
        E += na[:, None] - thr2
        E += nb[None, :]
        below = E < 0.0
        # rounding error of the expansion is below eps * (|a|^2 + |b|^2 + thr^2); decide the
        # pairs inside that band by exact differences
        tol = _REL_EPS * (na + (nb.max() if nb.size else 0.0) + thr2)
        np.abs(E, out=E)
        amb = E <= tol[:, None]
        if amb.any():
            ii, jj = np.nonzero(amb)
            diff = A[ii] - B[jj]
            below[ii, jj] = np.einsum("ij,ij->i", diff, diff) < thr2
        if allowed is not None:
            al = allowed[:, s:s + block]
            n_pairs += int(np.count_nonzero(al))
            n_below += int(np.count_nonzero(below & al))
        else:
            n_pairs += below.size
            n_below += int(np.count_nonzero(below))
    return n_pairs, n_below


def _cluster_row(name, Zm, Zf_cand, allowed):
    thr = _median_pair_distance(Zm)
    n_pairs, n_below = _count_below(Zm, Zf_cand, thr, allowed)
    rate = n_below / n_pairs if n_pairs else float("nan")
    return {"cluster": name, "n_members": int(Zm.shape[0]), "threshold": thr,
            "n_pairs": int(n_pairs), "n_below": int(n_below), "rate": rate}


def _global(table):
    ok = table["n_pairs"] > 0
    notes = []
    if (~ok).any():
        notes.append(f"clusters with no allowed field pair (left out of the global rate): "
                     f"{table.loc[~ok, 'cluster'].tolist()}")
    if not ok.any():
        return float("nan"), notes
    return float(np.average(table.loc[ok, "rate"], weights=table.loc[ok, "n_members"])), notes


def weighted_bootstrap(rates, weights, n_boot=1000, random_state=0):
    """Bootstrap over clusters of the weighted mean rate.

    Book: {ref}`sec-rsca-rates`

    Parameters
    ----------
    rates : array_like, shape (n_clusters,)
        Per-cluster rates (finite).
    weights : array_like, shape (n_clusters,)
        Member counts.
    n_boot : int, default 1000
        Number of replicates (clusters drawn with replacement).
    random_state : int, default 0
        Seed.

    Returns
    -------
    replicates : ndarray, shape (n_boot,)
    """
    rates = np.asarray(rates, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(random_state)
    idx = rng.integers(0, rates.size, size=(n_boot, rates.size))
    w = weights[idx]
    return (rates[idx] * w).sum(axis=1) / w.sum(axis=1)


def _attach_bootstrap(res, n_boot, random_state):
    t = res.table[res.table["n_pairs"] > 0]
    if n_boot and len(t) > 1:
        reps = weighted_bootstrap(t["rate"].to_numpy(), t["n_members"].to_numpy(), n_boot,
                                  random_state)
        res.bootstrap = reps
        res.global_rate_std = float(np.std(reps, ddof=1))
        res.global_rate_interval = (float(np.percentile(reps, 16)),
                                    float(np.percentile(reps, 84)))
    return res


# --------------------------------------------------------------------------------------------
# public: rate for a fixed metric
# --------------------------------------------------------------------------------------------
def doppelganger_rate(Z_clust, cluster_labels, Z_pop, *, vhelio_pop=None, ak_pop=None,
                      vhelio_clust=None, ak_clust=None, dv_max=5.0, dak_max=0.05,
                      n_boot=0, random_state=0):
    """Doppelganger rate of every cluster in a fixed representation / metric.

    Book: {ref}`sec-rsca-rates`

    Parameters
    ----------
    Z_clust : array_like, shape (n_members, K)
        Cluster members' coordinates (already transformed by the metric).
    cluster_labels : array_like, shape (n_members,)
        Cluster of each member (>= 2 members each).
    Z_pop : array_like, shape (N_field, K)
        Field stars' coordinates in the same space.
    vhelio_pop, ak_pop : array_like, shape (N_field,), optional
        Field VHELIO_AVG (km/s) and AK_TARG (mag).
    vhelio_clust, ak_clust : array_like, shape (n_members,), optional
        The members' values; each given together with its field counterpart.
    dv_max, dak_max : float
        Pair allowed if ``|dv| < dv_max`` and ``|dAK| < dak_max`` (defaults 5 km/s, 0.05).
    n_boot : int, default 0
        Bootstrap replicates over clusters for the uncertainty of the global rate (0: none).
    random_state : int, default 0
        Seed of the bootstrap.

    Returns
    -------
    DoppelgangerResult
    """
    Zc = as_2d_finite(Z_clust, "Z_clust")
    Zp = as_2d_finite(Z_pop, "Z_pop", Zc.shape[1])
    _, names, codes = check_labels(cluster_labels, Zc.shape[0])
    flt = PairFilter(vhelio_pop, ak_pop, vhelio_clust, ak_clust, dv_max, dak_max).checked(
        Zp.shape[0], Zc.shape[0])
    index = FieldIndex(flt)
    rows = []
    for k, name in enumerate(names):
        members = np.flatnonzero(codes == k)
        cand, allowed = index.candidates(members)
        Zf = Zp if cand is None else Zp[cand]
        rows.append(_cluster_row(name, Zc[members], Zf, allowed))
    table = pd.DataFrame(rows)
    g, notes = _global(table)
    res = DoppelgangerResult(table=table, global_rate=g, notes=notes)
    return _attach_bootstrap(res, n_boot, random_state)


# --------------------------------------------------------------------------------------------
# public: leave-one-cluster-out
# --------------------------------------------------------------------------------------------
def leave_one_cluster_out_splits(cluster_labels):
    """Yield ``(name, train_mask, test_mask)`` for each cluster (sorted labels).

    Book: {ref}`sec-rsca-rates`

    Parameters
    ----------
    cluster_labels : array_like, shape (n_members,)

    Yields
    ------
    name : label
    train_mask, test_mask : ndarray of bool, shape (n_members,)
    """
    labels = np.asarray(cluster_labels)
    if labels.ndim != 1:
        raise ValueError(f"cluster_labels must be 1-D, got shape {labels.shape}")
    for name in np.unique(labels):
        test = labels == name
        yield name, ~test, test


class LocoFit:
    """The fit function of leave-one-cluster-out: step 2 fitted once, steps 3-4 per fold.

    Book: {ref}`sec-rsca-rates`

    ``LocoFit(...)(X_pop, X_train, labels_train)`` returns a fitted
    :class:`helpers.rsca.metric.RelevantScaling`.  Its field statistics (mean, covariance:
    step 2) involve no cluster star, so they are fitted once and reused for every fold; only
    the reparametrisation and rescaling (steps 3-4) are refitted on the training clusters.
    The field statistics come from ``reference`` when given (e.g. a random field sample,
    when the ``X_pop`` passed by :func:`loco_doppelganger_rates` is only the pair
    candidates), otherwise from the ``X_pop`` of the first call (refitted if a different
    array comes).

    Parameters
    ----------
    reference : array_like, shape (n_ref, K), optional
        Field sample the sphering is fitted on.
    mode : str, default "transformed"
        :class:`helpers.rsca.metric.RelevantScaling` mode.
    top_n : int, optional
        Keep only the ``top_n`` best dimensions.
    robust : bool, default True
        MAD (True) or standard deviation for the within-cluster scatter.
    """

    def __init__(self, reference=None, mode="transformed", *, top_n=None, robust=True):
        self.mode, self.top_n, self.robust = mode, top_n, robust
        self._fitted = None        # (array it was fitted on, or None for the reference; model)
        if reference is not None:
            self._fitted = (None, self._sphering(reference))

    def _sphering(self, X):
        return RelevantScaling(self.mode, top_n=self.top_n, robust=self.robust).fit_population(X)

    def __call__(self, X_pop, X_train, labels_train):
        """Steps 3-4 fitted on the training clusters, on top of the (cached) step 2."""
        if self._fitted is None or (self._fitted[0] is not None and self._fitted[0] is not X_pop):
            self._fitted = (X_pop, self._sphering(X_pop))
        return copy.deepcopy(self._fitted[1]).fit_clusters(X_train, labels_train)


def loco_doppelganger_rates(X_pop, X_clust, cluster_labels, *, vhelio_pop=None, ak_pop=None,
                            vhelio_clust=None, ak_clust=None, dv_max=5.0, dak_max=0.05,
                            fit_fn=None, make_model=None, leak=False, n_boot=1000,
                            random_state=0):
    """Leave-one-cluster-out doppelganger rates of a learned metric.

    Book: {ref}`sec-rsca-rates`

    For each cluster k: fit the metric on the field and on the members of all *other*
    clusters, transform cluster k and the field, and compute cluster k's rate as in
    :func:`doppelganger_rate`.  Nothing fitted sees cluster k unless ``leak=True``.

    Parameters
    ----------
    X_pop : array_like, shape (N_field, K)
        Field representation.
    X_clust : array_like, shape (n_members, K)
        Cluster members' representation.
    cluster_labels : array_like, shape (n_members,)
        Cluster of each member; at least three clusters, >= 2 members each.
    vhelio_pop, ak_pop, vhelio_clust, ak_clust, dv_max, dak_max :
        Pair filter, as in :func:`doppelganger_rate`.
    fit_fn : callable, optional
        ``fit_fn(X_pop, X_train, labels_train) -> model`` with ``model.transform(X)``.
        Default: :class:`LocoFit` (full RSCA, "transformed"), whose field sphering is fitted
        once and reused (it involves no cluster star).
    make_model : callable, optional
        Alternative to ``fit_fn``: ``make_model()`` returns an unfitted object with
        ``fit(X_pop, X_train, labels_train)`` and ``transform``.
    leak : bool, default False
        If True, fit on *all* clusters (held-out one included) for every fold: the leaky
        evaluation, to quantify how much it flatters the rate.
    n_boot : int, default 1000
        Bootstrap replicates over clusters (0: none).
    random_state : int, default 0
        Bootstrap seed.

    Returns
    -------
    DoppelgangerResult
        ``table`` has one row per held-out cluster.
    """
    if fit_fn is not None and make_model is not None:
        raise ValueError("give fit_fn or make_model, not both")
    Xp = as_2d_finite(X_pop, "X_pop")
    Xc = as_2d_finite(X_clust, "X_clust", Xp.shape[1])
    labels, names, codes = check_labels(cluster_labels, Xc.shape[0])
    if len(names) < 3 and not leak:
        raise ValueError(f"cluster_labels: leave-one-cluster-out needs at least 3 clusters "
                         f"(2 left to fit on), got {len(names)}")
    flt = PairFilter(vhelio_pop, ak_pop, vhelio_clust, ak_clust, dv_max, dak_max).checked(
        Xp.shape[0], Xc.shape[0])
    if make_model is not None:
        def fit_fn(X_pop, X_train, labels_train):  # noqa: F811 - chosen alternative
            return make_model().fit(X_pop, X_train, labels_train)
    elif fit_fn is None:
        fit_fn = LocoFit()
    index = FieldIndex(flt)
    leaky_model = fit_fn(Xp, Xc, labels) if leak else None
    rows = []
    for k, name in enumerate(names):
        test = codes == k
        if leak:
            model = leaky_model
        else:
            train = ~test
            model = fit_fn(Xp, Xc[train], labels[train])
        members = np.flatnonzero(test)
        cand, allowed = index.candidates(members)
        Zf = model.transform(Xp if cand is None else Xp[cand])
        Zm = model.transform(Xc[members])
        rows.append(_cluster_row(name, np.asarray(Zm, np.float64), np.asarray(Zf, np.float64),
                                 allowed))
    table = pd.DataFrame(rows)
    g, notes = _global(table)
    res = DoppelgangerResult(table=table, global_rate=g, leak=bool(leak), notes=notes)
    return _attach_bootstrap(res, n_boot, random_state)


def loco_pair_distances(fit_fn, X_pop, X_clust, cluster_labels, vhelio_pop, ak_pop,
                        vhelio_clust, ak_clust, dv_max=5.0, dak_max=0.05):
    """The distances behind each cluster's leave-one-cluster-out doppelganger rate.

    Book: {ref}`sec-rsca-clusters`

    Parameters
    ----------
    fit_fn : callable
        ``fit_fn(X_pop, X_train, labels_train) -> model`` (e.g. :class:`LocoFit`).
    X_pop : ndarray, shape (N_field, K)
        Field stars compared with (e.g. the pair candidates).
    X_clust : ndarray, shape (n_members, K)
    cluster_labels : array_like, shape (n_members,)
    vhelio_pop, ak_pop, vhelio_clust, ak_clust : array_like
        Pair filter (km/s, mag).
    dv_max, dak_max : float

    Returns
    -------
    list of dict
        Per cluster (sorted by label): ``cluster``, ``threshold`` (median member-pair
        distance), ``member_distances`` (all member pairs), ``member`` and ``field`` (indices
        into ``X_clust`` and ``X_pop`` of every allowed pair) and ``distance`` (their
        distances).  The rate is ``mean(distance < threshold)``.
    """
    labels, names, codes = check_labels(cluster_labels, len(X_clust))
    flt = PairFilter(vhelio_pop, ak_pop, vhelio_clust, ak_clust, dv_max, dak_max).checked(
        len(X_pop), len(X_clust))
    out = []
    for k, name in enumerate(names):
        test = codes == k
        model = fit_fn(X_pop, X_clust[~test], labels[~test])
        members = np.flatnonzero(test)
        mi, fi = np.nonzero(flt.allowed(members))
        Zm = model.transform(X_clust[members])
        used = np.unique(fi)
        Zf = np.zeros((X_pop.shape[0], Zm.shape[1]))
        if used.size:
            Zf[used] = model.transform(X_pop[used])
        d = np.sqrt(((Zm[mi] - Zf[fi]) ** 2).sum(axis=1))
        i, j = np.triu_indices(members.size, k=1)
        dm = np.sqrt(((Zm[i] - Zm[j]) ** 2).sum(axis=1))
        out.append({"cluster": name, "threshold": float(np.median(dm)), "member_distances": dm,
                    "member": members[mi], "field": fi, "distance": d})
    return out
