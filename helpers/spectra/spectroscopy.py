"""Small measurements on spectra: equivalent widths, pixels per resolution element, noise.

Book: {ref}`sec-measuring-a-line`
"""

from __future__ import annotations

import numpy as np

__all__ = ["equivalent_width", "pixels_per_resolution_element", "add_noise"]

def equivalent_width(wavelength, flux, window) -> np.ndarray:
    """Equivalent width of the absorption in ``window``: the integral of (1 - flux) dlambda.

    Book: {ref}`sec-measuring-a-line`

    Parameters
    ----------
    wavelength : ndarray, shape (n_pixels,)
        Wavelength in Angstrom, increasing.
    flux : ndarray, shape (n_pixels,) or (n_stars, n_pixels)
        Continuum-normalised flux.
    window : tuple of float
        (start, end) in Angstrom.

    Returns
    -------
    ndarray, shape () or (n_stars,)
        Equivalent width in Angstrom (positive for absorption).
    """
    wavelength = np.asarray(wavelength, dtype=float)
    flux = np.asarray(flux, dtype=float)
    lo, hi = window
    if not lo < hi:
        raise ValueError(f"window must be (start, end) with start < end, got {window}")
    if flux.shape[-1] != wavelength.size:
        raise ValueError(f"flux has {flux.shape[-1]} pixels but wavelength has {wavelength.size}")
    sel = (wavelength >= lo) & (wavelength <= hi)
    if sel.sum() < 2:
        raise ValueError(f"window {window} holds fewer than two pixels of the grid")
    return np.trapezoid(1.0 - flux[..., sel], wavelength[sel], axis=-1)


def pixels_per_resolution_element(resolution: float, dlog10_lambda: float) -> float:
    """How many pixels of a log-uniform grid one resolution element (FWHM = lambda / R) spans.

    Book: {ref}`sec-apogee-grid`

    Parameters
    ----------
    resolution : float
        Resolving power R.
    dlog10_lambda : float
        Grid step in log10(wavelength / Angstrom), e.g. 6e-6 for APOGEE.
    """
    if resolution <= 0 or dlog10_lambda <= 0:
        raise ValueError("resolution and dlog10_lambda must be positive")
    return 1.0 / (resolution * np.log(10.0) * dlog10_lambda)


def add_noise(flux, snr, rng, valid=None):
    """Gaussian noise at signal-to-noise ``snr`` per pixel: returns (noisy flux, error).

    Book: {ref}`sec-spectra-noise`

    Parameters
    ----------
    flux : ndarray, shape (n_stars, n_pixels)
        Noise-free normalised flux.
    snr : float or ndarray, shape (n_stars,)
        Signal-to-noise ratio per pixel; the error is ``flux / snr`` (photon-noise-like).
    rng : numpy.random.Generator
        Seeded generator (same seed, same noise).
    valid : ndarray of bool, shape (n_pixels,), optional
        Pixels that carry data; others stay 0 with error 0.
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    snr = np.broadcast_to(np.asarray(snr, dtype=np.float32), (flux.shape[0],))
    if np.any(~np.isfinite(snr)) or np.any(snr <= 0):
        raise ValueError("snr must be finite and positive")
    error = np.abs(flux) / snr[:, None]
    noisy = flux + error * rng.standard_normal(flux.shape, dtype=np.float32)
    if valid is not None:
        noisy[:, ~valid] = 0.0
        error[:, ~valid] = 0.0
    return noisy, error
