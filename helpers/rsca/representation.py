"""The PPCA representation of stars: coordinates of their spectra on a fitted PPCA basis.

Book: {ref}`sec-rsca-ppca`

Step 1 of RSCA describes each masked spectrum by its K PPCA coordinates: the posterior mean
of the latent vector given the star's observed pixels.  :func:`ppca_coordinates` computes
them for any rows of the memory-mapped inputs; :func:`ppca_representation` fits the basis once
on field spectra, projects every field and cluster star, and caches the result on disk
(:class:`Representation`, truncated to fewer components by :meth:`Representation.truncated`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from helpers.paths import cache_dir
from helpers.ppca.model import ENGINE_VERSION, PPCA
from helpers.progress import progress_enabled

__all__ = ["PPCA_TOL", "Representation", "PixelColumns", "StackedRows", "ppca_representation",
           "ppca_runs", "principal_angles", "read_rows", "inverse_variance", "ppca_coordinates",
           "column_runs", "select_columns"]


#: format of the cached representations; v2: coordinates in flux units (:func:`ppca_coordinates`)
_FORMAT = "ppca-representation-v2"

#: The one EM tolerance of every PPCA fit of the RSCA chapters (relative change of the
#: objective, :class:`helpers.ppca.PPCA`'s ``tol``).
PPCA_TOL = 1e-5


@dataclass
class Representation:
    """PPCA coefficients of the field and cluster spectra, with the basis they came from.

    Book: {ref}`sec-nested-k`

    Attributes
    ----------
    field : ndarray, shape (n_field, K)
        PPCA coordinates of the field stars (:func:`ppca_coordinates`: the posterior mean
        of each star's latent vector times the amplitude of each axis, flux units).
    cluster : ndarray, shape (n_members, K)
        The same for the cluster members.
    components : ndarray, shape (K, n_used)
        Orthonormal principal axes, by decreasing variance, over the ``n_used`` pixels of
        ``inputs.pixel_mask`` (the chips minus the interstellar windows).
    explained_variance : ndarray, shape (K,)
        Model variance along each axis (flux units squared).
    noise_variance : float
        PPCA noise variance (flux units squared).
    info : dict
        ``K``, ``n_fit`` (stars the basis was fitted on), ``n_iter``, ``fit_seconds``,
        ``transform_seconds``, ``from_cache``, ``nested_from`` (K of the parent fit, if
        truncated).
    """

    field: np.ndarray
    cluster: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    noise_variance: float
    info: dict = field(default_factory=dict)

    @property
    def K(self) -> int:
        """Number of components."""
        return int(self.field.shape[1])

    def truncated(self, K: int) -> "Representation":
        """The nested approximation of a K-component representation: the first K axes.

        Book: {ref}`sec-nested-k`

        The coefficients of the first K principal axes of a K_max fit are kept. For a star
        with every pixel observed they equal the K-component model's coefficients up to a
        per-axis factor (the canonical axes are orthogonal, so the posterior precision is
        diagonal), and a per-axis factor is removed by RSCA's sphering: the metric is then
        exactly the one of the truncated model. With missing pixels the axes couple through
        the unobserved pixels and the result is an approximation; and the ML subspace of a
        dedicated K fit only approaches the top-K subspace of the K_max fit when both have
        converged. The chapter measures both effects.

        Parameters
        ----------
        K : int
            1 <= K <= self.K.

        Returns
        -------
        Representation
        """
        if int(K) != K or not 1 <= K <= self.K:
            raise ValueError(f"K must be an integer between 1 and {self.K}, got {K!r}")
        K = int(K)
        info = dict(self.info, K=K, nested_from=self.K)
        return Representation(self.field[:, :K], self.cluster[:, :K], self.components[:K],
                              self.explained_variance[:K], self.noise_variance, info)


def column_runs(columns):
    """The runs of consecutive indices of an increasing column list, as ``(start, stop)`` pairs.

    Book: {ref}`sec-nested-k`

    The book's pixel masks are a few long runs (the three chips minus the interstellar
    windows: 10 runs for 6,934 of 8,575 pixels), which :func:`select_columns` copies run by run.

    Parameters
    ----------
    columns : array_like of int, shape (n,)

    Returns
    -------
    list of (int, int) or None
        None when the columns are not strictly increasing or form more than one run per 4
        columns (then a gather, ``np.take``, is as fast).
    """
    c = np.asarray(columns, dtype=np.int64).reshape(-1)
    if c.size == 0:
        return None
    step = np.diff(c)
    if np.any(step <= 0):
        return None
    breaks = np.flatnonzero(step != 1) + 1
    if breaks.size + 1 > max(1, c.size // 4):
        return None
    first = np.concatenate(([0], breaks))
    last = np.concatenate((breaks - 1, [c.size - 1]))
    return list(zip(c[first].tolist(), (c[last] + 1).tolist()))


def select_columns(block, columns, runs=None, out=None):
    """``block[..., columns]`` as a C-ordered array (or into ``out``).

    Book: {ref}`sec-nested-k`

    With the ``runs`` of :func:`column_runs` the columns are copied run by run (slices: 2.5
    times faster than ``np.take`` on a chunk of the smoke survey, 3 times for the boolean
    masks); otherwise ``np.take`` along the last axis.  Both give C-ordered arrays, unlike
    ``block[:, columns]``, whose result is laid out column by column (every later pass over
    it strides).

    Parameters
    ----------
    block : array_like, shape (..., D)
    columns : array_like of int, shape (n,)
    runs : list of (int, int), optional
        ``column_runs(columns)``.
    out : ndarray, shape (..., n), optional
        Where to write (cast to its dtype).

    Returns
    -------
    ndarray, shape (..., n)
    """
    block = np.asarray(block)
    if runs is None:
        if out is None:
            return np.take(block, columns, axis=-1)
        out[...] = np.take(block, columns, axis=-1)
        return out
    if out is None:
        out = np.empty(block.shape[:-1] + (len(columns),), dtype=block.dtype)
    o = 0
    for a, b in runs:
        out[..., o:o + b - a] = block[..., a:b]
        o += b - a
    return out


class PixelColumns:
    """Some rows and columns of a (memory-mapped) matrix, read lazily.

    Book: {ref}`sec-nested-k`

    PPCA reads its data by row blocks (``X[a:b]``) or row lists (``X[rows]``); this gives it
    only the stars and pixels asked for, without copying the whole matrix.

    Parameters
    ----------
    array : array_like, shape (N, D)
    columns : array_like of int or bool
        Columns (pixels) kept.
    rows : array_like of int, optional
        Rows (stars) kept, in this order (default: all).
    """

    def __init__(self, array, columns, rows=None):
        self.array = array
        self.columns = np.flatnonzero(columns) if np.asarray(columns).dtype == bool else np.asarray(columns)
        self.runs = column_runs(self.columns)
        self.rows = None if rows is None else np.asarray(rows)
        self.shape = (array.shape[0] if rows is None else self.rows.size, self.columns.size)
        self.dtype = array.dtype
        self.ndim = 2

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        if self.rows is not None:
            r = self.rows[rows]
            if isinstance(rows, slice) and r.size and r[-1] - r[0] + 1 == r.size \
                    and np.all(np.diff(r) == 1):
                rows = slice(int(r[0]), int(r[-1]) + 1)   # consecutive rows: no fancy-index copy
            else:
                rows = r
        return select_columns(self.array[rows], self.columns, self.runs)


class StackedRows:
    """Two (memory-mapped) matrices with the same columns, read as one: rows of ``a``, then ``b``.

    Book: {ref}`sec-rsca-leak`

    PPCA reads its data by row blocks or row lists; this lets it fit field stars and cluster
    members together (the leak of the paper's code) without copying either matrix.
    """

    def __init__(self, a, b):
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"stacked matrices need the same columns, got {a.shape} and {b.shape}")
        self.a, self.b = a, b
        self.n_a = a.shape[0]
        self.shape = (a.shape[0] + b.shape[0],) + tuple(a.shape[1:])
        self.dtype = a.dtype
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        idx = np.arange(self.shape[0])[rows]
        if np.ndim(idx) == 0:
            return self[[int(idx)]][0]
        in_a = idx < self.n_a
        out = np.empty((idx.size,) + self.shape[1:], dtype=self.dtype)
        if in_a.any():
            out[in_a] = read_rows(self.a, idx[in_a], dtype=self.dtype)
        if (~in_a).any():
            out[~in_a] = read_rows(self.b, idx[~in_a] - self.n_a, dtype=self.dtype)
        return out


def _cache_key(inputs, n_components, n_fit, seed, tol, max_iter, with_members=False) -> str:
    # the inputs' cache folder name is itself a key (survey, selection, masking); its full
    # path is not part of the key, so a cache folder moved with STARS_BOOK_CACHE stays valid
    blob = {"format": _FORMAT, "engine": ENGINE_VERSION,
            "inputs_key": getattr(inputs, "path", None) and inputs.path.name,
            "K": int(n_components), "n_fit": n_fit, "seed": int(seed),
            "tol": float(tol), "max_iter": int(max_iter)}
    if with_members:
        blob["with_members"] = True
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def ppca_representation(inputs, n_components: int, *, n_fit: int | None = None, seed: int = 0,
                        tol: float = PPCA_TOL, max_iter: int = 100, cache: bool = True,
                        chunk_size: int = 2048, with_members: bool = False) -> Representation:
    """Fit PPCA to field spectra once and return the coefficients of field and cluster stars.

    Book: {ref}`sec-nested-k`

    The basis is fitted on every field star (the paper's Algorithm 1, ``n_fit=None``) or on
    ``n_fit`` of them drawn at random (seeded), and every field and cluster star then gets
    its PPCA coordinates over its observed pixels (:func:`ppca_coordinates`, flux units:
    the one representation of spectra of the book). The result is cached in
    ``.cache/dimensionality/<key>.npz``, keyed by the inputs' cache folder (itself keyed by
    the survey, the selection and the masking), the PPCA engine version and every
    argument, so a second call (or a second execution of a chapter) only reads it.

    Parameters
    ----------
    inputs : helpers.rsca.pipeline.RscaInputs
        Selected, censored and masked spectra (:func:`helpers.rsca.pipeline.rsca_inputs`).
    n_components : int
        K.
    n_fit : int, optional
        Field stars the basis is fitted on (default: all, as in the paper).
    seed : int
        Seed of the subsample and of PPCA's start (one "PPCA run" per seed).
    tol, max_iter :
        PPCA stopping rule (relative objective change, :data:`PPCA_TOL` by default;
        iterations).
    cache : bool
        Read and write the on-disk cache.
    chunk_size : int
        Stars per chunk in PPCA.
    with_members : bool
        Fit the basis on the field stars **and every cluster member** (the paper's code did;
        a held-out cluster then shapes the basis it is evaluated in: {ref}`sec-rsca-leak`).

    Returns
    -------
    Representation
    """
    if int(n_components) != n_components or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    n_all = inputs.field_flux.shape[0]
    if n_fit is not None and (int(n_fit) != n_fit or n_fit < 2 * n_components):
        raise ValueError(f"n_fit must be None or an integer >= 2 * n_components, got {n_fit!r}")
    n_fit = None if n_fit is None or n_fit >= n_all else int(n_fit)
    key = _cache_key(inputs, n_components, n_fit, seed, tol, max_iter, with_members)
    path = cache_dir("dimensionality") / f"{key}.npz"
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            info["from_cache"] = True
            info.setdefault("seed", int(seed))             # caches written before it was recorded
            info.setdefault("with_members", bool(with_members))
            return Representation(z["field"], z["cluster"], z["components"],
                                  z["explained_variance"], float(z["noise_variance"]), info)
    t0 = time.perf_counter()
    pixels = np.asarray(inputs.pixel_mask, bool)   # the chips minus the interstellar windows
    X = PixelColumns(inputs.field_flux, pixels)
    M = PixelColumns(inputs.field_observed, pixels)
    if n_fit is not None:
        rows = np.sort(np.random.default_rng(seed).choice(n_all, n_fit, replace=False))
        X, M = X[rows], M[rows]
    if with_members:
        X = StackedRows(X, PixelColumns(inputs.cluster_flux, pixels))
        M = StackedRows(M, PixelColumns(inputs.cluster_observed, pixels))
    model = PPCA(int(n_components), tol=tol, max_iter=max_iter, random_state=seed,
                 chunk_size=chunk_size).fit(X, mask=M)
    del X, M
    t1 = time.perf_counter()
    columns = np.flatnonzero(pixels)
    z_field = ppca_coordinates(model, inputs.field_flux, inputs.field_observed, columns=columns)
    z_clust = ppca_coordinates(model, inputs.cluster_flux, inputs.cluster_observed, columns=columns)
    t2 = time.perf_counter()
    info = {"K": int(n_components), "n_fit": int(n_fit or n_all), "seed": int(seed),
            "with_members": bool(with_members), "n_iter": int(model.n_iter_),
            "converged": bool(model.converged_), "fit_seconds": round(t1 - t0, 2),
            "transform_seconds": round(t2 - t1, 2), "from_cache": False, "nested_from": None}
    rep = Representation(z_field, z_clust, model.components_.astype(np.float32),
                         np.asarray(model.explained_variance_, float), float(model.noise_variance_),
                         info)
    if cache:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, field=rep.field, cluster=rep.cluster, components=rep.components,
                 explained_variance=rep.explained_variance, noise_variance=rep.noise_variance,
                 info=json.dumps(info))
        os.replace(tmp, path)
    return rep


def ppca_runs(inputs, n_components: int, n_runs: int, *, seed: int = 0, n_fit: int | None = None,
              tol: float = PPCA_TOL, with_members: bool = False, cache: bool = True,
              progress: bool = True) -> list:
    """Several PPCA runs (start seeds ``seed, seed + 1, ...``) of one representation, cached.

    Book: {ref}`sec-rsca-spread`

    The paper reports its rates as mean +- sd over 10 PPCA runs.  Each run is one call of
    :func:`ppca_representation` (cached on disk by its inputs), so chapters that ask for
    the same runs share them.

    Parameters
    ----------
    inputs : helpers.rsca.pipeline.RscaInputs
    n_components : int
        K.
    n_runs : int
        Number of runs (at least 1; a spread needs 2).
    seed : int
        Seed of the first run.
    n_fit, tol, with_members, cache :
        As in :func:`ppca_representation` (``n_fit=None``: every field star, the paper's
        protocol).
    progress : bool
        Show a progress bar (quiet under ``CI`` or ``TQDM_DISABLE=1``:
        :func:`helpers.progress.progress_enabled`).

    Returns
    -------
    list of Representation
    """
    if int(n_runs) != n_runs or n_runs < 1:
        raise ValueError(f"n_runs must be a positive integer, got {n_runs!r}")
    seeds = range(int(seed), int(seed) + int(n_runs))
    if progress_enabled(progress):
        from tqdm.auto import tqdm  # imported only when a bar is shown (tqdm.auto may warn)
        seeds = tqdm(seeds, desc=f"PPCA runs, K = {n_components}", unit="run", leave=False)
    return [ppca_representation(inputs, n_components, n_fit=n_fit, seed=s, tol=tol,
                                with_members=with_members, cache=cache) for s in seeds]


def principal_angles(A, B) -> np.ndarray:
    """Principal angles (degrees) between the row spaces of two bases.

    Book: {ref}`sec-nested-k`

    Parameters
    ----------
    A : array_like, shape (Ka, D)
    B : array_like, shape (Kb, D)
        Rows need not be orthonormal (they are orthonormalised here).

    Returns
    -------
    ndarray, shape (min(Ka, Kb),)
        Angles in degrees, increasing.
    """
    A = np.asarray(A, float)
    B = np.asarray(B, float)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"A and B must be 2-D with the same number of columns, got {A.shape}, {B.shape}")
    qa, _ = np.linalg.qr(A.T)
    qb, _ = np.linalg.qr(B.T)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.sort(np.degrees(np.arccos(np.clip(s, -1.0, 1.0))))


def read_rows(array, rows, columns=None, dtype=np.float32, chunk_size=4096):
    """Copy some rows (and columns) of a memory-mapped matrix into memory, chunk by chunk.

    Book: {ref}`sec-rsca-ppca`

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
    runs = column_runs(cols)
    out = np.empty((rows.size, cols.size), dtype=dtype)
    for a in range(0, rows.size, chunk_size):
        r = rows[a:a + chunk_size]
        if r.size and r[-1] - r[0] + 1 == r.size and np.all(np.diff(r) == 1):
            block = array[r[0]:r[-1] + 1]       # consecutive rows: a slice, no fancy-index copy
        else:
            block = array[r]
        select_columns(block, cols, runs, out=out[a:a + r.size])
    return out


def inverse_variance(error, observed):
    """Per-pixel weights ``1 / error^2`` where observed, 0 elsewhere.

    Book: {ref}`sec-rsca-errors`

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

    Book: {ref}`sec-rsca-ppca`

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
        Stars read at a time when ``error`` is given (otherwise PPCA's own chunks).

    Returns
    -------
    X : ndarray, shape (n_rows, K)
    """
    amp = np.sqrt(np.maximum(ppca.explained_variance_ - ppca.noise_variance_, 0.0))
    if error is None:
        cols = np.arange(flux.shape[1]) if columns is None else columns
        return ppca.transform(PixelColumns(flux, cols, rows),
                              mask=PixelColumns(observed, cols, rows)) * amp
    rows = np.arange(flux.shape[0]) if rows is None else np.asarray(rows)
    if error_rows is None or len(error_rows) != rows.size:
        raise ValueError("error_rows must give one row of `error` per transformed star")
    out = np.empty((rows.size, amp.size))
    for a in range(0, rows.size, chunk_size):
        r = rows[a:a + chunk_size]
        f = read_rows(flux, r, columns)
        o = read_rows(observed, r, columns, dtype=bool)
        w = inverse_variance(read_rows(error, np.asarray(error_rows)[a:a + chunk_size], columns), o)
        out[a:a + r.size] = ppca.transform(f, mask=o, weights=w) * amp
    return out
