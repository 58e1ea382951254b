"""How many dimensions does chemistry need? Doppelganger rates against K, top-N and clusters.

Book: {ref}`ch-dimensionality`

Three scans of the RSCA doppelganger rate (de Mijolla & Ness 2022, Fig. 2, Table 1, Fig. 5):

* against the number K of PPCA components (:func:`rates_vs_k`), with and without
  leave-one-cluster-out cross-validation;
* against the number N of most strongly scaled RSCA dimensions kept (:func:`top_n_rates`);
* against the number of open clusters the metric is trained on (:func:`rates_vs_training_clusters`).

All of them start from one PPCA representation of the field and cluster spectra
(:func:`helpers.rsca.representation.ppca_representation`), fitted once at the largest K,
cached on disk by its inputs, and truncated for smaller K
(:meth:`helpers.rsca.representation.Representation.truncated`, the *nested* approximation;
the chapter measures how good it is with
:func:`helpers.rsca.representation.principal_angles` and dedicated fits).  The pair filter
(:class:`helpers.rsca.pairs.PairFilter`) and the leave-one-cluster-out fit function
(:class:`helpers.rsca.doppelganger.LocoFit`) are those of every other rate of the book.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from helpers.rsca.doppelganger import LocoFit, doppelganger_rate, loco_doppelganger_rates
from helpers.rsca.metric import RelevantScaling
from helpers.rsca.representation import Representation

__all__ = ["rates_vs_k", "top_n_rates", "summarise_top_n", "rates_vs_training_clusters", "plateau_n",
           "latent_recovery"]


def _check_rep(rep):
    if not isinstance(rep, Representation):
        raise TypeError(f"rep must be a Representation (see ppca_representation), got {type(rep).__name__}")


def rates_vs_k(rep: Representation, labels, K_values, pairs: dict, *, leak: bool = False,
               n_boot: int = 200, random_state: int = 0) -> pd.DataFrame:
    """Global doppelganger rate of full RSCA on the first K axes, for each K.

    Book: {ref}`sec-fig2`

    Parameters
    ----------
    rep : Representation
        Fitted at K >= max(K_values); smaller K use :meth:`Representation.truncated`.
    labels : array_like, shape (n_members,)
    K_values : sequence of int
    pairs : helpers.rsca.pairs.PairFilter
        Of the field and the members (:meth:`PairFilter.from_inputs`).
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
    _check_rep(rep)
    rows = []
    for K in K_values:
        r = rep.truncated(K)
        res = loco_doppelganger_rates(r.field, r.cluster, labels, leak=leak, n_boot=n_boot,
                                      random_state=random_state, **pairs.as_kwargs())
        rows.append({"K": int(K), "rate": res.global_rate, "std": res.global_rate_std,
                     "low": res.global_rate_interval[0], "high": res.global_rate_interval[1],
                     "cv": not leak})
    return pd.DataFrame(rows)


def top_n_rates(rep: Representation, labels, top_n_values, pairs: dict, *, n_repeats: int = 5,
                field_fraction: float = 0.5, seed: int = 0, n_boot: int = 200) -> pd.DataFrame:
    """Cross-validated rate when only the N most strongly scaled RSCA dimensions are kept.

    Book: {ref}`sec-table1`

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
    pairs : helpers.rsca.pairs.PairFilter
        Of the field and the members (:meth:`PairFilter.from_inputs`).
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
            res = loco_doppelganger_rates(
                rep.field[rows_i], rep.cluster, labels, fit_fn=LocoFit(top_n=top),
                n_boot=n_boot if i == 0 else 0, random_state=seed,
                **pairs.restricted(rows_i).as_kwargs())
            rows.append({"top_n": rep.K if top is None else top,
                         "label": f"all ({rep.K})" if top is None else str(top), "repeat": i,
                         "rate": res.global_rate,
                         "boot_std": res.global_rate_std if i == 0 else np.nan,
                         "n_selected": int(full.selected_.sum())})
    return pd.DataFrame(rows)


def summarise_top_n(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 from :func:`top_n_rates`: rate on all field stars, mean and spread of repeats.

    Book: {ref}`sec-table1`

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


def rates_vs_training_clusters(rep: Representation, labels, n_train_values, pairs: dict, *,
                               n_subsets: int = 50, seed: int = 0) -> pd.DataFrame:
    """Doppelganger rate of held-out clusters when the metric sees only some clusters.

    Book: {ref}`sec-fig5`

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
    pairs : helpers.rsca.pairs.PairFilter
        Of the field and the members (:meth:`PairFilter.from_inputs`).
    n_subsets : int
    seed : int

    Returns
    -------
    pandas.DataFrame
        One row per (n_train, subset): ``n_train, subset, rate, n_test_members, defined``.
    """
    _check_rep(rep)
    labels = np.asarray(labels)
    names = np.unique(labels)
    bad = [m for m in n_train_values if int(m) != m or not 1 <= m <= names.size - 1]
    if bad:
        raise ValueError(f"n_train_values must lie in 1..{names.size - 1} (one cluster at least "
                         f"is held out), got {bad}")
    if int(n_subsets) != n_subsets or n_subsets < 1:
        raise ValueError(f"n_subsets must be a positive integer, got {n_subsets!r}")
    fit = LocoFit(rep.field)            # step 2 on every field star, once
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
                model = fit(rep.field, rep.cluster[train], labels[train])
            except ValueError:
                rows.append({"n_train": int(m), "subset": s, "rate": np.nan,
                             "n_test_members": int(test.sum()), "defined": False})
                continue
            res = doppelganger_rate(model.transform(rep.cluster[test]), labels[test],
                                    model.transform(rep.field),
                                    vhelio_pop=pairs.vhelio_pop, ak_pop=pairs.ak_pop,
                                    vhelio_clust=pairs.vhelio_clust[test],
                                    ak_clust=pairs.ak_clust[test], dv_max=pairs.dv_max,
                                    dak_max=pairs.dak_max)
            rows.append({"n_train": int(m), "subset": s, "rate": res.global_rate,
                         "n_test_members": int(test.sum()), "defined": True})
    return pd.DataFrame(rows)


def plateau_n(rates, top_n_values, tolerance: float = 0.15) -> int:
    """The smallest N whose rate is within ``tolerance`` of the best rate (Table 1's knee).

    Book: {ref}`sec-ground-truth`

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
