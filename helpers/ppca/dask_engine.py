"""PPCA on a dask.array: the engine's stages, each chunk's work on a Dask cluster's workers.

Book: {ref}`sec-scaling-ppca`

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

import time

import numpy as np

from helpers.dask_cluster import ClusterError, check_workers, data_paths
from helpers.ppca.dask_tasks import (exact_pass1_task, exact_pass2_task, fast_pass1_task,
                                     fast_pass2_task, gather_task, impute_project_task,
                                     recentre_task, scan_task, scan_weighted_task, sketch_task,
                                     subsample_task, sum_parts, weighted_task)
from helpers.ppca.engine import canonical_form, em_iterations
from helpers.ppca.exact import exact_m_step, exact_params, weighted_m_step, weighted_params
from helpers.ppca.fast import SERIES_ORDER, fast_m_step, fast_params, series_terms
from helpers.ppca.start import finish_start, start_fit
from helpers.ppca.state import check_observed

__all__ = ["is_dask_array", "fit_em_dask", "DaskData", "DaskSubsample", "DaskExactEStep",
           "DaskFastEStep", "DaskWeightedEStep"]


def is_dask_array(x) -> bool:
    """Whether ``x`` is a ``dask.array.Array`` (without importing dask).

    Book: {ref}`sec-scaling-ppca`
    """
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "__dask_graph__")


# ------------------------------------------------------------------------------ the driver
class DaskData:
    """The data of one fit on a cluster: the blocks, each chunk's home worker and state.

    Book: {ref}`sec-scaling-ppca`

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
        workers = sorted(client.nthreads())      # asks the scheduler now (not a cached view)
        if not workers:
            try:
                client.wait_for_workers(1, timeout=30)
            except TimeoutError:
                raise ClusterError("the Dask cluster has no worker") from None
            workers = sorted(client.nthreads())
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

    def map_reduce(self, fn, *args, roles, per_chunk=None, k_list=None, blocks=True,
                   states=None):
        """One pass: ``fn(state_k, X_k, mask_k, weights_k, *args, *per_chunk[k])`` for every
        chunk k on its home worker, all in one task graph.

        ``fn`` returns a tuple whose items have the ``roles`` (one per item, or one role for
        the whole result): ``"reduce"`` items are summed on each worker in chunk order, then
        here in worker order; ``"keep"`` items stay on the workers (futures, in chunk order);
        ``"gather"`` items come back here (lists, in chunk order).  Without ``blocks`` (or
        with the kept copy) the blocks are not read; ``states`` replaces the chunk states
        (e.g. the start's subsample).  Returns ``{role: [...]}`` with, for ``"reduce"``, the
        sums.
        """
        from dask import annotate, delayed

        ks = list(range(len(self.chunks))) if k_list is None else list(k_list)
        states = self.states if states is None else states
        single = isinstance(roles, str)
        roles = (roles,) if single else tuple(roles)
        items = {r: [] for r in ("reduce", "keep", "gather")}
        reduce_by_worker: dict = {}
        for j, k in enumerate(ks):
            if blocks and not self.keep:
                xb, mb, wb = (self.blocks[n][k] for n in ("X", "mask", "weights"))
            else:
                xb = mb = wb = None
            extra = tuple(per_chunk[j]) if per_chunk is not None else ()
            with annotate(workers=[self.home[k]], allow_other_workers=True):
                res = delayed(fn, pure=False, nout=None if single else len(roles))(
                    states[j] if states is not self.states else states[k], xb, mb, wb, *args,
                    *extra)
                parts = [res] if single else [res[i] for i in range(len(roles))]
            for role, part in zip(roles, parts):
                if role == "reduce":
                    reduce_by_worker.setdefault(self.home[k], []).append(part)
                else:
                    items[role].append(part)
        sums = []
        for w, parts in sorted(reduce_by_worker.items()):
            with annotate(workers=[w], allow_other_workers=True):
                sums.append(delayed(sum_parts, pure=False)(*parts))
        n_s, n_g = len(sums), len(items["gather"])
        futs = self.client.compute(sums + items["gather"] + items["keep"])
        got = self.client.gather(futs[:n_s + n_g])
        return {"reduce": sum_parts(*got[:n_s]) if n_s else None,
                "gather": got[n_s:], "keep": futs[n_s + n_g:]}


