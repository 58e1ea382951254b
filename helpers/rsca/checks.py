"""Input checks shared by the RSCA metric and its evaluation: clear errors naming the input.

Book: {ref}`sec-rsca-rates`
"""
from __future__ import annotations

import numpy as np

__all__ = ["as_2d_finite", "check_labels"]


def as_2d_finite(X, name, K=None):
    """Float64 view/copy of a finite 2-D array, with errors naming ``name``.

    Book: {ref}`sec-rsca-rates`

    Parameters
    ----------
    X : array_like, shape (n_stars, n_dims)
    name : str
        What ``X`` is, for the error messages.
    K : int, optional
        Required number of columns.

    Returns
    -------
    ndarray of float64, shape (n_stars, n_dims)
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_stars, n_dims), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    X = np.asarray(X, dtype=np.float64)
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape})")
    if K is not None and X.shape[1] != K:
        raise ValueError(f"{name} has {X.shape[1]} columns but {K} were expected "
                         "(same representation for field and cluster stars)")
    bad = ~np.isfinite(X)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{name} has a non-finite value ({X[i, j]}) at row {i}, column {j}; "
                         f"{int(bad.sum())} non-finite entries in all")
    return X


def check_labels(labels, n, name="cluster_labels", min_members=2):
    """Labels as an array of length ``n``; every cluster needs ``min_members`` members.

    Book: {ref}`sec-rsca-rates`

    Returns ``(labels, names, codes)`` with ``names`` the sorted unique labels and ``codes``
    the integer index of each star's cluster in ``names``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with one label per cluster star ({n}), "
                         f"got shape {labels.shape}")
    names, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    small = names[counts < min_members]
    if small.size:
        raise ValueError(f"{name}: cluster(s) {small.tolist()} have fewer than {min_members} "
                         "members; a within-cluster scatter (and a median pair distance) needs "
                         "at least two stars per cluster -- drop single-member clusters first")
    return labels, names, codes.ravel()
