"""PPCA on a dask.array: the engine's stages, each chunk's work on a Dask cluster's workers.

Book: {ref}`sec-rsca-ppca`

:func:`fit_em_dask` is a second driver of the same fit as :func:`helpers.ppca.engine.fit_em`:
the same scan, start, EM iterations and canonical form, and the same chunk functions for
the math (:func:`helpers.ppca.chunks.scan_chunk`,
:func:`helpers.ppca.start.fill_subsample_block`, :func:`~helpers.ppca.start.sketch_chunk`,
:func:`~helpers.ppca.start.impute_project_chunk`, :func:`~helpers.ppca.exact.posterior_chunk`,
:func:`~helpers.ppca.exact.impute_chunk_stats`, the fast and weighted counterparts and
the M-steps).  Only the map and the reduce differ:

* each row block of the dask array is one chunk, with a *home* worker (where a persisted
  block lives, else round robin); what a chunk keeps between passes (its missing-pixel
  layout, observed counts, the centred copy when every star fits in the start, the start's
  subsample rows, the posteriors between the two passes of an iteration) stays on that
  worker as a future;
* every pass sends the small shared parameters to all workers once (``scatter``), runs one
  task per chunk on its home worker, reading the block from the array's source (a Zarr store,
  a memory map on a shared disk, or memory for a persisted array), and sums the chunks'
  results on each worker before the client adds the few per-worker sums (a tree reduction);
* the client runs the small algebra between passes (the start's orthogonalisation and
  Rayleigh-Ritz step, the M-step solve, the stopping rule) exactly as the single-machine fit.

Results equal the single-machine engine's on the same data, seed and chunks up to the
order of float64 summation (measured: ``tests/test_ppca_dask.py`` and
``benchmarks/README_dask.md``).  Tasks are pure functions of their inputs (nothing is
changed in place on a worker), so a lost worker's chunks are recomputed by Dask.
"""
from __future__ import annotations

import operator
import time

import numpy as np

from helpers.dask_cluster import ClusterError, check_workers, data_paths
from helpers.ppca.dask_tasks import (exact_pass1_task, exact_pass2_task, fast_pass1_task,
                                     fast_pass2_task, gather_task, impute_project_task, nobs_of,
                                     recentre_task, scan_task, scan_weighted_task, sketch_task,
                                     subsample_task, sum_parts, weighted_task)
from helpers.ppca.engine import canonical_form, em_iterations
from helpers.ppca.exact import exact_m_step, exact_params, weighted_m_step, weighted_params
from helpers.ppca.fast import SERIES_ORDER, fast_m_step, fast_params, series_terms
from helpers.ppca.start import finish_start, start_fit

__all__ = ["is_dask_array", "fit_em_dask", "DaskData", "DaskSubsample", "DaskExactEStep",
           "DaskFastEStep", "DaskWeightedEStep"]


def is_dask_array(x) -> bool:
    """Whether ``x`` is a ``dask.array.Array`` (without importing dask).

    Book: {ref}`sec-rsca-ppca`
    """
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "__dask_graph__")


