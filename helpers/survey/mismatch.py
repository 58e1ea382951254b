"""Model mismatch: what neither the Cannon nor the chemical model explains.

Book: {ref}`sec-mismatch`

Real spectra differ from any model by 1-2 % with structure (the Cannon alone misses the
Arcturus atlas by 1.55 % RMS, chapter 2). The survey gives every star an error of its
line depths that varies smoothly with its labels, as a model atmosphere's would:

.. math::

    m(\\lambda) = A\\,\\big(1 - f_{\\rm Cannon}(\\lambda)\\big)
        \\sum_{j=1}^{J} c_j(T_{\\rm eff}, \\log g, [{\\rm Fe/H}])\\, e_j(\\lambda),

with J fixed patterns :math:`e_j` (white noise smoothed to the width of a line, unit
RMS), coefficients :math:`c_j` that are fixed random quadratic polynomials in the
scaled labels, and A set so that the median RMS over the chips is ``amplitude`` for the
giants of the RSCA box (real DR17 labels). Two stars with the same labels share it
exactly, two random giants of the box about half of it; it is part of the truth
(:func:`mismatch_coefficients`).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.ndimage import gaussian_filter1d

from helpers.survey.chemistry import load_dr17_giant_labels

__all__ = ["N_PATTERNS", "TYPICAL_GIANT", "mismatch_coefficients", "mismatch_patterns",
           "model_mismatch", "mismatch_scale"]

#: Number of spectral patterns J.
N_PATTERNS = 8
#: Labels at which the mismatch RMS equals the requested amplitude.
TYPICAL_GIANT = (4500.0, 2.5, -0.2)
_SEED = 1955


def mismatch_coefficients(teff, logg, feh) -> np.ndarray:
    """:math:`c_j` of each star, shape (n, N_PATTERNS), float32.

    Book: {ref}`sec-mismatch`

    Quadratic in t = (Teff - 4500)/500, g = logg - 2.5, z = [Fe/H] + 0.2 with fixed
    standard-normal coefficients (seed 1955), so the mismatch changes across the label
    space on the scale of a few hundred kelvin.
    """
    t = (np.atleast_1d(np.asarray(teff, float)) - 4500.0) / 500.0
    g = np.atleast_1d(np.asarray(logg, float)) - 2.5
    z = np.atleast_1d(np.asarray(feh, float)) + 0.2
    terms = np.stack([np.ones_like(t), t, g, z, t * t, t * g, g * g, t * z], axis=1)
    coef = np.random.default_rng(_SEED).standard_normal((terms.shape[1], N_PATTERNS))
    coef[1:4] *= 1.2   # linear terms: two random giants of the RSCA box share about half
    coef[4:] *= 0.5    # of their mismatch (median correlation ~0.6)
    return (terms @ coef / np.sqrt(N_PATTERNS)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def mismatch_patterns(n_pixels: int, width_pixels: float) -> np.ndarray:
    """The patterns :math:`e_j`, shape (N_PATTERNS, n_pixels), float32, unit RMS.

    Book: {ref}`sec-mismatch`
    """
    rng = np.random.default_rng([_SEED, int(n_pixels)])
    e = gaussian_filter1d(rng.standard_normal((N_PATTERNS, int(n_pixels))), width_pixels,
                          axis=1, mode="wrap")
    e /= e.std(axis=1, keepdims=True)
    return e.astype(np.float32)


def model_mismatch(teff, logg, feh, cannon_flux, amplitude: float, scale: float,
                   valid=None, width_pixels: float = 1.5) -> np.ndarray:
    """The mismatch term :math:`m(\\lambda)` of each star, shape (n, n_pix), float32.

    Book: {ref}`sec-mismatch`

    Parameters
    ----------
    teff, logg, feh : array_like, shape (n,)
        True labels.
    cannon_flux : ndarray, shape (n, n_pix)
        The stars' Cannon spectra on the instrument's grid (sets where lines are).
    amplitude : float
        Median RMS over valid pixels for giants of the RSCA box (fraction of the continuum).
    valid : ndarray of bool, shape (n_pix,), optional
        Pixels with data (0 elsewhere).
    width_pixels : float
        Gaussian smoothing of the patterns (pixels; 1.5 = a line at APOGEE's sampling).
    scale : float
        :func:`mismatch_scale` of the instrument.
    """
    cannon_flux = np.asarray(cannon_flux, np.float32)
    n_pix = cannon_flux.shape[1]
    if amplitude == 0:
        return np.zeros_like(cannon_flux)
    e = mismatch_patterns(n_pix, float(width_pixels))
    out = mismatch_coefficients(teff, logg, feh) @ e
    out *= np.float32(1.0) - cannon_flux
    out *= np.float32(amplitude * scale)
    if valid is not None:
        out[:, ~np.asarray(valid, bool)] = 0
    return out


_SCALES: dict = {}


def mismatch_scale(instrument, width_pixels: float = 1.5) -> float:
    """1 / median RMS of the unscaled mismatch of 300 DR17 giants of the RSCA box (a fixed
    random subset of ``data/dr17_giant_labels.csv``) on an instrument's grid.

    Book: {ref}`sec-mismatch`

    Parameters
    ----------
    instrument : helpers.spectra.cannon.InstrumentModel
        Its Cannon spectrum of the typical giant sets where the lines are.
    """
    key = (instrument.name, instrument.resolution, instrument.wavelength.size,
           float(instrument.wavelength[0]), float(width_pixels))
    if key not in _SCALES:
        g = load_dr17_giant_labels()
        box = np.flatnonzero((g["teff"] > 4000) & (g["teff"] < 5000) & (g["logg"] > 1.5)
                             & (g["logg"] < 3.0))
        pick = np.random.default_rng(_SEED).choice(box, size=min(300, box.size), replace=False)
        t, lg, z = g["teff"][pick], g["logg"][pick], g["feh"][pick]
        f = instrument.flux(t, lg, z)
        m = (mismatch_coefficients(t, lg, z)
             @ mismatch_patterns(instrument.wavelength.size, float(width_pixels))) * (1.0 - f)
        rms = np.sqrt(np.mean(m[:, instrument.valid] ** 2, axis=1))
        _SCALES[key] = float(1.0 / np.median(rms))
    return _SCALES[key]
