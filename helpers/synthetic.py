"""The synthetic survey: APOGEE-like spectra with a known ground truth.

Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).

The book runs without internet, so it ships a survey of its own, written in APOGEE's
formats through :mod:`helpers.apogee` and :mod:`helpers.spectra_cache`:

* an allStar catalogue (``allStar-r12-l33.fits`` for DR16) with ASPCAP-like labels,
  flags, missing abundances, AK_TARG, VHELIO_AVG, S/N and visits;
* aspcapStar files for a subset of stars and a memory-mapped spectra cache for all;
* OCCAM-like member and cluster catalogues of the 22 RSCA open clusters;
* JWST/NIRSpec-like spectra of the same stars (StarCLIP pairs);
* the ground truth (true labels, latent chemical coordinates, membership, injected
  non-chemical imprints) in ``truth.npz``.

A star's spectrum is built as

.. math::

    f(\\lambda) = \\underbrace{\\Theta(\\lambda)\\, \\ell(T, g, [{\\rm Fe/H}])}_{\\rm Cannon}
      \\exp\\Big(-\\sum_e (10^{[X_e/{\\rm Fe}]} - 1)\\, \\tau_e(\\lambda)
      - \\tau_{\\rm DIB}(\\lambda)\\Big) + r_{\\rm obs}(\\lambda (1 + v/c)) + p(\\lambda)
      + \\sigma(\\lambda)\\,\\epsilon ,

with per-element line templates :math:`\\tau_e`, diffuse interstellar bands scaling with
AK_TARG, telluric/sky/plate residuals :math:`r_{\\rm obs}` fixed in the observed frame
(so they move with VHELIO_AVG in the stellar rest frame), blue-chip persistence
:math:`p` and noise at the star's S/N.  Everything is seeded per block of 256 stars,
so the survey is deterministic for a seed and independent of the chunk size.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import apogee
from . import chemistry as chem
from .paths import cache_dir, data_dir

__all__ = [
    "GENERATOR_VERSION", "SurveyParams", "Survey", "generate_survey", "load_survey",
    "survey_dir", "is_complete_survey", "element_templates", "load_element_lines",
    "true_dib_windows", "telluric_lines", "sky_lines", "synthesize_apogee",
    "dib_equivalent_width", "paper_scale_params", "main",
]

#: Bumped whenever the generator's output changes for the same parameters.
GENERATOR_VERSION = "4"
#: Stars per random-number block: the unit of determinism.
BLOCK = 256
C_KMS = 299_792.458
#: W(15273 A) per magnitude of A_V (Zasowski et al. 2015), and A_V / A_K.
DIB_EW_PER_AV = 0.10
AV_PER_AK = 8.8
_SURVEY_MANIFEST = "survey.json"
_OCCAM_DIR = ("dr16", "apogee", "vac", "apogee-occam")
#: Streams of the random generator (first entry after the seed).
_S_FIELD, _S_CLUSTER, _S_GEOM, _S_MEAS, _S_SPEC, _S_JWSTSEL, _S_JWST, _S_PLATE = range(1, 9)


# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SurveyParams:
    """Every knob of the synthetic survey, with a realistic default.

    Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).

    Attributes
    ----------
    n_field : int
        Field giants generated (targeting box ``teff_range`` x ``logg_range``); about
        63% survive the RSCA selection.  Paper scale: :func:`paper_scale_params`.
    n_jwst : int
        Field giants inside the RSCA Teff/logg box that also get a NIRSpec spectrum.
    seed : int
        Seed of everything; same seed, same survey.
    release : {'dr16', 'dr17'}
        File layout written.
    n_latent : int
        Number of latent chemical dimensions K ([Fe/H], [alpha/M], K-2 weaker ones).
    intrinsic_scatter : float
        Per-element [X/Fe] scatter of field stars beyond the latent model (dex).
    include_clusters : bool
        Add the 22 OCCAM clusters (members and contaminants).
    cluster_scatter : float
        Intrinsic abundance scatter of cluster members (dex; 0.01-0.03 observed).
    cluster_member_factor : float
        True members generated per OCCAM-catalogued member (giant branch beyond the cuts).
    cluster_contaminant_fraction : float
        Non-members in the member file per true member.
    teff_range, logg_range : tuple of float
        Targeting box of field giants (K, dex), wider than the RSCA cuts.
    element_response : float
        Scale of the line-depth response to [X/Fe] (1 = weak-line theory).
    dib_strength : float
        Multiplier of W(15273) = 0.10 A x A_V, A_V = 8.8 AK (Zasowski et al. 2015).
    dib_scatter : float
        Log-normal scatter of DIB strength at fixed extinction.
    ak_median : float
        Median AK_TARG (mag); log-normal across fields and stars.
    ism_velocity_sigma : float
        Spread of the interstellar velocity per field (km/s).
    telluric_residual : float
        RMS over stars of the fractional residual of telluric line depths.
    sky_residual : float
        RMS over stars of the residual of sky emission lines (flux units at line peak).
    plate_systematic : float
        RMS amplitude of the pattern shared by the stars of one plate (flux units).
    stars_per_plate : int
        Science fibres per plate.
    persistence_fraction : float
        Fraction of stars with blue-chip persistence.
    persistence_amplitude : float
        Mean additive persistence level at the blue end of the blue chip (flux units).
    snr_median, snr_log_sigma : float
        S/N per pixel is log-normal: median 157, interquartile about 102-272.
    bad_pixel_rate : float
        Fraction of in-chip pixels with error > 0.05 (half at 1e10, half inflated).
    star_bad_fraction : float
        Fraction of stars with ASPCAPFLAG STAR_BAD (more at low S/N).
    missing_abundance_fraction : float
        Fraction of stars with one to three -9999.99 abundances.
    synthetic_gap : float
        Scale of Teff/logg-dependent systematic abundance errors (dex).
    vhelio_sigma : float
        Core spread of VHELIO_AVG (km/s); a 10% tail is twice as wide.
    n_files : int
        Stars that get aspcapStar files (OCCAM member-file stars first, then field
        stars in catalogue order); the cache holds every star.
    jwst_resolution, jwst_n_pixels, jwst_wmin, jwst_wmax : float, int, float, float
        NIRSpec-like grid: R ~ 2,700 on 8,192 log-uniform pixels, 9,000-17,950 A.
    jwst_snr_median : float
        Median S/N of NIRSpec spectra.
    jwst_gap : tuple of float or None
        Wavelength interval (A) lost in the NRS1/NRS2 detector gap (flux 0); ``None``
        for no gap.
    """

    n_field: int = 5000
    n_jwst: int = 500
    seed: int = 42
    release: str = "dr16"
    n_latent: int = 4
    intrinsic_scatter: float = 0.02
    include_clusters: bool = True
    cluster_scatter: float = 0.02
    cluster_member_factor: float = 0.85
    cluster_contaminant_fraction: float = 0.15
    teff_range: tuple = (3800.0, 5200.0)
    logg_range: tuple = (1.2, 3.3)
    element_response: float = 1.0
    dib_strength: float = 1.0
    dib_scatter: float = 0.2
    ak_median: float = 0.1
    ism_velocity_sigma: float = 15.0
    telluric_residual: float = 0.05
    sky_residual: float = 0.02
    plate_systematic: float = 0.003
    stars_per_plate: int = 230
    persistence_fraction: float = 0.1
    persistence_amplitude: float = 0.03
    snr_median: float = 157.0
    snr_log_sigma: float = 0.72
    bad_pixel_rate: float = 0.03
    star_bad_fraction: float = 0.03
    missing_abundance_fraction: float = 0.06
    synthetic_gap: float = 0.03
    vhelio_sigma: float = 43.0
    n_files: int = 500
    jwst_resolution: float = 2700.0
    jwst_n_pixels: int = 8192
    jwst_wmin: float = 9000.0
    jwst_wmax: float = 17950.0
    jwst_snr_median: float = 100.0
    jwst_gap: tuple | None = None

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"SurveyParams.{name}={getattr(self, name)!r}: {why}")
        for name in ("n_field", "n_jwst", "seed", "n_latent", "stars_per_plate", "n_files",
                     "jwst_n_pixels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                bad(name, "must be an integer")
            if v < 0:
                bad(name, "must be >= 0")
        if self.n_field < 1:
            bad("n_field", "need at least one field star")
        if self.stars_per_plate < 1:
            bad("stars_per_plate", "must be >= 1")
        if not 2 <= self.n_latent <= 12:
            bad("n_latent", "must be between 2 and 12")
        if self.release not in apogee.RELEASES:
            bad("release", f"must be one of {sorted(apogee.RELEASES)}")
        for name in ("intrinsic_scatter", "cluster_scatter", "element_response",
                     "dib_strength", "dib_scatter", "telluric_residual", "sky_residual",
                     "plate_systematic", "persistence_amplitude", "synthetic_gap",
                     "ism_velocity_sigma", "cluster_contaminant_fraction"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                bad(name, "must be a finite number >= 0")
        for name in ("persistence_fraction", "bad_pixel_rate", "star_bad_fraction",
                     "missing_abundance_fraction"):
            v = getattr(self, name)
            if not (np.isfinite(v) and 0 <= v <= 0.5):
                bad(name, "must be a fraction between 0 and 0.5")
        for name in ("snr_median", "jwst_snr_median", "ak_median", "vhelio_sigma",
                     "jwst_resolution", "cluster_member_factor"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                bad(name, "must be a finite number > 0")
        if not (np.isfinite(self.snr_log_sigma) and 0 <= self.snr_log_sigma < 3):
            bad("snr_log_sigma", "must be in [0, 3)")
        for name in ("teff_range", "logg_range"):
            v = getattr(self, name)
            if len(v) != 2 or not v[0] < v[1]:
                bad(name, "must be (low, high) with low < high")
        if not 0 < self.jwst_wmin < self.jwst_wmax:
            bad("jwst_wmin", "need 0 < jwst_wmin < jwst_wmax")
        if self.jwst_gap is not None and (len(self.jwst_gap) != 2
                                          or not self.jwst_gap[0] < self.jwst_gap[1]):
            bad("jwst_gap", "must be None or (start, end) in Angstrom with start < end")
        for f in dataclasses.fields(self):  # 157 and 157.0 are the same survey (same key)
            if isinstance(f.default, float) and not isinstance(getattr(self, f.name), bool):
                object.__setattr__(self, f.name, float(getattr(self, f.name)))
            elif isinstance(f.default, int) and not isinstance(f.default, bool):
                object.__setattr__(self, f.name, int(getattr(self, f.name)))
        object.__setattr__(self, "teff_range", tuple(float(x) for x in self.teff_range))
        object.__setattr__(self, "logg_range", tuple(float(x) for x in self.logg_range))
        if self.jwst_gap is not None:
            object.__setattr__(self, "jwst_gap", tuple(float(x) for x in self.jwst_gap))

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict of all fields."""
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SurveyParams":
        """Inverse of :meth:`to_dict` (unknown keys raise ``ValueError``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"SurveyParams: unknown field(s) {sorted(unknown)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)

    def key(self) -> str:
        """Stable 16-hex-digit hash of the parameters and generator version."""
        blob = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes) -> "SurveyParams":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def paper_scale_params(**overrides) -> SurveyParams:
    """Parameters at the RSCA paper's scale: ~151,000 selected field giants, 19,000 JWST.

    Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).
    """
    kw = dict(n_field=238_400, n_jwst=19_000)
    kw.update(overrides)
    return SurveyParams(**kw)


# ---------------------------------------------------------------------------------------
# Tables of line positions
# ---------------------------------------------------------------------------------------

def _read_table(name: str) -> pd.DataFrame:
    p = data_dir() / name
    if not p.is_file():
        raise FileNotFoundError(f"table {p} not found")
    return pd.read_csv(p, comment="#")


@functools.lru_cache(maxsize=1)
def load_element_lines() -> pd.DataFrame:
    """Line positions behind the element responses (``data/element_lines.csv``).

    Book: chapter 2, 'Lines that respond to each element' (notebooks/02_survey.md).

    Returns
    -------
    pandas.DataFrame
        element, kind ('atomic'/'molecular'), species, center_vac (A), window_start_vac,
        window_end_vac (A), depth (Arcturus depth in the window), used_in_dr17.
    """
    return _read_table("element_lines.csv")


def true_dib_windows() -> pd.DataFrame:
    """The injected diffuse interstellar bands (``data/dibs.csv``).

    Book: chapter 3, 'Masking the interstellar medium' (notebooks/03_masking.md).

    Returns
    -------
    pandas.DataFrame
        name, center_vac (A, ISM rest frame), sigma_A (Gaussian sigma, A),
        strength_rel (relative to 15273 A), source.
    """
    return _read_table("dibs.csv")


def telluric_lines() -> pd.DataFrame:
    """Telluric absorption lines whose residuals are injected (observed frame).

    Book: chapter 3, 'Masking the interstellar medium' (notebooks/03_masking.md).

    Returns
    -------
    pandas.DataFrame
        wave_vac (A), depth, species.
    """
    return _read_table("telluric_lines.csv")


def sky_lines() -> pd.DataFrame:
    """Airglow lines whose residuals are injected (observed frame): wave_vac (A), species.

    Book: chapter 3, 'Masking the interstellar medium' (notebooks/03_masking.md).
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
        from .cannon import nirspec_grid
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

    Book: chapter 2, 'Lines that respond to each element' (notebooks/02_survey.md).

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
def _observed_frame_templates(resolution: float) -> tuple:
    """Telluric depth and unit sky-line templates on the APOGEE grid, (n_pix,) each."""
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


