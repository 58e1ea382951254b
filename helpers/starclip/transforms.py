"""The mock-JWST transforms (i)-(v) of the StarCLIP essay, vectorised and seeded.

Book: {ref}`sec-starclip-transforms`

Each transform acts on a batch of spectra at once (a :class:`View`: flux, observed pixels,
per-pixel errors and S/N, all of shape (n, n_pixels) or (n,)) and draws its randomness
from a ``numpy.random.Generator`` passed in, so that a seeded loop gives every star a
fresh, reproducible view at every epoch:

(i)   :class:`PaschenImputation`: the +-10 pixels around each Paschen line (9548.6,
      10052.1, 10941.1, 12821.6 A, vacuum) replaced by one fixed template star's flux;
      lines outside the grid are skipped (``skipped``);
(ii)  :class:`Denormalise`: multiplication by a fresh cubic polynomial per spectrum,
      :math:`p(x) = 1 + \\sum_{k=0}^{3} a_k x^k` with :math:`a_k \\sim U(-A, A)`, A = 0.01,
      x the wavelength mapped to [-1, 1];
(iii) :class:`StuckPixels`: 0.1 % of the pixels of each spectrum set to 1;
(iv)  :class:`NoiseToSNR`: Gaussian noise that lowers each spectrum to a target S/N drawn
      from U(30, 300) (a spectrum already noisier than its target is left as it is: noise
      cannot be removed);
(v)   :class:`GapMask`: one more wavelength interval masked, its position and width drawn
      from a kernel density estimate of NIRSpec's NRS1/NRS2 detector gap
      (:class:`GapDistribution`, built from ``data/nirspec_detector_gap.csv``).

:class:`MockJWST` chains them in this order and finally puts the fill value (the StarNet
training stars' mean flux) back into every pixel that is not observed, which is how
StarNet sees missing pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.stats import gaussian_kde

from helpers.survey.nirspec import load_detector_gap_table

__all__ = ["PASCHEN_LINES", "View", "Transform", "PaschenImputation", "Denormalise",
           "StuckPixels", "NoiseToSNR", "GapDistribution", "GapMask", "MockJWST",
           "check_gap_table"]

#: Hydrogen Paschen lines the essay imputes (vacuum Angstrom): Pa-epsilon, -delta, -gamma, -beta.
PASCHEN_LINES = (9548.6, 10052.1, 10941.1, 12821.6)


@dataclass
class View:
    """A batch of spectra on one wavelength grid, as the transforms pass it along.

    Book: {ref}`sec-starclip-transforms`

    Attributes
    ----------
    flux : ndarray, shape (n, n_pixels), float32
        Continuum-normalised flux.
    observed : ndarray, shape (n, n_pixels), bool
        False where a pixel carries no data (detector gaps, masked pixels).
    error : ndarray, shape (n, n_pixels), float32, or None
        1-sigma flux errors (needed by :class:`NoiseToSNR`).
    snr : ndarray, shape (n,), or None
        S/N per pixel of each spectrum (needed by :class:`NoiseToSNR`).
    """

    flux: np.ndarray
    observed: np.ndarray
    error: np.ndarray | None = None
    snr: np.ndarray | None = None

    def __post_init__(self):
        self.flux = np.array(self.flux, dtype=np.float32, ndmin=2)
        self.observed = np.array(self.observed, dtype=bool, ndmin=2)
        if self.observed.shape != self.flux.shape:
            raise ValueError(f"View: observed has shape {self.observed.shape}, flux "
                             f"{self.flux.shape}")
        if self.error is not None:
            self.error = np.array(self.error, dtype=np.float32, ndmin=2)
            if self.error.shape != self.flux.shape:
                raise ValueError(f"View: error has shape {self.error.shape}, flux "
                                 f"{self.flux.shape}")
        if self.snr is not None:
            self.snr = np.array(self.snr, dtype=np.float64, ndmin=1)
            if self.snr.shape != (self.flux.shape[0],):
                raise ValueError(f"View: snr has shape {self.snr.shape}, expected "
                                 f"({self.flux.shape[0]},)")

    @property
    def n_pixels(self) -> int:
        """Pixels per spectrum."""
        return int(self.flux.shape[1])


def _grid(wavelength) -> np.ndarray:
    w = np.asarray(wavelength, dtype=np.float64)
    if w.ndim != 1 or w.size < 2 or not np.all(np.diff(w) > 0):
        raise ValueError("wavelength must be a 1-D increasing grid (Angstrom)")
    return w


def _check_grid(view: View, n_pixels: int, name: str) -> None:
    if view.n_pixels != n_pixels:
        raise ValueError(f"{name}: spectra have {view.n_pixels} pixels, the transform's grid "
                         f"{n_pixels}")


def _number(name, value, low, high, low_open=False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and np.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise ValueError(f"{name} must be a number in {'(' if low_open else '['}{low:g}, "
                         f"{high:g}], got {value!r}")
    return float(value)


class Transform:
    """A mock-JWST transform: ``transform(view, rng) -> view`` (a new View; input untouched).

    Book: {ref}`sec-starclip-transforms`
    """

    name = "transform"

    def __call__(self, view: View, rng: np.random.Generator) -> View:
        """Apply the transform to a batch, drawing randomness from ``rng``."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for tables and figure captions."""
        return self.name


