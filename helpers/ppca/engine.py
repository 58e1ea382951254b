"""The PPCA fit: scan, start, EM iterations, canonical form.

Book: {ref}`sec-rsca-ppca`

:func:`fit_em` runs a fit in four stages, each in its own module: pass 0 over the data
(:func:`helpers.ppca.state.scan`), the start (:func:`helpers.ppca.start.initial_parameters`),
EM with an E-step strategy (:class:`helpers.ppca.exact.ExactEStep`,
:class:`helpers.ppca.exact.WeightedEStep` or :class:`helpers.ppca.fast.FastEStep`) until the
relative change of the objective falls below ``tol``, and the canonical rotation of the
result.  Chunks are visited in a fixed order and per-chunk results summed in that order in
float64, so the same ``random_state`` gives the same result bit for bit.
"""
from __future__ import annotations

import time

import numpy as np

from helpers.ppca.exact import ExactEStep, WeightedEStep
from helpers.ppca.fast import FastEStep
from helpers.ppca.linalg import max_angle_deg
from helpers.ppca.start import initial_parameters
from helpers.ppca.state import scan

__all__ = ["fit_em", "em_iterations", "canonical_form"]


def fit_em(X, mask, weights, *, n_components, tol, max_iter, random_state, chunk_size, dtype,
           n_init_rows, verbose, method) -> dict:
    """Fit PPCA by EM on checked arrays; returns the fitted attributes of :class:`PPCA`.

    Book: {ref}`sec-rsca-ppca`

    Parameters are those of :class:`helpers.ppca.PPCA` (already validated) and the arrays of
    :meth:`helpers.ppca.PPCA.fit` (already checked for shapes and dtypes).

    Returns
    -------
    dict
        ``components_, W_, explained_variance_, noise_variance_, mean_, n_iter_, history_,
        angle_history_, converged_, timings_, n_features_in_, weighted_, start_info_`` and,
        with ``method="fast"``, ``cg_steps_``.
    """
    N, D = X.shape
    K = int(n_components)
    dt = np.dtype(dtype)
    t0 = time.perf_counter()
    timings = {}
    # Without weights, when the start would copy every star anyway, that centred copy
    # (missing entries 0) is kept and the E-steps work on it instead of re-reading X.
    keep = weights is None and min(N, int(n_init_rows)) >= N
    state = scan(X, mask, weights, dt, chunk_size, keep)
    if K >= min(N, D):
        raise ValueError(f"n_components={K} is too large for X of shape {X.shape}: "
                         f"need n_components < min(n_stars, n_pixels) = {min(N, D)}")
    if np.any(state.col_cnt <= K) and weights is not None:
        few = np.flatnonzero(state.col_cnt <= K)
        raise ValueError(f"weighted fit: {few.size} pixel column(s) are observed in <= "
                         f"n_components={K} stars (first: {few[:5].tolist()})")
    timings["scan"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    W, m, s2, start_info = initial_parameters(state, K, n_init_rows, random_state, tol,
                                              chunk_size)
    timings["start"] = time.perf_counter() - t1

    if weights is not None:
        step = WeightedEStep(state, K)
    elif method == "fast":
        step = FastEStep(state, K)
    else:
        step = ExactEStep(state, K)
    W, m, s2, history, angles, it_times, converged = em_iterations(
        step, W, m, s2, tol=tol, max_iter=max_iter, verbose=verbose)
    timings["iterations"] = it_times
    timings["total"] = time.perf_counter() - t0

    fitted = canonical_form(W, s2, state.mu0 + m)
    fitted.update(n_iter_=len(angles), history_=np.asarray(history),
                  angle_history_=np.asarray(angles), converged_=converged, timings_=timings,
                  n_features_in_=D, weighted_=weights is not None, start_info_=start_info)
    if isinstance(step, FastEStep):
        fitted["cg_steps_"] = step.cg_steps
    return fitted


def em_iterations(step, W, m, s2, *, tol, max_iter, verbose=False):
    """EM from ``(W, m, sigma2)`` until the objective settles or ``max_iter`` M-steps.

    Book: {ref}`sec-rsca-ppca`

    Each iteration calls ``nll, finish = step(W, m, s2)``; EM stops as soon as
    ``|L_t - L_{t-1}| <= tol * |L_t|`` (the last iteration then skips ``finish``, the
    M-step pass) or after ``max_iter`` M-steps.

    Returns
    -------
    W, m, s2 : the final parameters
    history : list of float
        Objective after 0, 1, ... M-steps.
    angles : list of float
        Largest principal angle (degrees) between successive subspaces, one per M-step.
    it_times : list of float
        Wall time of each iteration (s).
    converged : bool
    """
    history, angles, it_times = [], [], []
    converged = False
    n_iter = 0
    while True:
        ti = time.perf_counter()
        nll, finish = step(W, m, s2)
        history.append(nll)
        if verbose:
            print(f"PPCA iter {n_iter:4d}  nll {nll:.10e}  sigma2 {s2:.4e}", flush=True)
        if len(history) >= 2 and abs(history[-1] - history[-2]) <= tol * abs(history[-1]):
            converged = True
            it_times.append(time.perf_counter() - ti)
            break
        if n_iter >= max_iter:
            it_times.append(time.perf_counter() - ti)
            break
        W_new, m_new, s2_new = finish()
        angles.append(max_angle_deg(W, W_new))
        W, m, s2 = W_new, m_new, s2_new
        n_iter += 1
        it_times.append(time.perf_counter() - ti)
    return W, m, s2, history, angles, it_times, converged


def canonical_form(W, s2, mean) -> dict:
    """Orthonormal axes by decreasing variance, signs fixed, of a fitted ``W``.

    Book: {ref}`sec-rsca-ppca`

    Returns
    -------
    dict
        ``components_`` (K, D), ``W_`` (D, K) = ``components_.T * sqrt(explained - s2)``,
        ``explained_variance_`` (K,), ``noise_variance_``, ``mean_`` (D,).  The sign of each
        axis makes its largest-magnitude entry positive.
    """
    K = W.shape[1]
    U, sv, _ = np.linalg.svd(W, full_matrices=False)
    signs = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(K)])
    signs[signs == 0] = 1
    U = U * signs
    return {"components_": U.T.copy(), "W_": U * sv, "explained_variance_": sv ** 2 + s2,
            "noise_variance_": float(s2), "mean_": mean}
