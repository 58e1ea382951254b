"""The line lists behind the survey's spectra and their optical-depth templates.

Book: {ref}`sec-spectrum-model`

Element lines (``data/element_lines.csv``), the injected diffuse interstellar bands
(``data/dibs.csv``), telluric and sky lines (``data/telluric_lines.csv``,
``data/sky_lines.csv``), and Gaussian templates of them on the APOGEE and NIRSpec grids.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from helpers import apogee
from helpers.paths import data_dir
from helpers.spectra.cannon import nirspec_grid
from helpers.survey import chemistry as chem

__all__ = ["load_element_lines", "true_dib_windows", "telluric_lines", "sky_lines",
           "element_templates", "observed_frame_templates"]


def _read_table(name: str) -> pd.DataFrame:
    p = data_dir() / name
    if not p.is_file():
        raise FileNotFoundError(f"table {p} not found")
    return pd.read_csv(p, comment="#")


@functools.lru_cache(maxsize=1)
def load_element_lines() -> pd.DataFrame:
    """Line positions behind the element responses (``data/element_lines.csv``).

    Book: {ref}`sec-spectrum-model`

    Returns
    -------
    pandas.DataFrame
        element, kind ('atomic'/'molecular'), species, center_vac (A), window_start_vac,
        window_end_vac (A), depth (Arcturus depth in the window), used_in_dr17.
    """
    return _read_table("element_lines.csv")


def true_dib_windows() -> pd.DataFrame:
    """The injected diffuse interstellar bands (``data/dibs.csv``).

    Book: {ref}`sec-dibs`

    Returns
    -------
    pandas.DataFrame
        name, center_vac (A, ISM rest frame), sigma_A (Gaussian sigma, A),
        strength_rel (relative to 15273 A), source.
    """
    return _read_table("dibs.csv")


def telluric_lines() -> pd.DataFrame:
    """Telluric absorption lines whose residuals are injected (observed frame).

    Book: {ref}`sec-atmosphere`

    Returns
    -------
    pandas.DataFrame
        wave_vac (A), depth, species.
    """
    return _read_table("telluric_lines.csv")


def sky_lines() -> pd.DataFrame:
    """Airglow lines whose residuals are injected (observed frame): wave_vac (A), species.

    Book: {ref}`sec-atmosphere`
    """
    return _read_table("sky_lines.csv")


def _gaussian_lines(wave: np.ndarray, centres, depths, resolution: float,
                    extra_sigma=None) -> np.ndarray:
    """Sum of Gaussians of FWHM lambda/R at ``centres`` with peak ``depths``, (n_pix,)."""
    out = np.zeros(wave.size)
    fwhm = 2.0 * np.sqrt(2.0 * np.log(2.0))
    for k, (c, d) in enumerate(zip(centres, depths)):
        s = c / (resolution * fwhm)
        if extra_sigma is not None:
            s = np.hypot(s, extra_sigma[k])
        lo, hi = np.searchsorted(wave, [c - 6 * s, c + 6 * s])
        if hi > lo:
            out[lo:hi] += d * np.exp(-0.5 * ((wave[lo:hi] - c) / s) ** 2)
    return out


@functools.lru_cache(maxsize=8)
def _element_templates_cached(resolution: float, grid: str, n_pix: int, wmin: float,
                              wmax: float) -> tuple:
    if grid == "apogee":
        wave = apogee.wavelength_grid()
    else:
        wave = nirspec_grid(n_pix, wmin, wmax)
    lines = load_element_lines()
    elems = [e for e in chem.ELEMENTS if e != "Fe"]
    out = np.zeros((len(elems), wave.size), np.float32)
    for j, e in enumerate(elems):
        sub = lines[lines.element == e]
        if sub.empty:
            continue
        depth = np.clip(sub.depth.to_numpy(float), 0.02, 0.9)
        if (sub.kind == "molecular").all():
            depth = 0.5 * depth  # one of many lines of a band
        tau = -np.log1p(-0.7 * depth)
        out[j] = _gaussian_lines(wave, sub.center_vac.to_numpy(float), tau, resolution)
    return tuple(elems), out


def element_templates(grid: str = "apogee", resolution: float = 22500.0,
                      n_pixels: int = 8192, wmin: float = 9000.0,
                      wmax: float = 17950.0) -> tuple:
    """Optical-depth templates of the element responses.

    Book: {ref}`sec-spectrum-model`

    Template :math:`\\tau_e(\\lambda)` is a sum of Gaussians (FWHM lambda/R) at element
    e's line positions (:func:`load_element_lines`), with peak optical depth from the
    Arcturus depth; a star's flux is multiplied by
    :math:`\\exp(-\\sum_e (10^{[X_e/Fe]}-1)\\tau_e)`.

    Parameters
    ----------
    grid : {'apogee', 'nirspec'}
    resolution : float
        Resolving power of the line-spread function.
    n_pixels, wmin, wmax : int, float, float
        NIRSpec grid (ignored for APOGEE).

    Returns
    -------
    elements : tuple of str, length 20
        The RSCA elements except Fe (iron acts through the Cannon's [Fe/H]).
    tau : ndarray, shape (20, n_pix), float32
    """
    if grid not in ("apogee", "nirspec"):
        raise ValueError(f"grid must be 'apogee' or 'nirspec', got {grid!r}")
    return _element_templates_cached(float(resolution), grid, int(n_pixels), float(wmin),
                                     float(wmax))


@functools.lru_cache(maxsize=2)
def observed_frame_templates(resolution: float) -> tuple:
    """Telluric depth and unit sky-line templates on the APOGEE grid, (n_pix,) each.

    Book: {ref}`sec-atmosphere`
    """
    wave = apogee.wavelength_grid()
    t = telluric_lines()
    tell = _gaussian_lines(wave, t.wave_vac.to_numpy(float), t.depth.to_numpy(float),
                           resolution)
    s = sky_lines()
    amp = 0.5 + np.random.default_rng(11).random(len(s))  # fixed relative line strengths
    sky = _gaussian_lines(wave, s.wave_vac.to_numpy(float), amp, resolution)
    inside = apogee.chip_mask()
    tell[~inside] = 0
    sky[~inside] = 0
    return tell.astype(np.float32), sky.astype(np.float32)
