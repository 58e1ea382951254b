"""Probabilistic PCA with missing pixels: step 1 of RSCA.

Book: {ref}`sec-rsca-ppca`

``PPCA`` (the estimator, :mod:`helpers.ppca.model`) and ``fit_ppca``; the engine behind
them, one concept per module:

=============================  ==========================================================
:mod:`helpers.ppca.model`      the estimator: parameters, checks, ``fit``, ``transform``
:mod:`helpers.ppca.engine`     the fit: scan, start, EM iterations, canonical form
:mod:`helpers.ppca.state`      pass 0 and what a fit holds across passes (``FitState``)
:mod:`helpers.ppca.start`      the start: a rank-K fit of a subsample, self-imputed
:mod:`helpers.ppca.exact`      the exact E-steps (missing pixels latent; weighted)
:mod:`helpers.ppca.fast`       the fast E-step (conjugate gradients and a series)
:mod:`helpers.ppca.layout`     where each star's missing pixels are
:mod:`helpers.ppca.chunks`     reading the data chunk by chunk
:mod:`helpers.ppca.linalg`     small dense linear algebra
:mod:`helpers.ppca.threads`    thread pool, BLAS threads, chunk buffers
:mod:`helpers.ppca.dask_engine` the same fit on a dask.array, chunks on a Dask cluster
=============================  ==========================================================
"""
from helpers.ppca.model import ENGINE_VERSION, PPCA, fit_ppca

__all__ = ["PPCA", "fit_ppca", "ENGINE_VERSION"]
