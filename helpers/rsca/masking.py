"""Pixel censoring and the masks that keep non-chemical information out of RSCA.

Book: {ref}`ch-masking`

Three steps, each a function here:

1. :func:`censor` -- pixels with flux error above 0.05 (and the chip gaps) become
   missing values, as in de Mijolla & Ness (2022, section 4.1).
2. :func:`residual_curve` -- the paper's appendix A/B diagnostic: fit a K-component PCA
   on a *reference* group of stars (low extinction, or low radial velocity), project a
   *test* group (high extinction, or high radial velocity) on it, and average the absolute
   residual per pixel.  Features the reference group lacks (interstellar bands, telluric
   and sky residuals at other rest-frame positions) stand out as bumps.
3. :func:`find_windows` -- the book's automatic, documented rule that turns the bumps
   into mask windows (the paper chose its windows by eye).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from helpers.apogee.grid import N_PIXELS, chip_mask
from helpers.ppca.model import PPCA

__all__ = [
    "censor",
    "censored_fractions",
    "residual_curve",
    "WindowRule",
    "find_windows",
    "windows_to_mask",
    "windows_in_angstrom",
    "PAPER_ISM_WINDOWS",
    "band_coverage",
]

#: The interstellar windows de Mijolla & Ness masked, as 0-based pixel slices
#: (15251.8-15291.6, 15603.4-15624.8, 15653.1-15685.3, 16025.1-16091.4 A).
PAPER_ISM_WINDOWS = ((720, 910), (2370, 2470), (2600, 2750), (4300, 4600))


def censor(flux, error, max_error: float = 0.05, valid=None) -> np.ndarray:
    """Observed-pixel mask: finite flux, error at most ``max_error``, inside the chips.

    Book: {ref}`sec-censoring`

    Parameters
    ----------
    flux, error : ndarray, shape (n_stars, n_pixels)
        Normalised flux and its 1-sigma error (aspcapStar HDU1 and HDU2).
    max_error : float
        Pixels with a larger error are censored (the paper: 0.05).
    valid : ndarray of bool, shape (n_pixels,), optional
        Pixels that carry data at all; default :func:`helpers.apogee.chip_mask` when
        ``n_pixels`` is APOGEE's 8,575.

    Returns
    -------
    ndarray of bool, shape (n_stars, n_pixels)
        True where the pixel is kept.
    """
    flux = np.asarray(flux)
    error = np.asarray(error)
    if flux.shape != error.shape or flux.ndim != 2:
        raise ValueError(f"flux {flux.shape} and error {error.shape} must be 2-D of equal shape")
    if not (np.isfinite(max_error) and max_error > 0):
        raise ValueError(f"max_error must be a positive number, got {max_error!r}")
    if valid is None:
        if flux.shape[1] != N_PIXELS:
            raise ValueError(f"pass `valid` for a grid of {flux.shape[1]} pixels (not APOGEE's)")
        valid = chip_mask()
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != (flux.shape[1],):
        raise ValueError(f"valid has shape {valid.shape}, expected ({flux.shape[1]},)")
    return np.isfinite(flux) & np.isfinite(error) & (error <= max_error) & (error > 0) & valid


def censored_fractions(observed, valid) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of in-chip pixels censored, per star and per pixel.

    Book: {ref}`sec-censoring`

    Parameters
    ----------
    observed : ndarray of bool, shape (n_stars, n_pixels)
    valid : ndarray of bool, shape (n_pixels,)

    Returns
    -------
    per_star : ndarray, shape (n_stars,)
    per_pixel : ndarray, shape (n_pixels,), NaN outside ``valid``
    """
    observed = np.asarray(observed, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    per_star = 1.0 - observed[:, valid].sum(axis=1) / valid.sum()
    per_pixel = np.full(observed.shape[1], np.nan)
    per_pixel[valid] = 1.0 - observed[:, valid].mean(axis=0)
    return per_star, per_pixel


def residual_curve(flux_ref, observed_ref, flux_test, observed_test, n_components: int = 30,
                   random_state: int = 0, statistic: str = "abs", hide=None, **ppca_kwargs) -> np.ndarray:
    """Mean residual per pixel of ``test`` stars on a PCA basis of ``ref`` stars.

    Book: {ref}`sec-ism`

    A K-component PPCA with missing pixels (:class:`helpers.ppca.PPCA`) is fitted to the
    reference stars; each test star is projected by its posterior mean and reconstructed;
    the curve is the mean over test stars of ``|flux - reconstruction|`` (``statistic='abs'``,
    the paper's choice) or of ``reconstruction - flux`` (``statistic='absorption'``: positive
    where the test stars absorb more than the basis predicts) at the pixels they observe.
    The signed version averages noise down as 1/sqrt(n_test) and so shows weak absorption
    bands that the absolute value hides (chapter 4 compares them).

    A strong band also *leaks*: fitting a star's coordinates to its band pulls the
    reconstruction away from the star elsewhere, at pixels where the basis has large
    loadings, so the curve shows bumps that are not bands. ``hide`` withholds pixels (e.g.
    windows found on a first pass) from the projection only; their residual is still part
    of the curve (Book: {ref}`sec-window-leak`).

    Parameters
    ----------
    flux_ref, flux_test : ndarray, shape (n_ref, n_pixels) and (n_test, n_pixels)
    observed_ref, observed_test : ndarray of bool, same shapes
        True where a pixel is observed (see :func:`censor`).
    n_components : int
        PCA components (the paper: 30).
    statistic : {'abs', 'absorption'}
    hide : ndarray of bool, shape (n_pixels,), optional
        Pixels the test stars' projection does not see (default: none, every observed pixel).

    Returns
    -------
    ndarray, shape (n_pixels,)
        NaN at pixels no test star observes.
    """
    if statistic not in ("abs", "absorption"):
        raise ValueError(f"statistic must be 'abs' or 'absorption', got {statistic!r}")
    flux_ref, flux_test = np.asarray(flux_ref), np.asarray(flux_test)
    observed_ref = np.asarray(observed_ref, dtype=bool)
    observed_test = np.asarray(observed_test, dtype=bool)
    if flux_ref.shape != observed_ref.shape or flux_test.shape != observed_test.shape:
        raise ValueError("each flux array needs an observed mask of the same shape")
    if flux_ref.shape[1] != flux_test.shape[1]:
        raise ValueError(f"reference has {flux_ref.shape[1]} pixels, test {flux_test.shape[1]}")
    used = observed_ref.any(axis=0)
    model = PPCA(n_components, random_state=random_state, **ppca_kwargs)
    model.fit(flux_ref[:, used], mask=observed_ref[:, used])
    seen = observed_test
    if hide is not None:
        hide = np.asarray(hide, dtype=bool)
        if hide.shape != (flux_test.shape[1],):
            raise ValueError(f"hide has shape {hide.shape}, expected ({flux_test.shape[1]},)")
        seen = observed_test & ~hide
    z = model.transform(flux_test[:, used], mask=seen[:, used])
    recon = model.inverse_transform(z)
    diff = recon - flux_test[:, used]
    resid = np.where(observed_test[:, used], np.abs(diff) if statistic == "abs" else diff, 0.0)
    counts = observed_test[:, used].sum(axis=0)
    curve = np.full(flux_ref.shape[1], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve[used] = np.where(counts > 0, resid.sum(axis=0) / counts, np.nan)
    return curve


@dataclass(frozen=True)
class WindowRule:
    """The rule that turns a residual curve into mask windows.

    Book: {ref}`sec-window-rule`

    Two thresholds, as in source extraction. A pixel *seeds* a window when
    ``curve - baseline > n_sigma * noise``, where the baseline is a running median over
    ``baseline_pixels`` and the noise is 1.4826 times the median absolute deviation of
    ``curve - baseline`` over all pixels. Each seed grows over its neighbours while the
    excess stays above ``grow_sigma * noise``, so a window spans the whole feature down to
    about the noise level, not only its peak. Runs closer than ``merge_pixels`` are joined;
    runs with fewer than ``min_pixels`` seed pixels are dropped (single hot pixels); each
    surviving run grows by ``margin_angstrom`` on both sides. Before all this, a running
    median over ``despike_pixels`` removes features narrower than about half that width
    (unresolved sky-line residuals), which are not interstellar bands (0 or 1: off).

    Attributes
    ----------
    n_sigma : float
    grow_sigma : float
    baseline_pixels : int
    merge_pixels : int
    min_pixels : int
    margin_angstrom : float
    despike_pixels : int
    """

    n_sigma: float = 5.0
    grow_sigma: float = 1.0
    baseline_pixels: int = 301
    merge_pixels: int = 5
    min_pixels: int = 5
    margin_angstrom: float = 3.0
    despike_pixels: int = 7

    def __post_init__(self):
        if not self.n_sigma > 0:
            raise ValueError(f"WindowRule.n_sigma must be positive, got {self.n_sigma}")
        if not 0 < self.grow_sigma <= self.n_sigma:
            raise ValueError(f"WindowRule.grow_sigma must lie in (0, n_sigma], got {self.grow_sigma}")
        for name in ("baseline_pixels", "merge_pixels", "min_pixels"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"WindowRule.{name} must be a positive integer, got {v}")
        if int(self.despike_pixels) != self.despike_pixels or self.despike_pixels < 0:
            raise ValueError(f"WindowRule.despike_pixels must be an integer >= 0, got {self.despike_pixels}")
        if not self.margin_angstrom >= 0:
            raise ValueError(f"WindowRule.margin_angstrom must be >= 0, got {self.margin_angstrom}")


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True values."""
    padded = np.r_[False, flags, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def find_windows(curve, wavelength, rule: WindowRule = WindowRule(), valid=None):
    """Mask windows where ``curve`` rises above its own baseline (see :class:`WindowRule`).

    Book: {ref}`sec-window-rule`

    Parameters
    ----------
    curve : ndarray, shape (n_pixels,)
        E.g. from :func:`residual_curve`; NaN where undefined.
    wavelength : ndarray, shape (n_pixels,)
        Increasing, Angstrom.
    rule : WindowRule
    valid : ndarray of bool, shape (n_pixels,), optional
        Pixels to consider (default: where ``curve`` is finite). The baseline is computed
        chip by chip so that gaps do not bias it.

    Returns
    -------
    list of (start, stop) pixel index pairs (python-slice convention), sorted, disjoint.
    """
    curve = np.asarray(curve, dtype=float)
    wavelength = np.asarray(wavelength, dtype=float)
    if curve.shape != wavelength.shape or curve.ndim != 1:
        raise ValueError(f"curve {curve.shape} and wavelength {wavelength.shape} must be 1-D, equal")
    if np.any(np.diff(wavelength) <= 0):
        raise ValueError("wavelength must increase")
    ok = np.isfinite(curve) if valid is None else (np.asarray(valid, bool) & np.isfinite(curve))
    if ok.sum() < rule.baseline_pixels:
        raise ValueError(f"only {ok.sum()} usable pixels, fewer than baseline_pixels={rule.baseline_pixels}")
    excess = np.full(curve.shape, np.nan)
    for start, stop in _runs(ok):  # each contiguous stretch (chip) on its own
        seg = curve[start:stop]
        if rule.despike_pixels > 1:
            seg = median_filter(seg, size=int(rule.despike_pixels), mode="nearest")
        size = min(rule.baseline_pixels, seg.size - (1 - seg.size % 2))
        excess[start:stop] = seg - median_filter(seg, size=max(size, 1), mode="nearest")
    good = np.isfinite(excess)
    noise = 1.4826 * np.median(np.abs(excess[good] - np.median(excess[good])))
    if not noise > 0:
        raise ValueError("the residual curve has zero scatter; cannot set a threshold")
    seeds = good & (excess > rule.n_sigma * noise)
    extent = good & (excess > rule.grow_sigma * noise)
    n_seeds = np.r_[0, np.cumsum(seeds)]
    merged: list[list[int]] = []
    for a, b in _runs(extent):  # join runs split by a noise dip, then keep seeded ones
        if merged and a - merged[-1][1] < rule.merge_pixels:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    merged = [[a, b, n_seeds[b] - n_seeds[a]] for a, b in merged]
    windows = []
    for a, b, n in merged:
        if n < rule.min_pixels:
            continue
        lo = np.searchsorted(wavelength, wavelength[a] - rule.margin_angstrom, side="left")
        hi = np.searchsorted(wavelength, wavelength[b - 1] + rule.margin_angstrom, side="right")
        if windows and lo <= windows[-1][1]:
            windows[-1] = (windows[-1][0], int(hi))
        else:
            windows.append((int(lo), int(hi)))
    return windows


def windows_to_mask(windows, n_pixels: int) -> np.ndarray:
    """Boolean mask, True inside any of ``windows`` ((start, stop) pixel pairs).

    Book: {ref}`sec-window-rule`
    """
    mask = np.zeros(int(n_pixels), dtype=bool)
    for start, stop in windows:
        if not 0 <= start < stop <= n_pixels:
            raise ValueError(f"window ({start}, {stop}) outside 0..{n_pixels}")
        mask[start:stop] = True
    return mask


def windows_in_angstrom(windows, wavelength) -> list[tuple[float, float]]:
    """The (first, last) wavelength of each pixel window, Angstrom.

    Book: {ref}`sec-window-rule`
    """
    wavelength = np.asarray(wavelength)
    return [(float(wavelength[a]), float(wavelength[b - 1])) for a, b in windows]


def band_coverage(windows, wavelength, centres, half_widths, margin_angstrom: float = 1.0):
    """Whether each band ``centre +- half_width`` lies inside one window with a margin to spare.

    Book: {ref}`sec-window-truth`

    Parameters
    ----------
    windows : list of (start, stop)
        Pixel windows (python-slice convention).
    wavelength : ndarray, shape (n_pixels,)
    centres, half_widths : array_like, shape (n_bands,)
        Angstrom.
    margin_angstrom : float
        Required spare wavelength on each side.

    Returns
    -------
    covered : ndarray of bool, shape (n_bands,)
    spare : ndarray, shape (n_bands,)
        The smaller of the two spare margins (A); negative when not covered, -inf when no
        window overlaps the band.
    """
    spans = windows_in_angstrom(windows, wavelength)
    centres = np.atleast_1d(np.asarray(centres, float))
    half = np.broadcast_to(np.asarray(half_widths, float), centres.shape)
    spare = np.full(centres.shape, -np.inf)
    for i, (c, h) in enumerate(zip(centres, half)):
        for lo, hi in spans:
            if lo <= c <= hi:
                spare[i] = max(spare[i], min(c - h - lo, hi - (c + h)))
    return spare >= margin_angstrom, spare
