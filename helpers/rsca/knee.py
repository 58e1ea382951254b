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

``margin="percentile"`` states "more than z standard deviations" without assuming that the
bootstrap distribution of a difference is normal: a drop counts if it stays positive in all
but a fraction ``Phi(-z)`` of the replicates (2.3 % for z = 2), i.e. the margin is the
distance from the drop to that lower percentile.  For a normal distribution the two margins
are the same; when one cluster's rate jumps between two N, the number of times the bootstrap
draws that cluster makes the distribution of the difference skewed and wide, the standard
deviation calls even a halving of the rate noise, and the percentile margin does not.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr

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
        ``largest_drop`` (a drop R(N) - R(N') to a larger N'; the one largest relative to its
        margin is shown), ``margin`` (how large it had to be to count), ``drop_over_margin``
        (their ratio: above 1, a larger N is better), ``knee_share`` (fraction of
        replicates with this knee).
    z : float
        Threshold in standard deviations.
    margin : str
        ``"sd"`` or ``"percentile"``.
    replicates : ndarray of int, shape (n_boot,)
        Knee of every bootstrap replicate.
    """

    knee: int
    interval: tuple
    probability: float
    table: pd.DataFrame
    z: float
    replicates: np.ndarray
    margin: str = "sd"
    without: pd.Series = None

    def text(self) -> str:
        """``"5 (68 % interval 4-6)"``."""
        lo, hi = self.interval
        span = f"{lo}" if lo == hi else f"{lo}-{hi}"
        return f"{self.knee} (68 % interval {span})"


def _rule(R, margin):
    """Index of the knee for rates R (n_N,) and the margins of their drops (n_N, n_N)."""
    n = R.size
    for i in range(n):
        drops = R[i] - R[i + 1:]
        if np.all(drops <= margin[i, i + 1:]):
            return i
    return n - 1


def find_knee(per_cluster, n_members, N_values, *, z: float = 2.0, n_boot: int = 1000,
              seed: int = 0, margin: str = "sd", clusters=None, influence: bool = True) -> Knee:
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
    margin : {"sd", "percentile"}
        How far a drop must go to count: ``z`` standard deviations of its bootstrap
        distribution, or beyond its lower ``Phi(-z)`` percentile (see the module docstring).
    clusters : array_like, shape (n_clusters,), optional
        Cluster names, for :attr:`Knee.without`.
    influence : bool
        Also find the knee with each cluster left out (:attr:`Knee.without`).

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
    if margin not in ("sd", "percentile"):
        raise ValueError(f"margin must be 'sd' or 'percentile', got {margin!r}")
    k, rep_knees, table = _knee(P, np.asarray(n_members, float), N, z, int(n_boot), seed, margin)
    without = None
    if influence and P.shape[2] > 2:
        names = np.arange(P.shape[2]) if clusters is None else np.asarray(clusters)
        without = pd.Series({names[c]: int(N[_knee(np.delete(P, c, axis=2), np.delete(np.asarray(
            n_members, float), c), N, z, int(n_boot), seed, margin)[0]]) for c in range(P.shape[2])},
            name="knee without the cluster")
    lo, hi = np.percentile(rep_knees, [16, 84], method="nearest")
    return Knee(knee=int(N[k]), interval=(int(lo), int(hi)),
                probability=float(np.mean(rep_knees == N[k])), table=table, z=float(z),
                replicates=rep_knees, margin=margin, without=without)


def _knee(P, w, N, z, n_boot, seed, margin):
    """(index of the knee, knees of the replicates, table) for per-cluster rates P."""
    ok = np.all(np.isfinite(P), axis=(0, 1))
    R = np.nan_to_num(P).mean(axis=1) @ np.where(ok, w, 0) / np.where(ok, w, 0).sum()
    reps = joint_bootstrap(P, w, int(n_boot), seed, runs=True)        # (n_boot, n_N)
    diff = reps[:, :, None] - reps[:, None, :]                         # (n_boot, n_N, n_N)
    sd = diff.std(axis=0, ddof=1)
    if margin == "sd":
        bound = z * sd
    else:
        # ndtr is the normal CDF (scipy.stats.norm.cdf calls it): the same numbers, without
        # importing scipy.stats (0.6-0.8 s of CPU in every kernel that imports helpers.rsca)
        lower = np.percentile(diff, 100 * ndtr(-z), axis=0)
        bound = np.maximum(R[:, None] - R[None, :] - lower, 0.0)
    k = _rule(R, bound)
    rep_knees = np.array([N[_rule(r, bound)] for r in reps])
    drops = np.full(N.size, np.nan)
    drop_margin = np.full(N.size, np.nan)
    for i in range(N.size - 1):
        ratio = (R[i] - R[i + 1:]) / np.where(bound[i, i + 1:] > 0, bound[i, i + 1:], np.inf)
        j = i + 1 + int(np.argmax(ratio))
        drops[i], drop_margin[i] = R[i] - R[j], bound[i, j]
    table = pd.DataFrame({"N": N, "rate": R, "sd": reps.std(axis=0, ddof=1),
                          "largest_drop": drops, "margin": drop_margin,
                          "drop_over_margin": drops / np.where(drop_margin > 0, drop_margin, np.nan),
                          "knee_share": [np.mean(rep_knees == n) for n in N]})
    return k, rep_knees, table