@functools.lru_cache(maxsize=1)
def _error_profile() -> np.ndarray:
    """Relative pixel error across the detector (median 1, higher at chip edges)."""
    prof = np.zeros(apogee.N_PIXELS)
    for sl in apogee.CHIPS.values():
        n = sl.stop - sl.start
        x = np.linspace(-1, 1, n)
        prof[sl] = 1.0 + 0.35 * x ** 4
    inside = apogee.chip_mask()
    prof[inside] /= np.median(prof[inside])
    return prof.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Spectra
# ---------------------------------------------------------------------------------------

def _cannon_flux(model, teff, logg, feh) -> np.ndarray:
    lo, hi = model.cannon.label_range
    t = np.clip(teff, lo[0], hi[0])
    g = np.clip(logg, lo[1], hi[1])
    f = np.clip(feh, lo[2], hi[2])
    lv = model.cannon.label_vector(t, g, f).astype(np.float32)
    return lv @ _theta32(model)


_THETA32: dict = {}


def _theta32(model) -> np.ndarray:
    k = (model.name, model.resolution, model.wavelength.size)
    if k not in _THETA32:
        _THETA32[k] = np.ascontiguousarray(model.theta.T.astype(np.float32))
    return _THETA32[k]


_SUPPORT: dict = {}


