"""Chemical likeness in practice: the pieces chapter 5 assembles around RSCA.

Book: chapter 5, "RSCA on the survey" (notebooks/05_rsca.md).

:mod:`helpers.ppca`, :mod:`helpers.rsca` and :mod:`helpers.doppelganger` hold the methods;
this module holds what it takes to run them on a survey at the paper's scale:

* representations of stars: PPCA coordinates of spectra read row by row from the
  memory-mapped inputs of :func:`helpers.pipeline.rsca_inputs` (:func:`ppca_coordinates`),
  measured abundances (:func:`abundance_matrix`) and, for a synthetic survey, the true ones
  (:func:`true_abundance_matrix`);
* the field stars that can enter a doppelganger pair at all (:func:`pair_candidates`): only
  these need a representation, which makes the evaluation cheap at 151,000 field stars;
* a ``fit_fn`` for :func:`helpers.doppelganger.loco_doppelganger_rates` whose field
  statistics come from a fixed reference sample (:class:`ReferenceFit`);
* the distances behind each cluster's rate (:func:`loco_pair_distances`), and the
  same-plate check of the paper's appendix C from the allStar ``VISITS`` strings
  (:func:`shared_visits`).
"""
from __future__ import annotations

import copy

import numpy as np

from helpers.rsca import RelevantScaling, _check_labels

__all__ = [
    "RSCA_SUBSET",
    "abundance_matrix",
    "true_abundance_matrix",
    "pair_candidates",
    "read_rows",
    "inverse_variance",
    "ppca_coordinates",
    "ReferenceFit",
    "loco_pair_distances",
    "parse_visits",
    "shared_visits",
]

#: The paper's best abundance subset (de Mijolla & Ness 2022, section 5).
RSCA_SUBSET = ("Fe", "Mg", "Ni", "Si", "Al", "C", "N")

_MISSING = -9999.99


def abundance_matrix(table, elements, rows=None, prefix="X_H_"):
    """Measured abundances ``[X/H]`` of some stars as a float64 matrix.

    Book: chapter 5, "Abundances as a representation" (notebooks/05_rsca.md).

    Parameters
    ----------
    table : pandas.DataFrame
        An allStar-like catalogue with columns ``<prefix><element>``.
    elements : sequence of str
        Element symbols, e.g. ``helpers.apogee.RSCA_ELEMENTS``.
    rows : array_like of int, optional
        Rows of ``table`` (default all).
    prefix : str, default "X_H_"
        Column prefix.

    Returns
    -------
    X : ndarray, shape (n_rows, n_elements)
        Abundances in dex.
    """
    missing = [f"{prefix}{e}" for e in elements if f"{prefix}{e}" not in table.columns]
    if missing:
        raise KeyError(f"abundance columns {missing} are not in the catalogue")
    X = np.column_stack([table[f"{prefix}{e}"].to_numpy(dtype=np.float64) for e in elements])
    if rows is not None:
        X = X[np.asarray(rows)]
    bad = ~np.isfinite(X) | np.isclose(X, _MISSING)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{int(bad.sum())} missing abundances (-9999.99 or NaN), first at row {i}, "
                         f"element {elements[j]}; the RSCA selection should have removed them")
    return X


def true_abundance_matrix(truth, elements, rows=None):
    """True ``[X/H] = [Fe/H] + [X/Fe]`` of a synthetic survey's stars.

    Book: chapter 5, "The floor set by the true labels" (notebooks/05_rsca.md).

    Parameters
    ----------
    truth : pandas.DataFrame
        :attr:`helpers.synthetic.Survey.truth` (columns ``FE_H`` and ``X_FE_<element>``).
    elements : sequence of str
    rows : array_like of int, optional

    Returns
    -------
    X : ndarray, shape (n_rows, n_elements)
        True abundances (dex).
    """
    feh = truth["FE_H"].to_numpy(dtype=np.float64)
    cols = [feh if e == "Fe" else feh + truth[f"X_FE_{e}"].to_numpy(dtype=np.float64)
            for e in elements]
    X = np.column_stack(cols)
    return X if rows is None else X[np.asarray(rows)]


