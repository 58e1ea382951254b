"""Every knob of the synthetic survey (:class:`SurveyParams`) and its version.

Book: {ref}`ch-survey`

A survey is identified by its parameters and :data:`GENERATOR_VERSION` (:meth:`SurveyParams.key`):
caches of generated surveys are keyed by it, so the version is bumped whenever the generator's
output changes for the same parameters.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from helpers import apogee
from helpers.survey.nirspec import check_twin_setting

__all__ = ["GENERATOR_VERSION", "BLOCK", "STREAMS", "SurveyParams", "paper_scale_params"]


#: Bumped whenever the generator's output changes for the same parameters.
GENERATOR_VERSION = "5"


#: Stars per random-number block: the unit of determinism.
BLOCK = 256


#: Streams of the random generator (first entry after the seed): one per part of the survey.
STREAMS = dict(zip(("field", "cluster", "geom", "meas", "spec", "jwstsel", "jwst", "plate"), range(1, 9)))


@dataclass(frozen=True)
class SurveyParams:
    """Every knob of the synthetic survey, with a realistic default.

    Book: {ref}`ch-survey`

    Attributes
    ----------
    n_field : int
        Field giants generated (targeting box ``teff_range`` x ``logg_range``); about
        63% survive the RSCA selection.  Paper scale: :func:`paper_scale_params`.
    n_jwst : int or None
        Field giants inside the RSCA Teff/logg box that also get a NIRSpec spectrum;
        ``None`` scales them with the survey (19,000 at paper scale: 8 % of ``n_field``,
        at least 1, at most the giants in the box). An explicit number above the giants
        available is an error.
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
        Scale of every departure of [X/Fe] from the Cannon's reference pattern seen by the
        line physics (1 = physical, 0 = the Cannon alone; :mod:`helpers.survey.linephysics`).
    mismatch_amplitude : float
        Median RMS of the model mismatch over giants of the RSCA box (fraction of the
        continuum; :mod:`helpers.survey.mismatch`; the Cannon alone misses the Arcturus
        atlas by 1.55 %).
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
        Field stars per plate (science fibres of an APOGEE plate: about 230-250).
    cluster_members_per_plate : int
        At most this many stars towards one cluster share a plate, with
        ``stars_per_plate`` field stars of the same field: a cluster's stars spread over
        as many plates as needed, so a plate pattern is never a cluster label.
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
        NIRSpec G140H/F100LP-like grid: R = 2,700 on 3,323 log-uniform pixels over
        9,700-17,950 A, two pixels per resolution element (:mod:`helpers.survey.nirspec`).
    jwst_snr_median : float
        Median S/N of NIRSpec spectra.
    jwst_gap : 'msa', tuple of float or None
        Wavelengths lost between the detectors NRS1 and NRS2 (flux 0, error 1e10):
        ``'msa'`` (default) draws each star's MSA shutter and takes its gap from msaexp's
        measurements (``data/nirspec_detector_gap.csv``); a (start, end) in A is the same
        for every star; ``None`` keeps every pixel.
    """

    n_field: int = 5000
    n_jwst: int | None = None
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
    mismatch_amplitude: float = 0.015
    dib_strength: float = 1.0
    dib_scatter: float = 0.2
    ak_median: float = 0.1
    ism_velocity_sigma: float = 15.0
    telluric_residual: float = 0.05
    sky_residual: float = 0.02
    plate_systematic: float = 0.003
    stars_per_plate: int = 230
    cluster_members_per_plate: int = 20
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
    jwst_n_pixels: int = 3323
    jwst_wmin: float = 9700.0
    jwst_wmax: float = 17950.0
    jwst_snr_median: float = 100.0
    jwst_gap: tuple | str | None = "msa"

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"SurveyParams.{name}={getattr(self, name)!r}: {why}")
        for name in ("n_field", "n_jwst", "seed", "n_latent", "stars_per_plate", "n_files",
                     "jwst_n_pixels", "cluster_members_per_plate"):
            v = getattr(self, name)
            if name == "n_jwst" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                bad(name, "must be an integer")
            if v < 0:
                bad(name, "must be >= 0")
        if self.n_field < 1:
            bad("n_field", "need at least one field star")
        if self.stars_per_plate < 1:
            bad("stars_per_plate", "must be >= 1")
        if self.cluster_members_per_plate < 1:
            bad("cluster_members_per_plate", "must be >= 1")
        if not 2 <= self.n_latent <= 12:
            bad("n_latent", "must be between 2 and 12")
        if self.release not in apogee.RELEASES:
            bad("release", f"must be one of {sorted(apogee.RELEASES)}")
        for name in ("intrinsic_scatter", "cluster_scatter", "element_response",
                     "mismatch_amplitude", "dib_strength", "dib_scatter", "telluric_residual", "sky_residual",
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
        check_twin_setting(self.jwst_resolution, self.jwst_wmin, self.jwst_wmax,
                           self.jwst_n_pixels, self.jwst_gap)
        for f in dataclasses.fields(self):  # 157 and 157.0 are the same survey (same key)
            if isinstance(f.default, float) and not isinstance(getattr(self, f.name), bool):
                object.__setattr__(self, f.name, float(getattr(self, f.name)))
            elif (isinstance(f.default, int) and not isinstance(f.default, bool)) or (
                    f.name == "n_jwst" and self.n_jwst is not None):
                object.__setattr__(self, f.name, int(getattr(self, f.name)))
        object.__setattr__(self, "teff_range", tuple(float(x) for x in self.teff_range))
        object.__setattr__(self, "logg_range", tuple(float(x) for x in self.logg_range))
        if self.jwst_gap is not None and not isinstance(self.jwst_gap, str):
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

    def jwst_count(self, available: int) -> int:
        """Twins generated when ``available`` field giants lie in the RSCA box.

        ``n_jwst=None``: 8 % of ``n_field`` (19,000 at paper scale), at least 1 and at
        most ``available``. An explicit ``n_jwst`` above ``available`` raises
        ``ValueError`` naming the field.
        """
        if self.n_jwst is None:
            return int(min(available, max(1, round(19_000 * self.n_field / 238_400))))
        if self.n_jwst > available:
            raise ValueError(f"SurveyParams.n_jwst={self.n_jwst}: only {available} field "
                             f"giants lie in the RSCA box; raise n_field, lower n_jwst, or "
                             f"leave it unset (None) to scale it with the survey")
        return int(self.n_jwst)


def paper_scale_params(**overrides) -> SurveyParams:
    """Parameters at the RSCA paper's scale: ~151,000 selected field giants, 19,000 JWST.

    Book: {ref}`ch-survey`
    """
    kw = dict(n_field=238_400, n_jwst=19_000)
    kw.update(overrides)
    return SurveyParams(**kw)
