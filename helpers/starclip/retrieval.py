"""Retrieval: ranks of the true partner, R@k, median rank, MRR, chance, information limit.

Book: {ref}`sec-starclip-retrieval`

Query ``i`` and gallery row ``i`` are the same star. For every query the gallery is ranked
by similarity; the *rank* of the true partner is 1 plus the number of other gallery rows at
least as similar (ties count against the query, so a constant embedding gets the worst rank,
never the best). From the ranks: recall at k (the fraction of queries whose partner is in
the top k), the median rank and the mean reciprocal rank (MRR). Chance: a random ordering
of N rows gives R@k = k / N, median rank (N + 1) / 2 and MRR = H_N / N (H_N the harmonic
number).

The *information limit* (:func:`information_limit`) is the same retrieval run on what the
two encoders could at best share if their embeddings were their label estimates: the true
labels of the test stars plus Gaussian errors of each encoder's test-split RMSE per label,
ranked by the likelihood distance :math:`\\sum_k (q_k - g_k)^2 / (\\sigma_{q,k}^2 +
\\sigma_{g,k}^2)`, which is the optimal ranking for Gaussian errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["normalise", "similarity", "match_ranks", "RetrievalResult", "retrieval",
           "chance_level", "information_limit", "top1_label_differences"]

METRICS = ("cosine", "euclidean", "weighted")


def _as_matrix(x, name: str, dim: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_stars, dim), got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} has embedding dimension {a.shape[1]} but the other side has "
                         f"{dim}: both modalities must be embedded in the same space")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a


def normalise(z) -> np.ndarray:
    """Rows scaled to unit length (rows of zeros stay zero), float64.

    Book: {ref}`sec-starclip-retrieval`
    """
    z = np.asarray(z, dtype=np.float64)
    n = np.linalg.norm(z, axis=-1, keepdims=True)
    return np.divide(z, n, out=np.zeros_like(z), where=n > 0)


def similarity(query, gallery, metric: str = "cosine", weights=None) -> np.ndarray:
    """Similarity of every query to every gallery row (larger = more alike).

    Book: {ref}`sec-starclip-retrieval`

    Parameters
    ----------
    query : ndarray, shape (n_q, d)
    gallery : ndarray, shape (n_g, d)
    metric : {'cosine', 'euclidean', 'weighted'}
        Cosine similarity; minus the squared Euclidean distance; or minus the squared
        distance with per-dimension ``weights`` (``sum_k w_k (q_k - g_k)^2``).
    weights : ndarray, shape (d,), optional
        For ``'weighted'``.

    Returns
    -------
    ndarray, shape (n_q, n_g), float64
    """
    q = _as_matrix(query, "query")
    g = _as_matrix(gallery, "gallery", q.shape[1])
    if metric == "cosine":
        return normalise(q) @ normalise(g).T
    if metric == "euclidean":
        w = np.ones(q.shape[1])
    elif metric == "weighted":
        if weights is None:
            raise ValueError("metric='weighted' needs weights")
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (q.shape[1],) or np.any(~np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be {q.shape[1]} non-negative numbers, got shape "
                             f"{w.shape}")
    else:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    qs, gs = q * np.sqrt(w), g * np.sqrt(w)
    return 2 * qs @ gs.T - (qs ** 2).sum(1)[:, None] - (gs ** 2).sum(1)[None, :]


def match_ranks(query, gallery, metric: str = "cosine", weights=None, block: int = 2048
                ) -> np.ndarray:
    """Rank of each query's true partner (row i of the gallery) in its similarity ordering.

    Book: {ref}`sec-starclip-retrieval`

    Parameters
    ----------
    query, gallery : ndarray, shape (n, d)
        Row i of both is the same star.
    metric, weights :
        As :func:`similarity`.
    block : int
        Queries per block (memory: block x n floats).

    Returns
    -------
    ndarray of int, shape (n,)
        1 = the partner is the most similar; ties with the partner count against it.
    """
    q = _as_matrix(query, "query")
    g = _as_matrix(gallery, "gallery", q.shape[1])
    if q.shape[0] != g.shape[0]:
        raise ValueError(f"query ({q.shape[0]} stars) and gallery ({g.shape[0]}) must list the "
                         "same stars in the same order")
    n = q.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for s in range(0, n, block):
        sim = similarity(q[s:s + block], g, metric, weights)
        rows = np.arange(sim.shape[0])
        own = sim[rows, s + rows]
        ranks[s:s + block] = (sim >= own[:, None]).sum(axis=1)   # the partner itself counts 1
    return ranks


def chance_level(n: int) -> dict:
    """R@1, R@5, R@10, median rank and MRR of a random ordering of ``n`` gallery rows.

    Book: {ref}`sec-starclip-retrieval`
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    h = np.sum(1.0 / np.arange(1, n + 1))
    return {"R@1": 1 / n, "R@5": min(5, n) / n, "R@10": min(10, n) / n,
            "median_rank": (n + 1) / 2, "MRR": h / n}