def pair_candidates(vhelio_pop, ak_pop, vhelio_clust, ak_clust, dv_max=5.0, dak_max=0.05):
    """Field stars that form at least one allowed pair with some cluster member.

    Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

    A doppelganger rate only ever compares a member with field stars within ``dv_max`` in
    VHELIO_AVG and ``dak_max`` in AK_TARG; every other field star can be left out of the
    evaluation without changing any rate.

    Parameters
    ----------
    vhelio_pop, ak_pop : array_like, shape (N_field,)
        Field VHELIO_AVG (km/s) and AK_TARG (mag).
    vhelio_clust, ak_clust : array_like, shape (n_members,)
    dv_max, dak_max : float

    Returns
    -------
    rows : ndarray of int
        Sorted field indices.
    """
    vp, ap = np.asarray(vhelio_pop, float), np.asarray(ak_pop, float)
    vc, ac = np.asarray(vhelio_clust, float), np.asarray(ak_clust, float)
    if vp.shape != ap.shape or vc.shape != ac.shape:
        raise ValueError("vhelio and ak arrays must have matching shapes (field / members)")
    order = np.argsort(vp, kind="stable")
    vs = vp[order]
    keep = np.zeros(vp.size, bool)
    for v, a in zip(vc, ac):
        lo, hi = np.searchsorted(vs, [v - dv_max, v + dv_max], side="left")
        idx = order[lo:hi]
        idx = idx[(np.abs(vp[idx] - v) < dv_max) & (np.abs(ap[idx] - a) < dak_max)]
        keep[idx] = True
    return np.flatnonzero(keep)


def read_rows(array, rows, columns=None, dtype=np.float32, chunk_size=4096):
    """Copy some rows (and columns) of a memory-mapped matrix into memory, chunk by chunk.

    Book: chapter 5, "Step 1: PPCA with missing pixels" (notebooks/05_rsca.md).

    Parameters
    ----------
    array : array_like, shape (N, D)
    rows : array_like of int, shape (n,)
    columns : array_like of int, optional
        Columns kept (default all).
    dtype : numpy dtype
    chunk_size : int

    Returns
    -------
    out : ndarray, shape (n, len(columns))
    """
    rows = np.asarray(rows)
    cols = np.arange(array.shape[1]) if columns is None else np.asarray(columns)
    out = np.empty((rows.size, cols.size), dtype=dtype)
    for a in range(0, rows.size, chunk_size):
        out[a:a + chunk_size] = np.asarray(array[rows[a:a + chunk_size]])[:, cols]
    return out


def inverse_variance(error, observed):
    """Per-pixel weights ``1 / error^2`` where observed, 0 elsewhere.

    Book: chapter 5, "Beyond the paper: flux errors in PPCA" (notebooks/05_rsca.md).

    Parameters
    ----------
    error : ndarray, shape (n, D)
        Flux errors (same units as the flux).
    observed : ndarray of bool, shape (n, D)

    Returns
    -------
    weights : ndarray of float32, shape (n, D)
    """
    error = np.asarray(error, dtype=np.float64)
    observed = np.asarray(observed, dtype=bool)
    if error.shape != observed.shape:
        raise ValueError(f"error {error.shape} and observed {observed.shape} must have one shape")
    ok = observed & np.isfinite(error) & (error > 0)
    w = np.zeros(error.shape, dtype=np.float32)
    w[ok] = 1.0 / error[ok] ** 2
    return w


def ppca_coordinates(ppca, flux, observed, rows=None, columns=None, *, error=None,
                     error_rows=None, chunk_size=4096):
    """PPCA coordinates of stars in flux units, read chunk by chunk from memory maps.

    Book: chapter 5, "Step 1: PPCA with missing pixels" (notebooks/05_rsca.md).

    The posterior mean ``E[z | observed pixels]`` of :meth:`helpers.ppca.PPCA.transform`
    has unit prior variance in every direction; multiplied by the amplitude
    ``sqrt(explained_variance_ - noise_variance_)`` of each component it becomes the
    coordinate of the de-noised spectrum ``W z`` on the orthonormal principal axes, so that
    Euclidean distances between coordinates are distances between PPCA reconstructions
    (flux units).  The RSCA metric itself does not care (sphering removes any per-axis
    scale); the "raw" and "scaled" variants of the paper's Fig. 4 do.

    Parameters
    ----------
    ppca : helpers.ppca.PPCA
        Fitted on the pixels ``columns``.
    flux, observed : array_like, shape (N, 8575)
        Flux and observed-pixel mask (e.g. ``RscaInputs.field_flux`` / ``field_observed``).
    rows : array_like of int, optional
        Rows to transform (default all).
    columns : array_like of int, optional
        Pixel columns the model was fitted on (default all).
    error : array_like, shape (N_all, 8575), optional
        Flux errors; when given, the weighted posterior (inverse-variance weights) is used.
    error_rows : array_like of int, optional
        Rows of ``error`` matching ``rows`` (required with ``error``).
    chunk_size : int

    Returns
    -------
    X : ndarray, shape (n_rows, K)
    """
    rows = np.arange(flux.shape[0]) if rows is None else np.asarray(rows)
    if error is not None and (error_rows is None or len(error_rows) != rows.size):
        raise ValueError("error_rows must give one row of `error` per transformed star")
    amp = np.sqrt(np.maximum(ppca.explained_variance_ - ppca.noise_variance_, 0.0))
    out = np.empty((rows.size, amp.size))
    for a in range(0, rows.size, chunk_size):
        r = rows[a:a + chunk_size]
        f = read_rows(flux, r, columns)
        o = read_rows(observed, r, columns, dtype=bool)
        w = None
        if error is not None:
            w = inverse_variance(read_rows(error, np.asarray(error_rows)[a:a + chunk_size], columns), o)
        out[a:a + r.size] = ppca.transform(f, mask=o, weights=w) * amp
    return out