class PaschenImputation(Transform):
    """(i) Replace the pixels around each Paschen line by a fixed template star's flux.

    Book: {ref}`sec-starclip-transforms`

    Parameters
    ----------
    wavelength : ndarray, shape (n_pixels,)
        Vacuum wavelength grid (Angstrom).
    template_flux : ndarray, shape (n_pixels,)
        The template star's flux; it must be observed in every imputed window.
    template_error : ndarray, shape (n_pixels,), optional
        Its errors (copied into the imputed pixels, so that later noise stays consistent).
    lines : sequence of float
        Line centres (vacuum Angstrom); lines whose window does not lie on the grid are
        skipped and listed in ``skipped``.
    half_width : int
        Pixels on each side of the line's nearest pixel (the essay: 10).

    Attributes
    ----------
    pixels : ndarray of int
        Imputed pixel indices.
    used, skipped : tuple of float
        Lines imputed, and lines outside the grid.
    """

    name = "(i) Paschen imputation"

    def __init__(self, wavelength, template_flux, template_error=None, lines=PASCHEN_LINES,
                 half_width: int = 10):
        w = _grid(wavelength)
        if isinstance(half_width, bool) or int(half_width) != half_width or not 0 <= half_width <= 200:
            raise ValueError(f"half_width must be an integer in [0, 200] pixels, got {half_width!r}")
        t = np.asarray(template_flux, dtype=np.float32)
        if t.shape != w.shape:
            raise ValueError(f"template_flux has shape {t.shape}, the grid {w.shape}")
        hw = int(half_width)
        used, skipped, pix = [], [], []
        for line in lines:
            c = int(np.argmin(np.abs(w - line)))
            if not (w[0] <= line <= w[-1]) or c - hw < 0 or c + hw >= w.size:
                skipped.append(float(line))
                continue
            used.append(float(line))
            pix.append(np.arange(c - hw, c + hw + 1))
        self.pixels = np.unique(np.concatenate(pix)) if pix else np.zeros(0, np.int64)
        if not np.all(np.isfinite(t[self.pixels])):
            raise ValueError("template_flux is not finite in the imputed windows: pick a template "
                             "star observed around every Paschen line")
        self.template = t[self.pixels]
        self.template_error = (None if template_error is None else
                               np.asarray(template_error, np.float32)[self.pixels])
        self.used, self.skipped = tuple(used), tuple(skipped)
        self.n_pixels = w.size
        self.half_width = hw

    def __call__(self, view: View, rng: np.random.Generator) -> View:
        _check_grid(view, self.n_pixels, self.name)
        flux, obs = view.flux.copy(), view.observed.copy()
        flux[:, self.pixels] = self.template
        obs[:, self.pixels] = True
        err = view.error
        if err is not None and self.template_error is not None:
            err = err.copy()
            err[:, self.pixels] = self.template_error
        return replace(view, flux=flux, observed=obs, error=err)

    def describe(self) -> str:
        return (f"{self.name}: +-{self.half_width} px around "
                f"{', '.join(f'{x:.1f}' for x in self.used)} A")