# ------------------------------------------------------------------------------ the driver
class DaskData:
    """The data of one fit on a cluster: the blocks, each chunk's home worker and state.

    Book: {ref}`sec-rsca-ppca`

    Parameters
    ----------
    client : distributed.Client
    X, mask, weights : dask.array.Array, shape (N, D)
        Fluxes (NaN or ``mask`` False = missing), row-aligned: one chunk per row block (the
        pixels are made one block).
    dt : numpy.dtype
        Working precision.
    """

    def __init__(self, client, X, mask, weights, dt):
        self.client = client
        self.dt = np.dtype(dt)
        X = X.rechunk({1: -1})
        self.N, self.D = X.shape
        rows = X.chunks[0]
        self.chunks = [(int(a), int(a + n)) for a, n in zip(np.cumsum((0,) + rows[:-1]), rows)]
        self.blocks = {"X": list(X.to_delayed().ravel())}
        for name, arr in (("mask", mask), ("weights", weights)):
            self.blocks[name] = (list(arr.rechunk((rows, -1)).to_delayed().ravel())
                                 if arr is not None else [None] * len(rows))
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise ClusterError("the Dask cluster has no worker")
        keys = [blk.key for blk in self.blocks["X"]]
        where = client.who_has(keys)           # a persisted array's blocks have a place
        self.home = [(list(where.get(key, ())) or [workers[k % len(workers)]])[0]
                     for k, key in enumerate(keys)]
        self.states = None
        self.mu0_dt_f = None
        self.keep = False

    def scatter(self, value):
        """``value`` on every worker (one future; a dict is one object, not a key mapping)."""
        return self.client.scatter([value], broadcast=True, hash=False)[0]

    def run(self, fn, *args, per_chunk=None, blocks=True, k_list=None):
        """One task ``fn(state_k, X_k, mask_k, weights_k, *args, *per_chunk[k])`` per chunk,
        on its home worker; futures in chunk order.  Without ``blocks`` (or with the kept
        copy) the blocks are not read."""
        from dask import delayed

        out = []
        for k in (range(len(self.chunks)) if k_list is None else k_list):
            if blocks and not self.keep:
                xb, mb, wb = (self.blocks[n][k] for n in ("X", "mask", "weights"))
            else:
                xb = mb = wb = None
            extra = tuple(per_chunk[k]) if per_chunk is not None else ()  # list or dict
            task = delayed(fn, pure=False)(self.states[k], xb, mb, wb, *args, *extra)
            out.append(self.client.compute(task, workers=[self.home[k]],
                                           allow_other_workers=True))
        return out

    def submit(self, fn, *args, k, **kw):
        """``fn(*args)`` on chunk k's home worker."""
        return self.client.submit(fn, *args, workers=[self.home[k]], allow_other_workers=True,
                                  pure=False, **kw)

    def split(self, futs, i, k_list=None):
        """Item i of each chunk's result (futures, on the same workers)."""
        ks = range(len(futs)) if k_list is None else k_list
        return [self.submit(operator.getitem, f, i, k=k) for f, k in zip(futs, ks)]

    def tree_sum(self, futs, k_list=None):
        """Sum chunk results: first on each worker (chunk order), then here (worker order)."""
        ks = list(range(len(futs))) if k_list is None else list(k_list)
        groups: dict = {}
        for f, k in zip(futs, ks):
            groups.setdefault(self.home[k], []).append((k, f))
        partial = [self.submit(sum_parts, *[f for _, f in items], k=items[0][0])
                   for _, items in sorted(groups.items())]
        return sum_parts(*self.client.gather(partial))


class DaskSubsample:
    """The start's subsample held by the workers: what :func:`helpers.ppca.start.start_fit`
    reads through (same interface as :class:`helpers.ppca.start.SubsampleChunks`).

    Book: {ref}`sec-rsca-ppca`
    """

    def __init__(self, data: DaskData, subs, k_list, sizes, xx_sum, col_sum, n_obs):
        self.data, self.subs, self.k_list = data, subs, k_list
        self.offsets = np.concatenate(([0], np.cumsum(sizes)))
        self.n, self.D, self.dt = int(self.offsets[-1]), data.D, data.dt
        self.xx_sum, self.col_sum, self.n_obs = xx_sum, col_sum, n_obs

    def _rows(self, j):
        return slice(int(self.offsets[j]), int(self.offsets[j + 1]))

    def pass_T(self, Vp):
        """``T = Xs Vp`` (uncentred), float64 (n, p)."""
        d = self.data
        Vp_f = d.scatter(Vp.astype(self.dt))
        futs = [d.submit(sketch_task, s, Vp_f, k=k) for s, k in zip(self.subs, self.k_list)]
        return np.concatenate(d.client.gather(futs)).astype(np.float64)

    def pass_Z(self, Tc, fit):
        """Impute with ``fit`` (if any), then ``Z = Xs^T Tc``: ``(Z, new_sum, new_sq)``."""
        d = self.data
        Tc_dt = Tc.astype(self.dt)
        Vext_f = d.scatter(fit[0]) if fit is not None else None
        res = [d.submit(impute_project_task, s, Tc_dt[self._rows(j)], Vext_f,
                        None if fit is None else fit[1][self._rows(j)], k=k)
               for j, (s, k) in enumerate(zip(self.subs, self.k_list))]
        self.subs = d.split(res, 0, self.k_list)
        imp, Z = d.tree_sum(d.split(res, 1, self.k_list), self.k_list)
        if imp is None:
            return Z, None, 0.0
        return Z, imp[2], imp[3]

    def gather(self, fit):
        """The residual at the missing entries (still 0) under ``fit``, summed."""
        d = self.data
        Vext_f = d.scatter(fit[0])
        futs = [d.submit(gather_task, s, Vext_f, fit[1][self._rows(j)], k=k)
                for j, (s, k) in enumerate(zip(self.subs, self.k_list))]
        return float(sum(d.client.gather(futs)))


