"""How one star's spectrum is built: Cannon flux, element responses, imprints, noise.

Book: {ref}`sec-spectrum-model`

A star's spectrum is built as

.. math::

    f(\\lambda) = \\Big[\\underbrace{\\Theta(\\lambda)\\, \\ell(T, g, [{\\rm Fe/H}])}_{\\rm Cannon}
      + \\Delta_{\\rm lines}(\\lambda) + m(\\lambda)\\Big]
      e^{- \\tau_{\\rm DIB}(\\lambda)} + r_{\\rm obs}(\\lambda (1 + v/c)) + p(\\lambda)
      + \\sigma(\\lambda)\\,\\epsilon ,

with the element responses :math:`\\Delta_{\\rm lines}` of :mod:`helpers.survey.linephysics`
(line by line, saturating, differential against the Cannon's own abundance pattern), the
model mismatch :math:`m` of :mod:`helpers.survey.mismatch`, diffuse interstellar bands
scaling with AK_TARG, telluric/sky/plate residuals :math:`r_{\\rm obs}` fixed in the
observed frame (so they move with VHELIO_AVG in the stellar rest frame), blue-chip
persistence :math:`p` and noise at the star's S/N.  Everything is seeded per block of 256
stars, so the survey is deterministic for a seed and independent of the chunk size.
"""
from __future__ import annotations

import functools

import numpy as np

from helpers import apogee
from helpers.constants import C_KMS
from helpers.spectra.cannon import apogee_model, nirspec_model
from helpers.survey import chemistry as chem
from helpers.survey.linephysics import channel_factors, line_physics, reference_pattern
from helpers.survey.lines import true_dib_windows
from helpers.survey.mismatch import mismatch_scale, model_mismatch
from helpers.survey.params import BLOCK, STREAMS, SurveyParams

__all__ = ["DIB_EW_PER_AV", "AV_PER_AK", "error_profile", "clipped_label_vector", "stellar_flux",
           "apply_dibs", "plate_pattern", "shift_index", "shift_bank", "synthesize_apogee",
           "synthesize_nirspec", "dib_equivalent_width", "sky_bad_rate", "synth_block"]


#: W(15273 A) per magnitude of A_V (Zasowski et al. 2015), and A_V / A_K.
DIB_EW_PER_AV = 0.10


AV_PER_AK = 8.8


@functools.lru_cache(maxsize=1)
def error_profile() -> np.ndarray:
    """Relative pixel error across the detector (median 1, higher at chip edges).

    Book: {ref}`sec-noise`
    """
    prof = np.zeros(apogee.N_PIXELS)
    for sl in apogee.CHIPS.values():
        n = sl.stop - sl.start
        x = np.linspace(-1, 1, n)
        prof[sl] = 1.0 + 0.35 * x ** 4
    inside = apogee.chip_mask()
    prof[inside] /= np.median(prof[inside])
    return prof.astype(np.float32)


_THETA32: dict = {}


def _theta32(model) -> np.ndarray:
    k = (model.name, model.resolution, model.wavelength.size)
    if k not in _THETA32:
        _THETA32[k] = np.ascontiguousarray(model.theta.T.astype(np.float32))
    return _THETA32[k]


def apply_dibs(flux: np.ndarray, wave: np.ndarray, ew: np.ndarray,
                shift_kms: np.ndarray) -> None:
    """Multiply ``flux`` (n, n_pix) in place by exp(-tau) of all DIBs: Gaussians of
    equivalent width ``ew * strength_rel`` (A) at the band centres Doppler-shifted by

    Book: {ref}`sec-dibs`
    ``shift_kms`` (n,) km/s."""
    if not np.any(ew > 0):
        return
    dibs = true_dib_windows()
    for _, d in dibs.iterrows():
        c0, s = float(d.center_vac), float(d.sigma_A)
        c = c0 * (1.0 + np.asarray(shift_kms, float) / C_KMS)
        lo, hi = np.searchsorted(wave, [c.min() - 6 * s, c.max() + 6 * s])
        if hi <= lo:
            continue
        w = wave[lo:hi]
        amp = (ew * float(d.strength_rel)) / (s * np.sqrt(2 * np.pi))
        tau = amp[:, None] * np.exp(-0.5 * ((w[None, :] - c[:, None]) / s) ** 2)
        flux[:, lo:hi] *= np.exp(-tau).astype(np.float32)