class Denormalise(Transform):
    """(ii) Multiply each spectrum by a fresh cubic polynomial close to 1.

    Book: {ref}`sec-starclip-transforms`

    :math:`p(x) = 1 + \\sum_{k=0}^{d} a_k x^k`, :math:`a_k \\sim U(-A, A)`, with
    :math:`x = 2 (\\lambda - \\lambda_0) / (\\lambda_1 - \\lambda_0) - 1`, so that
    :math:`|p - 1| \\le (d + 1) A`. Errors are scaled with the flux.

    Parameters
    ----------
    wavelength : ndarray, shape (n_pixels,)
    amplitude : float
        A, in [0, 0.2] (the essay: 0.01).
    degree : int
        d, in [0, 10] (the essay: 3, cubic).
    """

    name = "(ii) denormalisation"

    def __init__(self, wavelength, amplitude: float = 0.01, degree: int = 3):
        w = _grid(wavelength)
        self.amplitude = _number("amplitude", amplitude, 0.0, 0.2)
        if isinstance(degree, bool) or int(degree) != degree or not 0 <= degree <= 10:
            raise ValueError(f"degree must be an integer in [0, 10], got {degree!r}")
        self.degree = int(degree)
        x = 2 * (w - w[0]) / (w[-1] - w[0]) - 1
        self.powers = np.vander(x, self.degree + 1, increasing=True).astype(np.float32)

    def __call__(self, view: View, rng: np.random.Generator) -> View:
        _check_grid(view, self.powers.shape[0], self.name)
        a = rng.uniform(-self.amplitude, self.amplitude,
                        (view.flux.shape[0], self.degree + 1)).astype(np.float32)
        p = 1.0 + a @ self.powers.T
        err = None if view.error is None else view.error * np.abs(p)
        return replace(view, flux=view.flux * p, error=err)

    def describe(self) -> str:
        return f"{self.name}: degree {self.degree}, A = {self.amplitude:g}"


class StuckPixels(Transform):
    """(iii) Set a fixed fraction of each spectrum's pixels, drawn afresh, to a value (1).

    Book: {ref}`sec-starclip-transforms`

    Every spectrum gets exactly ``round(fraction * n_pixels)`` such pixels (3 of 3,323 at
    0.1 %), at positions drawn uniformly (with replacement; a repeat is rare). They stay
    flagged as observed: a bad pixel nobody flagged.

    Parameters
    ----------
    fraction : float
        In [0, 0.1] (the essay: 0.001).
    value : float
        The flux they get (the essay: 1, the continuum).
    """

    name = "(iii) stuck pixels"

    def __init__(self, fraction: float = 0.001, value: float = 1.0):
        self.fraction = _number("fraction", fraction, 0.0, 0.1)
        self.value = np.float32(_number("value", value, -10.0, 10.0))

    def __call__(self, view: View, rng: np.random.Generator) -> View:
        n, p = view.flux.shape
        k = int(round(self.fraction * p))
        if k == 0:
            return view
        flux = view.flux.copy()
        cols = rng.integers(0, p, (n, k))
        flux[np.arange(n)[:, None], cols] = self.value
        return replace(view, flux=flux)

    def describe(self) -> str:
        return f"{self.name}: {self.fraction:.1%} of the pixels set to {float(self.value):g}"