class DaskExactEStep:
    """The exact E-step (:class:`helpers.ppca.exact.ExactEStep`) with chunks on the workers.

    Book: {ref}`sec-rsca-ppca`
    """

    def __init__(self, data: DaskData, K: int, n_obs: float):
        self.data, self.K, self.n_obs = data, K, n_obs

    def __call__(self, W, m, s2):
        d = self.data
        par = exact_params(W, m, s2, d.D, self.K, d.dt)
        par_f = d.scatter(par)
        res = d.run(exact_pass1_task, d.mu0_dt_f, par_f)
        nll = float(sum(d.client.gather(d.split(res, 0))))
        post = d.split(res, 1)
        del res

        def finish():
            parts = d.run(exact_pass2_task, d.mu0_dt_f, par_f, per_chunk=[(p,) for p in post])
            SigS, ex2, Sxz, n_full, ZtZ, zsum = d.tree_sum(parts)
            return exact_m_step(SigS, ex2, Sxz, n_full, ZtZ, zsum, d.N, self.n_obs, par)

        return nll, finish


class DaskFastEStep:
    """The fast E-step (:class:`helpers.ppca.fast.FastEStep`) with chunks on the workers.

    Book: {ref}`sec-rsca-ppca`
    """

    def __init__(self, data: DaskData, K: int, c):
        self.data, self.K, self.c = data, K, c
        self.cg_steps = []

    def __call__(self, W, m, s2):
        d = self.data
        par = fast_params(W, m, s2, d.D, self.K, d.dt)
        par_f = d.scatter(par)
        res = d.run(fast_pass1_task, d.mu0_dt_f, par_f)
        first = d.client.gather(d.split(res, 0))
        post = d.split(res, 1)
        del res
        series = series_terms(W, s2, self.c, d.N, SERIES_ORDER)
        nll = float(sum(r[0] for r in first)) + 0.5 * series[3]
        self.cg_steps.append(max(r[1] for r in first))

        def finish():
            parts = d.run(fast_pass2_task, d.mu0_dt_f, par_f, per_chunk=[(p,) for p in post])
            ex2, Sxz, ZtZ, zsum = d.tree_sum(parts)
            return fast_m_step(ex2, Sxz, ZtZ, zsum, series, self.c, d.N, par)

        return nll, finish


class DaskWeightedEStep:
    """The weighted E-step (:class:`helpers.ppca.exact.WeightedEStep`) on the workers.

    Book: {ref}`sec-rsca-ppca`
    """

    def __init__(self, data: DaskData, K: int, n_obs: float):
        self.data, self.K, self.n_obs = data, K, n_obs

    def __call__(self, W, m, s2):
        d = self.data
        wp = weighted_params(W, m, s2, d.D, self.K, d.dt)
        nll, A, B, wx2 = d.tree_sum(d.run(weighted_task, d.mu0_dt_f, d.scatter(wp)))
        W_new, m_new, s2_new = weighted_m_step(A, B, wx2, self.n_obs, wp)
        return nll, lambda: (W_new, m_new, s2_new)


