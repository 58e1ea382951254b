"""Doppelganger rates over PPCA runs and clusters: the one evaluation of every headline rate.

Book: {ref}`sec-rsca-spread`

A rate from one PPCA fit and one set of clusters is one random draw.  The paper reports its
Fig. 4 and Table 1 as mean +- sd over 10 PPCA runs; the clusters add their own spread (which
22 clusters happen to be the sample).  This module evaluates a representation the same way
for every chapter and keeps both spreads:

* :class:`RateEvaluator` computes the leave-one-cluster-out rates of a representation
  (sphering on **every** field star, steps 3-4 without the held-out cluster, only the field
  stars that can form an allowed pair projected through the metric: the same rates as with
  the whole field, faster);
* :class:`RateSpread` holds the per-cluster rates of each PPCA run, shape
  ``(n_runs, n_clusters)``, and gives the mean over runs, the standard deviation over runs,
  the bootstrap over clusters, and both at once (clusters and runs resampled jointly);
  ``a - b`` is the paired difference of two rates (same clusters, same run seeds).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from helpers.paths import cache_dir
from helpers.rsca.checks import check_labels
from helpers.rsca.doppelganger import LocoFit, loco_doppelganger_rates
from helpers.rsca.pairs import PairFilter

__all__ = ["RateSpread", "RateEvaluator", "joint_bootstrap", "MIN_RUNS", "RATES_VERSION",
           "content_digest"]

#: PPCA runs needed for a spread over runs (a standard deviation needs two values).
MIN_RUNS = 2

#: Version of the leave-one-cluster-out rates kept in ``.cache/rsca_rates``: bump it when
#: anything that changes a rate (metric, pair filter, counting) changes.
RATES_VERSION = 1


def content_digest(*arrays) -> str:
    """SHA-256 of arrays' shapes, dtypes and bytes (the content a cached rate depends on).

    Book: {ref}`sec-rsca-spread`
    """
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes() if a.dtype != object else json.dumps(a.tolist()).encode())
    return h.hexdigest()


def _weights(per_cluster, n_members):
    """Member counts, 0 for clusters without an allowed pair (NaN rate) in any run."""
    ok = np.all(np.isfinite(per_cluster), axis=0)
    return np.where(ok, n_members, 0.0)


def joint_bootstrap(per_cluster, n_members, n_boot=1000, seed=0, *, runs=True):
    """Bootstrap replicates of a global rate: clusters (and runs) resampled with replacement.

    Book: {ref}`sec-rsca-spread`

    Parameters
    ----------
    per_cluster : array_like, shape (..., n_runs, n_clusters)
        Per-cluster rates; leading axes (e.g. one per N of Table 1) share the resampling,
        so differences between them are paired.  A cluster that is NaN in some run (no
        allowed pair) has weight 0.
    n_members : array_like, shape (n_clusters,)
        Member counts (the weights of the global rate).
    n_boot : int
        Replicates.
    seed : int
        Seed of the resampling.
    runs : bool
        Resample the runs too (True), or average every run (False: clusters only).

    Returns
    -------
    ndarray, shape (n_boot, ...)
        Global rate of each replicate (for each leading index).
    """
    P = np.asarray(per_cluster, dtype=float)
    if P.ndim < 2:
        raise ValueError(f"per_cluster must have shape (..., n_runs, n_clusters), got {P.shape}")
    n_runs, n_clusters = P.shape[-2:]
    w = _weights(P.reshape(-1, n_clusters), np.asarray(n_members, float))
    if not np.any(w > 0):
        raise ValueError("no cluster has an allowed member-field pair: no rate to bootstrap")
    P = np.nan_to_num(P)
    rng = np.random.default_rng(seed)
    out = np.empty((int(n_boot),) + P.shape[:-2])
    for b in range(int(n_boot)):
        c = rng.integers(0, n_clusters, n_clusters)
        r = rng.integers(0, n_runs, n_runs) if runs else np.arange(n_runs)
        wc = w[c]
        if wc.sum() == 0:       # every drawn cluster lacks pairs: draw again
            c = np.flatnonzero(w > 0)[rng.integers(0, np.count_nonzero(w > 0), n_clusters)]
            wc = w[c]
        sub = P[..., r, :][..., c].mean(axis=-2)          # (..., n_clusters drawn)
        out[b] = (sub * wc).sum(axis=-1) / wc.sum()
    return out


@dataclass
class RateSpread:
    """Per-cluster doppelganger rates of several PPCA runs, and the spreads of the global rate.

    Book: {ref}`sec-rsca-spread`

    Attributes
    ----------
    per_cluster : ndarray, shape (n_runs, n_clusters)
        Rate of each held-out cluster in each run (NaN: no allowed pair).
    n_members : ndarray, shape (n_clusters,)
        Member counts, the weights of the global rate.
    clusters : ndarray, shape (n_clusters,)
        Cluster names (sorted).
    fixed : bool
        True for a representation without PPCA (abundances): one "run", no spread over runs.
    n_boot, seed : int
        Bootstrap replicates and their seed.
    """

    per_cluster: np.ndarray
    n_members: np.ndarray
    clusters: np.ndarray
    fixed: bool = False
    n_boot: int = 1000
    seed: int = 0
    _boot: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.per_cluster = np.atleast_2d(np.asarray(self.per_cluster, float))
        self.n_members = np.asarray(self.n_members, float)
        if self.per_cluster.shape[1] != self.n_members.size:
            raise ValueError(f"per_cluster has {self.per_cluster.shape[1]} clusters but n_members "
                             f"{self.n_members.size}")
        if not self.fixed and self.n_runs < MIN_RUNS:
            raise ValueError(f"a spread over PPCA runs needs at least {MIN_RUNS} runs (start seeds), "
                             f"got {self.n_runs}")

    @property
    def n_runs(self) -> int:
        """Number of PPCA runs (1 for a fixed representation)."""
        return int(self.per_cluster.shape[0])

    @property
    def weights(self) -> np.ndarray:
        """Member counts, 0 for clusters without any allowed pair."""
        return _weights(self.per_cluster, self.n_members)

    @property
    def runs(self) -> np.ndarray:
        """Global rate of each run, shape (n_runs,)."""
        w = self.weights
        return np.nan_to_num(self.per_cluster) @ w / w.sum()

    @property
    def mean(self) -> float:
        """Global rate averaged over runs (the headline number)."""
        return float(self.runs.mean())

    @property
    def run_sd(self) -> float:
        """Standard deviation of the global rate over PPCA runs (0 for a fixed representation)."""
        return 0.0 if self.fixed or self.n_runs < 2 else float(self.runs.std(ddof=1))

    def replicates(self, runs: bool = True) -> np.ndarray:
        """Bootstrap replicates of the global rate, shape (n_boot,).

        Book: {ref}`sec-rsca-spread`

        Parameters
        ----------
        runs : bool
            Resample the PPCA runs together with the clusters (True), or clusters only with
            every run averaged (False).
        """
        key = bool(runs)
        if key not in self._boot:
            self._boot[key] = joint_bootstrap(self.per_cluster, self.n_members, self.n_boot,
                                              self.seed, runs=runs and not self.fixed)
        return self._boot[key]

    @property
    def boot_sd(self) -> float:
        """Standard deviation over a bootstrap of the clusters (runs averaged)."""
        return float(self.replicates(False).std(ddof=1))

    @property
    def total_sd(self) -> float:
        """Standard deviation when clusters and runs are resampled together."""
        return float(self.replicates(True).std(ddof=1))

    @property
    def interval(self) -> tuple:
        """16th-84th percentile of the joint bootstrap."""
        r = self.replicates(True)
        return float(np.percentile(r, 16)), float(np.percentile(r, 84))

    @property
    def dominant(self) -> str:
        """Which spread is larger: ``"clusters"`` or ``"PPCA runs"``."""
        return "clusters" if self.boot_sd >= self.run_sd else "PPCA runs"

    def __sub__(self, other: "RateSpread") -> "RateSpread":
        """Paired difference: same clusters; run i minus run i (a fixed side is broadcast)."""
        if not isinstance(other, RateSpread):
            return NotImplemented
        if not np.array_equal(self.clusters, other.clusters):
            raise ValueError("a paired difference needs the same clusters on both sides")
        a, b = self.per_cluster, other.per_cluster
        if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
            raise ValueError(f"a paired difference needs the same number of runs on both sides "
                             f"(or one fixed side), got {a.shape[0]} and {b.shape[0]}")
        return RateSpread(a - b, self.n_members, self.clusters, fixed=self.fixed and other.fixed,
                          n_boot=self.n_boot, seed=self.seed)

    def summary(self) -> dict:
        """Mean, both spreads, the joint one and which dominates, as plain numbers."""
        return {"rate": self.mean, "run_sd": self.run_sd, "boot_sd": self.boot_sd,
                "total_sd": self.total_sd, "n_runs": self.n_runs, "dominant": self.dominant}

    def text(self, digits: int = 4) -> str:
        """``"0.0123 +- 0.0008 (runs) +- 0.0015 (clusters)"``."""
        runs = "" if self.fixed else f" ± {self.run_sd:.{digits}f} (PPCA runs)"
        return f"{self.mean:.{digits}f}{runs} ± {self.boot_sd:.{digits}f} (clusters)"


class RateEvaluator:
    """Leave-one-cluster-out rates of representations of one data set, the paper's way.

    Book: {ref}`sec-rsca-spread`

    Step 2 (sphering) uses **every** field star of the representation; steps 3-4 are
    refitted without the held-out cluster (:class:`helpers.rsca.doppelganger.LocoFit`);
    only the field stars that form an allowed pair with some member are transformed and
    counted (:meth:`helpers.rsca.pairs.PairFilter.candidates`), which gives exactly the
    rates of the whole field.

    Parameters
    ----------
    labels : array_like, shape (n_members,)
        Cluster of each member.
    pairs : helpers.rsca.pairs.PairFilter
        Of the whole field and the members (:meth:`PairFilter.from_inputs`).
    n_boot, seed : int
        Bootstrap replicates (and seed) of the spreads returned.
    """

    def __init__(self, labels, pairs: PairFilter, *, n_boot: int = 1000, seed: int = 0):
        labels = np.asarray(labels)
        self.labels, self.clusters, codes = check_labels(labels, labels.size)
        self.n_members = np.bincount(codes, minlength=self.clusters.size).astype(float)
        n_pop = (pairs.vhelio_pop if pairs.vhelio_pop is not None else pairs.ak_pop)
        self.n_field = None if n_pop is None else int(np.asarray(n_pop).size)
        if n_pop is None:
            self.candidates = None
            self.pairs = pairs
        else:
            checked = pairs.checked(self.n_field, labels.size)
            self.candidates = checked.candidates()
            self.pairs = checked.restricted(self.candidates)
        self.n_boot, self.seed = int(n_boot), int(seed)
        p = self.pairs
        self._setup_key = content_digest(np.asarray(self.labels).astype(str), self.candidates,
                                  p.vhelio_pop, p.ak_pop, p.vhelio_clust, p.ak_clust,
                                  np.array([p.dv_max, p.dak_max], float))
        self._memo = {}

    @property
    def setup_key(self) -> str:
        """Digest of what every rate of this evaluator depends on besides the coordinates:
        the members' clusters, the candidate field stars and the pair filter."""
        return self._setup_key

    def rate(self, field_X, cluster_X, *, mode: str = "transformed", top_n=None, leak: bool = False):
        """Leave-one-cluster-out rates of one representation.

        Book: {ref}`sec-rsca-spread`

        Parameters
        ----------
        field_X : array_like, shape (n_field, K)
            Every field star (the sphering uses all of them).
        cluster_X : array_like, shape (n_members, K)
        mode : str
            :class:`helpers.rsca.metric.RelevantScaling` mode ("raw", "scaled", "transformed").
        top_n : int, optional
            Keep only the ``top_n`` most strongly scaled dimensions (Table 1).
        leak : bool
            Fit steps 3-4 on every cluster, held-out one included (the leak to avoid).

        Returns
        -------
        helpers.rsca.doppelganger.DoppelgangerResult
        """
        field_X = np.asarray(field_X)
        if self.n_field is not None and field_X.shape[0] != self.n_field:
            raise ValueError(f"field_X has {field_X.shape[0]} stars but the pair filter "
                             f"{self.n_field}")
        fit = LocoFit(field_X, mode, top_n=top_n)
        pop = field_X if self.candidates is None else field_X[self.candidates]
        return loco_doppelganger_rates(pop, cluster_X, self.labels, fit_fn=fit, leak=leak,
                                       n_boot=0, **self.pairs.as_kwargs())

    def per_cluster(self, field_X, cluster_X, *, cache: bool = True, **kwargs) -> np.ndarray:
        """Per-cluster rates (sorted clusters) of one representation, shape (n_clusters,).

        Book: {ref}`sec-rsca-spread`

        The rates are kept in memory and in ``.cache/rsca_rates/<key>.npy``, keyed by the
        content of the coordinates, the members' clusters, the pair filter, ``kwargs`` and
        :data:`RATES_VERSION`, so a chapter run again (or another chapter asking for the same
        rate) reads them instead of recomputing them.

        Parameters
        ----------
        field_X : array_like, shape (n_field, K)
        cluster_X : array_like, shape (n_members, K)
        cache : bool
            Read and write the cache (False: always compute).
        **kwargs
            ``mode``, ``top_n``, ``leak`` as in :meth:`rate`.
        """
        if not cache:
            return self.rate(field_X, cluster_X, **kwargs).table["rate"].to_numpy(float)
        opts = {"mode": kwargs.get("mode", "transformed"), "top_n": kwargs.get("top_n"),
                "leak": bool(kwargs.get("leak", False))}
        unknown = set(kwargs) - set(opts)
        if unknown:
            raise TypeError(f"unknown argument(s) {sorted(unknown)}; expected mode, top_n, leak")
        key = hashlib.sha256(json.dumps(
            {"v": RATES_VERSION, "setup": self._setup_key, "X": content_digest(field_X, cluster_X),
             **{k: (None if v is None else (v if isinstance(v, (str, bool)) else int(v)))
                for k, v in opts.items()}}, sort_keys=True).encode()).hexdigest()[:20]
        if key in self._memo:
            return self._memo[key].copy()
        path = cache_dir("rsca_rates") / f"{key}.npy"
        if path.exists():
            out = np.load(path)
        else:
            out = self.rate(field_X, cluster_X, **opts).table["rate"].to_numpy(float)
            tmp = path.with_name(f".{key}.{os.getpid()}.tmp.npy")
            np.save(tmp, out)
            os.replace(tmp, path)
        self._memo[key] = out
        return out.copy()

    def over_runs(self, reps, **kwargs) -> RateSpread:
        """The rate of several PPCA runs of one representation (at least two).

        Book: {ref}`sec-rsca-spread`

        Parameters
        ----------
        reps : sequence of helpers.rsca.representation.Representation
            One per PPCA run (start seed); anything with ``.field`` and ``.cluster``.
        **kwargs
            ``mode``, ``top_n``, ``leak`` as in :meth:`rate`.

        Returns
        -------
        RateSpread
        """
        reps = list(reps)
        if len(reps) < MIN_RUNS:
            raise ValueError(f"a spread over PPCA runs needs at least {MIN_RUNS} runs (start "
                             f"seeds), got {len(reps)}")
        P = np.stack([self.per_cluster(r.field, r.cluster, **kwargs) for r in reps])
        return RateSpread(P, self.n_members, self.clusters, n_boot=self.n_boot, seed=self.seed)

    def fixed(self, field_X, cluster_X, **kwargs) -> RateSpread:
        """The rate of a representation without PPCA runs (e.g. abundances).

        Book: {ref}`sec-rsca-spread`
        """
        P = self.per_cluster(field_X, cluster_X, **kwargs)[None, :]
        return RateSpread(P, self.n_members, self.clusters, fixed=True, n_boot=self.n_boot,
                          seed=self.seed)

    def table(self, spreads: dict) -> pd.DataFrame:
        """One row per named :class:`RateSpread`: rate, sd over runs, sd over clusters, both.

        Book: {ref}`sec-rsca-spread`
        """
        return pd.DataFrame({name: s.summary() for name, s in spreads.items()}).T
