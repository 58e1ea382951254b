"""Flux errors in PPCA: the error-aware representation, on a subsample of the field.

Book: {ref}`sec-rsca-errors`

The paper's PPCA treats every observed pixel as equally noisy.  The weighted variant
(:class:`helpers.ppca.PPCA` with ``weights``) uses each pixel's flux error, in the fit and in
the projection, at about K/2 times the cost per iteration; so the comparison runs on
subsamples: the basis is fitted on ``fit_rows`` field stars, and the representation (the
sphering and the doppelganger candidates) uses ``eval_rows`` field stars.  Both variants
see exactly the same stars.
"""
from __future__ import annotations

import numpy as np

from helpers.ppca.model import PPCA
from helpers.rsca.representation import (PPCA_TOL, Representation, inverse_variance,
                                         ppca_coordinates, read_rows)

__all__ = ["subsample_runs"]


def subsample_runs(inputs, error, n_components: int, fit_rows, eval_rows, *, n_runs: int = 2,
                   seed: int = 0, weighted: bool = False, tol: float = PPCA_TOL) -> list:
    """PPCA runs fitted on some field stars, representing others, with or without flux errors.

    Book: {ref}`sec-rsca-errors`

    Parameters
    ----------
    inputs : helpers.rsca.pipeline.RscaInputs
    error : array_like, shape (n_allstar, 8575)
        Flux errors of every allStar row (``open_source(source)[2]``).
    n_components : int
        K.
    fit_rows : array_like of int
        Field stars (indices into ``inputs.field_flux``) the basis is fitted on.
    eval_rows : array_like of int
        Field stars represented (the ``field`` of each run).
    n_runs : int
        PPCA runs, start seeds ``seed ...``.
    seed : int
    weighted : bool
        Use the inverse-variance weights of the flux errors (error-aware PPCA).
    tol : float
        EM tolerance.

    Returns
    -------
    list of Representation
        ``field``: coordinates of ``eval_rows``; ``cluster``: of every member.
    """
    fit_rows, eval_rows = np.sort(np.asarray(fit_rows)), np.asarray(eval_rows)
    cols = np.flatnonzero(inputs.pixel_mask)
    F = read_rows(inputs.field_flux, fit_rows, cols)
    O = read_rows(inputs.field_observed, fit_rows, cols, dtype=bool)
    W = inverse_variance(read_rows(error, inputs.field_rows[fit_rows], cols), O) if weighted else None
    err = error if weighted else None
    runs = []
    for s in range(int(seed), int(seed) + int(n_runs)):
        model = PPCA(int(n_components), tol=tol, random_state=s).fit(F, mask=O, weights=W)
        field = ppca_coordinates(model, inputs.field_flux, inputs.field_observed, eval_rows, cols,
                                 error=err, error_rows=None if err is None else inputs.field_rows[eval_rows])
        cluster = ppca_coordinates(model, inputs.cluster_flux, inputs.cluster_observed, None, cols,
                                   error=err, error_rows=None if err is None else inputs.cluster_rows)
        runs.append(Representation(field, cluster, model.components_.astype(np.float32),
                                   np.asarray(model.explained_variance_, float),
                                   float(model.noise_variance_),
                                   {"K": int(n_components), "seed": s, "weighted": bool(weighted),
                                    "n_fit": int(fit_rows.size), "n_iter": int(model.n_iter_)}))
    return runs
