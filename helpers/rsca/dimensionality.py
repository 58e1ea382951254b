"""How many dimensions does chemistry need? Doppelganger rates against K, top-N and clusters.

Book: {ref}`ch-dimensionality`

Three scans of the RSCA doppelganger rate (de Mijolla & Ness 2022, Fig. 2, Table 1, Fig. 5),
each over several PPCA runs (start seeds) so that every point carries its spread over runs
beside the spread over clusters (:class:`helpers.rsca.runs.RateSpread`):

* against the number K of PPCA components (:func:`rates_vs_k`), with and without
  leave-one-cluster-out cross-validation;
* against the number N of most strongly scaled RSCA dimensions kept (:func:`top_n_spreads`,
  summarised by :func:`table1`; the knee is :func:`helpers.rsca.knee.find_knee`);
* against the number of open clusters the metric is trained on (:func:`rates_vs_training_clusters`).

Every rate goes through :class:`helpers.rsca.runs.RateEvaluator`: sphering on every field
star, steps 3-4 without the held-out clusters, the pair filter of every other rate of the book.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd

from helpers.paths import cache_dir
from helpers.rsca.doppelganger import LocoFit, doppelganger_rate
from helpers.rsca.runs import RATES_VERSION, RateEvaluator, content_digest

__all__ = ["rates_vs_k", "top_n_spreads", "table1", "rates_vs_training_clusters",
           "summarise_training_clusters", "latent_recovery"]


def _check_runs(runs, what="runs"):
    runs = list(runs)
    if not runs or not all(hasattr(r, "field") and hasattr(r, "cluster") for r in runs):
        raise TypeError(f"{what} must be a non-empty list of Representation (one per PPCA run)")
    return runs


def rates_vs_k(runs_by_k: dict, evaluator: RateEvaluator, *, leak: bool = False):
    """Global doppelganger rate of full RSCA at each K, over PPCA runs (Fig. 2).

    Book: {ref}`sec-fig2`

    Parameters
    ----------
    runs_by_k : dict of int -> list of Representation
        The runs (one per start seed) of each K: dedicated fits, or
        :meth:`helpers.rsca.representation.Representation.truncated` of larger ones.
    evaluator : RateEvaluator
    leak : bool
        False: leave-one-cluster-out (cross-validated).  True: steps 3-4 fitted on all
        clusters, held-out one included.

    Returns
    -------
    table : pandas.DataFrame
        One row per K: ``K, rate, run_sd, boot_sd, total_sd, n_runs, cv``.
    spreads : dict of int -> RateSpread
    """
    spreads = {int(K): evaluator.over_runs(_check_runs(runs), leak=leak)
               for K, runs in sorted(runs_by_k.items())}
    table = pd.DataFrame([{"K": K, **{k: v for k, v in s.summary().items() if k != "dominant"},
                           "cv": not leak} for K, s in spreads.items()])
    return table, spreads


def top_n_spreads(runs, evaluator: RateEvaluator, N_values) -> dict:
    """Cross-validated rate keeping the N most strongly scaled RSCA dimensions (Table 1).

    Book: {ref}`sec-table1`

    Parameters
    ----------
    runs : list of Representation
        PPCA runs of one K.
    evaluator : RateEvaluator
    N_values : sequence of int
        Dimensions kept; N >= K keeps every informative dimension ("all").

    Returns
    -------
    dict of int -> RateSpread
        Keyed by N (K for "all").
    """
    runs = _check_runs(runs)
    K = runs[0].field.shape[1]
    out = {}
    for N in N_values:
        if int(N) != N or N < 1:
            raise ValueError(f"N_values must be positive integers, got {N!r}")
        top = None if N >= K else int(N)
        out[min(int(N), K)] = evaluator.over_runs(runs, top_n=top)
    return out


def table1(spreads: dict, K: int) -> pd.DataFrame:
    """Table 1 from :func:`top_n_spreads`: one row per N, "all (K)" for every dimension.

    Book: {ref}`sec-table1`

    Returns
    -------
    pandas.DataFrame
        Index ``label`` ("1", "2", ..., "all (K)"); columns ``N``, ``rate`` (mean over
        runs), ``run_sd``, ``boot_sd``, ``total_sd``.
    """
    rows = []
    for N, s in sorted(spreads.items()):
        rows.append({"label": f"all ({K})" if N >= K else str(N), "N": N, "rate": s.mean,
                     "run_sd": s.run_sd, "boot_sd": s.boot_sd, "total_sd": s.total_sd})
    return pd.DataFrame(rows).set_index("label")


def rates_vs_training_clusters(runs, evaluator: RateEvaluator, n_train_values, *,
                               n_subsets: int = 50, seed: int = 0, cache: bool = True) -> pd.DataFrame:
    """Doppelganger rate of held-out clusters when the metric sees only some clusters (Fig. 5).

    Book: {ref}`sec-fig5`

    For each number m of training clusters, ``n_subsets`` random sets of m clusters are
    drawn (seeded by ``seed`` and m: the same sets for every run and every K); the RSCA
    metric is fitted on the field and on those clusters, and the global rate is computed
    on the clusters left out.  A subset whose members give fewer within-cluster degrees of
    freedom, ``sum(n_k - 1)``, than K dimensions defines no metric: its row has ``rate``
    NaN and ``defined`` False.

    Parameters
    ----------
    runs : list of Representation
        PPCA runs of one K.
    evaluator : RateEvaluator
    n_train_values : sequence of int
        Each between 1 and (number of clusters - 1).
    n_subsets : int
    seed : int
    cache : bool
        Keep the table in ``.cache/rsca_rates/fig5-<key>.npz``, keyed by the runs'
        coordinates, the evaluator's clusters and pair filter, the arguments and
        :data:`helpers.rsca.runs.RATES_VERSION` (a second run of a chapter reads it).

    Returns
    -------
    pandas.DataFrame
        One row per (run, n_train, subset): ``run, n_train, subset, rate, n_test_members, defined``.
    """
    runs = _check_runs(runs)
    labels, names = evaluator.labels, evaluator.clusters
    bad = [m for m in n_train_values if int(m) != m or not 1 <= m <= names.size - 1]
    if bad:
        raise ValueError(f"n_train_values must lie in 1..{names.size - 1} (one cluster at least "
                         f"is held out), got {bad}")
    if int(n_subsets) != n_subsets or n_subsets < 1:
        raise ValueError(f"n_subsets must be a positive integer, got {n_subsets!r}")
    path = None
    if cache:
        key = hashlib.sha256(json.dumps(
            {"v": RATES_VERSION, "setup": evaluator.setup_key,
             "runs": [content_digest(r.field, r.cluster) for r in runs],
             "n_train": [int(m) for m in n_train_values], "n_subsets": int(n_subsets),
             "seed": int(seed)}, sort_keys=True).encode()).hexdigest()[:20]
        path = cache_dir("rsca_rates") / f"fig5-{key}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                return pd.DataFrame({c: z[c] for c in z.files})
    subsets = {int(m): [np.isin(labels, np.random.default_rng([int(seed), int(m), s]).choice(
        names, int(m), replace=False)) for s in range(int(n_subsets))] for m in n_train_values}
    flt = evaluator.pairs
    cand = evaluator.candidates
    rows = []
    for i, rep in enumerate(runs):
        fit = LocoFit(rep.field)            # step 2 on every field star, once per run
        pop = rep.field if cand is None else rep.field[cand]
        K = rep.field.shape[1]
        for m, masks in subsets.items():
            for s, train in enumerate(masks):
                test = ~train
                row = {"run": i, "n_train": m, "subset": s, "rate": np.nan,
                       "n_test_members": int(test.sum()), "defined": False}
                # the within-cluster vectors of the training clusters span at most
                # sum(n_k - 1) directions: with fewer than K the metric is undefined
                if int(train.sum()) - m >= K:
                    try:
                        model = fit(rep.field, rep.cluster[train], labels[train])
                    except ValueError:
                        model = None
                    if model is not None:
                        res = doppelganger_rate(
                            model.transform(rep.cluster[test]), labels[test], model.transform(pop),
                            vhelio_pop=flt.vhelio_pop, ak_pop=flt.ak_pop,
                            vhelio_clust=None if flt.vhelio_clust is None else flt.vhelio_clust[test],
                            ak_clust=None if flt.ak_clust is None else flt.ak_clust[test],
                            dv_max=flt.dv_max, dak_max=flt.dak_max)
                        row.update(rate=res.global_rate, defined=True)
                rows.append(row)
    table = pd.DataFrame(rows, columns=["run", "n_train", "subset", "rate", "n_test_members", "defined"])
    if path is not None:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **{c: table[c].to_numpy() for c in table.columns})
        os.replace(tmp, path)
    return table


def summarise_training_clusters(table: pd.DataFrame) -> pd.DataFrame:
    """Fig. 5's points: mean over subsets and runs, the spread over runs and over subsets.

    Book: {ref}`sec-fig5`

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`rates_vs_training_clusters` (optionally with a column ``K``).

    Returns
    -------
    pandas.DataFrame
        Index (``K``,) ``n_train``; columns ``rate`` (mean over runs of the mean over
        subsets), ``run_sd`` (sd over runs of that mean), ``subset_sem`` (standard error of
        the mean over subsets, averaged over runs), ``defined`` (subsets defining a metric,
        per run).
    """
    keys = (["K"] if "K" in table.columns else []) + ["n_train"]
    per_run = table.groupby(keys + ["run"]).rate.agg(["mean", "std", "count"])
    per_run["sem"] = per_run["std"] / np.sqrt(per_run["count"])
    g = per_run.groupby(level=keys)
    n_runs = g["mean"].size()
    run_sd = g["mean"].std(ddof=1).where(n_runs > 1)
    return pd.DataFrame({"rate": g["mean"].mean(), "run_sd": run_sd, "subset_sem": g["sem"].mean(),
                         "defined": g["count"].mean()})


def latent_recovery(Z, latent) -> np.ndarray:
    """How much of each true chemical coordinate a representation captures linearly (R^2).

    Book: {ref}`sec-ground-truth`

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
