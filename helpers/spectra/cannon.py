"""The Cannon spectral model shipped with ``thedoppler``, evaluated on instrument grids.

Book: {ref}`sec-cannon-model`

The package ``thedoppler`` (MIT) carries a data-driven Cannon model of cool stars
(Ness et al. 2015): a cubic polynomial in (Teff, logg, [Fe/H]) per pixel,
normalised flux on a 0.1 A grid from 3000 to 18000 A in *air*.  The model is linear
in its coefficients ``theta``, so broadening by an instrument's line-spread function
and resampling onto a detector grid commute with evaluating it: we transform the
20 coefficient vectors once and afterwards a spectrum costs one small matrix
product, which is what makes a 150,000-star survey cheap (chapter 2).

Nothing here imports ``doppler`` itself (slow, and it needs pandas); the model is
a plain pickled dictionary located through :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from helpers.apogee.grid import chip_mask, wavelength_grid

__all__ = [
    "LABEL_NAMES",
    "CannonModel",
    "InstrumentModel",
    "air_to_vacuum",
    "vacuum_to_air",
    "cannon_model_path",
    "load_cannon_model",
    "apogee_model",
    "nirspec_grid",
    "nirspec_model",
    "NIRSPEC_RESOLUTION",
    "APOGEE_RESOLUTION",
]

LABEL_NAMES = ("TEFF", "LOGG", "FEH")
#: Resolving power of the APOGEE spectrograph (Wilson et al. 2019), used as a Gaussian LSF.
APOGEE_RESOLUTION = 22_500.0
#: Resolving power of the NIRSpec high-resolution gratings (JWST user documentation).
NIRSPEC_RESOLUTION = 2_700.0
_MODEL_FILE = "cannongrid_3000_18000_coolstars_norm_cubic_model.pkl"
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def cannon_model_path() -> Path:
    """Path of the cool-star Cannon model inside the installed ``thedoppler`` package.

    Book: {ref}`sec-cannon-model`

    Raises
    ------
    FileNotFoundError
        If ``thedoppler`` is not installed or does not ship the model file.
    """
    spec = importlib.util.find_spec("doppler")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The PyPI package 'thedoppler' (import name 'doppler') is not installed; "
            "it ships the Cannon model this book uses. Install the book with `make test` "
            "or `pip install -e .`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / _MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"thedoppler is installed but {path} is missing")
    return path


def _refractive_index_air(wave_vac: np.ndarray) -> np.ndarray:
    """Refractive index of standard air at vacuum wavelength ``wave_vac`` (Angstrom).

    The IAU standard formula of Morton (2000, ApJS 130, 403), after Ciddor (1996).
    """
    s2 = (1e4 / np.asarray(wave_vac, dtype=float)) ** 2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def vacuum_to_air(wave_vac):
    """Convert vacuum wavelengths (Angstrom) to air (Morton 2000).

    Book: {ref}`sec-air-vacuum`
    """
    wave_vac = np.asarray(wave_vac, dtype=float)
    return wave_vac / _refractive_index_air(wave_vac)


def air_to_vacuum(wave_air, n_iter: int = 3):
    """Convert air wavelengths (Angstrom) to vacuum by inverting :func:`vacuum_to_air`.

    Book: {ref}`sec-air-vacuum`

    Fixed-point iteration of ``vac = air * n(vac)``; three iterations reach 1e-9 A
    in the H band.
    """
    wave_air = np.asarray(wave_air, dtype=float)
    vac = wave_air.copy()
    for _ in range(n_iter):
        vac = wave_air * _refractive_index_air(vac)
    return vac


@dataclass(frozen=True)
class CannonModel:
    """A quadratic-or-cubic Cannon model: flux = theta @ label_vector(labels).

    Book: {ref}`sec-cannon-model`

    Attributes
    ----------
    wavelength : ndarray, shape (n_pixels,)
        Wavelengths of ``theta``'s rows, Angstrom (air for the shipped model).
    theta : ndarray, shape (n_pixels, n_terms)
        Coefficients; column 0 multiplies the constant term.
    terms : tuple
        For each non-constant term, tuple of (label index, power) pairs.
    label_median, label_scale : ndarray, shape (3,)
        Labels are scaled as ``(label - median) / scale`` before the polynomial,
        scale being the 2.5-97.5 percentile range of the training labels.
    training_labels : ndarray, shape (n_train, 3)
        Teff (K), logg (dex), [Fe/H] (dex) of the training stars.
    vacuum : bool
        Whether ``wavelength`` is in vacuum.
    """

    wavelength: np.ndarray
    theta: np.ndarray
    terms: tuple
    label_median: np.ndarray
    label_scale: np.ndarray
    training_labels: np.ndarray
    vacuum: bool = False

    @property
    def label_range(self) -> np.ndarray:
        """Min and max of each training label, shape (2, 3): where the model is trusted."""
        return np.vstack([self.training_labels.min(0), self.training_labels.max(0)])

    def label_vector(self, teff, logg, feh) -> np.ndarray:
        """Polynomial terms of the scaled labels, shape (n_stars, n_terms).

        Parameters
        ----------
        teff, logg, feh : array_like, shape (n_stars,) or scalars
            Effective temperature (K), surface gravity (log cgs), [Fe/H] (dex).
        """
        labels = np.column_stack(np.broadcast_arrays(
            np.atleast_1d(np.asarray(teff, float)),
            np.atleast_1d(np.asarray(logg, float)),
            np.atleast_1d(np.asarray(feh, float)),
        ))
        if not np.all(np.isfinite(labels)):
            raise ValueError("Cannon labels (teff, logg, feh) must be finite")
        scaled = (labels - self.label_median) / self.label_scale
        out = np.ones((labels.shape[0], 1 + len(self.terms)))
        for j, term in enumerate(self.terms, start=1):
            for index, power in term:
                out[:, j] *= scaled[:, index] ** power
        return out

    def flux(self, teff, logg, feh, dtype=np.float32) -> np.ndarray:
        """Normalised model flux, shape (n_stars, n_pixels), on ``self.wavelength``."""
        return (self.label_vector(teff, logg, feh) @ self.theta.T).astype(dtype, copy=False)

    def restricted(self, wmin: float, wmax: float) -> "CannonModel":
        """The same model on the pixels with ``wmin <= wavelength <= wmax`` only."""
        keep = (self.wavelength >= wmin) & (self.wavelength <= wmax)
        return CannonModel(self.wavelength[keep], self.theta[keep], self.terms,
                           self.label_median, self.label_scale, self.training_labels,
                           self.vacuum)

    def to_vacuum(self) -> "CannonModel":
        """The same model with wavelengths converted from air to vacuum."""
        if self.vacuum:
            return self
        return CannonModel(air_to_vacuum(self.wavelength), self.theta, self.terms,
                           self.label_median, self.label_scale, self.training_labels, True)


@functools.lru_cache(maxsize=1)
def load_cannon_model() -> CannonModel:
    """Load the cool-star Cannon model shipped by ``thedoppler`` (cached per process).

    Book: {ref}`sec-cannon-model`
    """
    path = cannon_model_path()
    with open(path, "rb") as fh:
        raw = pickle.load(fh)
    kind, spec = raw["vectorizer"]
    if kind != "PolynomialVectorizer" or tuple(spec["label_names"]) != LABEL_NAMES:
        raise ValueError(f"{path}: unexpected Cannon vectorizer {kind!r} {spec.get('label_names')}")
    terms = tuple(tuple((int(i), float(p)) for i, p in term) for term in spec["terms"])
    theta = np.asarray(raw["theta"], dtype=float)
    if theta.shape[1] != 1 + len(terms):
        raise ValueError(f"{path}: theta has {theta.shape[1]} columns for {len(terms)} terms")
    train = np.asarray(raw["training_set_labels"], dtype=float)
    lo, median, hi = np.percentile(train, [2.5, 50, 97.5], axis=0)
    return CannonModel(
        wavelength=np.asarray(raw["dispersion"], dtype=float),
        theta=theta,
        terms=terms,
        label_median=median,
        label_scale=hi - lo,
        training_labels=train,
        vacuum=bool(raw.get("wavevac", False)),
    )


@dataclass(frozen=True)
class InstrumentModel:
    """A Cannon model already broadened and resampled onto an instrument's pixels.

    Book: {ref}`sec-lsf`

    Attributes
    ----------
    name : str
    wavelength : ndarray, shape (n_pixels,)
        Vacuum wavelength of each detector pixel, Angstrom.
    theta : ndarray, shape (n_pixels, n_terms)
        Broadened, resampled coefficients (zero rows where the instrument has no data).
    resolution : float
        Resolving power R = lambda / FWHM of the Gaussian line-spread function.
    valid : ndarray of bool, shape (n_pixels,)
        Pixels that carry data (the APOGEE chips; all of NIRSpec's grid).
    cannon : CannonModel
        The underlying model (for its label vector and label range).
    """

    name: str
    wavelength: np.ndarray
    theta: np.ndarray
    resolution: float
    valid: np.ndarray
    cannon: CannonModel

    def flux(self, teff, logg, feh, dtype=np.float32) -> np.ndarray:
        """Normalised flux, shape (n_stars, n_pixels); 0 where ``valid`` is False.

        Parameters
        ----------
        teff, logg, feh : array_like, shape (n_stars,)
            Teff (K), logg (dex), [Fe/H] (dex).
        """
        out = self.cannon.label_vector(teff, logg, feh) @ self.theta.T
        return out.astype(dtype, copy=False)


def _broaden_and_resample(model: CannonModel, wave_out: np.ndarray, resolution: float,
                          oversample_dlog: float = 2.0e-6) -> np.ndarray:
    """Coefficients convolved with a Gaussian LSF of constant R and sampled at ``wave_out``.

    The model is interpolated onto a uniform grid in log10(wavelength) of step
    ``oversample_dlog`` (finer than the native 0.1 A), so that a constant resolving
    power is a constant-width Gaussian kernel; convolved; then interpolated at
    the output wavelengths.  Linear in ``theta``, so it is applied to each column.
    """
    vac = model.to_vacuum()
    sigma_dlog = 1.0 / (resolution * _FWHM_PER_SIGMA * np.log(10.0))
    pad = 6.0 * sigma_dlog  # beyond the kernel's 5-sigma truncation
    lo, hi = np.log10(wave_out.min()) - pad, np.log10(wave_out.max()) + pad
    if 10**lo < vac.wavelength[0] or 10**hi > vac.wavelength[-1]:
        raise ValueError(
            f"output grid {wave_out.min():.1f}-{wave_out.max():.1f} A lies outside the model's "
            f"{vac.wavelength[0]:.1f}-{vac.wavelength[-1]:.1f} A"
        )
    log_fine = np.arange(lo, hi, oversample_dlog)
    wave_fine = 10**log_fine
    sigma_pix = sigma_dlog / oversample_dlog
    out = np.empty((wave_out.size, vac.theta.shape[1]))
    for j in range(vac.theta.shape[1]):
        fine = np.interp(wave_fine, vac.wavelength, vac.theta[:, j])
        fine = gaussian_filter1d(fine, sigma_pix, mode="nearest", truncate=5.0)
        out[:, j] = np.interp(np.log10(wave_out), log_fine, fine)
    return out


@functools.lru_cache(maxsize=4)
def apogee_model(resolution: float = APOGEE_RESOLUTION) -> InstrumentModel:
    """The Cannon model on APOGEE's 8,575-pixel vacuum grid at resolving power R.

    Book: {ref}`sec-lsf`

    Flux is zero outside the three chips, as in aspcapStar files.
    """
    if not np.isfinite(resolution) or resolution <= 0:
        raise ValueError(f"resolution must be a positive number, got {resolution!r}")
    wave = wavelength_grid()
    valid = chip_mask()
    theta = _broaden_and_resample(load_cannon_model(), wave, resolution)
    theta[~valid] = 0.0
    return InstrumentModel("APOGEE", wave, theta, float(resolution), valid, load_cannon_model())


def nirspec_grid(n_pixels: int = 8192, wmin: float = 9000.0, wmax: float = 17950.0) -> np.ndarray:
    """A log-uniform NIRSpec-like wavelength grid (vacuum Angstrom), shape (n_pixels,).

    Book: {ref}`sec-jwst-spectrum`

    The default 0.90-1.80 um range follows the StarCLIP essay's 8,192-pixel spectra
    (the upper end stops 50 A short of the Cannon model's 18,000 A air edge).
    """
    if n_pixels < 2 or not (0 < wmin < wmax):
        raise ValueError(f"need n_pixels >= 2 and 0 < wmin < wmax, got {n_pixels}, {wmin}, {wmax}")
    return np.logspace(np.log10(wmin), np.log10(wmax), int(n_pixels))


@functools.lru_cache(maxsize=4)
def nirspec_model(resolution: float = NIRSPEC_RESOLUTION, n_pixels: int = 8192,
                  wmin: float = 9000.0, wmax: float = 17950.0) -> InstrumentModel:
    """The Cannon model at NIRSpec-like resolution on :func:`nirspec_grid`.

    Book: {ref}`sec-jwst-spectrum`
    """
    if not np.isfinite(resolution) or resolution <= 0:
        raise ValueError(f"resolution must be a positive number, got {resolution!r}")
    wave = nirspec_grid(n_pixels, wmin, wmax)
    theta = _broaden_and_resample(load_cannon_model(), wave, resolution, oversample_dlog=4e-6)
    valid = np.ones(wave.size, dtype=bool)
    return InstrumentModel("NIRSpec", wave, theta, float(resolution), valid, load_cannon_model())