def _apply_elements(flux: np.ndarray, x_fe: np.ndarray, tau: np.ndarray,
                    scale: float) -> None:
    """Multiply ``flux`` (n, n_pix) in place by exp(-sum_e (10^[X/Fe] - 1) tau_e).

    ``x_fe`` is (n, 21) in :data:`helpers.chemistry.ELEMENTS` order; ``tau`` (20, n_pix)
    from :func:`element_templates`.  Only pixels where some template exceeds 1e-5 are
    touched (about a quarter of the APOGEE grid).
    """
    key = (id(tau), tau.shape)
    if key not in _SUPPORT:
        cols = np.flatnonzero(tau.max(0) > 1e-5)
        _SUPPORT[key] = (cols, np.ascontiguousarray(tau[:, cols]))
    cols, tau_s = _SUPPORT[key]
    keep = [chem.ELEMENTS.index(e) for e in chem.ELEMENTS if e != "Fe"]
    c = np.clip(10.0 ** np.asarray(x_fe, float)[:, keep] - 1.0, -0.95, 4.0)
    resp = (scale * c).astype(np.float32) @ tau_s
    np.negative(resp, out=resp)
    np.exp(resp, out=resp)
    flux[:, cols] *= resp


def _apply_dibs(flux: np.ndarray, wave: np.ndarray, ew: np.ndarray,
                shift_kms: np.ndarray) -> None:
    """Multiply ``flux`` (n, n_pix) in place by exp(-tau) of all DIBs: Gaussians of
    equivalent width ``ew * strength_rel`` (A) at the band centres Doppler-shifted by
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


def _plate_pattern(seed: int, plate: int, amplitude: float) -> np.ndarray:
    """Smooth detector-fixed pattern shared by the stars of one plate, (n_pix,)."""
    rng = np.random.default_rng([seed, _S_PLATE, int(plate)])
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


def _shift_index(v_kms: np.ndarray) -> np.ndarray:
    """Quantised rest-frame pixel shift of observed-frame features for velocities v."""
    shift = np.log10(1.0 + np.asarray(v_kms, float) / C_KMS) / apogee.CDELT1
    return np.round(shift / _SHIFT_QUANTUM).astype(np.int64)


def _shift_bank(template: np.ndarray, q: np.ndarray) -> tuple:
    """``template`` sampled at pixel i + q * 0.05 for each distinct q.

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


def synthesize_apogee(teff, logg, feh, x_fe, *, resolution: float = 22500.0,
                      element_response: float = 1.0) -> np.ndarray:
    """Noise-free rest-frame APOGEE spectra of given labels (Cannon x element responses).

    Book: chapter 2, 'Lines that respond to each element' (notebooks/02_survey.md).

    Parameters
    ----------
    teff, logg, feh : array_like, shape (n,)
        K, dex, dex (clipped to the Cannon model's label range).
    x_fe : array_like, shape (n, 21)
        [X/Fe] in :data:`helpers.chemistry.ELEMENTS` order (dex).
    resolution : float
        APOGEE resolving power.
    element_response : float
        Scale of the line-depth response.

    Returns
    -------
    ndarray, shape (n, 8575), float32
        Normalised flux, 0 outside the chips.
    """
    from .cannon import apogee_model
    x_fe = np.atleast_2d(np.asarray(x_fe, float))
    if x_fe.shape[1] != len(chem.ELEMENTS):
        raise ValueError(f"x_fe must have {len(chem.ELEMENTS)} columns "
                         f"({chem.ELEMENTS}), got shape {x_fe.shape}")
    model = apogee_model(resolution)
    _, tau = element_templates("apogee", resolution)
    flux = _cannon_flux(model, np.atleast_1d(teff), np.atleast_1d(logg), np.atleast_1d(feh))
    _apply_elements(flux, x_fe, tau, element_response)
    return flux


def dib_equivalent_width(ak, strength: float = 1.0) -> np.ndarray:
    """Equivalent width (A) of the 15273 A band for extinction AK (mag).

    Book: chapter 2, 'Non-chemical imprints' (notebooks/02_survey.md).

    W = strength x 0.10 A x A_V with A_V = 8.8 A_K (Zasowski et al. 2015); 0 for AK <= 0.
    """
    return strength * DIB_EW_PER_AV * AV_PER_AK * np.clip(np.asarray(ak, float), 0, None)


# ---------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------

def _twomass_ids(n: int, rng: np.random.Generator, ra0=None, dec0=None) -> np.ndarray:
    """2MASS-style identifiers '2MHHMMSSss+DDMMSSs'."""
    ra = rng.uniform(0, 360, n) if ra0 is None else (ra0 + rng.normal(0, 0.15, n)) % 360
    dec = (np.degrees(np.arcsin(rng.uniform(-0.5, 1.0, n))) if dec0 is None
           else np.clip(dec0 + rng.normal(0, 0.15, n), -89.9, 89.9))
    h = ra / 15.0
    hh = np.floor(h).astype(int)
    mm = np.floor((h - hh) * 60).astype(int)
    ss = np.floor(((h - hh) * 60 - mm) * 6000).astype(int)
    sign = np.where(dec < 0, "-", "+")
    a = np.abs(dec)
    dd = np.floor(a).astype(int)
    dm = np.floor((a - dd) * 60).astype(int)
    ds = np.floor(((a - dd) * 60 - dm) * 600).astype(int)
    return np.array([f"2M{a:02d}{b:02d}{c:04d}{s}{d:02d}{e:02d}{f:03d}" for a, b, c, s, d, e, f
                     in zip(hh.tolist(), mm.tolist(), ss.tolist(), sign.tolist(), dd.tolist(),
                            dm.tolist(), ds.tolist())])


