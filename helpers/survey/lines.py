"""The lines of what is not the star: interstellar bands, telluric and sky lines.

Book: {ref}`sec-spectrum-model`

The injected diffuse interstellar bands (``data/dibs.csv``), telluric and sky lines
(``data/telluric_lines.csv``, ``data/sky_lines.csv``) and Gaussian templates of the
observed-frame ones on the APOGEE grid. The stellar lines and their physics are in
:mod:`helpers.survey.linephysics`.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from helpers import apogee
from helpers.paths import data_dir

__all__ = ["true_dib_windows", "telluric_lines", "sky_lines", "observed_frame_templates"]


def _read_table(name: str) -> pd.DataFrame:
    p = data_dir() / name
    if not p.is_file():
        raise FileNotFoundError(f"table {p} not found")
    return pd.read_csv(p, comment="#")


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
