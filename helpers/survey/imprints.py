"""Measuring the synthetic survey's imprints against its ground truth.

Book: {ref}`ch-survey`

The survey's generator (:mod:`helpers.survey.generate`) knows every star's noise-free stellar
spectrum; subtracting it from the observed one leaves only what is *not* the star's
chemistry: interstellar bands, telluric and sky residuals, the plate pattern,
persistence and noise.  These functions measure those imprints, so chapter 2 can check
each one against the truth it was generated from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from helpers import apogee
from helpers.constants import C_KMS
from helpers.survey.lines import sky_lines, telluric_lines
from helpers.survey.spectrum import synthesize_apogee

__all__ = ["noise_free_spectra", "band_equivalent_width", "velocity_binned_residuals",
           "observed_frame_mask", "plate_composition", "mismatch_of"]


def noise_free_spectra(survey, rows, include_mismatch: bool = True) -> np.ndarray:
    """The noise-free rest-frame stellar spectra of some stars of a synthetic survey.

    Book: {ref}`sec-truth`

    The Cannon spectrum of the star's true Teff, logg and [Fe/H] with its true element
    responses and (by default) its model mismatch -- the spectrum before any
    interstellar, atmospheric or instrumental imprint and before noise.

    Parameters
    ----------
    survey : helpers.survey.Survey
    rows : array_like of int, shape (n,)
        allStar rows.
    include_mismatch : bool
        Add the survey's model-mismatch term (:mod:`helpers.survey.mismatch`); without it the
        spectrum is what the Cannon plus the chemistry predicts.

    Returns
    -------
    ndarray, shape (n, 8575), float32
        Normalised flux, 0 outside the chips.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or rows.size == 0:
        raise ValueError(f"rows must be a non-empty 1-d array of allStar rows, got shape {rows.shape}")
    t = survey.truth_arrays
    if rows.min() < 0 or rows.max() >= t["TEFF"].size:
        raise ValueError(f"rows must lie in [0, {t['TEFF'].size}), got {rows.min()}..{rows.max()}")
    return synthesize_apogee(t["TEFF"][rows], t["LOGG"][rows], t["FE_H"][rows], t["X_FE"][rows],
                             element_response=survey.params.element_response,
                             mismatch_amplitude=(survey.params.mismatch_amplitude
                                                 if include_mismatch else 0.0))


def band_equivalent_width(flux, error, model, centre: float, shift_kms, half_width: float = 6.0,
                          max_error: float = 0.05) -> np.ndarray:
    """Equivalent width of an absorption band measured against each star's own model.

    Book: {ref}`sec-dibs`

    :math:`W = \\sum_j (1 - f_j / m_j)\\, \\Delta\\lambda_j` over the pixels within
    ``half_width`` of the band centre Doppler-shifted by ``shift_kms``; pixels with an
    error above ``max_error`` are skipped and the sum is rescaled to the full window.

    Parameters
    ----------
    flux, error, model : ndarray, shape (n, 8575)
        Observed flux, its error, and the noise-free stellar spectrum (normalised).
    centre : float
        Rest wavelength of the band (vacuum A).
    shift_kms : array_like, shape (n,)
        Velocity of the band in each star's rest frame (km/s).
    half_width : float
        Half-width of the window (A).
    max_error : float
        Pixels with a larger error are not used.

    Returns
    -------
    ndarray, shape (n,)
        Equivalent width (A); NaN where fewer than half of the window's pixels are usable.
    """
    flux, error, model = (np.asarray(a, float) for a in (flux, error, model))
    if not flux.shape == error.shape == model.shape or flux.ndim != 2:
        raise ValueError(f"flux, error and model must share one 2-d shape, got "
                         f"{flux.shape}, {error.shape}, {model.shape}")
    shift = np.broadcast_to(np.asarray(shift_kms, float), (flux.shape[0],))
    wave = apogee.wavelength_grid()
    dlam = wave * np.log(10) * apogee.CDELT1
    out = np.full(flux.shape[0], np.nan)
    for i in range(flux.shape[0]):
        c = centre * (1 + shift[i] / C_KMS)
        lo, hi = np.searchsorted(wave, [c - half_width, c + half_width])
        good = (error[i, lo:hi] <= max_error) & (model[i, lo:hi] > 0.05)
        if good.sum() < 0.5 * (hi - lo):
            continue
        depth = 1 - flux[i, lo:hi][good] / model[i, lo:hi][good]
        out[i] = np.sum(depth * dlam[lo:hi][good]) * (hi - lo) / good.sum()
    return out


