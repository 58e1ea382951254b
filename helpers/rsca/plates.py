"""Observed together? Plates and nights of each star's visits, for the same-plate check.

Book: {ref}`sec-rsca-plates`
"""
from __future__ import annotations

import numpy as np

__all__ = ["parse_visits", "shared_visits"]


def parse_visits(visits):
    """Plates and dates (MJD) of each star's visits, from allStar ``VISITS`` strings.

    Book: {ref}`sec-rsca-plates`

    A visit id reads ``telescope-plate-MJD-fibre`` (e.g. ``apo25m-4000-57048-076``);
    ``VISITS`` joins a star's visit ids with commas.

    Parameters
    ----------
    visits : sequence of str, shape (n,)

    Returns
    -------
    plates, mjds : list of frozenset, length n
    """
    plates, mjds = [], []
    for s in visits:
        p, m = set(), set()
        for v in str(s).split(","):
            parts = v.strip().split("-")
            if len(parts) >= 3:
                p.add(parts[-3])
                m.add(parts[-2])
        plates.append(frozenset(p))
        mjds.append(frozenset(m))
    return plates, mjds


def shared_visits(visits_a, visits_b, index_a, index_b):
    """Whether the stars of each pair share a plate, and a plate on the same night.

    Book: {ref}`sec-rsca-plates`

    Parameters
    ----------
    visits_a, visits_b : sequence of str
        ``VISITS`` strings of the two sets (e.g. members and field stars).
    index_a, index_b : array_like of int, shape (n_pairs,)
        The pairs: star ``index_a[i]`` of set a with star ``index_b[i]`` of set b.

    Returns
    -------
    same_plate, same_night : ndarray of bool, shape (n_pairs,)
        A plate in common; a (plate, MJD) visit in common.
    """
    pa, _ = parse_visits(visits_a)
    pb, _ = parse_visits(visits_b)
    # (plate, MJD) of every visit id: a star may have visits on several plates
    va, vb = ([{tuple(v.strip().split("-")[-3:-1]) for v in str(s).split(",")
                if len(v.strip().split("-")) >= 3} for s in visits]
              for visits in (visits_a, visits_b))
    ia, ib = np.asarray(index_a), np.asarray(index_b)
    same_plate = np.fromiter((bool(pa[i] & pb[j]) for i, j in zip(ia, ib)), bool, ia.size)
    same_night = np.fromiter((bool(va[i] & vb[j]) for i, j in zip(ia, ib)), bool, ia.size)
    return same_plate, same_night