class NoiseToSNR(Transform):
    """(iv) Add Gaussian noise that brings each spectrum to a target S/N drawn from U(lo, hi).

    Book: {ref}`sec-starclip-transforms`

    A spectrum with S/N :math:`s_0` and per-pixel errors :math:`\\sigma` gets noise of
    standard deviation :math:`\\sigma \\sqrt{s_0^2 / s^2 - 1}` if :math:`s < s_0`, so its
    total noise is that of S/N :math:`s`; if :math:`s \\ge s_0` it is left as it is (noise
    cannot be taken away), so the result has S/N :math:`\\min(s, s_0)`. Errors are updated.

    Parameters
    ----------
    snr_range : (float, float)
        Bounds of the uniform target S/N, 1 <= lo <= hi <= 10,000 (the essay: 30, 300).
    """

    name = "(iv) noise"

    def __init__(self, snr_range=(30.0, 300.0)):
        try:
            lo, hi = (float(x) for x in snr_range)
        except (TypeError, ValueError):
            raise ValueError(f"snr_range must be two numbers (lo, hi), got {snr_range!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and 1.0 <= lo <= hi <= 1e4):
            raise ValueError(f"snr_range must satisfy 1 <= lo <= hi <= 10000, got {snr_range!r}")
        self.snr_range = (lo, hi)

    def target(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Target S/N of ``n`` spectra, shape (n,)."""
        return rng.uniform(*self.snr_range, n)

    def __call__(self, view: View, rng: np.random.Generator) -> View:
        if view.error is None or view.snr is None:
            raise ValueError("NoiseToSNR needs the spectra's errors and S/N (View.error, View.snr)")
        n = view.flux.shape[0]
        s0 = view.snr
        s = self.target(n, rng)
        if np.any(~np.isfinite(s0) | (s0 <= 0)):
            raise ValueError("NoiseToSNR: every spectrum needs a positive, finite S/N")
        factor = np.sqrt(np.maximum(s0 ** 2 / s ** 2 - 1.0, 0.0)).astype(np.float32)
        noise = rng.standard_normal(view.flux.shape, dtype=np.float32)
        sigma = np.where(view.observed, view.error, 0.0).astype(np.float32) * factor[:, None]
        flux = view.flux + noise * sigma
        err = view.error * np.sqrt(1.0 + factor ** 2)[:, None]
        return replace(view, flux=flux, error=err, snr=np.minimum(s, s0))

    def describe(self) -> str:
        return f"{self.name}: S/N ~ U({self.snr_range[0]:g}, {self.snr_range[1]:g})"


def check_gap_table(table: pd.DataFrame) -> pd.DataFrame:
    """Check a detector-gap table; return it with ``centre_A`` and ``width_A`` columns.

    Book: {ref}`sec-starclip-transforms`

    Needs the columns ``nrs1_wave_max_um`` (end of NRS1) and ``nrs2_wave_min_um`` (start of
    NRS2); ``blended`` (1 where the two ends overlap in the source figure, so the width is
    uncertain) is optional. A negative or zero width, a missing value or too few rows give a
    ``ValueError`` naming the rows.
    """
    need = ("nrs1_wave_max_um", "nrs2_wave_min_um")
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"gap table lacks the column(s) {missing}; it has {list(table.columns)}")
    lo = pd.to_numeric(table["nrs1_wave_max_um"], errors="coerce").to_numpy(float)
    hi = pd.to_numeric(table["nrs2_wave_min_um"], errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~np.isfinite(lo) | ~np.isfinite(hi))
    if bad.size:
        raise ValueError(f"gap table: rows {bad.tolist()} have a missing or non-numeric wavelength")
    width = hi - lo
    neg = np.flatnonzero(width <= 0)
    if neg.size:
        raise ValueError(f"gap table: rows {neg.tolist()} have a negative or zero gap width "
                         f"(nrs2_wave_min_um - nrs1_wave_max_um = "
                         f"{np.round(width[neg], 4).tolist()} um); the NRS2 spectrum must start "
                         "after NRS1's ends")
    out = table.copy()
    out["centre_A"] = 0.5 * (lo + hi) * 1e4
    out["width_A"] = width * 1e4
    if "blended" not in out:
        out["blended"] = 0
    if (out["blended"] == 0).sum() < 2 or len(out) < 2:
        raise ValueError("gap table: need at least 2 shutters, 2 of them with a clean "
                         "(blended = 0) width, for a density estimate")
    return out


class GapDistribution:
    """Where NIRSpec's detector gap falls and how wide it is: a kernel density estimate.

    Book: {ref}`sec-starclip-transforms`

    The essay measured its gaps on 59 trace images that are not public. The book uses the
    published NRS1/NRS2 gap of G140H/F100LP by MSA shutter
    (``data/nirspec_detector_gap.csv``, read off msaexp's figure): Gaussian kernel density
    estimates (Scott's bandwidth, :class:`scipy.stats.gaussian_kde`) of the gap centre over
    every shutter, and of the logarithm of its width over the shutters whose two ends are
    cleanly separated (the log keeps widths positive). The width hardly changes with the
    position across the table, so the two are drawn independently.

    Parameters
    ----------
    table : pandas.DataFrame or path, optional
        A table with the columns of ``data/nirspec_detector_gap.csv`` (default: that file).
    """

    def __init__(self, table=None):
        if table is None:
            t = load_detector_gap_table()
        elif isinstance(table, pd.DataFrame):
            t = table
        else:
            t = pd.read_csv(table, comment="#")
        self.table = check_gap_table(t)
        clean = self.table["blended"].to_numpy() == 0
        self.centres = self.table["centre_A"].to_numpy(float)
        self.widths = self.table["width_A"].to_numpy(float)[clean]
        self._centre_kde = gaussian_kde(self.centres)
        self._logw_kde = gaussian_kde(np.log(self.widths))

    def sample(self, n: int, rng: np.random.Generator) -> tuple:
        """Draw ``n`` gaps: ``(start, end)`` arrays of shape (n,), vacuum Angstrom."""
        c = self._centre_kde.resample(n, seed=rng)[0]
        w = np.exp(self._logw_kde.resample(n, seed=rng)[0])
        return c - w / 2, c + w / 2

    def density(self, centre=None, width=None) -> np.ndarray:
        """The estimated density of the centre (per A) or of the width (per A) at given values."""
        if centre is not None:
            return self._centre_kde(np.asarray(centre, float))
        w = np.asarray(width, float)
        return self._logw_kde(np.log(w)) / w


class GapMask(Transform):
    """(v) Mask one more wavelength interval per spectrum, drawn from a gap distribution.

    Book: {ref}`sec-starclip-transforms`

    Parameters
    ----------
    wavelength : ndarray, shape (n_pixels,)
    gaps : GapDistribution, optional
        Default: built from ``data/nirspec_detector_gap.csv``.
    """

    name = "(v) detector-gap mask"

    def __init__(self, wavelength, gaps: GapDistribution | None = None):
        self.wavelength = _grid(wavelength)
        self.gaps = GapDistribution() if gaps is None else gaps
        self._index = np.arange(self.wavelength.size)

    def __call__(self, view: View, rng: np.random.Generator) -> View:
        _check_grid(view, self.wavelength.size, self.name)
        start, end = self.gaps.sample(view.flux.shape[0], rng)
        lo = np.searchsorted(self.wavelength, start)
        hi = np.searchsorted(self.wavelength, end)
        masked = (self._index >= lo[:, None]) & (self._index < hi[:, None])
        return replace(view, observed=view.observed & ~masked)

    def describe(self) -> str:
        return (f"{self.name}: centre {np.median(self.gaps.centres):,.0f} A (median), width "
                f"{np.median(self.gaps.widths):.0f} A (median), KDE")


class MockJWST:
    """The mock-JWST chain (i)-(v), then missing pixels set to the fill value.

    Book: {ref}`sec-starclip-transforms`

    Parameters
    ----------
    transforms : sequence of Transform
        Applied in order.
    fill : ndarray, shape (n_pixels,)
        Flux put into every pixel that is not observed at the end (StarNet's convention:
        the training stars' mean flux there).

    Examples
    --------
    >>> chain = MockJWST.essay(wave, template_flux, fill)          # doctest: +SKIP
    >>> view = chain(View(flux, observed, error, snr), np.random.default_rng([0, epoch]))
    """

    def __init__(self, transforms, fill):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"MockJWST: {t!r} is not a Transform")
        self.fill = np.asarray(fill, dtype=np.float32)

    @classmethod
    def essay(cls, wavelength, template_flux, fill, template_error=None, half_width: int = 10,
              amplitude: float = 0.01, stuck_fraction: float = 0.001, snr_range=(30.0, 300.0),
              gaps: GapDistribution | None = None, steps=("i", "ii", "iii", "iv", "v")):
        """The essay's five transforms with its settings (each a parameter), in order.

        ``steps`` selects a subset (e.g. ``("iv",)`` for noise only).
        """
        known = ("i", "ii", "iii", "iv", "v")
        bad = [s for s in steps if s not in known]
        if bad:
            raise ValueError(f"steps must be among {known}, got {bad}")
        make = {
            "i": lambda: PaschenImputation(wavelength, template_flux, template_error,
                                           half_width=half_width),
            "ii": lambda: Denormalise(wavelength, amplitude),
            "iii": lambda: StuckPixels(stuck_fraction),
            "iv": lambda: NoiseToSNR(snr_range),
            "v": lambda: GapMask(wavelength, gaps),
        }
        return cls([make[s]() for s in known if s in steps], fill)

    def __call__(self, view: View, rng: np.random.Generator) -> View:
        """Apply every transform, then fill the unobserved pixels."""
        if view.n_pixels != self.fill.size:
            raise ValueError(f"MockJWST: spectra have {view.n_pixels} pixels, the fill "
                             f"{self.fill.size}")
        for t in self.transforms:
            view = t(view, rng)
        flux = np.where(view.observed, view.flux, self.fill).astype(np.float32)
        return replace(view, flux=flux)

    def describe(self) -> list:
        """One line per transform."""
        return [t.describe() for t in self.transforms]