def plate_pattern(seed: int, plate: int, amplitude: float) -> np.ndarray:
    """Smooth detector-fixed pattern shared by the stars of one plate, (n_pix,).

    Book: {ref}`sec-plates`
    """
    rng = np.random.default_rng([seed, STREAMS["plate"], int(plate)])
    x = np.arange(apogee.N_PIXELS, dtype=float)
    out = np.zeros(apogee.N_PIXELS)
    for _ in range(8):
        c = rng.uniform(0, apogee.N_PIXELS)
        w = rng.uniform(15, 200)
        out += rng.standard_normal() * np.exp(-0.5 * ((x - c) / w) ** 2)
    for _ in range(6):  # narrow features (e.g. a poorly modelled LSF)
        c = rng.uniform(0, apogee.N_PIXELS)
        out += 0.7 * rng.standard_normal() * np.exp(-0.5 * ((x - c) / 1.5) ** 2)
    out *= amplitude / max(np.std(out[apogee.chip_mask()]), 1e-12)
    out[~apogee.chip_mask()] = 0
    return out.astype(np.float32)


_SHIFT_QUANTUM = 0.05  # pixels (0.2 km/s on the APOGEE grid)


def shift_index(v_kms: np.ndarray) -> np.ndarray:
    """Quantised rest-frame pixel shift of observed-frame features for velocities v.

    Book: {ref}`sec-atmosphere`
    """
    shift = np.log10(1.0 + np.asarray(v_kms, float) / C_KMS) / apogee.CDELT1
    return np.round(shift / _SHIFT_QUANTUM).astype(np.int64)


def shift_bank(template: np.ndarray, q: np.ndarray) -> tuple:
    """``template`` sampled at pixel i + q * 0.05 for each distinct q.

    Book: {ref}`sec-atmosphere`

    Returns (unique q, bank (n_unique, n_pix) float32); row k of the bank is the template
    as seen in the rest frame of a star with shift index ``uq[k]`` (linear
    interpolation, 0 beyond the grid).
    """
    uq = np.unique(q)
    x = np.arange(template.size, dtype=float)
    bank = np.empty((uq.size, template.size), np.float32)
    for k, qq in enumerate(uq):
        bank[k] = np.interp(x + qq * _SHIFT_QUANTUM, x, template, left=0.0, right=0.0)
    return uq, bank


def clipped_label_vector(model, teff, logg, feh) -> np.ndarray:
    """Cannon label vectors (n, n_terms) with labels clipped to the model's training range.

    Book: {ref}`sec-spectrum-model`
    """
    lo, hi = model.cannon.label_range
    return model.cannon.label_vector(np.clip(teff, lo[0], hi[0]), np.clip(logg, lo[1], hi[1]),
                                     np.clip(feh, lo[2], hi[2]))


def stellar_flux(model, physics, teff, logg, feh, x_fe, element_response: float,
                 mismatch_amplitude: float) -> tuple:
    """Noise-free rest-frame spectra: Cannon + line physics + mismatch, (n, n_pix) float32.

    Book: {ref}`sec-spectrum-model`

    Parameters
    ----------
    model : helpers.spectra.cannon.InstrumentModel
    physics : helpers.survey.linephysics.LinePhysics
        Of the same instrument.
    teff, logg, feh : array_like, shape (n,)
    x_fe : array_like, shape (n, 21)
    element_response, mismatch_amplitude : float
        ``SurveyParams`` fields of the same names.

    Returns
    -------
    flux, mismatch : ndarray, shape (n, n_pix), float32
        The spectra (mismatch included) and the mismatch term alone.
    """
    lv = clipped_label_vector(model, teff, logg, feh)
    flux = lv.astype(np.float32) @ _theta32(model)
    x_ref = reference_pattern(feh)
    physics.apply(flux, lv, channel_factors(x_fe, x_ref, element_response))
    mm = model_mismatch(teff, logg, feh, flux, mismatch_amplitude,
                        mismatch_scale(model) if mismatch_amplitude > 0 else 1.0,
                        valid=model.valid, width_pixels=_mismatch_width(model))
    flux += mm
    return flux, mm


def _mismatch_width(model) -> float:
    """Smoothing of the mismatch patterns: one resolution element's sigma, in pixels."""
    dlog = np.log(model.wavelength[-1] / model.wavelength[0]) / (model.wavelength.size - 1)
    return float(1.0 / (model.resolution * dlog) / 2.3548)


