"""Judging StarNet: per-label errors, calibration of the uncertainties, a ridge baseline.

Book: {ref}`sec-starnet-results`

* :func:`label_metrics`: bias, RMSE and R^2 of each label on a split part;
* :func:`calibration`: the spread of (prediction - truth) / sigma per label, which is 1
  for calibrated uncertainties;
* :func:`fit_ridge`: ridge regression from the flux to all labels at once, the linear
  baseline on the same split. The Gram matrix of the training spectra is accumulated once
  in chunks from the memory map and every regularisation strength is one Cholesky solve,
  so the baseline costs seconds at paper scale (scikit-learn's ``Ridge`` would rebuild the
  Gram matrix for every strength).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .labels import LABEL_UNITS, label_display

__all__ = ["label_metrics", "calibration", "unit_rms_scale", "bootstrap_rmse", "RidgeBaseline",
           "fit_ridge", "label_systematics", "ESSAY_RMSE"]

#: The essay's supervised StarNet on APOGEE (validation stars, ASPCAP labels): RMSE of
#: Teff (K), logg and [Fe/H] (dex).
ESSAY_RMSE = {"TEFF": 27.0, "LOGG": 0.093, "FE_H": 0.062}


def label_metrics(pred: np.ndarray, truth: np.ndarray, names) -> pd.DataFrame:
    """Bias, RMSE and R^2 of each label (rows with a missing truth are left out).

    Book: {ref}`sec-starnet-results`

    Parameters
    ----------
    pred, truth : ndarray, shape (n, n_labels)
        Physical units; NaN in ``truth`` marks a missing label.
    names : sequence of str

    Returns
    -------
    pandas.DataFrame
        Index: label names; columns ``label`` (display name), ``unit``, ``n``, ``bias``
        (mean of pred - truth), ``rmse``, ``r2`` (1 - MSE / variance of the truth).
    """
    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 2 or pred.shape[1] != len(names):
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must both be "
                         f"(n, {len(names)})")
    rows = []
    for j, name in enumerate(names):
        ok = np.isfinite(truth[:, j]) & np.isfinite(pred[:, j])
        d = pred[ok, j] - truth[ok, j]
        var = np.var(truth[ok, j]) if ok.sum() > 1 else np.nan
        rows.append({"name": name, "label": label_display(name), "unit": LABEL_UNITS.get(name, ""),
                     "n": int(ok.sum()), "bias": float(d.mean()) if d.size else np.nan,
                     "rmse": float(np.sqrt(np.mean(d ** 2))) if d.size else np.nan,
                     "r2": float(1 - np.mean(d ** 2) / var) if var > 0 else np.nan})
    return pd.DataFrame(rows).set_index("name")


def unit_rms_scale(z: np.ndarray) -> np.ndarray:
    """Per label, the factor that gives normalised errors ``z`` unit RMS: sqrt(mean z^2).

    Book: {ref}`sec-starnet-uncertainty`

    ``z`` is (n, n_labels), NaN where a label is missing; a label with no value gets 1.
    A run's variance head and an ensemble's mixture are calibrated on the validation stars
    with it (their sigmas times this factor).
    """
    z = np.asarray(z, np.float64)
    return np.array([np.sqrt(np.mean(col[~np.isnan(col)] ** 2)) if (~np.isnan(col)).any()
                     else 1.0 for col in z.T])


def calibration(pred: np.ndarray, sigma: np.ndarray, truth: np.ndarray, names) -> pd.DataFrame:
    """How well the uncertainties describe the errors, per label.

    Book: {ref}`sec-starnet-uncertainty`

    Returns
    -------
    pandas.DataFrame
        Index: label names; ``z_std`` (standard deviation of (pred - truth) / sigma, 1 if
        calibrated), ``z_rms``, ``within_1sigma`` (fraction with \\|z\\| < 1; 0.683 for a
        Gaussian), ``median_sigma`` (physical units).
    """
    pred, sigma, truth = (np.asarray(a, np.float64) for a in (pred, sigma, truth))
    if not (pred.shape == sigma.shape == truth.shape):
        raise ValueError(f"pred {pred.shape}, sigma {sigma.shape} and truth {truth.shape} "
                         "must have the same shape")
    rows = []
    for j, name in enumerate(names):
        ok = np.isfinite(truth[:, j]) & np.isfinite(pred[:, j]) & (sigma[:, j] > 0)
        z = (pred[ok, j] - truth[ok, j]) / sigma[ok, j]
        rows.append({"name": name, "label": label_display(name), "n": int(ok.sum()),
                     "z_std": float(np.std(z)), "z_rms": float(np.sqrt(np.mean(z ** 2))),
                     "within_1sigma": float(np.mean(np.abs(z) < 1)),
                     "median_sigma": float(np.median(sigma[ok, j]))})
    return pd.DataFrame(rows).set_index("name")


def bootstrap_rmse(preds: dict, truth: np.ndarray, n_boot: int = 200, seed: int = 0) -> dict:
    """RMSE of several predictors on the same stars, resampled together over the stars.

    Book: {ref}`sec-starnet-baselines`

    Parameters
    ----------
    preds : dict of str -> ndarray, shape (n, n_labels)
        Predictions of each method (physical units).
    truth : ndarray, shape (n, n_labels)
        NaN where missing (left out of every replicate).
    n_boot : int
        Replicates; each draws n stars with replacement, the same draw for every method.
    seed : int

    Returns
    -------
    dict of str -> ndarray, shape (n_boot, n_labels)
        The RMSE of each method in each replicate: their standard deviation is the error
        bar, and differences between methods replicate by replicate compare them fairly.
    """
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    truth = np.asarray(truth, np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, truth.shape[0], size=(int(n_boot), truth.shape[0]))
    out = {}
    for name, p in preds.items():
        sq = (np.asarray(p, np.float64) - truth) ** 2
        ok = np.isfinite(sq)
        sq = np.where(ok, sq, 0)
        num = np.stack([sq[d].sum(axis=0) for d in draws])
        den = np.stack([ok[d].sum(axis=0) for d in draws])
        out[name] = np.sqrt(num / np.maximum(den, 1))
    return out


def label_systematics(truth: np.ndarray, measured: np.ndarray, teff, logg, fit_rows) -> np.ndarray:
    """The smooth part of label errors: (measured - truth) fitted as a quadratic in Teff, logg.

    Book: {ref}`sec-starnet-aspcap`

    Parameters
    ----------
    truth, measured : ndarray, shape (n, n_labels)
    teff, logg : ndarray, shape (n,)
        True Teff (K) and logg (dex) of the stars.
    fit_rows : array_like of int or bool
        Stars the fit uses (e.g. the training part); it is evaluated on all.

    Returns
    -------
    ndarray, shape (n, n_labels)
        The fitted systematic error of each label for every star (NaN-safe: missing
        measurements are left out of the fit).
    """
    tau = (np.asarray(teff, float) - 4500.0) / 500.0
    gam = np.asarray(logg, float) - 2.5
    design = np.column_stack([np.ones_like(tau), tau, gam, tau ** 2, tau * gam, gam ** 2])
    err = np.asarray(measured, float) - np.asarray(truth, float)
    fit_rows = np.asarray(fit_rows)
    rows = np.flatnonzero(fit_rows) if fit_rows.dtype == bool else fit_rows.astype(int)
    out = np.empty_like(err)
    for j in range(err.shape[1]):
        ok = rows[np.isfinite(err[rows, j])]
        coef, *_ = np.linalg.lstsq(design[ok], err[ok, j], rcond=None)
        out[:, j] = design @ coef
    return out


@dataclass
class RidgeBaseline:
    """Ridge regression from flux to labels (fitted by :func:`fit_ridge`).

    Book: {ref}`sec-starnet-baselines`

    Attributes
    ----------
    columns : ndarray of int
        Pixels used (those that vary in the training part).
    x_mean : ndarray, shape (n_columns,)
    coef : ndarray, shape (n_columns, n_labels)
        For standardised labels.
    y_mean, y_scale : ndarray, shape (n_labels,)
    alphas : ndarray
        Regularisation strengths tried.
    alpha : ndarray, shape (n_labels,)
        Strength chosen for each label on the validation part.
    val_mse : ndarray, shape (n_alphas, n_labels)
        Validation MSE of the standardised labels for every strength.
    """

    columns: np.ndarray
    x_mean: np.ndarray
    coef: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray
    alphas: np.ndarray
    alpha: np.ndarray
    val_mse: np.ndarray

    def predict(self, x, chunk: int = 4096) -> np.ndarray:
        """Labels (physical units) of spectra ``x`` (n, n_pixels), read in chunks."""
        n = x.shape[0]
        out = np.empty((n, self.coef.shape[1]))
        w = torch.from_numpy(self.coef)
        for s in range(0, n, chunk):
            xs = np.asarray(x[s:s + chunk], np.float64)[:, self.columns] - self.x_mean
            out[s:s + chunk] = (torch.from_numpy(xs) @ w).numpy()
        return out * self.y_scale + self.y_mean


def _chunks(x, rows, columns, chunk: int, dtype=np.float32):
    """Rows ``rows`` of ``x`` restricted to ``columns``, ``chunk`` rows at a time."""
    for s in range(0, rows.size, chunk):
        yield s, np.asarray(x[rows[s:s + chunk]], dtype)[:, columns]


def fit_ridge(x_train, y_train, x_val, y_val, alphas=None, chunk: int = 2048) -> RidgeBaseline:
    """Fit ridge regression on the training part, choose each label's strength on validation.

    Book: {ref}`sec-starnet-baselines`

    Parameters
    ----------
    x_train, x_val : array_like or memmap, shape (n, n_pixels)
        Flux with missing pixels filled (a :class:`SpectraSet`'s ``flux``).
    y_train, y_val : ndarray, shape (n, n_labels)
        Labels; training rows with any missing label are left out of the fit. Several label
        sets can be fitted at once by stacking their columns.
    alphas : sequence of float, optional
        Strengths relative to the mean diagonal of the Gram matrix (default 1e-4 ... 10 in
        decades).
    chunk : int
        Rows read at once.

    Returns
    -------
    RidgeBaseline

    Notes
    -----
    With more training stars than pixels the primal system (pixels x pixels, Gram matrix
    accumulated in float32 from centred chunks) is solved; with fewer, the dual one
    (stars x stars). Both give the same ridge solution.
    """
    y_train = np.asarray(y_train, np.float64)
    y_val = np.asarray(y_val, np.float64)
    complete = np.all(np.isfinite(y_train), axis=1)
    if complete.sum() < 10:
        raise ValueError(f"only {complete.sum()} training stars have every label")
    rows = np.flatnonzero(complete)
    yt = y_train[rows]
    # pixels that never vary (always missing, e.g. between APOGEE's chips) carry nothing
    first = np.asarray(x_train[rows[:1024]], np.float32)
    columns = np.flatnonzero(np.ptp(first, axis=0) > 0)
    x_mean = np.zeros(columns.size)
    for _, xs in _chunks(x_train, rows, columns, chunk, np.float64):
        x_mean += xs.sum(axis=0)
    x_mean /= rows.size
    y_mean, y_scale = yt.mean(axis=0), yt.std(axis=0)
    y_scale[y_scale == 0] = 1
    zt = torch.from_numpy((yt - y_mean) / y_scale)
    rel = np.asarray(np.logspace(-4, 1, 6) if alphas is None else alphas, float)
    if rel.ndim != 1 or rel.size < 1 or np.any(~np.isfinite(rel)) or np.any(rel <= 0):
        raise ValueError(f"alphas must be positive numbers, got {alphas!r}")
    dual = rows.size < columns.size
    if dual:
        xc = torch.from_numpy(np.asarray(x_train[rows], np.float64)[:, columns] - x_mean)
        g = xc @ xc.T
        scale = float(torch.diagonal(g).sum()) / columns.size
    else:
        g = torch.zeros((columns.size, columns.size), dtype=torch.float64)
        xty = torch.zeros((columns.size, zt.shape[1]), dtype=torch.float64)
        m32 = torch.from_numpy(x_mean.astype(np.float32))
        for s, xs in _chunks(x_train, rows, columns, chunk):
            xs = torch.from_numpy(xs) - m32
            g += (xs.T @ xs).double()
            xty += xs.double().T @ zt[s:s + chunk]
        scale = float(torch.diagonal(g).mean())
    zv = (y_val - y_mean) / y_scale
    xv = np.asarray(x_val, np.float64)[:, columns] - x_mean
    coefs, mse = [], []
    for a in rel:
        m = g.clone()
        m.diagonal().add_(a * scale)
        fac, info = torch.linalg.cholesky_ex(m)
        del m
        if int(info) != 0:       # too weak to overcome the rounding of the Gram matrix
            coefs.append(None)
            mse.append(np.full(zv.shape[1], np.inf))
            continue
        w = xc.T @ torch.cholesky_solve(zt, fac) if dual else torch.cholesky_solve(xty, fac)
        coefs.append(w.numpy())
        r = xv @ coefs[-1] - zv
        mse.append(np.nanmean(r ** 2, axis=0))
    mse = np.asarray(mse)
    if not np.isfinite(mse).any():
        raise ValueError("ridge: no regularisation strength gave a positive-definite system; "
                         "try larger alphas")
    best = np.argmin(np.where(np.isfinite(mse), mse, np.inf), axis=0)
    coef = np.stack([coefs[b][:, j] for j, b in enumerate(best)], axis=1)
    return RidgeBaseline(columns=columns, x_mean=x_mean, coef=coef, y_mean=y_mean,
                         y_scale=y_scale, alphas=rel * scale, alpha=rel[best] * scale,
                         val_mse=mse)
