"""Calibrating the survey's line physics on a real star: the Arcturus atlas.

Book: {ref}`sec-arcturus`

The Arcturus atlas (Hinkle et al. 1995; ``../shared/facts/arcturus/``) is in air
wavelengths with the lines at +14.1 km/s and a resolving power of about 100,000. We
shift it to the rest frame, convert to vacuum, degrade it to APOGEE's R = 22,500 and
sample it on the APOGEE grid (:func:`atlas_on_apogee_grid`). Then

* :func:`fit_channel_departures` finds, for each response channel with strong lines in
  the atlas, the abundance departure from the Cannon that makes the model's median line
  depth match the atlas; :func:`calibrate_reference_pattern` turns these into the
  Cannon grid's own pattern at Arcturus' [Fe/H] (``data/cannon_reference_pattern.csv``);
* :func:`compare_with_atlas` gives the checks: pixel RMS per chip and median
  model/atlas depth of each species' strong lines, with held-out halves of the lines.

The atlas is never copied into the repository: every function takes its folder.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d

from helpers import apogee
from helpers.constants import C_KMS
from helpers.paths import data_dir
from helpers.spectra.cannon import air_to_vacuum, apogee_model, load_cannon_model
from helpers.survey.chemistry import ELEMENTS
from helpers.survey.linephysics import (CHANNELS, SOLAR_C_TO_O, channel_factors, line_physics,
                                        load_line_list, reference_pattern)

__all__ = [
    "ATLAS_VELOCITY_KMS", "ATLAS_RESOLUTION", "default_atlas_dir", "arcturus_labels",
    "arcturus_abundances", "load_atlas", "atlas_on_apogee_grid", "synthesize_at",
    "pixel_rms_by_chip", "line_depths", "depth_ratios", "fit_channel_departures",
    "calibrate_reference_pattern", "compare_with_atlas",
]

#: Velocity of the atlas' lines relative to the air rest frame (km/s; measured by
#: cross-correlation, ../shared/facts/arcturus/README.md).
ATLAS_VELOCITY_KMS = 14.1
#: Resolving power of the atlas (Hinkle et al. 1995).
ATLAS_RESOLUTION = 100_000.0
_ATLAS_FILE = "arct.20190830.txt"


def default_atlas_dir() -> Path:
    """``shared/facts/arcturus`` beside the repository (where CI keeps it) or one level
    higher (beside a git worktree's folder); ``$STARS_BOOK_SHARED/facts/arcturus`` first.

    Book: {ref}`sec-arcturus`
    """
    root = Path(__file__).resolve().parents[2]
    candidates = [root.parent / "shared", root.parent.parent / "shared"]
    if os.environ.get("STARS_BOOK_SHARED"):
        candidates.insert(0, Path(os.environ["STARS_BOOK_SHARED"]))
    for c in candidates:
        if (c / "facts" / "arcturus").is_dir():
            return c / "facts" / "arcturus"
    return candidates[0] / "facts" / "arcturus"


def arcturus_abundances() -> pd.DataFrame:
    """Arcturus' literature [X/Fe] (``data/arcturus_abundances.csv``), one row per element.

    Book: {ref}`sec-arcturus`
    """
    p = data_dir() / "arcturus_abundances.csv"
    if not p.is_file():
        raise FileNotFoundError(f"Arcturus abundance table {p} not found")
    df = pd.read_csv(p, comment="#")
    if list(df.element) != list(ELEMENTS):
        raise ValueError(f"{p}: needs the elements {ELEMENTS} in that order")
    return df


def arcturus_labels() -> tuple:
    """Teff (K), logg, [Fe/H] of Arcturus (Ramirez & Allende Prieto 2011) and its [X/Fe]
    as an array of shape (21,).

    Book: {ref}`sec-arcturus`
    """
    return 4286.0, 1.66, -0.52, arcturus_abundances().x_fe.to_numpy(float)


def load_atlas(atlas_dir=None) -> tuple:
    """The atlas in the vacuum rest frame at its native resolution.

    Book: {ref}`sec-arcturus`

    Parameters
    ----------
    atlas_dir : path-like, optional
        Folder holding ``arct.20190830.txt`` (default :func:`default_atlas_dir`).

    Returns
    -------
    wave : ndarray
        Vacuum rest-frame wavelengths (A).
    flux : ndarray
        Normalised flux.

    Raises
    ------
    FileNotFoundError
        With a message saying where the atlas is expected and how to point at it.
    """
    d = Path(atlas_dir) if atlas_dir is not None else default_atlas_dir()
    f = d / _ATLAS_FILE
    if not f.is_file():
        raise FileNotFoundError(
            f"the Arcturus atlas {f} is not there: it lives in the team's shared folder "
            f"(../shared/facts/arcturus beside the repository); pass its folder as "
            f"atlas_dir (chapter parameter arcturus_dir)")
    a = np.loadtxt(f)
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"{f}: expected two columns (air wavelength, flux)")
    return air_to_vacuum(a[:, 0] / (1.0 + ATLAS_VELOCITY_KMS / C_KMS)), a[:, 1]


@functools.lru_cache(maxsize=2)
def _atlas_on_grid(atlas_dir: str, resolution: float) -> np.ndarray:
    wave_v, flux = load_atlas(atlas_dir)
    fwhm = 2.0 * np.sqrt(2.0 * np.log(2.0))
    sigma = np.sqrt(resolution ** -2 - ATLAS_RESOLUTION ** -2) / fwhm  # in ln(lambda)
    step = 2e-6
    grid = np.arange(np.log(wave_v[0]), np.log(wave_v[-1]), step)
    fine = gaussian_filter1d(np.interp(grid, np.log(wave_v), flux), sigma / step,
                             mode="nearest", truncate=5.0)
    out = np.interp(np.log(apogee.wavelength_grid()), grid, fine, left=np.nan, right=np.nan)
    out[~apogee.chip_mask()] = np.nan
    return out


def atlas_on_apogee_grid(atlas_dir=None, resolution: float = 22500.0) -> np.ndarray:
    """The atlas degraded to ``resolution`` and sampled on the APOGEE grid.

    Book: {ref}`sec-arcturus`

    Returns
    -------
    ndarray, shape (8575,)
        Normalised flux; NaN outside the chips and beyond the atlas.
    """
    d = Path(atlas_dir) if atlas_dir is not None else default_atlas_dir()
    return _atlas_on_grid(str(d.resolve()), float(resolution)).copy()


def synthesize_at(teff, logg, feh, x_fe, x_ref=None, resolution: float = 22500.0,
                  factors=None) -> np.ndarray:
    """Noise-free APOGEE spectrum: the Cannon plus the line physics.

    Book: {ref}`sec-arcturus`

    Parameters
    ----------
    teff, logg, feh : float
    x_fe : array_like, shape (21,)
    x_ref : array_like, shape (21,), optional
        The reference pattern (default :func:`helpers.survey.linephysics.reference_pattern`).
    factors : array_like, shape (len(CHANNELS),), optional
        Channel factors to use instead of those of ``x_fe`` and ``x_ref``.

    Returns
    -------
    ndarray, shape (8575,), float32
    """
    apo = apogee_model(resolution)
    lv = apo.cannon.label_vector(teff, logg, feh)
    flux = (lv @ apo.theta.T).astype(np.float32)
    if factors is None:
        ref = reference_pattern([feh]) if x_ref is None else np.atleast_2d(x_ref)
        factors = channel_factors(np.atleast_2d(x_fe), ref)
    line_physics("apogee", resolution).apply(flux, lv, np.atleast_2d(factors))
    return flux[0]


def pixel_rms_by_chip(model, atlas) -> dict:
    """RMS of model - atlas over each chip and over all (fraction of the continuum).

    Book: {ref}`sec-arcturus`
    """
    out = {}
    for name, sl in apogee.CHIPS.items():
        d = np.asarray(model, float)[sl] - np.asarray(atlas, float)[sl]
        out[name] = float(np.sqrt(np.nanmean(d ** 2)))
    d = np.asarray(model, float) - np.asarray(atlas, float)
    out["all"] = float(np.sqrt(np.nanmean(d[apogee.chip_mask()] ** 2)))
    return out


def line_depths(spectrum, centres) -> np.ndarray:
    """Depth 1 - min(flux) within one pixel of each line centre (A), on the APOGEE grid.

    Book: {ref}`sec-arcturus`
    """
    wave = apogee.wavelength_grid()
    idx = np.clip(np.searchsorted(wave, np.asarray(centres, float)), 1, wave.size - 2)
    s = np.asarray(spectrum, float)
    near = np.stack([s[idx - 1], s[idx], s[idx + 1]])
    return 1.0 - np.nanmin(near, axis=0)


def _strong_lines(atlas, min_depth: float) -> pd.DataFrame:
    """Lines of the list in the chips with an atlas depth (at APOGEE resolution) above
    ``min_depth``; column ``depth_atlas`` added; 'holdout' alternates 0/1 per species."""
    wave = apogee.wavelength_grid()
    ll = load_line_list()
    i = np.clip(np.searchsorted(wave, ll.wave_vac), 0, wave.size - 1)
    ll = ll[apogee.chip_mask()[i] & (ll.wave_vac > wave[0]) & (ll.wave_vac < wave[-1])].copy()
    ll["depth_atlas"] = line_depths(atlas, ll.wave_vac)
    ll = ll[ll.depth_atlas > min_depth].reset_index(drop=True)
    ll["holdout"] = ll.groupby("species").cumcount() % 2
    return ll


def depth_ratios(model, atlas, min_depth: float = 0.15, which: str = "all") -> pd.DataFrame:
    """Median model/atlas depth of each species' strong lines.

    Book: {ref}`sec-arcturus`

    Parameters
    ----------
    model, atlas : ndarray, shape (8575,)
    min_depth : float
        Strong lines: atlas depth at APOGEE resolution above this.
    which : {'all', 'even', 'odd'}
        All lines, or alternate halves of each species' lines (to hold some out).

    Returns
    -------
    pandas.DataFrame, index species
        n_lines, median_ratio, atlas_depth (median).
    """
    ll = _strong_lines(atlas, min_depth)
    if which != "all":
        ll = ll[ll.holdout == (0 if which == "even" else 1)]
    r = line_depths(model, ll.wave_vac) / ll.depth_atlas.to_numpy()
    g = ll.assign(ratio=r).groupby("species")
    return pd.DataFrame({"n_lines": g.size(), "median_ratio": g.ratio.median(),
                         "atlas_depth": g.depth_atlas.median()})


def fit_channel_departures(atlas, labels=None, min_depth: float = 0.15, which: str = "all",
                           rounds: int = 2) -> pd.Series:
    """Per channel, the log10 abundance ratio (model over Cannon) that matches the atlas.

    Book: {ref}`sec-arcturus`

    For each response channel with strong lines, a bisection on
    :math:`\\log_{10} r_k` makes the median model/atlas depth of its lines 1, with the
    other channels at their current values (``rounds`` passes over the channels, since
    lines blend). Channels without strong lines keep 0.

    Parameters
    ----------
    atlas : ndarray, shape (8575,)
        :func:`atlas_on_apogee_grid`.
    labels : (teff, logg, feh), optional
        Default: Arcturus'.
    which : {'all', 'even', 'odd'}
        Which lines to fit on (hold the others out).

    Returns
    -------
    pandas.Series, index CHANNELS
        log10 r_k (dex).
    """
    teff, logg, feh = labels if labels is not None else arcturus_labels()[:3]
    ll = _strong_lines(atlas, min_depth)
    if which != "all":
        ll = ll[ll.holdout == (0 if which == "even" else 1)]
    log_r = np.zeros(len(CHANNELS))
    for _ in range(rounds):
        for k, ch in enumerate(CHANNELS):
            sub = ll[ll.channel == ch]
            if sub.empty:
                continue
            target = sub.depth_atlas.to_numpy()

            def excess(lr, k=k, sub=sub, target=target):
                trial = log_r.copy()
                trial[k] = lr
                f = synthesize_at(teff, logg, feh, None, factors=10.0 ** trial)
                return np.median(line_depths(f, sub.wave_vac) / target) - 1.0

            lo, hi = -1.0, 1.0
            if excess(lo) > 0 or excess(hi) < 0:
                log_r[k] = lo if excess(lo) > 0 else hi
                continue
            for _ in range(16):
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if excess(mid) > 0 else (mid, hi)
            log_r[k] = 0.5 * (lo + hi)
    return pd.Series(log_r, index=list(CHANNELS))


def calibrate_reference_pattern(atlas_dir=None, min_depth: float = 0.15) -> pd.DataFrame:
    """The Cannon grid's [X/Fe] at Arcturus' [Fe/H], measured on the atlas.

    Book: {ref}`sec-reference-pattern`

    Arcturus' literature pattern minus the departures of :func:`fit_channel_departures`
    (for CN, CO, OH: the C, N, O that give the fitted molecular density ratios). Elements
    without strong lines keep the literature value. This is what
    ``data/cannon_reference_pattern.csv`` holds (a test recomputes it).

    Returns
    -------
    pandas.DataFrame
        element, x_fe (dex), feh_anchor (-0.52), departure (dex; NaN where not measured).
    """
    teff, logg, feh, x_arc = arcturus_labels()
    atlas = atlas_on_apogee_grid(atlas_dir)
    dep = fit_channel_departures(atlas, (teff, logg, feh), min_depth)
    x = x_arc.copy()
    measured = np.full(len(ELEMENTS), np.nan)
    for ch in CHANNELS[:-3]:
        j = ELEMENTS.index(ch)
        if dep[ch] != 0.0:
            x[j] = x_arc[j] - dep[ch]
            measured[j] = dep[ch]
    # molecules: carbon from CO, then oxygen from OH, then nitrogen from CN
    ic, i_n, io = (ELEMENTS.index(e) for e in "CNO")
    c_arc = SOLAR_C_TO_O * 10 ** x_arc[ic]
    o_arc, n_arc = 10 ** x_arc[io], 10 ** x_arc[i_n]
    c_ref = c_arc / 10 ** dep["CO"]
    free_o_ref = (o_arc - c_arc) / 10 ** dep["OH"]
    o_ref = c_ref + free_o_ref
    cn_arc = c_arc * n_arc / (o_arc - c_arc)
    n_ref = cn_arc / 10 ** dep["CN"] * free_o_ref / c_ref
    for j, new in ((ic, np.log10(c_ref / SOLAR_C_TO_O)), (io, np.log10(o_ref)),
                   (i_n, np.log10(n_ref))):
        measured[j] = x_arc[j] - new
        x[j] = new
    return pd.DataFrame({"element": list(ELEMENTS), "x_fe": np.round(x, 3),
                         "feh_anchor": feh, "departure": np.round(measured, 3)})


def compare_with_atlas(atlas_dir=None, min_depth: float = 0.15) -> dict:
    """Everything chapter 2 shows about Arcturus, computed from the atlas.

    Book: {ref}`sec-arcturus`

    Returns
    -------
    dict
        ``atlas`` (8575,), ``cannon`` (the Cannon alone), ``model`` (Cannon plus line
        physics at the literature abundances), ``rms`` (DataFrame: chip x spectrum),
        ``ratios`` (DataFrame: species x {cannon, model, model held-out halves}).
    """
    teff, logg, feh, x_arc = arcturus_labels()
    atlas = atlas_on_apogee_grid(atlas_dir)
    cannon = synthesize_at(teff, logg, feh, None, factors=np.ones(len(CHANNELS)))
    model = synthesize_at(teff, logg, feh, x_arc)
    rms = pd.DataFrame({"Cannon alone": pixel_rms_by_chip(cannon, atlas),
                        "survey v5": pixel_rms_by_chip(model, atlas)})
    r_c = depth_ratios(cannon, atlas, min_depth)
    r_m = depth_ratios(model, atlas, min_depth)
    ratios = pd.DataFrame({"n_lines": r_m.n_lines, "atlas_depth": r_m.atlas_depth,
                           "Cannon alone": r_c.median_ratio, "survey v5": r_m.median_ratio})
    return {"atlas": atlas, "cannon": cannon, "model": model, "rms": rms, "ratios": ratios}


def holdout_check(atlas_dir=None, min_depth: float = 0.15) -> pd.DataFrame:
    """Depth ratios on lines the calibration did not see.

    Book: {ref}`sec-arcturus`

    The departures are fitted on alternate halves of each species' strong lines and the
    model is judged on the other half (both ways round).

    Returns
    -------
    pandas.DataFrame, index species
        'fit on even, judged on odd' and 'fit on odd, judged on even' median ratios.
    """
    teff, logg, feh, _ = arcturus_labels()
    atlas = atlas_on_apogee_grid(atlas_dir)
    out = {}
    for fit, judge in (("even", "odd"), ("odd", "even")):
        dep = fit_channel_departures(atlas, (teff, logg, feh), min_depth, which=fit)
        model = synthesize_at(teff, logg, feh, None, factors=10.0 ** dep.to_numpy())
        out[f"fit on {fit}, judged on {judge}"] = depth_ratios(model, atlas, min_depth,
                                                               which=judge).median_ratio
    return pd.DataFrame(out)


def solar_check(min_depth: float = 0.1) -> pd.DataFrame:
    """The reference pattern's other anchor: the Cannon at solar labels against the Sun.

    Book: {ref}`sec-reference-pattern`

    At Teff 5772 K, logg 4.44, [Fe/H] 0 the reference pattern is solar, so the survey's
    spectrum is the Cannon's. Its native-resolution line depths are compared with the
    solar atlas depths of the line list (no Arcturus information enters).

    Returns
    -------
    pandas.DataFrame, index species
        n_lines, median_ratio (Cannon / Sun), sun_depth (median).
    """
    ll = load_line_list()
    ll = ll[ll.depth_sun > min_depth]
    cm = load_cannon_model().to_vacuum().restricted(ll.wave_vac.min() - 5, ll.wave_vac.max() + 5)
    f = cm.flux(5772.0, 4.44, 0.0)[0].astype(float)
    idx = np.clip(np.searchsorted(cm.wavelength, ll.wave_vac), 2, cm.wavelength.size - 3)
    near = np.stack([f[idx + k] for k in (-2, -1, 0, 1, 2)])
    r = (1.0 - near.min(0)) / ll.depth_sun.to_numpy()
    g = ll.assign(ratio=r).groupby("species")
    return pd.DataFrame({"n_lines": g.size(), "median_ratio": g.ratio.median(),
                         "sun_depth": g.depth_sun.median()})