def synthesize_apogee(teff, logg, feh, x_fe, *, resolution: float = 22500.0,
                      element_response: float = 1.0, mismatch_amplitude: float = 0.0
                      ) -> np.ndarray:
    """Noise-free rest-frame APOGEE spectra of given labels (Cannon + line physics).

    Book: {ref}`sec-line-physics`

    Parameters
    ----------
    teff, logg, feh : array_like, shape (n,)
        K, dex, dex (clipped to the Cannon model's label range).
    x_fe : array_like, shape (n, 21)
        [X/Fe] in :data:`helpers.survey.chemistry.ELEMENTS` order (dex); at the Cannon's
        reference pattern (:func:`helpers.survey.linephysics.reference_pattern`) the
        spectrum is the Cannon's.
    resolution : float
        APOGEE resolving power.
    element_response : float
        Scale of the departures from the reference pattern (1 = physical).
    mismatch_amplitude : float
        Add the model mismatch of :mod:`helpers.survey.mismatch` with this median RMS
        (0 = none; the survey uses ``SurveyParams.mismatch_amplitude``).

    Returns
    -------
    ndarray, shape (n, 8575), float32
        Normalised flux, 0 outside the chips.
    """
    teff, logg, feh = (np.atleast_1d(np.asarray(v, float)) for v in (teff, logg, feh))
    x_fe = np.atleast_2d(np.asarray(x_fe, float))
    if x_fe.shape != (teff.size, len(chem.ELEMENTS)):
        raise ValueError(f"x_fe must have shape ({teff.size}, {len(chem.ELEMENTS)}) "
                         f"({chem.ELEMENTS}), got {x_fe.shape}")
    flux, _ = stellar_flux(apogee_model(resolution), line_physics("apogee", float(resolution)),
                           teff, logg, feh, x_fe, element_response, mismatch_amplitude)
    return flux


def synthesize_nirspec(teff, logg, feh, x_fe, params: SurveyParams | None = None, *,
                       mismatch_amplitude: float = 0.0) -> tuple:
    """Noise-free NIRSpec twin spectra of given labels, on the survey's twin grid.

    Book: {ref}`sec-jwst`

    The same line physics as :func:`synthesize_apogee` at the twin grid's resolution.

    Parameters
    ----------
    teff, logg, feh : array_like, shape (n,)
    x_fe : array_like, shape (n, 21)
    params : SurveyParams, optional
        Its ``jwst_*`` fields set the grid (default ``SurveyParams()``).
    mismatch_amplitude : float
        As in :func:`synthesize_apogee`.

    Returns
    -------
    wavelength : ndarray, shape (n_pix,)
        Vacuum A.
    flux : ndarray, shape (n, n_pix), float32
    """
    p = SurveyParams() if params is None else params
    teff, logg, feh = (np.atleast_1d(np.asarray(v, float)) for v in (teff, logg, feh))
    x_fe = np.atleast_2d(np.asarray(x_fe, float))
    nir = nirspec_model(p.jwst_resolution, p.jwst_n_pixels, p.jwst_wmin, p.jwst_wmax)
    phys = line_physics("nirspec", p.jwst_resolution, p.jwst_n_pixels, p.jwst_wmin, p.jwst_wmax)
    flux, _ = stellar_flux(nir, phys, teff, logg, feh, x_fe, p.element_response,
                           mismatch_amplitude)
    return nir.wavelength, flux


def dib_equivalent_width(ak, strength: float = 1.0) -> np.ndarray:
    """Equivalent width (A) of the 15273 A band for extinction AK (mag).

    Book: {ref}`sec-dibs`

    W = strength x 0.10 A x A_V with A_V = 8.8 A_K (Zasowski et al. 2015); 0 for AK <= 0.
    """
    return strength * DIB_EW_PER_AV * AV_PER_AK * np.clip(np.asarray(ak, float), 0, None)


#: Pixel ranges outside the three chips (flux and error 0 there).
_OUT_OF_CHIP = (slice(0, apogee.CHIPS["blue"].start),
                slice(apogee.CHIPS["blue"].stop, apogee.CHIPS["green"].start),
                slice(apogee.CHIPS["green"].stop, apogee.CHIPS["red"].start),
                slice(apogee.CHIPS["red"].stop, apogee.N_PIXELS))


def sky_bad_rate(sky_t: np.ndarray, inside: np.ndarray) -> float:
    """Fraction of in-chip pixels given inflated errors near sky lines (half above 0.25).

    Book: {ref}`sec-noise`
    """
    return 0.5 * float(np.mean(sky_t[inside] > 0.25))