def _scan(d: DaskData, weighted: bool, keep: bool):
    """Pass 0 on the workers: the chunk states, and the totals the fit needs."""
    D = d.D

    def compute(fn, k, *args):
        return d.client.compute(_delayed(fn)(*d.chunks[k], *args), workers=[d.home[k]],
                                allow_other_workers=True)

    ref = None
    if weighted:
        res = [compute(scan_weighted_task, k, d.blocks["X"][k], d.blocks["mask"][k],
                       d.blocks["weights"][k], d.dt) for k in range(len(d.chunks))]
        d.states = d.split(res, 0)
        col_sum, col_cnt, w_sum = d.tree_sum(d.split(res, 1))
        miss_c = d.N - col_cnt
    else:
        first = compute(scan_task, 0, d.blocks["X"][0], d.blocks["mask"][0], None, keep, d.dt)
        if keep:
            # the kept copy is centred on the first chunk's observed means, as in scan()
            s0, cnt_c0 = d.client.gather(d.submit(operator.getitem, first, 1, k=0))
            a, b = d.chunks[0]
            cnt0 = (b - a) - cnt_c0
            ref = np.divide(s0, cnt0, out=np.zeros(D), where=cnt0 > 0).astype(d.dt)
            first = d.submit(recentre_task, first, ref, k=0)
        res = [first] + [compute(scan_task, k, d.blocks["X"][k], d.blocks["mask"][k], ref, keep,
                                 d.dt) for k in range(1, len(d.chunks))]
        d.states = d.split(res, 0)
        col_sum, miss_c = d.tree_sum(d.split(res, 1))
        col_cnt = d.N - miss_c
        w_sum = 0.0
    del res
    star_cnt = np.concatenate(d.client.gather([d.submit(nobs_of, st, k=k)
                                               for k, st in enumerate(d.states)]))
    empty_cols = np.flatnonzero(col_cnt == 0)
    if empty_cols.size:
        raise ValueError(f"X: {empty_cols.size} pixel column(s) are missing for every star "
                         f"(first: {empty_cols[:5].tolist()}); drop them before fitting")
    empty_rows = np.flatnonzero(star_cnt == 0)
    if empty_rows.size:
        raise ValueError(f"X: {empty_rows.size} star(s) have no observed pixel "
                         f"(first rows: {empty_rows[:5].tolist()}); drop them before fitting")
    mu0 = ref.astype(np.float64) if keep else col_sum / col_cnt
    d.keep = keep
    return mu0, star_cnt, col_sum, col_cnt, np.asarray(miss_c, dtype=np.float64), float(w_sum)


def _start(d: DaskData, K, n_init_rows, random_state, tol, col_sum, weighted, w_scale):
    """The start on the workers' subsample: :func:`helpers.ppca.start.start_fit`."""
    N, D = d.N, d.D
    rng = np.random.default_rng(random_state)
    n_s = min(N, int(n_init_rows))
    if d.keep:
        k_list = list(range(len(d.chunks)))
        per = [(None,)] * len(k_list)
    else:
        rows = np.sort(rng.choice(N, size=n_s, replace=False))
        per, k_list = [], []
        for k, (a, b) in enumerate(d.chunks):
            r = rows[(rows >= a) & (rows < b)] - a
            if r.size:
                k_list.append(k)
                per.append((r,))
    res = d.run(subsample_task, d.mu0_dt_f, d.dt, per_chunk=dict(zip(k_list, per)),
                k_list=k_list)
    subs = d.split(res, 0, k_list)
    info = d.client.gather(d.split(res, 1, k_list))
    del res
    xx = np.concatenate([i[0] for i in info])
    n_obs = float(n_s * D - sum(i[2] for i in info))
    if d.keep:
        cs_s = cnt_s = None
        col = col_sum
    else:
        cs_s = np.sum([i[1] for i in info], axis=0)[:D]
        cnt_s = n_s - np.sum([i[3] for i in info], axis=0)
        col = cs_s
    src = DaskSubsample(d, subs, k_list, [xx_k.size for xx_k in (i[0] for i in info)],
                        float(xx.sum()), col, n_obs)
    W, m, s2, start_info = start_fit(src, K, rng, tol=tol)
    del src, subs
    return finish_start(W, m, s2, start_info, d.keep, weighted, w_scale, cs_s, cnt_s)


