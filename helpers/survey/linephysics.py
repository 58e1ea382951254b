"""Line physics of the synthetic survey: element responses line by line, differential
against the Cannon.

Book: {ref}`sec-line-physics`

The Cannon of chapter 1 knows three labels. Its spectrum at (Teff, logg, [Fe/H]) is the
spectrum of a star with the *reference* abundance pattern of the grid it was trained on,
:math:`x_{\\rm ref}([{\\rm Fe/H}])` (:func:`reference_pattern`). A star whose [X/Fe]
differ from it gets, line by line,

.. math::

    \\tau_\\star(\\lambda) = \\tau_{\\rm ref}(\\lambda)\\,\\Big[1 + \\sum_k W_k(\\lambda)
        \\big(r_k - 1\\big)\\Big],\\qquad
    1 - f(\\lambda) = d_{\\max}\\big(1 - e^{-\\tau(\\lambda)}\\big),

on the Cannon's own native 0.1 A grid: :math:`\\tau_{\\rm ref}` is read off the native
Cannon flux through the saturating (Minnaert) relation on the right, :math:`W_k` is the
share of channel k (an element's atomic lines, or one of the molecules CN, CO, OH) in
the absorption at that wavelength, from the line list (:func:`load_line_list`), and
:math:`r_k` the ratio of the channel's absorbers in the star and in the reference
(:func:`channel_factors`; CN, CO and OH through the molecular equilibrium of C, N, O).
The change of native flux is then convolved with the instrument's line-spread function
(a sparse matrix to its pixels, :class:`LinePhysics`) and added to the instrument's
Cannon spectrum: the convolution comes after the exponential, so saturated lines respond
as saturated lines do, and the same physics serves APOGEE and NIRSpec.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from helpers import apogee
from helpers.constants import C_KMS
from helpers.paths import data_dir
from helpers.spectra.cannon import load_cannon_model, nirspec_grid
from helpers.survey.chemistry import ELEMENTS

__all__ = [
    "SPECIES_CHANNEL", "CHANNELS", "SOLAR_C_TO_O", "D_MAX", "LINE_WIDTH_KMS",
    "load_line_list", "molecule_densities", "channel_factors", "reference_pattern",
    "load_reference_pattern", "LinePhysics", "line_physics",
]

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

#: Which abundance channel each species' lines follow (None: no element response; the
#: lines still share the absorption with their neighbours).
SPECIES_CHANNEL = {
    "Mg I": "Mg", "Si I": "Si", "Ti I": "Ti", "Ti II": "TiII", "C I": "CI", "Ca I": "Ca",
    "Ca II": "Ca", "Al I": "Al", "K I": "K", "V I": "V", "S I": "S", "Cr I": "Cr",
    "Mn I": "Mn", "Ni I": "Ni", "Na I": "Na", "Co I": "Co", "Cu I": "Cu", "Ce II": "Ce",
    "CN": "CN", "CO": "CO", "OH": "OH", "Fe I": None, "Fe II": None, "H I": None,
}
#: Response channels: the atomic lines of every chemical-model element but Fe (which acts
#: through the Cannon's [Fe/H]) and C, N, O (which act through molecules), then CN, CO, OH.
CHANNELS = tuple([e for e in ELEMENTS if e not in ("Fe", "C", "N", "O")] + ["CN", "CO", "OH"])
#: Solar C/O by number (Asplund et al. 2009: A(C) = 8.43, A(O) = 8.69).
SOLAR_C_TO_O = 0.55
#: Largest depth a line reaches at native resolution (ratio of the surface to the continuum
#: source function): the deepest unblended atomic lines of the Arcturus atlas reach 0.72-0.76.
D_MAX = 0.85
#: Gaussian sigma (km/s) of a line's share of the absorption around its centre: Arcturus'
#: macroturbulence is 5.6 km/s (Sheminova 2015), its lines' native FWHM 0.5-0.9 A.
LINE_WIDTH_KMS = 5.0


def load_line_list(path=None) -> pd.DataFrame:
    """The line list of the line physics (``data/line_list.csv``).

    Book: {ref}`sec-line-physics`

    Parameters
    ----------
    path : path-like, optional
        A CSV file whose first line is a ``#`` comment citing its source, with columns
        ``species`` (e.g. 'Mg I', 'CN'), ``wave_vac`` (A) and ``depth_arcturus`` (line
        depth in the Arcturus atlas, 0-1; it sets each line's share of blended absorption).

    Returns
    -------
    pandas.DataFrame
        species, wave_vac, depth_arcturus, depth_sun (may be NaN), channel (None for lines
        without an element response), sorted by wavelength.

    Raises
    ------
    ValueError
        The first line does not cite a source, a column is missing, a depth lies outside
        [0, 1], or a species belongs to no element of the chemical model.
    """
    p = Path(path) if path is not None else data_dir() / "line_list.csv"
    if not p.is_file():
        raise FileNotFoundError(f"line list {p} not found")
    with open(p) as fh:
        first = fh.readline().strip()
    if not (first.startswith("#") and len(first.lstrip("# ")) >= 20):
        raise ValueError(f"line list {p}: the first line must be a '#' comment citing the "
                         f"list's source, got {first[:60]!r}")
    df = pd.read_csv(p, comment="#")
    missing = {"species", "wave_vac", "depth_arcturus"} - set(df.columns)
    if missing:
        raise ValueError(f"line list {p}: missing column(s) {sorted(missing)}")
    unknown = sorted(set(df.species) - set(SPECIES_CHANNEL))
    if unknown:
        raise ValueError(f"line list {p}: species {unknown} belong to no element of the "
                         f"chemical model (known: {sorted(SPECIES_CHANNEL)})")
    d = df.depth_arcturus.to_numpy(float)
    if not np.all(np.isfinite(d) & (d >= 0) & (d <= 1)):
        raise ValueError(f"line list {p}: depth_arcturus must lie in [0, 1]")
    if "depth_sun" not in df:
        df["depth_sun"] = np.nan
    df["channel"] = df.species.map(SPECIES_CHANNEL)
    return df.sort_values("wave_vac").reset_index(drop=True)


def molecule_densities(x_c, x_n, x_o) -> tuple:
    """Relative number densities of CN, CO and OH from [C/Fe], [N/Fe], [O/Fe].

    Book: {ref}`sec-line-physics`

    In a cool giant with C < O nearly all carbon is locked in CO, so n(CO) follows C, the
    oxygen left over for OH is O - C, and free carbon (hence CN) follows C / (O - C):

    .. math:: n_{\\rm CO} \\propto C,\\quad n_{\\rm OH} \\propto O - C,\\quad
        n_{\\rm CN} \\propto \\frac{C\\,N}{O - C},

    with C/O = 0.55 10^([C/Fe] - [O/Fe]) (solar C/O, Asplund et al. 2009).

    Parameters
    ----------
    x_c, x_n, x_o : array_like, shape (n,)
        [C/Fe], [N/Fe], [O/Fe] (dex).

    Returns
    -------
    cn, co, oh : ndarray, shape (n,)
        Proportional to the number densities (same units for every star).
    """
    c = SOLAR_C_TO_O * 10.0 ** np.asarray(x_c, float)
    o = 10.0 ** np.asarray(x_o, float)
    n = 10.0 ** np.asarray(x_n, float)
    free_o = np.maximum(o - c, 0.05 * o)  # C/O > 0.95 (carbon stars) is outside the model
    return c * n / free_o, c, free_o


def channel_factors(x_fe, x_ref, scale: float = 1.0) -> np.ndarray:
    """Ratio of each channel's absorbers, star over reference pattern.

    Book: {ref}`sec-line-physics`

    Parameters
    ----------
    x_fe, x_ref : array_like, shape (n, 21)
        The stars' and the reference [X/Fe] in :data:`helpers.survey.chemistry.ELEMENTS` order.
    scale : float
        Multiplies every departure x_fe - x_ref (1 = physical; 0 switches the chemistry
        off, leaving the Cannon).

    Returns
    -------
    ndarray, shape (n, len(CHANNELS))
        :math:`r_k`: 10^(scale (x - x_ref)) for atoms, density ratios for CN, CO, OH.
    """
    x_fe = np.atleast_2d(np.asarray(x_fe, float))
    x_ref = np.atleast_2d(np.asarray(x_ref, float))
    if x_fe.shape[1] != len(ELEMENTS) or x_ref.shape[1] != len(ELEMENTS):
        raise ValueError(f"x_fe and x_ref need {len(ELEMENTS)} columns ({ELEMENTS}), got "
                         f"{x_fe.shape} and {x_ref.shape}")
    x = x_ref + scale * (x_fe - x_ref)
    out = np.empty((x.shape[0], len(CHANNELS)))
    n_atomic = len(CHANNELS) - 3
    for k, ch in enumerate(CHANNELS[:n_atomic]):
        j = ELEMENTS.index(ch)
        out[:, k] = 10.0 ** (x[:, j] - x_ref[:, j])
    ic, i_n, io = (ELEMENTS.index(e) for e in "CNO")
    star = molecule_densities(x[:, ic], x[:, i_n], x[:, io])
    ref = molecule_densities(x_ref[:, ic], x_ref[:, i_n], x_ref[:, io])
    for k, (a, b) in enumerate(zip(star, ref)):
        out[:, n_atomic + k] = a / b
    return out


@functools.lru_cache(maxsize=1)
def load_reference_pattern() -> tuple:
    """The Cannon grid's abundance pattern as calibrated on Arcturus
    (``data/cannon_reference_pattern.csv``, written by
    :func:`helpers.survey.arcturus.calibrate_reference_pattern`).

    Book: {ref}`sec-reference-pattern`

    Returns
    -------
    feh_anchor : float
        [Fe/H] at which the pattern was measured (Arcturus, -0.52).
    x_anchor : ndarray, shape (21,)
        [X/Fe] of the grid there, :data:`helpers.survey.chemistry.ELEMENTS` order.
    """
    p = data_dir() / "cannon_reference_pattern.csv"
    if not p.is_file():
        raise FileNotFoundError(f"reference pattern {p} not found")
    df = pd.read_csv(p, comment="#")
    if set(df.element) != set(ELEMENTS):
        raise ValueError(f"{p}: needs one row per element of {ELEMENTS}")
    x = df.set_index("element").x_fe.reindex(list(ELEMENTS)).to_numpy(float)
    return float(df.feh_anchor.iloc[0]), x


def reference_pattern(feh, anchor: tuple | None = None) -> np.ndarray:
    """[X/Fe] at which a star's spectrum is the Cannon's, as a function of [Fe/H].

    Book: {ref}`sec-reference-pattern`

    The Cannon was trained on a grid of synthetic spectra (689 label points on a regular
    Teff/logg/[Fe/H] grid; thedoppler does not document the grid's abundances). We
    measure the pattern like a spectroscopist measures abundances, against standard
    stars: at [Fe/H] = 0 the Cannon reproduces the Sun's line depths (solar pattern); at
    Arcturus' [Fe/H] = -0.52 its pattern is Arcturus' literature pattern minus the
    departures that make the model's lines match the atlas (:mod:`helpers.survey.arcturus`).
    In between the pattern is linear in [Fe/H]; below -0.52 it stays at the anchor
    (an alpha plateau), above 0 it stays solar.

    Parameters
    ----------
    feh : array_like, shape (n,)
        [Fe/H] (dex).
    anchor : (float, ndarray of shape (21,)), optional
        ([Fe/H], [X/Fe]) of the low-metallicity anchor; default
        :func:`load_reference_pattern`.

    Returns
    -------
    ndarray, shape (n, 21)
    """
    feh_a, x_a = load_reference_pattern() if anchor is None else anchor
    w = np.clip(np.atleast_1d(np.asarray(feh, float)) / feh_a, 0.0, 1.0)
    return w[:, None] * np.asarray(x_a, float)[None, :]


class LinePhysics:
    """The element responses of one instrument: native-grid weights and LSF matrix.

    Book: {ref}`sec-line-physics`

    Parameters
    ----------
    wave_out : ndarray, shape (n_pix,)
        The instrument's vacuum wavelengths (A), increasing.
    resolution : float
        Resolving power of its Gaussian line-spread function.
    valid : ndarray of bool, shape (n_pix,), optional
        Pixels with data (others are never touched).
    lines : pandas.DataFrame, optional
        :func:`load_line_list` (default: the book's list).
    width_kms, d_max : float
        :data:`LINE_WIDTH_KMS` and :data:`D_MAX`.

    Attributes
    ----------
    touched : ndarray of int
        The contiguous run of output pixels an element response can change.
    wave_fine : ndarray, shape (n_fine,)
        Native Cannon wavelengths (vacuum A) near a responding line.
    weights : ndarray, shape (len(CHANNELS), n_fine), float32
        :math:`W_k(\\lambda)`.
    """

    def __init__(self, wave_out, resolution: float, valid=None, lines=None,
                 width_kms: float = LINE_WIDTH_KMS, d_max: float = D_MAX):
        wave_out = np.asarray(wave_out, float)
        if not (np.isfinite(resolution) and resolution > 0):
            raise ValueError(f"resolution must be a positive number, got {resolution!r}")
        if not 0 < d_max <= 1:
            raise ValueError(f"d_max must lie in (0, 1], got {d_max}")
        self.resolution = float(resolution)
        self.d_max = float(d_max)
        cm = load_cannon_model().to_vacuum()
        ll = load_line_list() if lines is None else lines
        ll = ll[(ll.wave_vac > wave_out[0] - 10) & (ll.wave_vac < wave_out[-1] + 10)]
        self.lines = ll.reset_index(drop=True)
        resp = ll[ll.channel.notna()]
        centre = ll.wave_vac.to_numpy(float)
        sig = centre * width_kms / C_KMS
        # native pixels within 4 sigma of a responding line carry the response
        keep = np.zeros(cm.wavelength.size, bool)
        rc = resp.wave_vac.to_numpy(float)
        rs = rc * width_kms / C_KMS
        for a, b in zip(np.searchsorted(cm.wavelength, rc - 4 * rs),
                        np.searchsorted(cm.wavelength, rc + 4 * rs)):
            keep[a:b] = True
        fine = np.flatnonzero(keep)
        self.wave_fine = cm.wavelength[fine]
        self.theta_fine = np.ascontiguousarray(cm.theta[fine].T, dtype=np.float32)
        # each line's share of the absorption: its atlas optical depth times a Gaussian
        tau_line = -np.log(np.clip(1.0 - ll.depth_arcturus.to_numpy(float), 0.02, 1.0))
        share = np.zeros((len(ll), fine.size))
        for i, (c, s, t) in enumerate(zip(centre, sig, tau_line)):
            lo, hi = np.searchsorted(self.wave_fine, [c - 5 * s, c + 5 * s])
            share[i, lo:hi] = t * np.exp(-0.5 * ((self.wave_fine[lo:hi] - c) / s) ** 2)
        total = share.sum(0) + 0.02  # 0.02: absorbers the list does not name
        chan = ll.channel.to_numpy()
        self.weights = np.stack([share[chan == k].sum(0) / total for k in CHANNELS]
                                ).astype(np.float32)
        # Gaussian LSF (constant R) from native pixels to output pixels, as a sparse matrix
        s_ln = 1.0 / (self.resolution * _FWHM_PER_SIGMA)
        ln_f, ln_o = np.log(self.wave_fine), np.log(wave_out)
        step = np.median(np.diff(np.log(cm.wavelength[fine[:2] if fine.size > 1 else [0, 1]])))
        lo = np.searchsorted(ln_o, ln_f - 5 * s_ln)
        hi = np.searchsorted(ln_o, ln_f + 5 * s_ln)
        counts = hi - lo
        cols = np.repeat(np.arange(fine.size), counts)
        rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if cols.size else \
            np.zeros(0, int)
        vals = step / (np.sqrt(2 * np.pi) * s_ln) * np.exp(
            -0.5 * ((ln_o[rows] - ln_f[cols]) / s_ln) ** 2)
        if valid is not None:
            ok = np.asarray(valid, bool)[rows]
            rows, cols, vals = rows[ok], cols[ok], vals[ok]
        # one contiguous run of output pixels (a slice is cheaper to update than an index
        # list); pixels without data inside it simply get no weight
        lo_pix, hi_pix = (int(rows.min()), int(rows.max()) + 1) if rows.size else (0, 0)
        self.touched = np.arange(lo_pix, hi_pix)
        self._slice = slice(lo_pix, hi_pix)
        remap = np.full(wave_out.size, -1)
        remap[self.touched] = np.arange(self.touched.size)
        # (n_fine, n_touched): a block of native changes times this is the pixel change
        self.lsf = sp.csr_matrix((vals.astype(np.float32), (cols, remap[rows])),
                                 shape=(fine.size, self.touched.size))
        # transposed copies for the (native pixel, star) layout of delta(), d_max folded in
        self.lsf_t = (self.lsf.T * np.float32(self.d_max)).tocsr()
        self.theta_fine_t = np.ascontiguousarray(self.theta_fine.T)
        self.weights_t = np.ascontiguousarray(self.weights.T)
        self.n_pixels = wave_out.size

    def native_flux(self, label_vector) -> np.ndarray:
        """Native-resolution Cannon flux at the fine wavelengths, (n, n_fine) float32."""
        return np.asarray(label_vector, np.float32) @ self.theta_fine

    def delta(self, label_vector, factors) -> np.ndarray:
        """Change of the instrument flux on :attr:`touched`, shape (n, n_touched), float32.

        Parameters
        ----------
        label_vector : ndarray, shape (n, n_terms)
            The Cannon label vectors of the stars (labels already clipped to its range).
        factors : ndarray, shape (n, len(CHANNELS))
            :func:`channel_factors`.

        Notes
        -----
        Computed in the transposed layout (native pixel, star), so that the sparse
        line-spread function multiplies contiguous columns without copies.
        """
        # E = exp(-tau_ref) from the saturating relation 1 - f = d (1 - E), (n_fine, n)
        e = self.theta_fine_t @ np.asarray(label_vector, np.float32).T
        e *= np.float32(1.0 / self.d_max)
        e += np.float32(1.0 - 1.0 / self.d_max)
        np.clip(e, 0.02, 1.0, out=e)
        # tau_star = tau_ref (1 + m):  f_star - f_ref = d (E^(1 + m) - E)
        m = self.weights_t @ (np.asarray(factors, np.float32) - np.float32(1.0)).T
        m += np.float32(1.0)
        t = np.log(e)
        t *= m
        np.exp(t, out=t)
        t -= e
        return (self.lsf_t @ t).T

    def apply(self, flux, label_vector, factors) -> None:
        """Add the element responses to instrument spectra ``flux`` (n, n_pix) in place."""
        flux[:, self._slice] += self.delta(label_vector, factors)


@functools.lru_cache(maxsize=4)
def line_physics(grid: str = "apogee", resolution: float = 22500.0, n_pixels: int = 0,
                 wmin: float = 0.0, wmax: float = 0.0) -> LinePhysics:
    """Cached :class:`LinePhysics` of APOGEE or of a NIRSpec-like grid.

    Book: {ref}`sec-line-physics`

    Parameters
    ----------
    grid : {'apogee', 'nirspec'}
    resolution : float
    n_pixels, wmin, wmax : int, float, float
        The NIRSpec grid (:func:`helpers.spectra.cannon.nirspec_grid`; ignored for APOGEE).
    """
    if grid == "apogee":
        return LinePhysics(apogee.wavelength_grid(), resolution, valid=apogee.chip_mask())
    if grid == "nirspec":
        return LinePhysics(nirspec_grid(n_pixels, wmin, wmax), resolution)
    raise ValueError(f"grid must be 'apogee' or 'nirspec', got {grid!r}")
