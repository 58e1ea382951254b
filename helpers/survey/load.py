"""Opening a generated survey lazily (:class:`Survey`, :func:`load_survey`).

Book: {ref}`ch-survey`
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import apogee
from helpers.apogee.cache_loader import load_spectra_cache
from helpers.params import check_parameters, integer, number, one_of
from helpers.survey.generate import OCCAM_DIR, SURVEY_MANIFEST, is_complete_survey, survey_dir
from helpers.survey.chemistry import load_cluster_table
from helpers.survey.lines import sky_lines, telluric_lines, true_dib_windows
from helpers.survey.params import SurveyParams

__all__ = ["check_chapter_parameters", "Survey", "load_survey"]


@dataclass
class Survey:
    """A generated synthetic survey, opened lazily.

    Book: {ref}`ch-survey`

    Attributes
    ----------
    path : pathlib.Path
        The survey folder.
    params : SurveyParams
    root : pathlib.Path
        SAS-like ``apogee_root`` (holds ``dr16/...``), so real-data code paths work on it.
    allstar : pandas.DataFrame
        :func:`helpers.apogee.read_allstar` of the allStar file (row i <-> spectrum i).
    spectra : helpers.apogee.SpectraCache
        ``.flux``, ``.error`` memmaps, shape (n_stars, 8575), float32.
    occam_members, occam_clusters : pandas.DataFrame
    truth : pandas.DataFrame
        One row per allStar row: true TEFF, LOGG, FE_H, ALPHA_M, ``X_FE_<EL>`` (dex),
        ``LATENT_<k>``, CLUSTER ('' for field), IS_MEMBER, IN_OCCAM_FILE, AK_TRUE (mag),
        DIB_EW (A, 15273 band), V_ISM, VHELIO_TRUE (km/s), PLATE, SNR_TRUE,
        TELLURIC_AMP, SKY_AMP, PERSISTENCE_AMP, STAR_BAD, HAS_FILE, JWST_ROW.
    jwst : dict
        ``flux`` and ``error`` memmaps (n_jwst, n_pix) float32, ``gap`` (n_jwst, 2) A,
        ``wavelength`` (n_pix,) A, ``apogee_ids``,
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
        """The spectra cache (:func:`helpers.apogee.load_spectra_cache`)."""
        return load_spectra_cache(self.path / "cache")

    @functools.cached_property
    def occam_members(self) -> pd.DataFrame:
        """The OCCAM-like member catalogue (CG_PROB -9999.99 = none)."""
        return apogee.read_occam_members(self.root.joinpath(*OCCAM_DIR,
                                                            "occam_member-DR16.fits"))

    @functools.cached_property
    def occam_clusters(self) -> pd.DataFrame:
        """The OCCAM-like cluster catalogue of the 22 clusters."""
        return apogee.read_occam_clusters(self.root.joinpath(*OCCAM_DIR,
                                                             "occam_cluster-DR16.fits"))

    @functools.cached_property
    def truth_arrays(self) -> dict:
        """The raw truth arrays (``X_FE`` (n, 21), ``LATENT`` (n, K), ``MISSING``,
        ``X_FE_REF`` (n, 21): the Cannon's reference pattern at the star's [Fe/H],
        ``MISMATCH_COEF`` (n, 8): the model-mismatch coefficients of
        :func:`helpers.survey.mismatch.mismatch_coefficients`, ...)."""
        with np.load(self.path / "truth.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    @functools.cached_property
    def truth(self) -> pd.DataFrame:
        """The ground truth, one row per allStar row (see the class docstring)."""
        a = self.truth_arrays
        elems = [str(e) for e in a["ELEMENTS"]]
        cols = {}
        for k, v in a.items():
            if k in ("ELEMENTS", "LATENT_SCALE", "MISSING", "X_FE_REF", "MISMATCH_COEF"):
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
        """NIRSpec twins: ``flux`` and ``error`` memmaps (n_jwst, n_pix) float32 (1-sigma;
        1e10 with flux 0 in the star's detector gap), ``wavelength`` (A), ``apogee_ids``,
        ``rows`` (allStar rows), ``snr``, ``gap`` (n_jwst, 2) start and end (A) of each
        star's detector gap (shape (n_jwst, 0) without gaps), and with MSA gaps
        ``shutter_column``, ``shutter_quadrants``."""
        d = self.path / "jwst"
        out = {"flux": np.load(d / "flux.npy", mmap_mode="r"),
               "error": np.load(d / "error.npy", mmap_mode="r"),
               "wavelength": np.load(d / "wavelength.npy"),
               "apogee_ids": np.load(d / "apogee_ids.npy"),
               "rows": np.load(d / "rows.npy"), "snr": np.load(d / "snr.npy"),
               "gap": np.load(d / "gap.npy")}
        for k in ("shutter_column", "shutter_quadrants"):
            if (d / f"{k}.npy").is_file():
                out[k] = np.load(d / f"{k}.npy")
        return out

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

    Book: {ref}`ch-survey`

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
                                f"helpers.survey.generate_survey(params)")
    info = json.loads((path / SURVEY_MANIFEST).read_text())
    params = SurveyParams.from_dict(info["params"])
    if isinstance(path_or_params, SurveyParams) and params.key() != path_or_params.key():
        raise FileNotFoundError(f"survey at {path} has key {params.key()}, expected "
                                f"{path_or_params.key()}")
    return Survey(path=path, params=params, manifest=info)


def check_chapter_parameters(params: SurveyParams, *, n_sample=None, cluster_name=None,
                             jwst_index=None, sky_line=None, max_error=None) -> None:
    """Validate a survey chapter's parameters at once; one clear error names every bad one.

    Book: {ref}`ch-survey`

    Parameters
    ----------
    params : SurveyParams
        The chapter's survey (already validated by :class:`SurveyParams`).
    n_sample : int, optional
        Stars sampled (an integer >= 200).
    cluster_name : str, optional
        One of the 22 OCCAM clusters.
    jwst_index : int, optional
        A twin's index, in [0, number of twins).
    sky_line : float, optional
        One of the survey's sky lines (observed vacuum A).
    max_error : float, optional
        A flux error in (0, 1).
    """
    checks = {}
    if n_sample is not None:
        checks["n_sample"] = integer(n_sample, min=200)
    if cluster_name is not None:
        checks["cluster_name"] = one_of(cluster_name, sorted(load_cluster_table().NAME))
    if jwst_index is not None:
        n = params.jwst_count(10 ** 9) if params.n_jwst is None else params.n_jwst
        n = min(n, round(0.6 * params.n_field))
        checks["jwst_index"] = integer(jwst_index, min=0, below=max(n, 1))
    if sky_line is not None:       # one of the survey's sky lines (helpers.survey.lines.sky_lines())
        checks["sky_line"] = one_of(sky_line, sky_lines().wave_vac, tolerance=0.01)
    if max_error is not None:
        checks["max_error"] = number(max_error, above=0, below=1)
    check_parameters(**checks)