def velocity_binned_residuals(residual, weight, vhelio, centre: float, half_width: float = 4.0,
                              bins=None) -> tuple:
    """Mean residual around an observed-frame line, in bins of the stars' velocity.

    Book: {ref}`sec-atmosphere`

    A sky or telluric line sits at a fixed *observed* wavelength; in a star's rest frame it
    appears at ``centre / (1 + v / c)``.  Averaging the (signed) residuals of stars with
    similar velocities shows the line move across the rest-frame grid.

    Parameters
    ----------
    residual : ndarray, shape (n, 8575)
        Observed minus noise-free flux (rest frame).
    weight : ndarray, shape (n,)
        Multiplies each star's residual before averaging (e.g. the sign of its injected
        residual amplitude, so that residuals of both signs add up).
    vhelio : ndarray, shape (n,)
        Heliocentric radial velocities (km/s).
    centre : float
        Observed vacuum wavelength of the line (A).
    half_width : float
        Half-width (A) of the rest-frame window returned.
    bins : array_like, optional
        Velocity bin edges (km/s); default 20 km/s bins over -120..120.

    Returns
    -------
    wave : ndarray, shape (n_pix,)
        Rest-frame wavelengths of the window (A).
    v_centres : ndarray, shape (n_bins,)
    image : ndarray, shape (n_bins, n_pix)
        Mean weighted residual (NaN for an empty bin).
    """
    residual = np.asarray(residual, float)
    vhelio = np.asarray(vhelio, float)
    weight = np.asarray(weight, float)
    if residual.ndim != 2 or residual.shape[0] != vhelio.size or vhelio.size != weight.size:
        raise ValueError("residual must be (n, n_pix) with n matching vhelio and weight")
    bins = np.arange(-120, 121, 20.0) if bins is None else np.asarray(bins, float)
    wave = apogee.wavelength_grid()
    lo, hi = np.searchsorted(wave, [centre - half_width, centre + half_width])
    which = np.digitize(vhelio, bins) - 1
    image = np.full((bins.size - 1, hi - lo), np.nan)
    for b in range(bins.size - 1):
        sel = which == b
        if sel.any():
            image[b] = np.mean(residual[sel, lo:hi] * weight[sel, None], axis=0)
    return wave[lo:hi], 0.5 * (bins[1:] + bins[:-1]), image


def observed_frame_mask(vhelio, half_width: float = 1.2) -> np.ndarray:
    """Pixels near any telluric or sky line, in each star's rest frame.

    Book: {ref}`sec-noise`

    Parameters
    ----------
    vhelio : array_like, shape (n,)
        Radial velocities (km/s); a line observed at lambda lands at lambda / (1 + v/c).
    half_width : float
        Half-width (A) masked around each line (the lines' Gaussian sigma is ~0.3 A).

    Returns
    -------
    ndarray of bool, shape (n, 8575)
        True within ``half_width`` of a telluric (:func:`helpers.survey.lines.telluric_lines`)
        or sky (:func:`helpers.survey.lines.sky_lines`) line.
    """
    v = np.atleast_1d(np.asarray(vhelio, float))
    if v.ndim != 1 or not np.all(np.isfinite(v)):
        raise ValueError("vhelio must be a 1-d array of finite velocities (km/s)")
    wave = apogee.wavelength_grid()
    lines = np.r_[telluric_lines().wave_vac.to_numpy(float), sky_lines().wave_vac.to_numpy(float)]
    rest = lines[None, :] / (1 + v[:, None] / C_KMS)
    lo = np.searchsorted(wave, rest - half_width)
    hi = np.searchsorted(wave, rest + half_width)
    out = np.zeros((v.size, wave.size), bool)
    for i in range(v.size):
        for a, b in zip(lo[i], hi[i]):
            out[i, a:b] = True
    return out


def plate_composition(truth) -> pd.DataFrame:
    """Who shares a plate with cluster stars: one row per plate holding any.

    Book: {ref}`sec-clusters`

    Parameters
    ----------
    truth : pandas.DataFrame
        ``Survey.truth`` (PLATE_IDX, CLUSTER, IS_MEMBER).

    Returns
    -------
    pandas.DataFrame
        plate, n_cluster_stars (members and contaminants towards clusters), n_members,
        n_field, clusters (comma-separated names), field_fraction.
    """
    plate = truth.PLATE_IDX.to_numpy()
    towards = (truth.CLUSTER != "").to_numpy()
    member = truth.IS_MEMBER.to_numpy(bool)
    rows = []
    for q in np.unique(plate[towards]):
        on = plate == q
        names = sorted(set(truth.CLUSTER.to_numpy()[on & towards]))
        rows.append(dict(plate=int(q), n_cluster_stars=int((on & towards).sum()),
                         n_members=int((on & member).sum()), n_field=int((on & ~towards).sum()),
                         clusters=", ".join(names)))
    df = pd.DataFrame(rows)
    df["field_fraction"] = df.n_field / (df.n_field + df.n_cluster_stars)
    return df


def mismatch_of(survey, rows) -> np.ndarray:
    """The model-mismatch term of some stars (the truth: ``MISMATCH_COEF``), (n, 8575).

    Book: {ref}`sec-mismatch`

    Returns
    -------
    ndarray, shape (n, 8575), float32
        What the survey added to the Cannon + chemistry spectrum of each star.
    """
    rows = np.asarray(rows, dtype=np.int64)
    return (noise_free_spectra(survey, rows, include_mismatch=True)
            - noise_free_spectra(survey, rows, include_mismatch=False))
