"""Threads, BLAS threads and reusable chunk buffers of the PPCA engine.

Book: {ref}`sec-rsca-ppca`

The engine runs whole chunks of stars in a small pool of Python threads, each with one BLAS
thread: NumPy releases the GIL in its products, LAPACK calls and element-wise loops, so the
chunks run in parallel, and results come back in submission order (sums over them do not
depend on the thread count).
"""
from __future__ import annotations

import contextlib
import os
import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["blas_threads", "n_workers", "BufferPool", "group_mapper"]


try:  # scikit-learn depends on threadpoolctl
    from threadpoolctl import ThreadpoolController as _ThreadpoolController
except ImportError:  # pragma: no cover
    _ThreadpoolController = None


_BLAS = {}


def blas_threads(n):
    """Context manager: BLAS on ``n`` threads (``None``: the count found at import time).

    Book: {ref}`sec-rsca-ppca`

    The engine runs its small products and the per-star LAPACK calls on one BLAS thread (in
    its own pool of Python threads) and only the large chunk GEMMs multi-threaded: on a busy
    machine a multi-threaded BLAS spends far longer synchronising its threads on small
    problems than computing.
    """
    if _ThreadpoolController is None:
        return contextlib.nullcontext()
    if "ctl" not in _BLAS:
        ctl = _ThreadpoolController()
        _BLAS["ctl"] = ctl
        _BLAS["n"] = max([i.get("num_threads", 1) for i in ctl.info()
                          if i.get("user_api") == "blas"] or [1])
    return _BLAS["ctl"].limit(limits=_BLAS["n"] if n is None else n, user_api="blas")


_POOL = None


def n_workers():
    """Threads of the pool: the CPUs this process may use, at most 4.

    Book: {ref}`sec-rsca-ppca`
    """
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        ncpu = os.cpu_count() or 1
    return max(1, min(ncpu, 4))


class BufferPool:
    """One reusable chunk buffer per thread of the pool (see :func:`group_mapper`).

    Book: {ref}`sec-rsca-ppca`
    """

    def __init__(self, shape, dtype):
        self._free = queue.SimpleQueue()
        for _ in range(n_workers()):
            self._free.put(np.zeros(shape, dtype=dtype))

    @contextlib.contextmanager
    def borrow(self, n):
        """The first ``n`` rows of a free buffer, handed back when the block ends."""
        b = self._free.get()
        try:
            yield b[:n]
        finally:
            self._free.put(b)


def group_mapper():
    """``map`` over a pool of threads when several cores are available, else ``map``.

    Book: {ref}`sec-rsca-ppca`

    Used for the chunks of an E-step and for the groups of stars of the start's imputation.
    NumPy releases the GIL in its products, LAPACK calls and element-wise loops, so the work
    runs in parallel.  Results come back in submission order and are summed in that order,
    so the result does not depend on the thread count.
    """
    global _POOL
    n = n_workers()
    if n < 2:
        return map
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ppca")
    return _POOL.map