def _unique_ids(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ids = ids.copy()
    for _ in range(20):
        _, first = np.unique(ids, return_index=True)
        dup = np.setdiff1d(np.arange(ids.size), first)
        if not dup.size:
            return ids
        ids[dup] = _twomass_ids(dup.size, rng)
    raise RuntimeError("could not make unique APOGEE_IDs")


EXCLUDED_STAR = "2M19203303+3755558"


def _build_catalogue(p: SurveyParams) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """allStar table, truth arrays and OCCAM member table (all stars, catalogue order)."""
    model = chem.chemical_model(p.n_latent, p.intrinsic_scatter)
    geom = np.random.default_rng([p.seed, _S_GEOM])
    # --- field stars, grouped in fields and plates ---------------------------------
    fld = chem.sample_field_labels(p.n_field, np.random.default_rng([p.seed, _S_FIELD]),
                                   model, p.teff_range, p.logg_range)
    n_f = p.n_field
    plate_of = np.arange(n_f) // p.stars_per_plate
    n_plates = int(plate_of.max()) + 1
    field_of_plate = np.zeros(n_plates, int)
    n_fields = 0
    i = 0
    while i < n_plates:  # 1-3 plates per field
        k = int(geom.integers(1, 4))
        field_of_plate[i:i + k] = n_fields
        n_fields += 1
        i += k
    gl = geom.uniform(0, 360, n_fields)
    gb = np.clip(geom.normal(0, 12, n_fields), -80, 80)
    lco = geom.random(n_fields) < 0.15
    field_names = np.array([f"{int(gl[j]):03d}{int(round(gb[j])):+03d}" + ("_S" if lco[j] else "")
                            for j in range(n_fields)])
    field_ak = p.ak_median * np.exp(1.0 * geom.standard_normal(n_fields))
    field_vism = p.ism_velocity_sigma * geom.standard_normal(n_fields)
    fidx = field_of_plate[plate_of]
    ak_true = field_ak[fidx] * np.exp(0.35 * geom.standard_normal(n_f))
    tail = geom.random(n_f) < 0.1
    v_true = np.where(tail, 2.0, 1.0) * p.vhelio_sigma * geom.standard_normal(n_f)
    cols = {
        "FIELD": field_names[fidx], "TELESCOPE": np.where(lco[fidx], "lco25m", "apo25m"),
        "PLATE_IDX": plate_of, "AK_TRUE": ak_true, "V_ISM": field_vism[fidx],
        "VHELIO_TRUE": v_true, "CLUSTER": np.full(n_f, "", dtype=object),
        "IS_MEMBER": np.zeros(n_f, bool), "IN_OCCAM_FILE": np.zeros(n_f, bool),
    }
    teff, logg, feh, alpha = fld["teff"], fld["logg"], fld["feh"], fld["alpha_m"]
    latent, x_fe = fld["latent"], fld["x_fe"]
    ids = _twomass_ids(n_f, geom)
    frames = [pd.DataFrame(cols)]
    # --- clusters ----------------------------------------------------------------
    if p.include_clusters:
        table = chem.load_cluster_table()
        cl = chem.sample_cluster_labels(
            table, model, np.random.default_rng([p.seed, _S_CLUSTER]), p.cluster_scatter,
            p.cluster_member_factor, p.cluster_contaminant_fraction)
        crng = np.random.default_rng([p.seed, _S_CLUSTER, 1])
        n_c = len(cl)
        c_field = np.empty(n_c, dtype=object)
        c_plate = np.empty(n_c, int)
        c_ak = np.empty(n_c)
        c_vism = np.empty(n_c)
        c_ids = np.empty(n_c, dtype=object)
        next_plate = n_plates
        for j, row in table.iterrows():
            sel = np.flatnonzero(cl.CLUSTER.to_numpy() == row.NAME)
            name = row.NAME.replace("NGC ", "N").replace(" ", "")
            c_field[sel] = name
            c_plate[sel] = next_plate + np.arange(sel.size) // p.stars_per_plate
            next_plate = int(c_plate[sel].max()) + 1
            ak0 = 0.03 + 0.4 * np.exp(-abs(row.GLAT) / 4.0)
            c_ak[sel] = ak0 * np.exp(0.1 * crng.standard_normal(sel.size))
            c_vism[sel] = p.ism_velocity_sigma * crng.standard_normal()
            ra0 = crng.uniform(0, 360)
            dec0 = crng.uniform(-30, 70)
            c_ids[sel] = _twomass_ids(sel.size, crng, ra0, dec0)
        n_plates = next_plate
        teff = np.concatenate([teff, cl.teff.to_numpy()])
        logg = np.concatenate([logg, cl.logg.to_numpy()])
        feh = np.concatenate([feh, cl.feh.to_numpy()])
        alpha = np.concatenate([alpha, cl.alpha_m.to_numpy()])
        latent = np.vstack([latent, np.stack(cl.latent.to_numpy())])
        x_fe = np.vstack([x_fe, np.stack(cl.x_fe.to_numpy())])
        ids = np.concatenate([ids, c_ids.astype(str)])
        frames.append(pd.DataFrame({
            "FIELD": c_field.astype(str), "TELESCOPE": "apo25m", "PLATE_IDX": c_plate,
            "AK_TRUE": c_ak, "V_ISM": c_vism, "VHELIO_TRUE": cl.RV_TRUE.to_numpy(),
            "CLUSTER": cl.CLUSTER.to_numpy(), "IS_MEMBER": cl.IS_MEMBER.to_numpy(bool),
            "IN_OCCAM_FILE": np.ones(n_c, bool)}))
    cat = pd.concat(frames, ignore_index=True)
    n = len(cat)
    ids = _unique_ids(ids, geom)
    # the star the paper excludes: an NGC 6791 member inside the cuts
    if p.include_clusters:
        cand = np.flatnonzero((cat.CLUSTER.to_numpy() == "NGC 6791") & cat.IS_MEMBER.to_numpy()
                              & (teff > 4100) & (teff < 4900) & (logg > 1.7) & (logg < 2.8))
        if cand.size:
            ids[ids == EXCLUDED_STAR] = _twomass_ids(1, geom)[0]
            ids[cand[0]] = EXCLUDED_STAR
    cat["APOGEE_ID"] = ids
    # --- observing: S/N, visits, imprint amplitudes --------------------------------
    snr = p.snr_median * np.exp(p.snr_log_sigma * geom.standard_normal(n))
    snr = np.clip(snr, 25.0, 2000.0)
    plate_ids = 4000 + np.arange(n_plates) * 7 % 9000
    nvis_plate = 1 + geom.poisson(2.0, n_plates)
    start = geom.uniform(55800, 58300, n_plates).astype(int)
    plate_mjds = [start[k] + np.cumsum(np.r_[0, geom.integers(1, 30, nvis_plate[k] - 1)])
                  for k in range(n_plates)]
    fiber = geom.integers(1, 301, n)
    pl = cat.PLATE_IDX.to_numpy()
    tel = cat.TELESCOPE.to_numpy()
    tel_of_plate = {}
    for i_pl, t_ in zip(pl.tolist(), tel.tolist()):
        tel_of_plate.setdefault(i_pl, t_)
    pattern = {k: ",".join(f"{t_}-{plate_ids[k]}-{m}-{{f}}" for m in plate_mjds[k])
               for k, t_ in tel_of_plate.items()}
    visits = np.array([pattern[k].format(f=f"{f_:03d}")
                       for k, f_ in zip(pl.tolist(), fiber.tolist())])
    vscatter = np.where(geom.random(n) < 0.03, geom.uniform(1, 10, n),
                        0.1 * np.exp(0.6 * geom.standard_normal(n)))
    nvis = nvis_plate[pl]
    vhelio = cat.VHELIO_TRUE.to_numpy() + vscatter / np.sqrt(nvis) * geom.standard_normal(n) * 0.3
    ak_targ = cat.AK_TRUE.to_numpy() + 0.01 * geom.standard_normal(n)
    dib_ew = dib_equivalent_width(cat.AK_TRUE.to_numpy(), p.dib_strength) * np.exp(
        p.dib_scatter * geom.standard_normal(n))
    tell_amp = p.telluric_residual * geom.standard_normal(n)
    sky_amp = p.sky_residual * geom.standard_normal(n)
    persist = geom.random(n) < p.persistence_fraction
    persist_amp = np.where(persist, p.persistence_amplitude * geom.exponential(1.0, n), 0.0)
    starflag = np.zeros(n, np.int64)
    starflag |= np.where(persist_amp > 0.04, 1 << 9, 0)
    starflag |= np.where((persist_amp > 0.015) & (persist_amp <= 0.04), 1 << 10, 0)
    starflag |= np.where((persist_amp > 0) & (persist_amp <= 0.015), 1 << 11, 0)
    # --- measured labels ---------------------------------------------------------
    mrng = np.random.default_rng([p.seed, _S_MEAS])
    meas = chem.measure_labels(teff, logg, feh, x_fe, snr, mrng, synthetic_gap=p.synthetic_gap)
    miss = chem.missing_mask(n, snr, mrng, p.missing_abundance_fraction)
    x_h_model = np.where(miss, apogee.MISSING, meas["x_h"])
    p_bad = p.star_bad_fraction * np.where(snr < 70, 2.0, 0.85)
    star_bad = mrng.random(n) < p_bad
    aspcapflag = np.where(star_bad, (1 << 23) | (1 << 7), 0).astype(np.int64)
    elems = list(apogee.DR16_ELEM_SYMBOL)
    x_h = np.full((n, len(elems)), apogee.MISSING, np.float32)
    for j, e in enumerate(elems):
        if e in chem.ELEMENTS:
            x_h[:, j] = x_h_model[:, chem.ELEMENTS.index(e)]
        else:  # P, Ge, Rb, Nd, Yb: poorly measured, mostly missing in DR16
            v = feh + 0.15 * mrng.standard_normal(n)
            x_h[:, j] = np.where(mrng.random(n) < 0.6, apogee.MISSING, v)
    fe_meas = meas["feh"]
    alpha_meas = alpha + 0.02 * mrng.standard_normal(n)
    allstar = pd.DataFrame({
        "APOGEE_ID": ids, "TELESCOPE": cat.TELESCOPE.to_numpy().astype(str),
        "FIELD": cat.FIELD.to_numpy().astype(str),
        "TEFF": meas["teff"].astype(np.float32), "LOGG": meas["logg"].astype(np.float32),
        "FE_H": fe_meas.astype(np.float32), "M_H": fe_meas.astype(np.float32),
        "ALPHA_M": alpha_meas.astype(np.float32),
        "ASPCAPFLAG": aspcapflag, "STARFLAG": starflag,
        "AK_TARG": ak_targ.astype(np.float32), "VHELIO_AVG": vhelio.astype(np.float32),
        "VSCATTER": vscatter.astype(np.float32), "SNR": snr.astype(np.float32),
        "NVISITS": nvis.astype(np.int32), "VISITS": visits,
    })
    allstar["X_H"] = list(x_h)  # array column
    # --- OCCAM member file ---------------------------------------------------------
    occ = np.flatnonzero(cat.IN_OCCAM_FILE.to_numpy())
    if occ.size:
        orng = np.random.default_rng([p.seed, _S_CLUSTER, 2])
        mem = cat.IS_MEMBER.to_numpy()[occ]
        u = orng.random(occ.size)
        # True members: 94% with a confident Gaia membership (CG_PROB > 0.8), the rest
        # low or unmatched, so the selection can keep >= 90% of the true members that
        # pass the cuts (chapter 3 checks it); non-members: 30% get past the 0.8 cut.
        cg = np.where(mem,
                      np.where(u < 0.94, orng.uniform(0.8, 1.0, occ.size),
                               np.where(u < 0.97, orng.uniform(0.0, 0.8, occ.size),
                                        apogee.MISSING)),
                      np.where(u < 0.3, orng.uniform(0.8, 1.0, occ.size),
                               np.where(u < 0.8, orng.uniform(0.0, 0.6, occ.size),
                                        apogee.MISSING)))
        occ_df = pd.DataFrame({
            "CLUSTER": cat.CLUSTER.to_numpy()[occ].astype(str),
            "APOGEE_ID": ids[occ],
            "VHELIO_AVG": vhelio[occ].astype(np.float32),
            "FE_H": fe_meas[occ].astype(np.float32),
            "RV_PROB": np.where(mem, orng.uniform(0.7, 1.0, occ.size),
                                orng.uniform(0.2, 0.9, occ.size)).astype(np.float32),
            "FEH_PROB": np.where(mem, orng.uniform(0.7, 1.0, occ.size),
                                 orng.uniform(0.1, 0.9, occ.size)).astype(np.float32),
            "PM_PROB": np.where(mem, orng.uniform(0.6, 1.0, occ.size),
                                orng.uniform(0.0, 0.8, occ.size)).astype(np.float32),
            "CG_PROB": cg.astype(np.float32),
        })
    else:
        occ_df = pd.DataFrame({c: [] for c in apogee.OCCAM_MEMBER_REQUIRED})
    truth = {
        "APOGEE_ID": ids, "TEFF": teff, "LOGG": logg, "FE_H": feh, "ALPHA_M": alpha,
        "X_FE": x_fe, "LATENT": latent,
        "CLUSTER": cat.CLUSTER.to_numpy().astype(str),
        "IS_MEMBER": cat.IS_MEMBER.to_numpy(bool),
        "IN_OCCAM_FILE": cat.IN_OCCAM_FILE.to_numpy(bool),
        "AK_TRUE": cat.AK_TRUE.to_numpy(), "DIB_EW": dib_ew,
        "V_ISM": cat.V_ISM.to_numpy(), "VHELIO_TRUE": cat.VHELIO_TRUE.to_numpy(),
        "PLATE": plate_ids[pl], "PLATE_IDX": pl, "SNR_TRUE": snr,
        "TELLURIC_AMP": tell_amp, "SKY_AMP": sky_amp, "PERSISTENCE_AMP": persist_amp,
        "STAR_BAD": star_bad, "MISSING": miss,
    }
    return allstar, truth, occ_df


def _occam_cluster_table(occ: pd.DataFrame, truth: dict) -> pd.DataFrame:
    table = chem.load_cluster_table()
    names = truth["CLUSTER"][truth["IN_OCCAM_FILE"] & truth["IS_MEMBER"]]
    counts = pd.Series(names).value_counts()
    out = pd.DataFrame({"NAME": table.NAME.astype(str),
                        "RV": table.RV.astype(np.float32),
                        "FE_H": table.FE_H.astype(np.float32),
                        "NUM_STARS": [int(counts.get(n, 0)) for n in table.NAME],
                        "QUAL": table.QUAL.astype(np.int16)})
    for c in table.columns:
        if c.endswith("_FE"):
            out[c] = table[c].astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

def survey_dir(params: SurveyParams) -> Path:
    """Default folder of a survey: ``cache_dir('surveys', params.key())``.

    Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).
    """
    return cache_dir("surveys", create=False) / params.key()


def is_complete_survey(path, params: SurveyParams | None = None) -> bool:
    """Whether ``path`` holds a complete survey (of ``params``, when given).

    Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).
    """
    m = Path(path) / _SURVEY_MANIFEST
    if not m.is_file():
        return False
    try:
        info = json.loads(m.read_text())
    except (OSError, ValueError):
        return False
    if not info.get("complete"):
        return False
    return params is None or info.get("key") == params.key()


def _progress(enabled: bool):
    return bool(enabled) and not os.environ.get("CI")


def _synth_block(p: SurveyParams, b: int, n_stars: int, truth: dict, models,
                 keep_model: bool = True) -> dict:
    """Spectra of random-number block ``b`` (catalogue rows b*BLOCK ... (b+1)*BLOCK-1).

    Returns dict of rows, flux, error, model (noise-free stellar spectrum, or None when
    ``keep_model`` is False), all (k, 8575) float32, and ``hard`` as (row, pixel) index
    arrays of the pixels written as flux 1e-4, error 1e10.
    """
    apo, tau, prof, inside, wave, shift_q, tell_bank, sky_bank, r_sky = models
    t = truth
    rows = np.arange(b * BLOCK, min((b + 1) * BLOCK, n_stars))
    n = rows.size
    # (the instrument model's coefficients are zero outside the chips, so is this flux)
    flux = _cannon_flux(apo, t["TEFF"][rows], t["LOGG"][rows], t["FE_H"][rows])
    _apply_elements(flux, t["X_FE"][rows], tau, p.element_response)
    model = flux.copy() if keep_model else None
    # interstellar bands at the ISM velocity, seen in the stellar rest frame
    _apply_dibs(flux, wave, t["DIB_EW"][rows], t["V_ISM"][rows] - t["VHELIO_TRUE"][rows])
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
            flux[lo:hi] += _plate_pattern(p.seed, int(plates[lo]), p.plate_systematic)
    # persistence on the blue chip (additive, decaying along the chip)
    blue = apogee.CHIPS["blue"]
    pa = t["PERSISTENCE_AMP"][rows]
    hit = np.flatnonzero(pa > 0)
    if hit.size:
        ramp = np.exp(-np.arange(blue.stop - blue.start) / 1200.0).astype(np.float32)
        flux[hit, blue] += pa[hit, None].astype(np.float32) * ramp
    # noise, from this block's own random stream
    rng = np.random.default_rng([p.seed, _S_SPEC, int(b)])
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


#: Pixel ranges outside the three chips (flux and error 0 there).
_OUT_OF_CHIP = (slice(0, apogee.CHIPS["blue"].start),
                slice(apogee.CHIPS["blue"].stop, apogee.CHIPS["green"].start),
                slice(apogee.CHIPS["green"].stop, apogee.CHIPS["red"].start),
                slice(apogee.CHIPS["red"].stop, apogee.N_PIXELS))


def _sky_bad_rate(sky_t: np.ndarray, inside: np.ndarray) -> float:
    """Fraction of in-chip pixels given inflated errors near sky lines (half above 0.25)."""
    return 0.5 * float(np.mean(sky_t[inside] > 0.25))


def _jwst_spectra(p: SurveyParams, rows: np.ndarray, jrows: np.ndarray, truth: dict,
                  nmodels) -> np.ndarray:
    """NIRSpec-like spectra of catalogue rows ``rows`` (JWST rows ``jrows``), float32."""
    nir, ntau, nwave, gap, jsnr = nmodels
    t = truth
    f = _cannon_flux(nir, t["TEFF"][rows], t["LOGG"][rows], t["FE_H"][rows])
    _apply_elements(f, t["X_FE"][rows], ntau, p.element_response)
    _apply_dibs(f, nwave, t["DIB_EW"][rows], t["V_ISM"][rows] - t["VHELIO_TRUE"][rows])
    for k, jr in enumerate(jrows):
        rng = np.random.default_rng([p.seed, _S_JWST, int(jr) + 1])
        f[k] += rng.standard_normal(f.shape[1], dtype=np.float32) / np.float32(jsnr[jr])
    if gap is not None:
        f[:, gap] = 0
    return f


def _select_jwst(p: SurveyParams, truth: dict) -> np.ndarray:
    field = truth["CLUSTER"] == ""
    box = (field & (truth["TEFF"] > 4000) & (truth["TEFF"] < 5000)
           & (truth["LOGG"] > 1.5) & (truth["LOGG"] < 3.0))
    cand = np.flatnonzero(box)
    if p.n_jwst > cand.size:
        raise ValueError(f"SurveyParams.n_jwst={p.n_jwst}: only {cand.size} field giants in "
                         f"the RSCA box; raise n_field or lower n_jwst")
    rng = np.random.default_rng([p.seed, _S_JWSTSEL])
    return np.sort(rng.choice(cand, size=p.n_jwst, replace=False))


def generate_survey(params: SurveyParams | None = None, out_dir=None, progress: bool = True,
                    overwrite: bool = False, n_threads: int | None = None) -> Path:
    """Generate (or reuse) a synthetic survey; returns its folder.

    Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).

    Layout of the folder::

        survey.json                       parameters, key, counts, timings (written last)
        sas/dr16/apogee/spectro/aspcap/r12/l33/allStar-r12-l33.fits
        sas/dr16/apogee/spectro/aspcap/r12/l33/{TELESCOPE}/{FIELD}/aspcapStar-r12-*.fits
        sas/dr16/apogee/vac/apogee-occam/occam_member-DR16.fits, occam_cluster-DR16.fits
        cache/                            spectra cache of every allStar row
        jwst/flux.npy, wavelength.npy, apogee_ids.npy, rows.npy, snr.npy
        truth.npz                         the ground truth

    The survey is cached by its parameters: if ``out_dir`` already holds a complete survey
    with the same :meth:`SurveyParams.key`, nothing is recomputed.  It is atomic: built in
    a hidden temporary folder next to ``out_dir`` and renamed into place when complete.
    It is deterministic: the same parameters give the same numbers (spectra are made in
    blocks of 256 stars, each with its own random stream).

    Parameters
    ----------
    params : SurveyParams, optional
        Default ``SurveyParams()``.
    out_dir : path-like, optional
        Default :func:`survey_dir` (``<cache>/surveys/<key>``).
    progress : bool
        Show a tqdm bar (quiet when the environment variable CI is set).
    overwrite : bool
        Rebuild even if a complete survey with the same key exists.
    n_threads : int, optional
        Threads synthesising blocks (default: the number of CPUs, at most 4).  The
        result does not depend on it.

    Returns
    -------
    pathlib.Path
        The survey folder.
    """
    from .cannon import apogee_model, nirspec_model
    from .spectra_cache import SpectraCacheWriter

    p = SurveyParams() if params is None else params
    if not isinstance(p, SurveyParams):
        raise TypeError(f"params must be a SurveyParams, got {type(p).__name__}")
    out = Path(out_dir) if out_dir is not None else survey_dir(p)
    if not overwrite and is_complete_survey(out, p):
        return out
    if out.exists() and any(out.iterdir()) and not is_complete_survey(out):
        raise FileExistsError(f"{out} exists and is not a synthetic survey; refusing to "
                              f"replace it")
    if n_threads is None:
        n_threads = min(4, os.cpu_count() or 1)
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.building-*"):
        try:
            pid = int(stale.name.split("-")[-2])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, IndexError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        timings = {}
        allstar, truth, occ = _build_catalogue(p)
        n = len(allstar)
        root = tmp / "sas"
        star_path = apogee.allstar_path(root, p.release)
        apogee.write_allstar(star_path, allstar, apogee.DR16_ELEM_SYMBOL, p.release)
        occ_dir = root.joinpath(*_OCCAM_DIR)
        apogee.write_occam_members(occ_dir / "occam_member-DR16.fits", occ)
        apogee.write_occam_clusters(occ_dir / "occam_cluster-DR16.fits",
                                    _occam_cluster_table(occ, truth))
        catalogue = apogee.read_allstar(star_path)
        timings["catalogue_s"] = time.perf_counter() - t0
        # which stars get files: OCCAM member-file stars first, then field stars
        order = np.r_[np.flatnonzero(truth["IN_OCCAM_FILE"]),
                      np.flatnonzero(~truth["IN_OCCAM_FILE"])]
        has_file = np.zeros(n, bool)
        has_file[order[:min(p.n_files, n)]] = True
        jrows = _select_jwst(p, truth) if p.n_jwst else np.zeros(0, int)
        jsnr = (p.jwst_snr_median * np.exp(0.3 * np.random.default_rng(
            [p.seed, _S_JWST]).standard_normal(jrows.size))).astype(np.float32)
        apo = apogee_model(22500.0)
        _, tau = element_templates("apogee", 22500.0)
        tell_t, sky_t = _observed_frame_templates(22500.0)
        q = _shift_index(truth["VHELIO_TRUE"])
        uq, tell_bank = _shift_bank(tell_t, q)
        _, sky_bank = _shift_bank(sky_t, q)
        models = (apo, tau, _error_profile(), apogee.chip_mask(), apogee.wavelength_grid(),
                  (uq, q), tell_bank, sky_bank,
                  _sky_bad_rate(sky_t, apogee.chip_mask()) if p.bad_pixel_rate > 0 else 0.0)
        jdir = tmp / "jwst"
        jdir.mkdir()
        if p.n_jwst:
            nir = nirspec_model(p.jwst_resolution, p.jwst_n_pixels, p.jwst_wmin, p.jwst_wmax)
            _, ntau = element_templates("nirspec", p.jwst_resolution, p.jwst_n_pixels,
                                        p.jwst_wmin, p.jwst_wmax)
            gap = None
            if p.jwst_gap is not None:
                gap = (nir.wavelength >= p.jwst_gap[0]) & (nir.wavelength <= p.jwst_gap[1])
            nmodels = (nir, ntau, nir.wavelength, gap, jsnr)
            from numpy.lib.format import open_memmap
            jflux = open_memmap(jdir / "flux.npy", mode="w+", dtype=np.float32,
                                shape=(p.n_jwst, p.jwst_n_pixels))
        pbar = None
        if _progress(progress):
            from tqdm.auto import tqdm
            pbar = tqdm(total=n, desc="synthetic survey", unit="star")
        t1 = time.perf_counter()
        import collections
        from concurrent.futures import ThreadPoolExecutor
        file_pool = ThreadPoolExecutor(max_workers=max(1, n_threads))
        file_jobs = collections.deque()
        with file_pool, _single_threaded_blas(), SpectraCacheWriter(
                tmp / "cache", catalogue, release=f"synthetic-{p.release}",
                key_extra={"survey_key": p.key()},
                key_info={"survey_params": p.to_dict()}) as w:
            n_blocks = int(np.ceil(n / BLOCK))
            file_blocks = set((np.flatnonzero(has_file) // BLOCK).tolist())

            def work(blk):
                res = _synth_block(p, blk, n, truth, models, keep_model=blk in file_blocks)
                if p.n_jwst:
                    r = res["rows"]
                    lo, hi = np.searchsorted(jrows, [r[0], r[-1] + 1])
                    res["jwst"] = (lo, hi, _jwst_spectra(p, jrows[lo:hi], np.arange(lo, hi),
                                                         truth, nmodels) if hi > lo else None)
                return res

            for blk, s in enumerate(_ordered_map(work, range(n_blocks), n_threads)):
                rows = s["rows"]
                start = int(rows[0])
                w.write(slice(start, start + rows.size), s["flux"], s["error"])
                if blk % 16 == 15:
                    _release_pages(w)
                for r in rows[has_file[rows]]:
                    k = r - start
                    file_jobs.append(file_pool.submit(
                        apogee.write_aspcapstar,
                        apogee.aspcapstar_path(root, p.release, allstar.TELESCOPE[r],
                                               allstar.FIELD[r], allstar.APOGEE_ID[r]),
                        s["flux"][k], s["error"][k], s["model"][k],
                        apogee_id=allstar.APOGEE_ID[r],
                        bad=_row_mask(s["hard"], k),
                        telescope=allstar.TELESCOPE[r], field=allstar.FIELD[r],
                        params={"TEFF": float(allstar.TEFF[r]), "LOGG": float(allstar.LOGG[r]),
                                "FE_H": float(allstar.FE_H[r]), "SNR": float(allstar.SNR[r])}))
                while len(file_jobs) > 64:  # bound the spectra held for pending files
                    file_jobs.popleft().result()
                if p.n_jwst and s["jwst"][2] is not None:
                    lo, hi, jf = s["jwst"]
                    jflux[lo:hi] = jf
                del s
                if pbar is not None:
                    pbar.update(rows.size)
            while file_jobs:  # aspcapStar files finished before the cache commits
                file_jobs.popleft().result()
        if pbar is not None:
            pbar.close()
        timings["spectra_s"] = time.perf_counter() - t1
        if p.n_jwst:
            jflux.flush()
            del jflux
            np.save(jdir / "wavelength.npy", nir.wavelength)
        else:
            np.save(jdir / "flux.npy", np.zeros((0, p.jwst_n_pixels), np.float32))
            from .cannon import nirspec_grid
            np.save(jdir / "wavelength.npy", nirspec_grid(p.jwst_n_pixels, p.jwst_wmin,
                                                          p.jwst_wmax))
        np.save(jdir / "rows.npy", jrows.astype(np.int64))
        np.save(jdir / "apogee_ids.npy", np.asarray(truth["APOGEE_ID"])[jrows].astype(str))
        np.save(jdir / "snr.npy", jsnr)
        tr = dict(truth)
        tr["HAS_FILE"] = has_file
        tr["JWST_ROW"] = np.full(n, -1, np.int64)
        tr["JWST_ROW"][jrows] = np.arange(jrows.size)
        tr["ELEMENTS"] = np.array(chem.ELEMENTS)
        tr["LATENT_SCALE"] = chem.chemical_model(p.n_latent, p.intrinsic_scatter).latent_scale
        np.savez(tmp / "truth.npz", **{k: np.asarray(v) for k, v in tr.items()})
        timings["total_s"] = time.perf_counter() - t0
        manifest = {"complete": True, "key": p.key(), "generator_version": GENERATOR_VERSION,
                    "params": p.to_dict(), "n_stars": int(n), "n_field": int(p.n_field),
                    "n_occam_rows": int(len(occ)), "n_files": int(has_file.sum()),
                    "n_jwst": int(jrows.size), "release": p.release,
                    "allstar": str(star_path.relative_to(tmp)), "timings": timings}
        (tmp / _SURVEY_MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _single_threaded_blas():
    """Context limiting BLAS to one thread: the matrix products here are small, and
    BLAS threads on top of our block threads oversubscribe the CPUs (2x slower)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _row_mask(idx: tuple, k: int) -> np.ndarray:
    """Boolean pixel mask of row ``k`` from (row, pixel) index arrays."""
    m = np.zeros(apogee.N_PIXELS, bool)
    m[idx[1][idx[0] == k]] = True
    return m


def _ordered_map(fn, items, n_threads: int):
    """``map(fn, items)`` computed by ``n_threads`` threads, yielded in order, with at
    most 2 * n_threads results in flight (numpy releases the GIL in the heavy parts)."""
    items = list(items)
    if n_threads <= 1:
        for it in items:
            yield fn(it)
        return
    import collections
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=n_threads) as ex:
        pending = collections.deque()
        it = iter(items)
        for x in it:
            pending.append(ex.submit(fn, x))
            if len(pending) >= 2 * n_threads:
                break
        for x in it:
            yield pending.popleft().result()
            pending.append(ex.submit(fn, x))
        while pending:
            yield pending.popleft().result()


def _release_pages(writer) -> None:
    """Flush written cache rows and drop them from this process's resident memory."""
    import mmap
    for arr in (getattr(writer, "_flux", None), getattr(writer, "_error", None)):
        mm = getattr(arr, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            continue
        try:
            arr.flush()
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError, AttributeError):
            pass


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------

@dataclass
class Survey:
    """A generated synthetic survey, opened lazily.

    Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).

    Attributes
    ----------
    path : pathlib.Path
        The survey folder.
    params : SurveyParams
    root : pathlib.Path
        SAS-like ``apogee_root`` (holds ``dr16/...``), so real-data code paths work on it.
    allstar : pandas.DataFrame
        :func:`helpers.apogee.read_allstar` of the allStar file (row i <-> spectrum i).
    spectra : helpers.spectra_cache.SpectraCache
        ``.flux``, ``.error`` memmaps, shape (n_stars, 8575), float32.
    occam_members, occam_clusters : pandas.DataFrame
    truth : pandas.DataFrame
        One row per allStar row: true TEFF, LOGG, FE_H, ALPHA_M, ``X_FE_<EL>`` (dex),
        ``LATENT_<k>``, CLUSTER ('' for field), IS_MEMBER, IN_OCCAM_FILE, AK_TRUE (mag),
        DIB_EW (A, 15273 band), V_ISM, VHELIO_TRUE (km/s), PLATE, SNR_TRUE,
        TELLURIC_AMP, SKY_AMP, PERSISTENCE_AMP, STAR_BAD, HAS_FILE, JWST_ROW.
    jwst : dict
        ``flux`` memmap (n_jwst, n_pix) float32, ``wavelength`` (n_pix,) A, ``apogee_ids``,
        ``rows`` (allStar rows), ``snr``.
    """

    path: Path
    params: SurveyParams
    manifest: dict = field(repr=False)

    @property
    def root(self) -> Path:
        """SAS-like root holding ``dr16/...`` (pass it as ``apogee_root``)."""
        return self.path / "sas"

    @functools.cached_property
    def allstar(self) -> pd.DataFrame:
        """The allStar catalogue (:func:`helpers.apogee.read_allstar`), row i = spectrum i."""
        return apogee.read_allstar(apogee.allstar_path(self.root, self.params.release))

    @functools.cached_property
    def spectra(self):
        """The spectra cache (:func:`helpers.spectra_cache.load_spectra_cache`)."""
        from .spectra_cache import load_spectra_cache
        return load_spectra_cache(self.path / "cache")

    @functools.cached_property
    def occam_members(self) -> pd.DataFrame:
        """The OCCAM-like member catalogue (CG_PROB -9999.99 = none)."""
        return apogee.read_occam_members(self.root.joinpath(*_OCCAM_DIR,
                                                            "occam_member-DR16.fits"))

    @functools.cached_property
    def occam_clusters(self) -> pd.DataFrame:
        """The OCCAM-like cluster catalogue of the 22 clusters."""
        return apogee.read_occam_clusters(self.root.joinpath(*_OCCAM_DIR,
                                                             "occam_cluster-DR16.fits"))

    @functools.cached_property
    def truth_arrays(self) -> dict:
        """The raw truth arrays (``X_FE`` (n, 21), ``LATENT`` (n, K), ``MISSING`` ...)."""
        with np.load(self.path / "truth.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    @functools.cached_property
    def truth(self) -> pd.DataFrame:
        """The ground truth, one row per allStar row (see the class docstring)."""
        a = self.truth_arrays
        elems = [str(e) for e in a["ELEMENTS"]]
        cols = {}
        for k, v in a.items():
            if k in ("ELEMENTS", "LATENT_SCALE", "MISSING"):
                continue
            if k == "X_FE":
                for j, e in enumerate(elems):
                    cols[f"X_FE_{e}"] = v[:, j]
            elif k == "LATENT":
                for j in range(v.shape[1]):
                    cols[f"LATENT_{j}"] = v[:, j]
            else:
                cols[k] = v
        df = pd.DataFrame(cols)
        df.attrs["elements"] = elems
        return df

    @functools.cached_property
    def jwst(self) -> dict:
        """NIRSpec twins: flux memmap (n_jwst, n_pix), wavelength (A), apogee_ids, rows
        (allStar rows), snr (the error of a pixel is 1 / snr)."""
        d = self.path / "jwst"
        return {"flux": np.load(d / "flux.npy", mmap_mode="r"),
                "wavelength": np.load(d / "wavelength.npy"),
                "apogee_ids": np.load(d / "apogee_ids.npy"),
                "rows": np.load(d / "rows.npy"), "snr": np.load(d / "snr.npy")}

    def aspcapstar_path(self, row: int) -> Path:
        """aspcapStar file of allStar row ``row`` (exists only where truth HAS_FILE)."""
        a = self.allstar
        return apogee.aspcapstar_path(self.root, self.params.release, a.TELESCOPE[row],
                                      a.FIELD[row], a.APOGEE_ID[row])

    @staticmethod
    def true_dib_windows() -> pd.DataFrame:
        """See :func:`true_dib_windows`."""
        return true_dib_windows()

    @staticmethod
    def telluric_lines() -> pd.DataFrame:
        """See :func:`telluric_lines`."""
        return telluric_lines()

    @staticmethod
    def sky_lines() -> pd.DataFrame:
        """See :func:`sky_lines`."""
        return sky_lines()


def load_survey(path_or_params) -> Survey:
    """Open a generated survey by folder or by its parameters.

    Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).

    Parameters
    ----------
    path_or_params : path-like or SurveyParams
        The survey folder, or parameters (looked up at :func:`survey_dir`).

    Returns
    -------
    Survey

    Raises
    ------
    FileNotFoundError
        No complete survey there (run :func:`generate_survey` first).
    """
    if isinstance(path_or_params, SurveyParams):
        path = survey_dir(path_or_params)
    else:
        path = Path(path_or_params)
    if not is_complete_survey(path):
        raise FileNotFoundError(f"no complete synthetic survey at {path}; generate it with "
                                f"helpers.synthetic.generate_survey(params)")
    info = json.loads((path / _SURVEY_MANIFEST).read_text())
    params = SurveyParams.from_dict(info["params"])
    if isinstance(path_or_params, SurveyParams) and params.key() != path_or_params.key():
        raise FileNotFoundError(f"survey at {path} has key {params.key()}, expected "
                                f"{path_or_params.key()}")
    return Survey(path=path, params=params, manifest=info)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def add_generate_arguments(parser) -> None:
    """Add ``--n-field``, ``--seed``, ``--out`` and one option per SurveyParams field.

    Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).
    """
    parser.add_argument("--out", default=None,
                        help="output folder (default: <cache>/surveys/<key>)")
    parser.add_argument("--paper-scale", action="store_true",
                        help="start from paper_scale_params() (238,400 field stars, 19,000 JWST)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild even if the survey exists")
    for f in dataclasses.fields(SurveyParams):
        opt = "--" + f.name.replace("_", "-")
        hlp = f"SurveyParams.{f.name} (default {f.default})"
        if f.type in ("tuple", "tuple | None") or isinstance(f.default, tuple) or \
                f.name == "jwst_gap":
            parser.add_argument(opt, type=float, nargs=2, default=None, metavar=("LO", "HI"),
                                help=hlp)
        elif isinstance(f.default, bool):
            parser.add_argument(opt, type=lambda s: s.lower() in ("1", "true", "yes"),
                                default=None, metavar="BOOL", help=hlp)
        elif isinstance(f.default, int):
            parser.add_argument(opt, type=int, default=None, help=hlp)
        elif isinstance(f.default, float):
            parser.add_argument(opt, type=float, default=None, help=hlp)
        else:
            parser.add_argument(opt, type=str, default=None, help=hlp)


def run_generate(args) -> int:
    """Run the ``generate`` command from parsed arguments; prints the survey folder.

    Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).
    """
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(SurveyParams)
          if getattr(args, f.name, None) is not None}
    try:
        params = paper_scale_params(**kw) if args.paper_scale else SurveyParams(**kw)
    except ValueError as exc:
        import sys
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = generate_survey(params, args.out, progress=not args.no_progress,
                          overwrite=args.overwrite)
    print(out)
    return 0


def main(argv=None) -> int:
    """``python -m helpers.synthetic [options]``: the same as ``helpers.survey generate``.

    Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).
    """
    import argparse
    parser = argparse.ArgumentParser(prog="python -m helpers.synthetic",
                                     description="Generate the synthetic survey.")
    add_generate_arguments(parser)
    return run_generate(parser.parse_args(argv))


if __name__ == "__main__":
    import sys
    sys.exit(main())