class ReferenceFit:
    """A ``fit_fn`` for leave-one-cluster-out whose field statistics come from a fixed sample.

    Book: chapter 5, "Doppelganger rate and leave-one-cluster-out validation" (notebooks/05_rsca.md).

    :func:`helpers.doppelganger.loco_doppelganger_rates` passes the field stars it compares
    with (here only the pair candidates) as ``X_pop``; the field mean and covariance of
    step 2 should describe the whole field instead.  This object learns them once from
    ``X_ref`` (a random field sample, no cluster star) and fits steps 3-4 per fold.

    Parameters
    ----------
    X_ref : array_like, shape (n_ref, K)
        Reference field sample.
    mode : str, default "transformed"
        :class:`helpers.rsca.RelevantScaling` mode.
    top_n : int, optional
        Keep only the ``top_n`` best dimensions.
    """

    def __init__(self, X_ref, mode="transformed", top_n=None):
        self.base = RelevantScaling(mode, top_n=top_n).fit_population(X_ref)

    def __call__(self, X_pop, X_train, labels_train):
        """Fit steps 3-4 on the training clusters (``X_pop`` is not used)."""
        return copy.deepcopy(self.base).fit_clusters(X_train, labels_train)


def loco_pair_distances(fit_fn, X_pop, X_clust, cluster_labels, vhelio_pop, ak_pop,
                        vhelio_clust, ak_clust, dv_max=5.0, dak_max=0.05):
    """The distances behind each cluster's leave-one-cluster-out doppelganger rate.

    Book: chapter 5, "Cluster by cluster" (notebooks/05_rsca.md).

    Parameters
    ----------
    fit_fn : callable
        ``fit_fn(X_pop, X_train, labels_train) -> model`` (e.g. :class:`ReferenceFit`).
    X_pop : ndarray, shape (N_field, K)
        Field stars compared with (e.g. the pair candidates).
    X_clust : ndarray, shape (n_members, K)
    cluster_labels : array_like, shape (n_members,)
    vhelio_pop, ak_pop, vhelio_clust, ak_clust : array_like
        Pair filter (km/s, mag).
    dv_max, dak_max : float

    Returns
    -------
    list of dict
        Per cluster (sorted by label): ``cluster``, ``threshold`` (median member-pair
        distance), ``member_distances`` (all member pairs), ``member`` and ``field`` (indices
        into ``X_clust`` and ``X_pop`` of every allowed pair) and ``distance`` (their
        distances).  The rate is ``mean(distance < threshold)``.
    """
    labels, names, codes = _check_labels(cluster_labels, len(X_clust))
    vp, ap = np.asarray(vhelio_pop, float), np.asarray(ak_pop, float)
    vc, ac = np.asarray(vhelio_clust, float), np.asarray(ak_clust, float)
    out = []
    for k, name in enumerate(names):
        test = codes == k
        model = fit_fn(X_pop, X_clust[~test], labels[~test])
        members = np.flatnonzero(test)
        allowed = (np.abs(vc[members][:, None] - vp[None, :]) < dv_max) & \
                  (np.abs(ac[members][:, None] - ap[None, :]) < dak_max)
        mi, fi = np.nonzero(allowed)
        Zm = model.transform(X_clust[members])
        used = np.unique(fi)
        Zf = np.zeros((X_pop.shape[0], Zm.shape[1]))
        if used.size:
            Zf[used] = model.transform(X_pop[used])
        d = np.sqrt(((Zm[mi] - Zf[fi]) ** 2).sum(axis=1))
        i, j = np.triu_indices(members.size, k=1)
        dm = np.sqrt(((Zm[i] - Zm[j]) ** 2).sum(axis=1))
        out.append({"cluster": name, "threshold": float(np.median(dm)), "member_distances": dm,
                    "member": members[mi], "field": fi, "distance": d})
    return out


def parse_visits(visits):
    """Plates and dates (MJD) of each star's visits, from allStar ``VISITS`` strings.

    Book: chapter 5, "Observed together? The same-plate check" (notebooks/05_rsca.md).

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

    Book: chapter 5, "Observed together? The same-plate check" (notebooks/05_rsca.md).

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