class DaskSubsample:
    """The start's subsample held by the workers: what :func:`helpers.ppca.start.start_fit`
    reads through (same interface as :class:`helpers.ppca.start.SubsampleChunks`).

    Book: {ref}`sec-scaling-ppca`
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
        out = d.map_reduce(sketch_task, d.scatter(Vp.astype(self.dt)), roles="gather",
                           k_list=self.k_list, blocks=False, states=self.subs)
        return np.concatenate(out["gather"]).astype(np.float64)

    def pass_Z(self, Tc, fit):
        """Impute with ``fit`` (if any), then ``Z = Xs^T Tc``: ``(Z, new_sum, new_sq)``."""
        d = self.data
        Tc_dt = Tc.astype(self.dt)
        Vext_f = d.scatter(fit[0]) if fit is not None else None
        per = [(Tc_dt[self._rows(j)], None if fit is None else fit[1][self._rows(j)])
               for j in range(len(self.k_list))]
        out = d.map_reduce(impute_project_task, Vext_f, roles=("keep", "reduce"),
                           per_chunk=per, k_list=self.k_list, blocks=False, states=self.subs)
        self.subs = out["keep"]
        imp, Z = out["reduce"]
        if imp is None:
            return Z, None, 0.0
        return Z, imp[2], imp[3]

    def gather(self, fit):
        """The residual at the missing entries (still 0) under ``fit``, summed."""
        d = self.data
        per = [(fit[1][self._rows(j)],) for j in range(len(self.k_list))]
        out = d.map_reduce(gather_task, d.scatter(fit[0]), roles="gather", per_chunk=per,
                           k_list=self.k_list, blocks=False, states=self.subs)
        return float(sum(out["gather"]))


class DaskExactEStep:
    """The exact E-step (:class:`helpers.ppca.exact.ExactEStep`) with chunks on the workers.

    Book: {ref}`sec-scaling-ppca`
    """

    def __init__(self, data: DaskData, K: int, n_obs: float):
        self.data, self.K, self.n_obs = data, K, n_obs

    def __call__(self, W, m, s2):
        d = self.data
        par = exact_params(W, m, s2, d.D, self.K, d.dt)
        par_f = d.scatter(par)
        out = d.map_reduce(exact_pass1_task, d.mu0_dt_f, par_f, roles=("gather", "keep"))
        nll = float(sum(out["gather"]))
        post = out["keep"]

        def finish():
            sums = d.map_reduce(exact_pass2_task, d.mu0_dt_f, par_f, roles="reduce",
                                per_chunk=[(p,) for p in post])["reduce"]
            SigS, ex2, Sxz, n_full, ZtZ, zsum = sums
            return exact_m_step(SigS, ex2, Sxz, n_full, ZtZ, zsum, d.N, self.n_obs, par)

        return nll, finish


class DaskFastEStep:
    """The fast E-step (:class:`helpers.ppca.fast.FastEStep`) with chunks on the workers.

    Book: {ref}`sec-scaling-ppca`
    """

    def __init__(self, data: DaskData, K: int, c):
        self.data, self.K, self.c = data, K, c
        self.cg_steps = []

    def __call__(self, W, m, s2):
        d = self.data
        par = fast_params(W, m, s2, d.D, self.K, d.dt)
        par_f = d.scatter(par)
        out = d.map_reduce(fast_pass1_task, d.mu0_dt_f, par_f, roles=("gather", "keep"))
        first, post = out["gather"], out["keep"]
        series = series_terms(W, s2, self.c, d.N, SERIES_ORDER)
        nll = float(sum(r[0] for r in first)) + 0.5 * series[3]
        self.cg_steps.append(max(r[1] for r in first))

        def finish():
            sums = d.map_reduce(fast_pass2_task, d.mu0_dt_f, par_f, roles="reduce",
                                per_chunk=[(p,) for p in post])["reduce"]
            ex2, Sxz, ZtZ, zsum = sums
            return fast_m_step(ex2, Sxz, ZtZ, zsum, series, self.c, d.N, par)

        return nll, finish


class DaskWeightedEStep:
    """The weighted E-step (:class:`helpers.ppca.exact.WeightedEStep`) on the workers.

    Book: {ref}`sec-scaling-ppca`
    """

    def __init__(self, data: DaskData, K: int, n_obs: float):
        self.data, self.K, self.n_obs = data, K, n_obs

    def __call__(self, W, m, s2):
        d = self.data
        wp = weighted_params(W, m, s2, d.D, self.K, d.dt)
        nll, A, B, wx2 = d.map_reduce(weighted_task, d.mu0_dt_f, d.scatter(wp),
                                      roles="reduce")["reduce"]
        W_new, m_new, s2_new = weighted_m_step(A, B, wx2, self.n_obs, wp)
        return nll, lambda: (W_new, m_new, s2_new)


def _scan(d: DaskData, weighted: bool, keep: bool):
    """Pass 0 on the workers: the chunk states, and the totals the fit needs."""
    D = d.D
    d.states = [tuple(c) for c in d.chunks]      # the scan's "state" is the chunk's rows
    ref = None
    if weighted:
        out = d.map_reduce(scan_weighted_task, d.dt, roles=("keep", "reduce", "gather"))
        col_sum, col_cnt, w_sum = out["reduce"]
        miss_c = d.N - col_cnt
    else:
        rest = list(range(len(d.chunks)))
        states = {}
        nobs = {}
        if keep:
            # the kept copy is centred on the first chunk's observed means, as in scan()
            first = d.map_reduce(scan_task, None, True, d.dt, roles=("keep", "gather", "gather"),
                                 k_list=[0])
            s0, cnt_c0 = first["gather"][0]
            a, b = d.chunks[0]
            cnt0 = (b - a) - cnt_c0
            ref = np.divide(s0, cnt0, out=np.zeros(D), where=cnt0 > 0).astype(d.dt)
            re = d.map_reduce(recentre_task, ref, roles=("keep", "reduce", "gather"),
                              k_list=[0], blocks=False, states=first["keep"])
            states[0], nobs[0] = re["keep"][0], re["gather"][0]
            sum0 = re["reduce"]
            rest = rest[1:]
        out = d.map_reduce(scan_task, ref, keep, d.dt, roles=("keep", "reduce", "gather"),
                           k_list=rest)
        states.update(zip(rest, out["keep"]))
        nobs.update(zip(rest, out["gather"]))
        sums = out["reduce"] if not keep else sum_parts(sum0, out["reduce"]) \
            if out["reduce"] is not None else sum0
        col_sum, miss_c = sums
        col_cnt = d.N - miss_c
        w_sum = 0.0
        out = {"keep": [states[k] for k in range(len(d.chunks))],
               "gather": [nobs[k] for k in range(len(d.chunks))]}
    d.states = out["keep"]
    star_cnt = np.concatenate(out["gather"])
    check_observed(col_cnt, star_cnt)
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
    out = d.map_reduce(subsample_task, d.mu0_dt_f, d.dt, roles=("keep", "gather"),
                       per_chunk=per, k_list=k_list)
    subs, info = out["keep"], out["gather"]
    xx = np.concatenate([i[0] for i in info])
    n_obs = float(n_s * D - sum(i[2] for i in info))
    if d.keep:
        cs_s = cnt_s = None
        col = col_sum
    else:
        cs_s = np.sum([i[1] for i in info], axis=0)[:D]
        cnt_s = n_s - np.sum([i[3] for i in info], axis=0)
        col = cs_s
    src = DaskSubsample(d, subs, k_list, [i[0].size for i in info], float(xx.sum()), col,
                        n_obs)
    W, m, s2, start_info = start_fit(src, K, rng, tol=tol)
    del src, subs, out
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

    Book: {ref}`sec-scaling-ppca`

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

