"""The chemical model of the synthetic survey: field and open-cluster labels.

Book: {ref}`sec-chemical-model`

A star's chemistry is written as a few *latent* coordinates plus a little
element-by-element noise,

.. math::

    [X_e/\\mathrm{Fe}] = \\mu_e + b_e\\,[\\mathrm{Fe/H}] + a_e\\,[\\alpha/\\mathrm{M}]
        + \\sum_{k=2}^{K-1} W_{ek}\\, z_k + \\epsilon_e ,\\qquad
        \\epsilon_e \\sim \\mathcal N(0, \\sigma_e^2),

where the latent vector is :math:`z = ([\\mathrm{Fe/H}], [\\alpha/\\mathrm{M}], z_2, \\dots,
z_{K-1})`: :math:`K` (``n_latent``) is the survey's known number of chemical
dimensions.  [Fe/H], [alpha/M], Teff and logg of field giants are drawn from 20,000
real APOGEE DR17 red giants (a random subset of 189,182), so the alpha bimodality
and the metallicity distribution are the real ones; the weaker dimensions
:math:`z_k` are Gaussian with decreasing widths.  Open clusters take the mean [Fe/H],
[X/Fe] and RV of the 22 OCCAM clusters of de Mijolla & Ness (2022) (Donor et al. 2020)
with an intrinsic scatter of 0.01-0.03 dex.

ASPCAP-like *measured* labels add noise that grows at low S/N and a smooth
Teff/logg-dependent systematic error per element -- the "synthetic gap" that makes
abundance-based chemical tagging realistically imperfect.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.apogee.allstar import DR16_ELEM_SYMBOL, RSCA_ELEMENTS
from helpers.apogee.grid import MISSING
from helpers.paths import data_dir

__all__ = [
    "ELEMENTS", "ALPHA_LOADING", "FEH_SLOPE", "OFFSET", "PRECISION",
    "ChemicalModel", "chemical_model", "load_cluster_table", "load_dr17_giant_labels",
    "sample_field_labels", "sample_cluster_labels", "giant_branch", "measure_labels",
    "missing_mask",
]

#: Elements of the chemical model: the 21 RSCA abundances (Fe included; [Fe/Fe] = 0).
ELEMENTS = tuple(RSCA_ELEMENTS)

#: Response of [X/Fe] to [alpha/M] (dex per dex): alpha elements follow the sequence.
ALPHA_LOADING = {
    "C": 0.25, "CI": 0.25, "N": -0.15, "O": 0.85, "Na": 0.2, "Mg": 1.0, "Al": 0.6,
    "Si": 0.75, "S": 0.7, "K": 0.45, "Ca": 0.6, "Ti": 0.7, "TiII": 0.6, "V": 0.3,
    "Cr": -0.05, "Mn": -0.45, "Fe": 0.0, "Co": 0.3, "Ni": 0.1, "Cu": 0.35, "Ce": -0.35,
}
#: Trend of [X/Fe] with [Fe/H] at fixed [alpha/M] (dex per dex).
FEH_SLOPE = {
    "C": -0.1, "CI": -0.1, "N": 0.15, "O": -0.15, "Na": 0.15, "Mg": -0.05, "Al": 0.05,
    "Si": -0.05, "S": -0.1, "K": -0.05, "Ca": -0.1, "Ti": -0.05, "TiII": -0.05, "V": 0.05,
    "Cr": 0.0, "Mn": 0.2, "Fe": 0.0, "Co": 0.05, "Ni": 0.05, "Cu": 0.15, "Ce": -0.1,
}
#: Offset of [X/Fe] at solar [Fe/H] and [alpha/M] = 0 (dex); N is raised by giant mixing.
OFFSET = {
    "C": -0.05, "CI": -0.05, "N": 0.25, "O": 0.02, "Na": 0.02, "Mg": 0.02, "Al": 0.0,
    "Si": 0.0, "S": 0.0, "K": -0.02, "Ca": 0.0, "Ti": -0.02, "TiII": 0.0, "V": -0.03,
    "Cr": 0.0, "Mn": -0.02, "Fe": 0.0, "Co": 0.02, "Ni": 0.02, "Cu": 0.0, "Ce": -0.05,
}
#: ASPCAP-like measurement precision at high S/N (dex): the floor of each element's error.
PRECISION = {
    "C": 0.03, "CI": 0.06, "N": 0.04, "O": 0.03, "Na": 0.10, "Mg": 0.02, "Al": 0.04,
    "Si": 0.025, "S": 0.06, "K": 0.05, "Ca": 0.03, "Ti": 0.04, "TiII": 0.08, "V": 0.09,
    "Cr": 0.05, "Mn": 0.03, "Fe": 0.01, "Co": 0.08, "Ni": 0.025, "Cu": 0.10, "Ce": 0.09,
}
#: Relative likelihood that an element's abundance is missing (-9999.99).
MISSING_WEIGHT = {e: (3.0 if PRECISION[e] >= 0.08 else 1.0) for e in ELEMENTS}
#: Elements of the DR16 allStar outside the chemical model (written with large errors and
#: mostly missing, as in DR16).
EXTRA_ELEMENTS = tuple(e for e in DR16_ELEM_SYMBOL if e not in ELEMENTS)

_LATENT_SCALES = (0.06, 0.045, 0.035, 0.03, 0.025, 0.02, 0.015, 0.012, 0.01, 0.008)


@dataclass(frozen=True)
class ChemicalModel:
    """Linear latent-factor model of [X/Fe].

    Book: {ref}`sec-chemical-model`

    Attributes
    ----------
    elements : tuple of str, length n_elem
        Element symbols (the 21 RSCA elements).
    offset, feh_slope, alpha_loading : ndarray, shape (n_elem,)
        :math:`\\mu_e`, :math:`b_e`, :math:`a_e` (dex, dex/dex, dex/dex).
    loadings : ndarray, shape (n_elem, n_latent - 2)
        :math:`W_{ek}` of the weaker dimensions (unit-norm columns, Fe row zero).
    latent_scale : ndarray, shape (n_latent - 2,)
        Standard deviation of each weaker latent coordinate (dex).
    intrinsic_scatter : float
        :math:`\\sigma_e` of the per-element noise (dex).
    """

    elements: tuple
    offset: np.ndarray
    feh_slope: np.ndarray
    alpha_loading: np.ndarray
    loadings: np.ndarray
    latent_scale: np.ndarray
    intrinsic_scatter: float

    @property
    def n_latent(self) -> int:
        """Number of latent chemical dimensions K (including [Fe/H] and [alpha/M])."""
        return 2 + self.loadings.shape[1]

    def x_fe(self, latent: np.ndarray, rng: np.random.Generator | None = None,
             scatter: float | None = None) -> np.ndarray:
        """[X/Fe] of each star from its latent coordinates.

        Parameters
        ----------
        latent : ndarray, shape (n_stars, n_latent)
            Columns [Fe/H], [alpha/M], z_2, ... (dex).
        rng : numpy.random.Generator, optional
            Draws the intrinsic scatter; without it the noise-free mean is returned.
        scatter : float, optional
            Per-element scatter (dex); default ``intrinsic_scatter``.

        Returns
        -------
        ndarray, shape (n_stars, n_elem), float64
            [X/Fe] in dex; the Fe column is exactly 0.
        """
        latent = np.atleast_2d(np.asarray(latent, float))
        if latent.shape[1] != self.n_latent:
            raise ValueError(f"latent has {latent.shape[1]} columns, the model has "
                             f"n_latent={self.n_latent}")
        out = (self.offset + latent[:, :1] * self.feh_slope
               + latent[:, 1:2] * self.alpha_loading + latent[:, 2:] @ self.loadings.T)
        if rng is not None:
            s = self.intrinsic_scatter if scatter is None else float(scatter)
            out = out + s * rng.standard_normal(out.shape)
        out[:, self.elements.index("Fe")] = 0.0
        return out

    def project(self, x_fe: np.ndarray, feh: np.ndarray) -> np.ndarray:
        """Latent coordinates that best explain given [X/Fe] (least squares).

        Parameters
        ----------
        x_fe : ndarray, shape (n, n_elem)
        feh : ndarray, shape (n,)

        Returns
        -------
        ndarray, shape (n, n_latent)
        """
        x_fe = np.atleast_2d(np.asarray(x_fe, float))
        feh = np.atleast_1d(np.asarray(feh, float))
        resid = x_fe - self.offset - feh[:, None] * self.feh_slope
        design = np.column_stack([self.alpha_loading, self.loadings])
        coef, *_ = np.linalg.lstsq(design, resid.T, rcond=None)
        return np.column_stack([feh, coef.T])


@functools.lru_cache(maxsize=16)
def chemical_model(n_latent: int = 4, intrinsic_scatter: float = 0.02,
                   seed: int = 2022) -> ChemicalModel:
    """The chemical model with ``n_latent`` dimensions (cached).

    Book: {ref}`sec-chemical-model`

    Parameters
    ----------
    n_latent : int
        Number of latent chemical dimensions K >= 2: [Fe/H], [alpha/M] and K-2 weaker
        ones with widths 0.06, 0.045, 0.035, ... dex.
    intrinsic_scatter : float
        Per-element scatter beyond the latent model (dex).
    seed : int
        Seed of the (fixed) loading directions of the weaker dimensions.

    Returns
    -------
    ChemicalModel
    """
    n_latent = int(n_latent)
    if not 2 <= n_latent <= 2 + len(_LATENT_SCALES):
        raise ValueError(f"n_latent must be between 2 and {2 + len(_LATENT_SCALES)}, "
                         f"got {n_latent}")
    if not 0 <= intrinsic_scatter < 0.5:
        raise ValueError(f"intrinsic_scatter must be in [0, 0.5) dex, got {intrinsic_scatter}")
    rng = np.random.default_rng(seed)
    n_elem = len(ELEMENTS)
    w = rng.standard_normal((n_elem, n_latent - 2))
    w[ELEMENTS.index("Fe")] = 0.0
    if w.size:
        # orthogonalise against the alpha direction, then normalise (a clean, known basis)
        alpha = np.array([ALPHA_LOADING[e] for e in ELEMENTS])
        q, _ = np.linalg.qr(np.column_stack([alpha, w]))
        w = q[:, 1:] * np.sqrt(n_elem / 4.0)
        w[ELEMENTS.index("Fe")] = 0.0
    return ChemicalModel(
        elements=ELEMENTS,
        offset=np.array([OFFSET[e] for e in ELEMENTS]),
        feh_slope=np.array([FEH_SLOPE[e] for e in ELEMENTS]),
        alpha_loading=np.array([ALPHA_LOADING[e] for e in ELEMENTS]),
        loadings=w,
        latent_scale=np.array(_LATENT_SCALES[:n_latent - 2]),
        intrinsic_scatter=float(intrinsic_scatter),
    )


def load_cluster_table(path: str | Path | None = None) -> pd.DataFrame:
    """The 22 OCCAM open clusters of de Mijolla & Ness (2022) with their mean chemistry.

    Book: {ref}`sec-clusters`

    Parameters
    ----------
    path : path-like, optional
        CSV table; default ``data/occam_clusters22.csv`` (Donor et al. 2020).

    Returns
    -------
    pandas.DataFrame, 22 rows
        NAME, NUM_STARS, QUAL, FE_H (dex), FE_H_STD_MEMBERS, RV (km/s), RV_STD_MEMBERS,
        GLON, GLAT (deg) and ``<EL>_FE`` (dex) for the OCCAM elements.
    """
    p = Path(path) if path is not None else data_dir() / "occam_clusters22.csv"
    if not p.is_file():
        raise FileNotFoundError(f"cluster table {p} not found")
    return pd.read_csv(p, comment="#")


@functools.lru_cache(maxsize=1)
def load_dr17_giant_labels() -> dict:
    """Labels of 20,000 real APOGEE DR17 red giants (``data/dr17_giant_labels.csv``).

    Book: {ref}`sec-chemical-model`

    A random subset of the DR17 giants inside 3800 < Teff < 5200 K, 1.2 < logg < 3.3
    (the survey's targeting box); its [Fe/H] percentiles and high-alpha fraction in the
    RSCA box match the full sample's to 0.005 dex and 0.1%.

    Returns
    -------
    dict of ndarray, shape (20000,), float64
        ``teff`` (K), ``logg``, ``feh``, ``alpha_m`` (dex).
    """
    p = data_dir() / "dr17_giant_labels.csv"
    if not p.is_file():
        raise FileNotFoundError(f"giant label table {p} not found")
    df = pd.read_csv(p, comment="#")
    return {k: df[k].to_numpy(float) for k in ("teff", "logg", "feh", "alpha_m")}


def sample_field_labels(n: int, rng: np.random.Generator, model: ChemicalModel,
                        teff_range=(3800.0, 5200.0), logg_range=(1.2, 3.3)) -> dict:
    """True labels of ``n`` field giants.

    Book: {ref}`sec-chemical-model`

    Teff, logg, [Fe/H] and [alpha/M] are resampled (with small jitter) from real DR17
    red giants (:func:`load_dr17_giant_labels`) inside ``teff_range`` x ``logg_range``
    (the survey's targeting box, wider
    than the RSCA selection so that the cuts matter); the weaker latent coordinates are
    Gaussian; [X/Fe] follows :meth:`ChemicalModel.x_fe`.

    Parameters
    ----------
    n : int
        Number of stars.
    rng : numpy.random.Generator
    model : ChemicalModel
    teff_range, logg_range : tuple of float
        Targeting box (K, dex).

    Returns
    -------
    dict of ndarray
        ``teff`` (n,) K, ``logg`` (n,), ``feh`` (n,), ``alpha_m`` (n,),
        ``latent`` (n, n_latent), ``x_fe`` (n, n_elem) dex.
    """
    real = load_dr17_giant_labels()
    box = ((real["teff"] > teff_range[0]) & (real["teff"] < teff_range[1])
           & (real["logg"] > logg_range[0]) & (real["logg"] < logg_range[1]))
    idx = np.flatnonzero(box)
    if idx.size < 100:
        raise ValueError(f"targeting box teff_range={teff_range}, logg_range={logg_range} "
                         f"holds only {idx.size} of the DR17 giants (need >= 100)")
    pick = idx[rng.integers(0, idx.size, n)]
    teff = real["teff"][pick] + rng.normal(0, 15, n)
    logg = real["logg"][pick] + rng.normal(0, 0.02, n)
    feh = real["feh"][pick] + rng.normal(0, 0.01, n)
    alpha = real["alpha_m"][pick] + rng.normal(0, 0.005, n)
    latent = np.column_stack([feh, alpha,
                              rng.standard_normal((n, model.n_latent - 2)) * model.latent_scale])
    return {"teff": np.asarray(teff, float), "logg": np.asarray(logg, float),
            "feh": np.asarray(feh, float), "alpha_m": np.asarray(alpha, float),
            "latent": latent, "x_fe": model.x_fe(latent, rng)}


def giant_branch(n: int, feh: float, rng: np.random.Generator,
                 logg_range=(1.0, 3.6), clump_fraction: float = 0.3) -> tuple:
    """Teff and logg of ``n`` cluster giants along a red-giant branch plus a red clump.

    Book: {ref}`sec-clusters`

    The branch is Teff = 4620 + 330 (logg - 2.5) - 280 [Fe/H] K with 40 K scatter; clump
    stars sit at logg 2.45 +- 0.08, 80 K hotter.  Members spread across and beyond the
    RSCA cuts (4000-5000 K, logg 1.5-3.0).

    Returns
    -------
    teff, logg : ndarray, shape (n,)
    """
    clump = rng.random(n) < clump_fraction
    logg = np.where(clump, rng.normal(2.45, 0.08, n), rng.uniform(*logg_range, n))
    teff = 4620 + 330 * (logg - 2.5) - 280 * feh + np.where(clump, 80.0, 0.0)
    teff = teff + rng.normal(0, 40, n)
    return teff, logg


def _cluster_x_fe(row: pd.Series) -> np.ndarray:
    """Mean [X/Fe] of a cluster in ELEMENTS order (CI from C, TiII from Ti; Fe 0)."""
    out = []
    for e in ELEMENTS:
        col = {"CI": "C_FE", "TiII": "TI_FE"}.get(e, f"{e.upper()}_FE")
        v = row.get(col, np.nan) if e != "Fe" else 0.0
        out.append(0.0 if not np.isfinite(v) else float(v))
    return np.array(out)


def sample_cluster_labels(clusters: pd.DataFrame, model: ChemicalModel,
                          rng: np.random.Generator, scatter: float = 0.02,
                          member_factor: float = 0.85, contaminant_fraction: float = 0.15
                          ) -> pd.DataFrame:
    """True labels of cluster members and of field contaminants seen towards clusters.

    Book: {ref}`sec-clusters`

    Each cluster gets Poisson(``member_factor * NUM_STARS``) true members (at least 6) spread
    along a giant branch (:func:`giant_branch`). The cluster's latent vector is projected
    from the real OCCAM mean abundances; its mean [X/Fe] is the chemical model at that
    latent vector plus one draw of the model's intrinsic scatter (so clusters live in the
    same n_latent-dimensional space as the field); members add ``scatter`` (dex) per
    element.  Contaminants (``contaminant_fraction`` of the members, at least one per
    cluster) are field-like stars in the same direction with RVs near the cluster's.

    Parameters
    ----------
    clusters : pandas.DataFrame
        As returned by :func:`load_cluster_table`.
    model : ChemicalModel
    rng : numpy.random.Generator
    scatter : float
        Intrinsic abundance scatter of members (dex), 0.01-0.03 for real clusters.
    member_factor : float
        True members per OCCAM-catalogued member.
    contaminant_fraction : float
        Non-members per true member listed in the member file.

    Returns
    -------
    pandas.DataFrame
        One row per star: CLUSTER, IS_MEMBER, teff, logg, feh, alpha_m, RV_TRUE (km/s),
        ``latent`` and ``x_fe`` as object columns of arrays.
    """
    if not 0 <= scatter < 0.5:
        raise ValueError(f"cluster scatter must be in [0, 0.5) dex, got {scatter}")
    rows = []
    alpha_idx = [ELEMENTS.index(e) for e in ("O", "Mg", "Si", "S", "Ca", "Ti")]
    for _, c in clusters.iterrows():
        real_x = _cluster_x_fe(c)
        lat = model.project(real_x[None, :], np.array([c.FE_H]))[0]
        lat[1] = float(np.mean(real_x[alpha_idx]))  # alpha coordinate from alpha elements
        # The cluster's mean chemistry follows the same latent model as the field: the real
        # OCCAM means only place it in latent space. Like one field star, the birth cloud
        # gets its own per-element intrinsic deviation, drawn once and shared by its
        # members; so the survey has exactly n_latent chemical dimensions plus isotropic
        # scatter, and chapter 6 can check whether the method finds that number.
        mean_x = model.x_fe(lat[None, :], rng)[0]
        n_mem = max(6, rng.poisson(member_factor * float(c.NUM_STARS)))
        n_con = max(1, rng.poisson(contaminant_fraction * n_mem))
        teff, logg = giant_branch(n_mem, float(c.FE_H), rng)
        rv_sd = min(float(c.RV_STD_MEMBERS) if np.isfinite(c.RV_STD_MEMBERS) else 0.7, 0.8)
        for i in range(n_mem):
            x = mean_x + scatter * rng.standard_normal(mean_x.size)
            x[ELEMENTS.index("Fe")] = 0.0
            rows.append(dict(CLUSTER=c.NAME, IS_MEMBER=True, teff=teff[i], logg=logg[i],
                             feh=float(c.FE_H) + scatter * rng.standard_normal(),
                             alpha_m=lat[1], RV_TRUE=float(c.RV) + rv_sd * rng.standard_normal(),
                             latent=lat.copy(), x_fe=x))
        # contaminants: field chemistry near the cluster's metallicity and velocity
        for i in range(n_con):
            feh = float(c.FE_H) + rng.normal(0, 0.25)
            alpha = max(-0.05, rng.normal(0.04, 0.05))
            latc = np.concatenate([[feh, alpha],
                                   rng.standard_normal(model.n_latent - 2) * model.latent_scale])
            t, g = giant_branch(1, feh, rng)
            rows.append(dict(CLUSTER=c.NAME, IS_MEMBER=False, teff=t[0], logg=g[0], feh=feh,
                             alpha_m=alpha, RV_TRUE=float(c.RV) + rng.normal(0, 6.0),
                             latent=latc, x_fe=model.x_fe(latc[None, :], rng)[0]))
    return pd.DataFrame(rows)


def measure_labels(teff, logg, feh, x_fe, snr, rng: np.random.Generator, *,
                   synthetic_gap: float = 0.03, gap_seed: int = 7) -> dict:
    """ASPCAP-like derived labels: truth + S/N-dependent noise + Teff/logg systematics.

    Book: {ref}`sec-measured`

    For element e the measured [X/H] is

    .. math:: [X/H]_e^{\\rm meas} = [X/H]_e + \\sigma_e\\sqrt{1 + (100/{\\rm SNR})^2}\\,\\epsilon
        + g\\,(c_{e1} \\tau + c_{e2} \\gamma + c_{e3} \\tau^2),

    with :math:`\\tau = (T_{\\rm eff} - 4500)/500`, :math:`\\gamma = \\log g - 2.5`,
    :math:`c` fixed standard-normal coefficients and :math:`g` = ``synthetic_gap``.

    Parameters
    ----------
    teff, logg, feh : ndarray, shape (n,)
        True labels (K, dex, dex).
    x_fe : ndarray, shape (n, n_elem)
        True [X/Fe] in :data:`ELEMENTS` order.
    snr : ndarray, shape (n,)
    rng : numpy.random.Generator
    synthetic_gap : float
        Scale of the systematic errors (dex).
    gap_seed : int
        Seed of the fixed systematic coefficients.

    Returns
    -------
    dict
        ``teff``, ``logg``, ``feh`` (n,) and ``x_h`` (n, n_elem) measured (float64).
    """
    n = len(teff)
    snr = np.asarray(snr, float)
    boost = np.sqrt(1.0 + (100.0 / snr) ** 2)
    coef = np.random.default_rng(gap_seed).standard_normal((len(ELEMENTS), 3))
    coef[ELEMENTS.index("Fe")] *= 0.3
    tau = (np.asarray(teff) - 4500.0) / 500.0
    gam = np.asarray(logg) - 2.5
    sys = synthetic_gap * (coef[:, 0] * tau[:, None] + coef[:, 1] * gam[:, None]
                           + coef[:, 2] * tau[:, None] ** 2)
    prec = np.array([PRECISION[e] for e in ELEMENTS])
    x_h_true = np.asarray(x_fe) + np.asarray(feh)[:, None]
    x_h = x_h_true + prec * boost[:, None] * rng.standard_normal((n, len(ELEMENTS))) + sys
    fe = ELEMENTS.index("Fe")
    return {
        "teff": np.asarray(teff) + (25.0 + 20.0 * boost) * rng.standard_normal(n)
        + 30.0 * synthetic_gap / 0.03 * gam,
        "logg": np.asarray(logg) + (0.03 + 0.03 * boost) * rng.standard_normal(n)
        + 0.05 * synthetic_gap / 0.03 * tau,
        "feh": x_h[:, fe],
        "x_h": x_h,
    }


def missing_mask(n: int, snr, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Which measured abundances are missing (-9999.99), shape (n, n_elem) of bool.

    Book: {ref}`sec-measured`

    About ``fraction`` of the stars (more at low S/N) lose one to three abundances, weak
    lines (Na, V, Co, Cu, Ce, TiII) more often; Fe is never missing.
    """
    snr = np.asarray(snr, float)
    p = fraction * np.where(snr < 70, 2.0, 0.85)
    hit = rng.random(n) < np.clip(p, 0, 1)
    w = np.array([MISSING_WEIGHT[e] for e in ELEMENTS], float)
    w[ELEMENTS.index("Fe")] = 0.0
    w /= w.sum()
    out = np.zeros((n, len(ELEMENTS)), bool)
    for i in np.flatnonzero(hit):
        k = rng.integers(1, 4)
        out[i, rng.choice(len(ELEMENTS), size=k, replace=False, p=w)] = True
    return out