def _default_client():
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError) as exc:
        raise ClusterError(
            "X is a dask array: PPCA fits it on a Dask cluster, but no Dask client is "
            "connected; connect first, e.g. client = helpers.dask_cluster.connect() (a local "
            "cluster) or connect('tcp://scheduler:8786')") from exc


def fit_em_dask(X, mask, weights, *, n_components, tol, max_iter, random_state, dtype,
                n_init_rows, verbose, method, client=None, check=True) -> dict:
    """Fit PPCA by EM on dask arrays, chunks on a Dask cluster's workers.

    Book: {ref}`sec-rsca-ppca`

    Parameters are those of :func:`helpers.ppca.engine.fit_em` (``chunk_size`` excepted:
    the chunks are the row blocks of ``X``), with

    client : distributed.Client, optional
        Default: the client connected in this process (``distributed.default_client()``).
    check : bool
        First check that every worker imports the book's package and sees the files and
        Zarr stores the arrays read (:func:`helpers.dask_cluster.check_workers`).

    Returns
    -------
    dict
        The fitted attributes, as :func:`helpers.ppca.engine.fit_em`, plus ``n_chunks_``.
    """
    client = _default_client() if client is None else client
    if check:
        check_workers(client, paths=data_paths(X, mask, weights), modules=("helpers.ppca",))
    N, D = X.shape
    K = int(n_components)
    dt = np.dtype(dtype)
    weighted = weights is not None
    t0 = time.perf_counter()
    timings = {}
    keep = not weighted and min(N, int(n_init_rows)) >= N
    d = DaskData(client, X, mask, weights, dt)
    if K >= min(N, D):
        raise ValueError(f"n_components={K} is too large for X of shape {X.shape}: "
                         f"need n_components < min(n_stars, n_pixels) = {min(N, D)}")
    mu0, star_cnt, col_sum, col_cnt, miss_c, w_sum = _scan(d, weighted, keep)
    if weighted and np.any(col_cnt <= K):
        few = np.flatnonzero(col_cnt <= K)
        raise ValueError(f"weighted fit: {few.size} pixel column(s) are observed in <= "
                         f"n_components={K} stars (first: {few[:5].tolist()})")
    n_obs_total = float(star_cnt.sum())
    d.mu0_dt_f = d.scatter(mu0.astype(dt))
    timings["scan"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    W, m, s2, start_info = _start(d, K, n_init_rows, random_state, tol, col_sum, weighted,
                                  w_sum / n_obs_total if weighted else 1.0)
    timings["start"] = time.perf_counter() - t1

    if weighted:
        step = DaskWeightedEStep(d, K, n_obs_total)
    elif method == "fast":
        step = DaskFastEStep(d, K, miss_c)
    else:
        step = DaskExactEStep(d, K, n_obs_total)
    W, m, s2, history, angles, it_times, converged = em_iterations(
        step, W, m, s2, tol=tol, max_iter=max_iter, verbose=verbose)
    timings["iterations"] = it_times
    timings["total"] = time.perf_counter() - t0
    fitted = canonical_form(W, s2, mu0 + m)
    fitted.update(n_iter_=len(angles), history_=np.asarray(history),
                  angle_history_=np.asarray(angles), converged_=converged, timings_=timings,
                  n_features_in_=D, weighted_=weighted, start_info_=start_info,
                  n_chunks_=len(d.chunks))
    if isinstance(step, DaskFastEStep):
        fitted["cg_steps_"] = step.cg_steps
    return fitted


def _delayed(fn):
    from dask import delayed
    return delayed(fn, pure=False)
