"""The JWST/NIRSpec-like twins of field giants (the StarCLIP pairs): selection and spectra.

Book: {ref}`sec-jwst`

A twin is the same star as its APOGEE spectrum, seen at NIRSpec's resolution through the
same line physics (:mod:`helpers.survey.linephysics`), with the star's interstellar bands,
photon noise, a per-pixel error array and the detector gap of its MSA shutter
(:mod:`helpers.survey.nirspec`).
"""
from __future__ import annotations

import numpy as np

from helpers import apogee
from helpers.survey.nirspec import twin_errors
from helpers.survey.params import STREAMS, SurveyParams
from helpers.survey.spectrum import apply_dibs, stellar_flux

__all__ = ["jwst_spectra", "select_jwst", "twin_profile"]


def jwst_spectra(p: SurveyParams, rows: np.ndarray, jrows: np.ndarray, truth: dict,
                 nmodels) -> tuple:
    """NIRSpec-like spectra and errors of catalogue rows ``rows`` (JWST rows ``jrows``).

    Book: {ref}`sec-jwst`

    Parameters
    ----------
    p : SurveyParams
    rows, jrows : ndarray of int, shape (k,)
        Catalogue rows and the twins' own rows.
    truth : dict
        The catalogue's truth arrays.
    nmodels : tuple
        (NIRSpec instrument model, its LinePhysics, wavelengths, gaps (n_jwst, 2) or None,
        S/N per twin, relative error profile).

    Returns
    -------
    flux, error : ndarray, shape (k, n_pix), float32
        Pixels in a star's detector gap have flux 0 and error 1e10.
    """
    nir, nphys, nwave, gaps, jsnr, profile = nmodels
    t = truth
    f, _ = stellar_flux(nir, nphys, t["TEFF"][rows], t["LOGG"][rows], t["FE_H"][rows],
                        t["X_FE"][rows], p.element_response, p.mismatch_amplitude)
    apply_dibs(f, nwave, t["DIB_EW"][rows], t["V_ISM"][rows] - t["VHELIO_TRUE"][rows])
    err = twin_errors(f, jsnr[jrows], profile)
    for k, jr in enumerate(jrows):
        rng = np.random.default_rng([p.seed, STREAMS["jwst"], int(jr) + 1])
        f[k] += rng.standard_normal(f.shape[1], dtype=np.float32) * err[k]
    if gaps is not None:
        lo = np.searchsorted(nwave, gaps[jrows, 0])
        hi = np.searchsorted(nwave, gaps[jrows, 1])
        for k in range(jrows.size):
            f[k, lo[k]:hi[k]] = 0.0
            err[k, lo[k]:hi[k]] = apogee.BAD_PIXEL_ERROR
    return f, err


def select_jwst(p: SurveyParams, truth: dict) -> np.ndarray:
    """Catalogue rows of the field giants (4000-5000 K, log g 1.5-3) that get a NIRSpec twin, seeded.

    Book: {ref}`sec-jwst`

    How many: :meth:`SurveyParams.jwst_count` (8 % of the field by default, at most the
    giants in the box; an explicit ``n_jwst`` above that is an error naming the field).
    """
    field = truth["CLUSTER"] == ""
    box = (field & (truth["TEFF"] > 4000) & (truth["TEFF"] < 5000)
           & (truth["LOGG"] > 1.5) & (truth["LOGG"] < 3.0))
    cand = np.flatnonzero(box)
    n = p.jwst_count(cand.size)
    rng = np.random.default_rng([p.seed, STREAMS["jwstsel"]])
    return np.sort(rng.choice(cand, size=n, replace=False))


def twin_profile(wave: np.ndarray) -> np.ndarray:
    """Relative error across the G140H/F100LP grating (median 1), shape (n_pix,) float32.

    Book: {ref}`sec-jwst`

    The throughput falls towards the filter's cut-on and the grating's red end, so the
    error rises there (an assumption of shape, not a measured sensitivity curve).
    """
    x = (np.log(wave) - np.log(wave[0])) / (np.log(wave[-1]) - np.log(wave[0]))
    prof = 1.0 + 0.8 * (2 * x - 1) ** 4
    return (prof / np.median(prof)).astype(np.float32)
