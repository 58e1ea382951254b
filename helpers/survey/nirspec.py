"""The JWST/NIRSpec-like twins of field giants (the StarCLIP pairs).

Book: {ref}`sec-jwst`
"""
from __future__ import annotations

import numpy as np

from helpers.survey.params import STREAMS, SurveyParams
from helpers.survey.spectrum import apply_dibs, apply_elements, cannon_flux

__all__ = ["jwst_spectra", "select_jwst"]


def jwst_spectra(p: SurveyParams, rows: np.ndarray, jrows: np.ndarray, truth: dict,
                  nmodels) -> np.ndarray:
    """NIRSpec-like spectra of catalogue rows ``rows`` (JWST rows ``jrows``), float32.

    Book: {ref}`sec-jwst`
    """
    nir, ntau, nwave, gap, jsnr = nmodels
    t = truth
    f = cannon_flux(nir, t["TEFF"][rows], t["LOGG"][rows], t["FE_H"][rows])
    apply_elements(f, t["X_FE"][rows], ntau, p.element_response)
    apply_dibs(f, nwave, t["DIB_EW"][rows], t["V_ISM"][rows] - t["VHELIO_TRUE"][rows])
    for k, jr in enumerate(jrows):
        rng = np.random.default_rng([p.seed, STREAMS["jwst"], int(jr) + 1])
        f[k] += rng.standard_normal(f.shape[1], dtype=np.float32) / np.float32(jsnr[jr])
    if gap is not None:
        f[:, gap] = 0
    return f


def select_jwst(p: SurveyParams, truth: dict) -> np.ndarray:
    """Catalogue rows of the field giants (4000-5000 K, log g 1.5-3) that get a NIRSpec twin, seeded.

    Book: {ref}`sec-jwst`
    """
    field = truth["CLUSTER"] == ""
    box = (field & (truth["TEFF"] > 4000) & (truth["TEFF"] < 5000)
           & (truth["LOGG"] > 1.5) & (truth["LOGG"] < 3.0))
    cand = np.flatnonzero(box)
    if p.n_jwst > cand.size:
        raise ValueError(f"SurveyParams.n_jwst={p.n_jwst}: only {cand.size} field giants in "
                         f"the RSCA box; raise n_field or lower n_jwst")
    rng = np.random.default_rng([p.seed, STREAMS["jwstsel"]])
    return np.sort(rng.choice(cand, size=p.n_jwst, replace=False))
