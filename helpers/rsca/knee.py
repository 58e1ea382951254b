"""Where does the rate stop falling?  The knee of Table 1, found by statistics.

Book: {ref}`sec-knee`

Table 1 of de Mijolla & Ness (2022) keeps the N most strongly scaled RSCA dimensions.  The
**knee** is the smallest N beyond which no larger N lowers the rate significantly:

    knee = min { N_i : R(N_i) - R(N_j) <= z * sd[R(N_i) - R(N_j)]  for every N_j > N_i },

with ``z = 2`` and ``sd`` the standard deviation of the **paired** difference, from a
bootstrap that resamples the clusters jointly across N (the same clusters for every N) and
the PPCA runs too.  Pairing matters: the rates at neighbouring N share most of their
cluster-to-cluster scatter, so their difference is far better determined than either rate.
The knee's own uncertainty comes from applying the rule to every bootstrap replicate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers.rsca.runs import MIN_RUNS, joint_bootstrap

__all__ = ["Knee", "find_knee", "MIN_N_VALUES"]

#: The rule compares each N with the larger ones: fewer than three N say nothing.
MIN_N_VALUES = 3


@dataclass
class Knee:
    """The knee of a rate-against-N curve, with its uncertainty.

    Book: {ref}`sec-knee`

    Attributes
    ----------
    knee : int
        The smallest N beyond which no larger N lowers the rate by more than ``z`` standard
        deviations of the paired difference.
    interval : tuple of int
        16th and 84th percentiles of the knee over bootstrap replicates.
    probability : float
        Fraction of replicates whose knee equals ``knee``.
    table : pandas.DataFrame
        One row per N: ``rate`` (mean over runs), ``sd`` (joint bootstrap),
        ``largest_drop`` (the largest R(N) - R(N') over N' > N), ``drop_sd`` (its paired
        standard deviation), ``z_drop`` (their ratio; the most significant one over N' is
        shown), ``knee_share`` (fraction of replicates with this knee).
    z : float
        Threshold in standard deviations.
    replicates : ndarray of int, shape (n_boot,)
        Knee of every bootstrap replicate.
    """

    knee: int
    interval: tuple
    probability: float
    table: pd.DataFrame
    z: float
    replicates: np.ndarray

    def text(self) -> str:
        """``"5 (68 % interval 4-6)"``."""
        lo, hi = self.interval
        span = f"{lo}" if lo == hi else f"{lo}-{hi}"
        return f"{self.knee} (68 % interval {span})"


def _rule(R, sd, z):
    """Index of the knee for rates R (n_N,) and paired sds sd (n_N, n_N)."""
    n = R.size
    for i in range(n):
        drops = R[i] - R[i + 1:]
        if np.all(drops <= z * sd[i, i + 1:]):
            return i
    return n - 1


def find_knee(per_cluster, n_members, N_values, *, z: float = 2.0, n_boot: int = 1000,
              seed: int = 0) -> Knee:
    """The knee of Table 1 from per-cluster rates of every PPCA run at every N.

    Book: {ref}`sec-knee`

    Parameters
    ----------
    per_cluster : array_like, shape (n_N, n_runs, n_clusters)
        Leave-one-cluster-out rate of each held-out cluster, in each PPCA run, keeping the top
        N dimensions (e.g. ``np.stack([spread.per_cluster for spread in spreads])`` of
        :class:`helpers.rsca.runs.RateSpread`).
    n_members : array_like, shape (n_clusters,)
        Member counts (weights of the global rate).
    N_values : sequence of int, length n_N
        Increasing numbers of dimensions kept (at least three).
    z : float
        How many standard deviations of the paired difference count as a real drop.
    n_boot : int
        Bootstrap replicates (clusters and runs resampled jointly across N).
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    Knee
    """
    N = np.asarray(N_values)
    if N.ndim != 1 or N.size < MIN_N_VALUES:
        raise ValueError(f"the knee rule needs at least {MIN_N_VALUES} values of N (it compares "
                         f"each N with the larger ones), got {N.size}: {list(N_values)}")
    if not np.issubdtype(N.dtype, np.integer) or np.any(np.diff(N) <= 0) or N[0] < 1:
        raise ValueError(f"N_values must be increasing positive integers, got {list(N_values)}")
    P = np.asarray(per_cluster, dtype=float)
    if P.ndim != 3 or P.shape[0] != N.size:
        raise ValueError(f"per_cluster must have shape (n_N={N.size}, n_runs, n_clusters), got {P.shape}")
    if P.shape[1] < MIN_RUNS:
        raise ValueError(f"the knee's spread needs at least {MIN_RUNS} PPCA runs (start seeds), "
                         f"got {P.shape[1]}")
    if not (np.isfinite(z) and z > 0):
        raise ValueError(f"z must be a positive number, got {z!r}")
    if int(n_boot) != n_boot or n_boot < 100:
        raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    w = np.asarray(n_members, float)
    ok = np.all(np.isfinite(P), axis=(0, 1))
    R = np.nan_to_num(P).mean(axis=1) @ np.where(ok, w, 0) / np.where(ok, w, 0).sum()
    reps = joint_bootstrap(P, w, int(n_boot), seed, runs=True)        # (n_boot, n_N)
    diff = reps[:, :, None] - reps[:, None, :]                         # (n_boot, n_N, n_N)
    sd = diff.std(axis=0, ddof=1)
    k = _rule(R, sd, z)
    rep_knees = np.array([N[_rule(r, sd, z)] for r in reps])
    drops = np.full(N.size, np.nan)
    drop_sd = np.full(N.size, np.nan)
    for i in range(N.size - 1):
        zs = (R[i] - R[i + 1:]) / np.where(sd[i, i + 1:] > 0, sd[i, i + 1:], np.inf)
        j = i + 1 + int(np.argmax(zs))
        drops[i], drop_sd[i] = R[i] - R[j], sd[i, j]
    table = pd.DataFrame({"N": N, "rate": R, "sd": reps.std(axis=0, ddof=1),
                          "largest_drop": drops, "drop_sd": drop_sd,
                          "z_drop": drops / np.where(drop_sd > 0, drop_sd, np.nan),
                          "knee_share": [np.mean(rep_knees == n) for n in N]})
    lo, hi = np.percentile(rep_knees, [16, 84], method="nearest")
    return Knee(knee=int(N[k]), interval=(int(lo), int(hi)),
                probability=float(np.mean(rep_knees == N[k])), table=table, z=float(z),
                replicates=rep_knees)