@dataclass
class RetrievalResult:
    """Retrieval figures of one (query, gallery) pair of embeddings.

    Book: {ref}`sec-starclip-retrieval`

    Attributes
    ----------
    ranks : ndarray of int, shape (n,)
    n : int
        Gallery size.
    """

    ranks: np.ndarray
    n: int

    @property
    def metrics(self) -> dict:
        """R@1, R@5, R@10 (fractions), median rank, MRR."""
        r = self.ranks
        return {"R@1": float(np.mean(r <= 1)), "R@5": float(np.mean(r <= 5)),
                "R@10": float(np.mean(r <= 10)), "median_rank": float(np.median(r)),
                "MRR": float(np.mean(1.0 / r))}

    def bootstrap(self, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
        """Standard deviation of each figure over bootstrap resamples of the queries."""
        rng = np.random.default_rng(seed)
        reps = [RetrievalResult(self.ranks[rng.integers(0, self.ranks.size, self.ranks.size)],
                                self.n).metrics for _ in range(int(n_boot))]
        return pd.DataFrame(reps).std()


def retrieval(query, gallery, metric: str = "cosine", weights=None) -> RetrievalResult:
    """Rank every query's partner and summarise (:class:`RetrievalResult`).

    Book: {ref}`sec-starclip-retrieval`
    """
    ranks = match_ranks(query, gallery, metric, weights)
    return RetrievalResult(ranks=ranks, n=int(ranks.size))


def information_limit(labels, sigma_query, sigma_gallery, n_draws: int = 5, seed: int = 0
                      ) -> pd.DataFrame:
    """Retrieval on the true labels plus each encoder's errors: what label estimates allow.

    Book: {ref}`sec-starclip-limit`

    Parameters
    ----------
    labels : ndarray, shape (n, L)
        True labels of the test stars (physical units).
    sigma_query, sigma_gallery : ndarray, shape (L,)
        Per-label RMSE of the query-side and gallery-side encoders on the test split (same
        units). Labels with a non-finite or zero total error are left out.
    n_draws : int
        Independent error draws; the table has one row per draw.
    seed : int

    Returns
    -------
    pandas.DataFrame
        One row per draw: R@1, R@5, R@10, median_rank, MRR.
    """
    y = _as_matrix(labels, "labels")
    sq = np.asarray(sigma_query, dtype=np.float64)
    sg = np.asarray(sigma_gallery, dtype=np.float64)
    if sq.shape != (y.shape[1],) or sg.shape != (y.shape[1],):
        raise ValueError(f"sigma_query and sigma_gallery must have one entry per label "
                         f"({y.shape[1]}), got {sq.shape} and {sg.shape}")
    if isinstance(n_draws, bool) or int(n_draws) != n_draws or n_draws < 1:
        raise ValueError(f"n_draws must be a positive integer, got {n_draws!r}")
    var = sq ** 2 + sg ** 2
    keep = np.isfinite(var) & (var > 0)
    if not keep.any():
        raise ValueError("information_limit: no label has a finite, positive error")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(int(n_draws)):
        q = y[:, keep] + rng.standard_normal((y.shape[0], keep.sum())) * sq[keep]
        g = y[:, keep] + rng.standard_normal((y.shape[0], keep.sum())) * sg[keep]
        rows.append(retrieval(q, g, "weighted", 1.0 / var[keep]).metrics)
    return pd.DataFrame(rows)


def top1_label_differences(query, gallery, labels_query, labels_gallery, names,
                           metric: str = "cosine", exclude_self: bool = False, seed: int = 0,
                           block: int = 2048) -> pd.DataFrame:
    """How alike are a query and its most similar gallery star, against a random pick?

    Book: {ref}`sec-starclip-retrieval`

    Parameters
    ----------
    query, gallery : ndarray, shape (n_q, d), (n_g, d)
    labels_query, labels_gallery : ndarray, shape (n_q, L), (n_g, L)
    names : sequence of str, length L
    metric : str
        As :func:`similarity`.
    exclude_self : bool
        Query and gallery are the same stars (in-modality search): skip row i for query i.
    seed : int
        Seed of the random picks.

    Returns
    -------
    pandas.DataFrame
        Index ``names``; columns ``top1`` and ``random``: median absolute label difference
        between each query and its top-1 neighbour, and a random gallery star.
    """
    q = _as_matrix(query, "query")
    g = _as_matrix(gallery, "gallery", q.shape[1])
    yq = np.asarray(labels_query, float)
    yg = np.asarray(labels_gallery, float)
    if yq.shape[0] != q.shape[0] or yg.shape[0] != g.shape[0] or yq.shape[1] != yg.shape[1]:
        raise ValueError("labels must have one row per embedded star and the same columns")
    if exclude_self and q.shape[0] != g.shape[0]:
        raise ValueError("exclude_self needs the same stars as query and gallery")
    best = np.empty(q.shape[0], dtype=np.int64)
    for s in range(0, q.shape[0], block):
        sim = similarity(q[s:s + block], g, metric)
        if exclude_self:
            sim[np.arange(sim.shape[0]), s + np.arange(sim.shape[0])] = -np.inf
        best[s:s + block] = np.argmax(sim, axis=1)
    rng = np.random.default_rng(seed)
    rand = rng.integers(0, g.shape[0], q.shape[0])
    if exclude_self:
        same = rand == np.arange(q.shape[0])
        rand[same] = (rand[same] + 1) % g.shape[0]
    return pd.DataFrame({"top1": np.nanmedian(np.abs(yg[best] - yq), axis=0),
                         "random": np.nanmedian(np.abs(yg[rand] - yq), axis=0)},
                        index=list(names))