def synth_block(p: SurveyParams, b: int, n_stars: int, truth: dict, models,
                 keep_model: bool = True) -> dict:
    """Spectra of random-number block ``b`` (catalogue rows b*BLOCK ... (b+1)*BLOCK-1).

    Book: {ref}`sec-spectrum-model`

    Returns dict of rows, flux, error, model (noise-free stellar spectrum, or None when
    ``keep_model`` is False), all (k, 8575) float32, and ``hard`` as (row, pixel) index
    arrays of the pixels written as flux 1e-4, error 1e10.
    """
    apo, physics, prof, inside, wave, shift_q, tell_bank, sky_bank, r_sky = models
    t = truth
    rows = np.arange(b * BLOCK, min((b + 1) * BLOCK, n_stars))
    n = rows.size
    # (the instrument model's coefficients are zero outside the chips, so is this flux):
    # Cannon + element responses (linephysics) + model mismatch (mismatch)
    flux, _ = stellar_flux(apo, physics, t["TEFF"][rows], t["LOGG"][rows], t["FE_H"][rows],
                           t["X_FE"][rows], p.element_response, p.mismatch_amplitude)
    model = flux.copy() if keep_model else None
    # interstellar bands at the ISM velocity, seen in the stellar rest frame
    apply_dibs(flux, wave, t["DIB_EW"][rows], t["V_ISM"][rows] - t["VHELIO_TRUE"][rows])
    # observed-frame residuals (telluric, sky) shifted into the stellar rest frame
    k = np.searchsorted(shift_q[0], shift_q[1][rows])
    tmp = tell_bank[k]
    tmp *= t["TELLURIC_AMP"][rows, None].astype(np.float32)
    flux += tmp
    sky_rest = sky_bank[k]
    np.multiply(sky_rest, t["SKY_AMP"][rows, None].astype(np.float32), out=tmp)
    flux += tmp
    del tmp
    # a pattern shared by the stars of one plate (e.g. flat-field / LSF errors); rows are
    # grouped by plate, so each plate is a slice
    plates = t["PLATE_IDX"][rows]
    if p.plate_systematic > 0:
        edges = np.r_[0, np.flatnonzero(np.diff(plates)) + 1, n]
        for lo, hi in zip(edges[:-1], edges[1:]):
            flux[lo:hi] += plate_pattern(p.seed, int(plates[lo]), p.plate_systematic)
    # persistence on the blue chip (additive, decaying along the chip)
    blue = apogee.CHIPS["blue"]
    pa = t["PERSISTENCE_AMP"][rows]
    hit = np.flatnonzero(pa > 0)
    if hit.size:
        ramp = np.exp(-np.arange(blue.stop - blue.start) / 1200.0).astype(np.float32)
        flux[hit, blue] += pa[hit, None].astype(np.float32) * ramp
    # noise, from this block's own random stream
    rng = np.random.default_rng([p.seed, STREAMS["spec"], int(b)])
    inv_snr = (1.0 / t["SNR_TRUE"][rows]).astype(np.float32)
    error = np.maximum(flux, np.float32(0.05))
    np.sqrt(error, out=error)
    error *= prof
    error *= inv_snr[:, None]
    noise = rng.standard_normal(flux.shape, dtype=np.float32)
    noise *= error
    flux += noise
    del noise
    # bad pixels: random ones (half hard: flux 1e-4, error 1e10; half with an inflated
    # error) and inflated errors near strong sky lines (fixed in the observed frame)
    r = max(p.bad_pixel_rate - r_sky, 0.0) if p.bad_pixel_rate > 0 else 0.0
    in_pix = np.flatnonzero(inside)
    n_bad = rng.binomial(in_pix.size, r, size=n)
    bi = np.repeat(np.arange(n), n_bad)
    bj = in_pix[rng.integers(0, in_pix.size, bi.size)]
    is_hard = rng.random(bi.size) < 0.5
    si, sj = bi[~is_hard], bj[~is_hard]
    if r_sky > 0:
        ki, kj = np.nonzero(sky_rest > 0.25)
        keep = rng.random(ki.size) < 0.5
        si, sj = np.r_[si, ki[keep]], np.r_[sj, kj[keep]]
    del sky_rest
    inflate = (10.0 + 40.0 * rng.random(si.size)).astype(np.float32)
    error[si, sj] = np.maximum(error[si, sj] * inflate, np.float32(0.06))
    hi_, hj = bi[is_hard], bj[is_hard]
    flux[hi_, hj] = apogee.BAD_PIXEL_FLUX
    error[hi_, hj] = apogee.BAD_PIXEL_ERROR
    for sl in _OUT_OF_CHIP:
        flux[:, sl] = 0
        error[:, sl] = 0
    return {"rows": rows, "flux": flux, "error": error, "model": model, "hard": (hi_, hj)}
