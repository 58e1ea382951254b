"""Doppelganger rates and leave-one-cluster-out validation of a chemical-likeness metric.

Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

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

from helpers.rsca import RelevantScaling, _as_2d_finite, _check_labels

__all__ = [
    "DoppelgangerResult",
    "PairFilter",
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

    Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

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

        Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).
        """
        return self.table.set_index("cluster")["rate"]

    def to_dict(self):
        """JSON-friendly summary (per-cluster rows as a list of dicts).

        Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

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
# pair filter
# --------------------------------------------------------------------------------------------
@dataclass
class PairFilter:
    """Which (member, field star) pairs count: ``|dVHELIO| < dv_max`` and ``|dAK| < dak_max``.

    Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

    Any of the four arrays may be None together with its partner (that criterion is then
    not applied).  Arrays are 1-D: ``*_pop`` of length N_field, ``*_clust`` of length
    n_members.
    """

    vhelio_pop: np.ndarray | None = None
    ak_pop: np.ndarray | None = None
    vhelio_clust: np.ndarray | None = None
    ak_clust: np.ndarray | None = None
    dv_max: float = 5.0
    dak_max: float = 0.05

    def checked(self, n_pop, n_clust):
        """Validate shapes and values; return a copy with float64 arrays.

        Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

        Parameters
        ----------
        n_pop, n_clust : int
            Number of field stars and of cluster members.

        Returns
        -------
        PairFilter
        """
        out = {}
        for base in ("vhelio", "ak"):
            pop, clu = getattr(self, f"{base}_pop"), getattr(self, f"{base}_clust")
            if (pop is None) != (clu is None):
                raise ValueError(f"{base}_pop and {base}_clust must be given together "
                                 f"(got {base}_pop={'None' if pop is None else 'array'}, "
                                 f"{base}_clust={'None' if clu is None else 'array'})")
            for nm, arr, n in ((f"{base}_pop", pop, n_pop), (f"{base}_clust", clu, n_clust)):
                if arr is None:
                    out[nm] = None
                    continue
                a = np.asarray(arr, dtype=np.float64)
                if a.ndim != 1 or a.shape[0] != n:
                    raise ValueError(f"pair filter {nm} must be 1-D with {n} entries (one per "
                                     f"{'field star' if nm.endswith('pop') else 'cluster member'}"
                                     f"), got shape {a.shape}")
                if not np.all(np.isfinite(a)):
                    i = int(np.flatnonzero(~np.isfinite(a))[0])
                    raise ValueError(f"pair filter {nm} has a non-finite value ({a[i]}) at "
                                     f"index {i}; remove such stars or replace the sentinel")
                out[nm] = a
        for nm in ("dv_max", "dak_max"):
            v = getattr(self, nm)
            if not (np.isscalar(v) and np.isfinite(v) and v > 0):
                raise ValueError(f"{nm} must be a finite number > 0, got {v!r}")
        return PairFilter(dv_max=float(self.dv_max), dak_max=float(self.dak_max), **out)

    @property
    def uses_velocity(self):
        """True if the velocity criterion is applied.

        Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).
        """
        return self.vhelio_pop is not None


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


class _FieldIndex:
    """Field stars sorted by velocity, to find each cluster's candidate window quickly."""

    def __init__(self, flt, n_pop):
        self.flt = flt
        if flt.uses_velocity:
            self.order = np.argsort(flt.vhelio_pop, kind="stable")
            self.v_sorted = flt.vhelio_pop[self.order]
        else:
            self.order = None

    def candidates(self, member_idx):
        """(field row indices, allowed (n, W) bool or None) for a set of members."""
        flt = self.flt
        if self.order is None:
            rows = None
        else:
            v = flt.vhelio_clust[member_idx]
            lo = np.searchsorted(self.v_sorted, v.min() - flt.dv_max, side="left")
            hi = np.searchsorted(self.v_sorted, v.max() + flt.dv_max, side="right")
            rows = np.sort(self.order[lo:hi])
        allowed = None
        if flt.uses_velocity:
            allowed = np.abs(flt.vhelio_clust[member_idx][:, None]
                             - flt.vhelio_pop[rows][None, :]) < flt.dv_max
        if flt.ak_pop is not None:
            akp = flt.ak_pop if rows is None else flt.ak_pop[rows]
            a2 = np.abs(flt.ak_clust[member_idx][:, None] - akp[None, :]) < flt.dak_max
            allowed = a2 if allowed is None else (allowed & a2)
        return rows, allowed


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

    Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

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

    Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

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
    Zc = _as_2d_finite(Z_clust, "Z_clust")
    Zp = _as_2d_finite(Z_pop, "Z_pop", Zc.shape[1])
    _, names, codes = _check_labels(cluster_labels, Zc.shape[0])
    flt = PairFilter(vhelio_pop, ak_pop, vhelio_clust, ak_clust, dv_max, dak_max).checked(
        Zp.shape[0], Zc.shape[0])
    index = _FieldIndex(flt, Zp.shape[0])
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

    Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

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


def _default_fit_fn(mode="transformed", top_n=None, robust=True):
    """A ``fit_fn`` for RelevantScaling that fits the (cluster-free) sphering only once."""
    cache = {}

    def fit_fn(X_pop, X_train, labels_train):
        key = id(X_pop)
        if key not in cache:
            cache.clear()
            cache[key] = RelevantScaling(mode, top_n=top_n, robust=robust).fit_population(X_pop)
        return copy.deepcopy(cache[key]).fit_clusters(X_train, labels_train)

    return fit_fn


def loco_doppelganger_rates(X_pop, X_clust, cluster_labels, *, vhelio_pop=None, ak_pop=None,
                            vhelio_clust=None, ak_clust=None, dv_max=5.0, dak_max=0.05,
                            fit_fn=None, make_model=None, leak=False, n_boot=1000,
                            random_state=0):
    """Leave-one-cluster-out doppelganger rates of a learned metric.

    Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

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
        Default: :class:`helpers.rsca.RelevantScaling` ("transformed"), whose field sphering
        is fitted once and reused (it involves no cluster star).
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
    Xp = _as_2d_finite(X_pop, "X_pop")
    Xc = _as_2d_finite(X_clust, "X_clust", Xp.shape[1])
    labels, names, codes = _check_labels(cluster_labels, Xc.shape[0])
    if len(names) < 3 and not leak:
        raise ValueError(f"cluster_labels: leave-one-cluster-out needs at least 3 clusters "
                         f"(2 left to fit on), got {len(names)}")
    flt = PairFilter(vhelio_pop, ak_pop, vhelio_clust, ak_clust, dv_max, dak_max).checked(
        Xp.shape[0], Xc.shape[0])
    if make_model is not None:
        def fit_fn(X_pop, X_train, labels_train):  # noqa: F811 - chosen alternative
            return make_model().fit(X_pop, X_train, labels_train)
    elif fit_fn is None:
        fit_fn = _default_fit_fn()
    index = _FieldIndex(flt, Xp.shape[0])
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
