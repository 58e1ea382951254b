"""NIRSpec as the survey's twins see it: grid, detector gap, errors, allowed settings.

Book: {ref}`sec-jwst`

The twins imitate NIRSpec's high-resolution grating G140H with the long-pass filter
F100LP (0.97-1.89 um, R ~ 2,700, about two pixels per resolution element; JWST user
documentation). The spectra are sampled log-uniformly at two pixels per resolution
element (:func:`twin_grid_size`) and lose the wavelengths that fall between the two
detectors, NRS1 and NRS2: where that gap lies depends on the MSA shutter the star was
observed through, as msaexp's published figure shows (``data/nirspec_detector_gap.csv``,
:func:`draw_detector_gaps`).
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from helpers.paths import data_dir

__all__ = ["G140H_F100LP_RANGE", "NIRSPEC_RANGE", "RESOLUTION_RANGE", "CANNON_MAX_VAC",
           "twin_grid_size", "load_detector_gap_table", "draw_detector_gaps",
           "check_twin_setting", "twin_errors"]

#: Wavelength range of G140H/F100LP (A; JWST user documentation).
G140H_F100LP_RANGE = (9700.0, 18900.0)
#: Wavelength range of NIRSpec (A).
NIRSPEC_RANGE = (6000.0, 53000.0)
#: Resolving powers NIRSpec offers (prism ~30 to the H gratings' ~3,600).
RESOLUTION_RANGE = (30.0, 3600.0)
#: The Cannon model ends at 18,000 A in air (18,004.9 A in vacuum); a twin's grid stays
#: short of it by the line-spread function's reach.
CANNON_MAX_VAC = 17950.0


def twin_grid_size(resolution: float, wmin: float, wmax: float,
                   pixels_per_element: float = 2.0) -> int:
    """Pixels of a log-uniform grid with ``pixels_per_element`` pixels per FWHM = lambda/R.

    Book: {ref}`sec-jwst`

    G140H/F100LP at R = 2,700 over 9,700-17,950 A: 3,323 pixels.
    """
    return int(np.ceil(np.log(wmax / wmin) * pixels_per_element * resolution))


@functools.lru_cache(maxsize=1)
def load_detector_gap_table() -> pd.DataFrame:
    """The NRS1/NRS2 gap of G140H/F100LP by MSA shutter (``data/nirspec_detector_gap.csv``).

    Book: {ref}`sec-jwst`

    Returns
    -------
    pandas.DataFrame
        grating, filter, quadrants ('Q3,Q4' or 'Q1,Q2'), shutter_column,
        nrs1_wave_max_um, nrs2_wave_min_um, blended.
    """
    p = data_dir() / "nirspec_detector_gap.csv"
    if not p.is_file():
        raise FileNotFoundError(f"detector-gap table {p} not found")
    return pd.read_csv(p, comment="#")


def draw_detector_gaps(n: int, rng: np.random.Generator) -> dict:
    """Shutter positions and the wavelength range each loses in the detector gap.

    Book: {ref}`sec-jwst`

    A star's shutter is drawn uniformly over the MSA columns spanned by the table's
    shutters in a quadrant pair chosen in proportion to that span; the gap's ends are
    interpolated linearly in column between the table's shutters of that pair (the
    figure shows the gap moving smoothly with column and little with row). Shutters
    flagged ``blended`` in the table (gap width uncertain) are used for the centre of
    the gap only, with the median width of the clean ones.

    Parameters
    ----------
    n : int
    rng : numpy.random.Generator

    Returns
    -------
    dict of ndarray, shape (n,)
        ``quadrants`` (str), ``shutter_column`` (float), ``gap_start``, ``gap_end`` (A).
    """
    t = load_detector_gap_table()
    width = (t.nrs2_wave_min_um - t.nrs1_wave_max_um)
    w_clean = float(np.median(width[t.blended == 0]))
    centre = 0.5 * (t.nrs2_wave_min_um + t.nrs1_wave_max_um)
    half = np.where(t.blended == 0, width / 2, w_clean / 2)
    groups = sorted(set(t.quadrants))
    spans = np.array([np.ptp(t.shutter_column[t.quadrants == g]) for g in groups], float)
    g_idx = rng.choice(len(groups), size=n, p=spans / spans.sum())
    quad = np.array(groups)[g_idx]
    col = np.empty(n)
    lo = np.empty(n)
    hi = np.empty(n)
    for k, g in enumerate(groups):
        sel = np.flatnonzero(g_idx == k)
        sub = t.quadrants == g
        order = np.argsort(t.shutter_column[sub].to_numpy())
        c = t.shutter_column[sub].to_numpy(float)[order]
        cc = centre[sub].to_numpy()[order]
        hh = np.asarray(half)[sub.to_numpy()][order]
        col[sel] = rng.uniform(c.min(), c.max(), sel.size)
        mid = np.interp(col[sel], c, cc)
        h = np.interp(col[sel], c, hh)
        lo[sel], hi[sel] = (mid - h) * 1e4, (mid + h) * 1e4
    return {"quadrants": quad, "shutter_column": col, "gap_start": lo, "gap_end": hi}


def check_twin_setting(resolution: float, wmin: float, wmax: float, n_pixels: int,
                       gap) -> None:
    """Raise ``ValueError`` naming the field if a twin setting is outside NIRSpec's range.

    Book: {ref}`sec-jwst`

    Parameters
    ----------
    resolution, wmin, wmax, n_pixels
        ``SurveyParams.jwst_resolution``, ``jwst_wmin``, ``jwst_wmax`` (A),
        ``jwst_n_pixels``.
    gap : 'msa', None or (start, end)
        ``SurveyParams.jwst_gap``.
    """
    def bad(name, value, why):
        raise ValueError(f"SurveyParams.{name}={value!r}: {why}")
    if not RESOLUTION_RANGE[0] <= resolution <= RESOLUTION_RANGE[1]:
        bad("jwst_resolution", resolution, f"NIRSpec's resolving powers lie in "
            f"{RESOLUTION_RANGE[0]:.0f}-{RESOLUTION_RANGE[1]:.0f} (G140H: ~2,700)")
    if wmin < NIRSPEC_RANGE[0]:
        bad("jwst_wmin", wmin, f"NIRSpec starts at {NIRSPEC_RANGE[0]:.0f} A")
    if wmax > CANNON_MAX_VAC:
        bad("jwst_wmax", wmax, f"the Cannon model (and so the twins) ends at "
            f"{CANNON_MAX_VAC:.0f} A (vacuum); NIRSpec G140H/F100LP reaches 18,900 A")
    if not wmin < wmax:
        bad("jwst_wmin", wmin, "need jwst_wmin < jwst_wmax")
    per_element = n_pixels / (np.log(wmax / wmin) * resolution)
    if not 1.0 <= per_element <= 10.0:
        bad("jwst_n_pixels", n_pixels, f"gives {per_element:.2f} pixels per resolution "
            f"element; NIRSpec samples about 2 (use {twin_grid_size(resolution, wmin, wmax)})")
    if isinstance(gap, str):
        if gap != "msa":
            bad("jwst_gap", gap, "must be 'msa' (per-star gap from the MSA shutter), None, "
                "or (start, end) in A")
        if wmax < G140H_F100LP_RANGE[0] or wmin > G140H_F100LP_RANGE[1]:
            bad("jwst_gap", gap, "the MSA gap table is for G140H/F100LP (9,700-18,900 A), "
                "which this grid does not overlap")
    elif gap is not None:
        if len(gap) != 2 or not gap[0] < gap[1]:
            bad("jwst_gap", gap, "must be 'msa', None or (start, end) in A with start < end")


def twin_errors(flux, snr, profile=None) -> np.ndarray:
    """Per-pixel 1-sigma errors of twin spectra: photon noise at the star's S/N.

    Book: {ref}`sec-jwst`

    :math:`\\sigma = \\sqrt{\\max(f, 0.05)}\\, s(\\lambda) / {\\rm SNR}` with a throughput
    profile ``s`` (median 1) that rises towards the grating's ends.

    Parameters
    ----------
    flux : ndarray, shape (n, n_pix)
        Noise-free normalised flux.
    snr : ndarray, shape (n,)
    profile : ndarray, shape (n_pix,), optional

    Returns
    -------
    ndarray, shape (n, n_pix), float32
    """
    e = np.sqrt(np.maximum(np.asarray(flux, np.float32), np.float32(0.05)))
    if profile is not None:
        e *= np.asarray(profile, np.float32)
    e /= np.asarray(snr, np.float32)[:, None]
    return e
