"""Labels from embeddings: zero-shot nearest neighbours and few-shot regressors.

Book: {ref}`sec-starclip-labels`

* :func:`knn_labels`: zero-shot estimation as AstroCLIP does it: the labels of a star are
  the similarity-weighted mean of the labels of its k most similar reference stars (cosine
  similarity; weights 1 / cosine distance, scikit-learn's ``weights='distance'``). Nothing
  is fitted: the embedding alone decides who the neighbours are.
* :func:`few_shot`: regressors fitted on n labelled training stars (n = 10, 100, 1000,
  all), each n repeated on several random subsets: ridge regression (scikit-learn,
  standardised inputs, regularisation chosen by leave-one-out) and gradient-boosted trees
  (XGBoost, CPU wheel ``xgboost-cpu``).
* :func:`r2_per_label`: the coefficient of determination of each label on the test stars.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBRegressor

__all__ = ["r2_per_label", "knn_labels", "few_shot", "fit_regressor", "FEW_SHOT_METHODS"]

#: Few-shot regressors.
FEW_SHOT_METHODS = ("ridge", "xgboost")


def r2_per_label(pred, truth, names) -> pd.Series:
    """Coefficient of determination per label (NaN truths are left out).

    Book: {ref}`sec-starclip-labels`

    Parameters
    ----------
    pred, truth : ndarray, shape (n, L)
    names : sequence of str, length L

    Returns
    -------
    pandas.Series
        1 - sum (pred - truth)^2 / sum (truth - mean truth)^2 per label.
    """
    p = np.asarray(pred, float)
    t = np.asarray(truth, float)
    if p.shape != t.shape or p.ndim != 2 or p.shape[1] != len(names):
        raise ValueError(f"pred {p.shape} and truth {t.shape} must have the same shape "
                         f"(n, {len(names)})")
    ok = np.isfinite(t) & np.isfinite(p)
    res = np.where(ok, (p - t) ** 2, 0).sum(0)
    mean = np.nanmean(np.where(ok, t, np.nan), axis=0)
    tot = np.where(ok, (t - mean) ** 2, 0).sum(0)
    return pd.Series(1 - res / np.where(tot > 0, tot, np.nan), index=list(names))


def _checked(x, y, what):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: embeddings {x.shape} and labels {y.shape} must be (n, d) "
                         "and (n, L) with the same n")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: embeddings contain non-finite values")
    return x, y


def knn_labels(ref_embedding, ref_labels, query_embedding, k: int = 64,
               weights: str = "distance") -> np.ndarray:
    """Zero-shot labels: the weighted mean label of the k most similar reference stars.

    Book: {ref}`sec-starclip-labels`

    Parameters
    ----------
    ref_embedding : ndarray, shape (n_ref, d)
    ref_labels : ndarray, shape (n_ref, L)
        Reference stars with a missing label are skipped for that label only.
    query_embedding : ndarray, shape (n_q, d)
    k : int
        Neighbours (AstroCLIP: 64), at most n_ref.
    weights : {'distance', 'uniform'}
        ``'distance'``: weight 1 / (1 - cosine similarity).

    Returns
    -------
    ndarray, shape (n_q, L)
    """
    x, y = _checked(ref_embedding, ref_labels, "knn_labels")
    q = np.asarray(query_embedding, np.float64)
    if q.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ValueError(f"knn_labels: query embedding dimension {q.shape[-1]} does not match "
                         f"the reference's {x.shape[1]}")
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be an integer in [1, {x.shape[0]}] (reference stars), got {k!r}")
    out = np.empty((q.shape[0], y.shape[1]))
    have = np.isfinite(y)
    full = have.all(axis=0)
    if full.any():
        model = KNeighborsRegressor(int(k), weights=weights, metric="cosine", algorithm="brute")
        out[:, full] = model.fit(x, y[:, full]).predict(q)
    for j in np.flatnonzero(~full):
        rows = have[:, j]
        model = KNeighborsRegressor(min(int(k), int(rows.sum())), weights=weights,
                                    metric="cosine", algorithm="brute")
        out[:, j] = model.fit(x[rows], y[rows, j]).predict(q)
    return out


def fit_regressor(method: str, x, y, seed: int = 0, n_jobs: int = 1, n_trees: int = 200):
    """A fitted few-shot regressor (``predict(X) -> (n, L)``).

    Book: {ref}`sec-starclip-labels`

    Parameters
    ----------
    method : {'ridge', 'xgboost'}
        Ridge: standardised inputs, alpha chosen by efficient leave-one-out among
        10^-3..10^3. XGBoost: ``n_trees`` boosting rounds of depth-4 trees, learning rate 0.1,
        one multi-output model (``tree_method='hist'``).
    x : ndarray, shape (n, d)
    y : ndarray, shape (n, L), finite
    seed : int
    n_jobs : int
    n_trees : int
        XGBoost's boosting rounds (200; fewer only to run the chapter quickly: the fit's cost
        grows in proportion to them).
    """
    if method == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(x, y)
    if method == "xgboost":
        if isinstance(n_trees, bool) or int(n_trees) != n_trees or n_trees < 1:
            raise ValueError(f"n_trees must be a positive integer, got {n_trees!r}")
        return XGBRegressor(n_estimators=int(n_trees), max_depth=4, learning_rate=0.1, subsample=0.8,
                            tree_method="hist", random_state=seed, n_jobs=n_jobs).fit(x, y)
    raise ValueError(f"method must be one of {FEW_SHOT_METHODS}, got {method!r}")


def few_shot(train_embedding, train_labels, test_embedding, test_labels, names,
             n_values=(10, 100, 1000, None), methods=FEW_SHOT_METHODS, n_repeats: int = 3,
             seed: int = 0, n_jobs: int = 1, n_trees: int = 200) -> pd.DataFrame:
    """R^2 per label of regressors fitted on n random training stars, for several n.

    Book: {ref}`sec-starclip-labels`

    Parameters
    ----------
    train_embedding : ndarray, shape (n_train, d)
    train_labels : ndarray, shape (n_train, L)
        Stars with a missing label are left out of the training subsets.
    test_embedding : ndarray, shape (n_test, d)
        May be another modality's embedding of the test stars (cross-modal transfer).
    test_labels : ndarray, shape (n_test, L)
    names : sequence of str, length L
    n_values : sequence of int or None
        Training stars per fit (None: all); a value above the training stars is an error.
    methods : sequence of str
        Among :data:`FEW_SHOT_METHODS`.
    n_repeats : int
        Random subsets per n (one for all stars).
    seed : int
    n_jobs : int
        Threads of XGBoost (1 by default: on this shared 2-core machine a second thread
        spin-waits for a busy core and made a fit 50-100 times slower).

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``n``, ``repeat`` and one column of R^2 per label.
    """
    x, y = _checked(train_embedding, train_labels, "few_shot (train)")
    xt, yt = _checked(test_embedding, test_labels, "few_shot (test)")
    if xt.shape[1] != x.shape[1]:
        raise ValueError(f"few_shot: test embedding dimension {xt.shape[1]} does not match the "
                         f"training embedding's {x.shape[1]}")
    bad = [m for m in methods if m not in FEW_SHOT_METHODS]
    if bad:
        raise ValueError(f"methods must be among {FEW_SHOT_METHODS}, got {bad}")
    complete = np.flatnonzero(np.isfinite(y).all(axis=1))
    rows = []
    rng = np.random.default_rng(seed)
    for n in n_values:
        if n is not None and (isinstance(n, bool) or int(n) != n or not 2 <= n <= complete.size):
            raise ValueError(f"n_values: {n!r} must be None or an integer in [2, "
                             f"{complete.size}] (training stars with every label)")
        reps = 1 if n is None or n == complete.size else int(n_repeats)
        for r in range(reps):
            sub = complete if n is None else np.sort(rng.choice(complete, int(n), replace=False))
            for method in methods:
                model = fit_regressor(method, x[sub], y[sub], seed=seed + r, n_jobs=n_jobs,
                                      n_trees=n_trees)
                r2 = r2_per_label(model.predict(xt), yt, names)
                rows.append({"method": method, "n": int(sub.size), "repeat": r, **r2.to_dict()})
    return pd.DataFrame(rows)
