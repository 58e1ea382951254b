"""One cached call from a survey (synthetic or real) to RSCA-ready inputs.

Book: {ref}`sec-pipeline`

:func:`rsca_inputs` chains the selection of chapter 3 and the censoring and masking of
chapter 4 and writes the result once, keyed by every parameter it depends on, to
``.cache/rsca_inputs/<key>/``: memory-mapped float32 flux and boolean observed-pixel
matrices of the field set and of the cluster set, the row numbers, cluster labels, the
pixel mask and the interstellar windows. Later chapters call it and run standalone; a
second call with the same parameters only opens the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.apogee.cache_loader import load_spectra_cache
from helpers.apogee.grid import chip_mask, wavelength_grid
from helpers.apogee.occam import read_occam_members
from helpers.paths import cache_dir
from helpers.ppca.model import ENGINE_VERSION
from helpers.rsca.masking import (PAPER_ISM_WINDOWS, WindowRule, censor, find_windows,
                                  residual_curve)
from helpers.rsca.selection import Selection, SelectionParams, select_rsca_sample
from helpers.survey.generate import generate_survey
from helpers.survey.load import Survey, load_survey
from helpers.survey.params import SurveyParams

__all__ = ["MaskParams", "RscaInputs", "rsca_inputs", "ism_residual_curve", "open_source",
           "chapter_source", "PAPER_N_FIELD", "SMOKE_N_FIELD"]

#: Field stars the synthetic survey generates at the paper's scale: about 151,000 of them
#: pass the RSCA selection (de Mijolla & Ness had 151,145).
PAPER_N_FIELD = 238_400
#: The survey size every chapter uses at its smoke parameters (tests/smoke_params.yml).
SMOKE_N_FIELD = 20_000

_FORMAT = "rsca-inputs-v1"


@dataclass(frozen=True)
class MaskParams:
    """Censoring and masking choices (chapter 4), paper values as defaults.

    Book: {ref}`sec-pipeline`

    Attributes
    ----------
    max_error : float
        Pixels with a flux error above this are missing (the paper: 0.05).
    ism_windows : {'auto', 'paper', 'none'}
        Interstellar-band windows: found by :func:`helpers.rsca.masking.find_windows` from the
        residual curve of high-extinction stars ('auto', the book's default), the paper's
        four hand-picked windows ('paper'), or none.
    low_ak, high_ak : float
        AK_TARG below which field stars form the reference basis, above which they are
        tested (mag; the paper: 0.005 and 0.5).
    n_components : int
        PCA components of the reference basis (the paper: 30).
    statistic : {'absorption', 'abs'}
        Residual curve the windows are found on: the mean signed absorption residual (the
        book's choice, which sees weak bands) or the paper's mean absolute residual.
    max_reference : int
        At most this many reference stars (a seeded subsample) to bound the run time.
    rule : WindowRule
        Thresholds that turn the residual curve into windows.
    seed : int
        Seed of the subsample and of the PPCA start.
    """

    max_error: float = 0.05
    ism_windows: str = "auto"
    low_ak: float = 0.005
    high_ak: float = 0.5
    n_components: int = 30
    statistic: str = "absorption"
    max_reference: int = 4000
    rule: WindowRule = field(default_factory=WindowRule)
    seed: int = 0

    def __post_init__(self):
        if self.ism_windows not in ("auto", "paper", "none"):
            raise ValueError(f"MaskParams.ism_windows must be 'auto', 'paper' or 'none', got {self.ism_windows!r}")
        if self.statistic not in ("absorption", "abs"):
            raise ValueError(f"MaskParams.statistic must be 'absorption' or 'abs', got {self.statistic!r}")
        if not (np.isfinite(self.max_error) and self.max_error > 0):
            raise ValueError(f"MaskParams.max_error must be positive, got {self.max_error}")
        if not 0 <= self.low_ak < self.high_ak:
            raise ValueError(f"MaskParams needs 0 <= low_ak < high_ak, got {self.low_ak}, {self.high_ak}")
        if int(self.n_components) != self.n_components or self.n_components < 1:
            raise ValueError(f"MaskParams.n_components must be a positive integer, got {self.n_components}")
        if self.max_reference < 2 * self.n_components:
            raise ValueError("MaskParams.max_reference must be at least twice n_components")

    def to_dict(self) -> dict:
        """JSON-serialisable form (used in the cache key)."""
        return dataclasses.asdict(self)


@dataclass
class RscaInputs:
    """What the RSCA chapters receive: selected, censored, masked spectra.

    Book: {ref}`sec-pipeline`

    Attributes
    ----------
    path : pathlib.Path
        The cache folder.
    allstar : pandas.DataFrame
        The source catalogue (all rows; ``field_rows`` and ``cluster_rows`` index it).
    field_flux, cluster_flux : numpy.memmap, shape (n_field, 8575) / (n_members, 8575), float32
    field_observed, cluster_observed : numpy.memmap of bool, same shapes
        True where a pixel is used: censoring and the pixel mask applied.
    field_rows, cluster_rows : ndarray of int
    cluster_labels : ndarray of str, shape (n_members,)
    pixel_mask : ndarray of bool, shape (8575,)
        Pixels any star may use: the chips minus the interstellar windows.
    ism_windows : list of (start, stop)
    ism_curve : ndarray, shape (8575,)
        The high-extinction residual curve the windows were found from (NaN if not computed).
    field_cuts, cluster_cuts : pandas.DataFrame
    manifest : dict
    """

    path: Path
    allstar: pd.DataFrame
    field_flux: np.ndarray
    field_observed: np.ndarray
    cluster_flux: np.ndarray
    cluster_observed: np.ndarray
    field_rows: np.ndarray
    cluster_rows: np.ndarray
    cluster_labels: np.ndarray
    pixel_mask: np.ndarray
    ism_windows: list
    ism_curve: np.ndarray
    field_cuts: pd.DataFrame
    cluster_cuts: pd.DataFrame
    manifest: dict

    def column(self, name: str, which: str = "field") -> np.ndarray:
        """An allStar column for the field (``which='field'``) or cluster set."""
        rows = {"field": self.field_rows, "cluster": self.cluster_rows}[which]
        return self.allstar[name].to_numpy()[rows]


def open_source(source):
    """Catalogue, flux, error, OCCAM members and a key for a data source.

    Book: {ref}`sec-real-data-point`

    Parameters
    ----------
    source : SurveyParams, Survey, or dict
        A synthetic survey (generated on demand when given as parameters), or for real
        data a dict ``{'cache': DIR, 'occam_members': FILE}``: a spectra cache built by
        ``python -m helpers.survey cache`` and the OCCAM DR16 member file.

    Returns
    -------
    allstar, flux, error, members, key : DataFrame, memmap, memmap, DataFrame, str
    """
    if isinstance(source, SurveyParams):
        source = load_survey(generate_survey(source, progress=False))
    if isinstance(source, Survey):
        return (source.allstar, source.spectra.flux, source.spectra.error, source.occam_members,
                f"survey:{source.params.key()}")
    if isinstance(source, dict) and {"cache", "occam_members"} <= set(source):
        cache = load_spectra_cache(source["cache"])
        members = read_occam_members(source["occam_members"])
        return cache.catalogue, cache.flux, cache.error, members, f"cache:{cache.manifest['key']}"
    raise TypeError("source must be SurveyParams, a Survey, or {'cache': DIR, 'occam_members': FILE}; "
                    f"got {type(source).__name__}")


def chapter_source(n_field: int = PAPER_N_FIELD, survey_seed: int = 42, apogee_cache=None,
                   occam_members_file=None, **survey_overrides):
    """The data source a chapter's parameters describe: synthetic by default, real if given.

    Book: {ref}`sec-real-data-point`

    Every RSCA chapter has the parameters ``n_field``, ``survey_seed``, ``apogee_cache``
    and ``occam_members_file``; this turns them into a source for :func:`rsca_inputs`.

    Parameters
    ----------
    n_field : int
        Field stars of the synthetic survey (ignored for real data).
    survey_seed : int
        Seed of the synthetic survey.
    apogee_cache : path or None
        A spectra cache built from real APOGEE files with ``python -m helpers.survey cache``;
        when given, ``occam_members_file`` must be given too.
    occam_members_file : path or None
        The OCCAM member catalogue (``occam_member-DR16.fits``).
    **survey_overrides
        Other :class:`helpers.survey.SurveyParams` fields (e.g. ``n_latent=3``).

    Returns
    -------
    SurveyParams or dict
    """
    if apogee_cache is not None or occam_members_file is not None:
        if apogee_cache is None or occam_members_file is None:
            raise ValueError("real data needs both apogee_cache (a spectra cache folder) and "
                             "occam_members_file (occam_member-DR16.fits)")
        for name, p in (("apogee_cache", apogee_cache), ("occam_members_file", occam_members_file)):
            if not Path(p).exists():
                raise FileNotFoundError(f"{name}: {p} does not exist")
        return {"cache": Path(apogee_cache), "occam_members": Path(occam_members_file)}
    if int(n_field) != n_field or n_field < 1000:
        raise ValueError(f"n_field must be an integer >= 1000, got {n_field!r}")
    # JWST twins scale with the survey (SurveyParams.n_jwst=None: 19,000 at paper scale),
    # so every chapter, RSCA or StarCLIP, shares one survey per (n_field, survey_seed).
    return SurveyParams(n_field=int(n_field), seed=int(survey_seed), **survey_overrides)


def ism_residual_curve(flux, error, ak, rows, params: MaskParams = MaskParams(), valid=None,
                       low=None, high=None, statistic=None, hide=None):
    """The paper's appendix-A curve on the given rows: high-AK residuals on a low-AK basis.

    Book: {ref}`sec-ism`

    Parameters
    ----------
    flux, error : array, shape (n_stars, 8575)
        All spectra (memory-mapped is fine; only the rows used are read).
    ak : ndarray, shape (n_stars,)
        AK_TARG (mag), or any other quantity: the same analysis with ``|VHELIO_AVG|`` and
        ``low=5, high=80`` is the paper's appendix B.
    low, high : float, optional
        Thresholds of the reference and test groups (default ``params.low_ak``, ``high_ak``).
    statistic : {'absorption', 'abs'}, optional
        Default ``params.statistic``.
    rows : ndarray of int
        Candidate rows (e.g. the field set).
    params : MaskParams
    valid : ndarray of bool, shape (8575,), optional
        Pixels considered (default: the chips).
    hide : ndarray of bool, shape (8575,), optional
        Pixels withheld from the test stars' projection (see
        :func:`helpers.rsca.masking.residual_curve`); default none.

    Returns
    -------
    curve : ndarray, shape (8575,)
    n_reference, n_test : int

    Notes
    -----
    With memory-mapped spectra the result is kept in ``.cache/ism_curves``, keyed by the
    files (path, size, time), the rows, the parameters and the PPCA engine version, so that
    chapter 4 and :func:`rsca_inputs` compute it once.
    """
    rows = np.asarray(rows)
    ak = np.asarray(ak, dtype=float)
    low = params.low_ak if low is None else low
    high = params.high_ak if high is None else high
    ref = rows[ak[rows] < low]
    test = rows[ak[rows] > high]
    need = max(2 * params.n_components, 20)
    if ref.size < need or test.size < 10:
        raise ValueError(
            f"too few stars for the residual curve: {ref.size} below {low} (need {need}) and "
            f"{test.size} above {high} (need 10). "
            "Use a larger survey, or MaskParams(ism_windows='paper')")
    memo = _curve_memo_path(flux, error, ref, test, params, valid, statistic or params.statistic, hide)
    if memo is not None and memo.exists():
        with np.load(memo) as z:
            return z["curve"], int(z["n_reference"]), int(z["n_test"])
    rng = np.random.default_rng(params.seed)
    if ref.size > params.max_reference:
        ref = np.sort(rng.choice(ref, params.max_reference, replace=False))
    if test.size > params.max_reference:
        test = np.sort(rng.choice(test, params.max_reference, replace=False))
    f_ref, f_test = np.asarray(flux[ref]), np.asarray(flux[test])
    o_ref = censor(f_ref, np.asarray(error[ref]), params.max_error, valid)
    o_test = censor(f_test, np.asarray(error[test]), params.max_error, valid)
    curve = residual_curve(f_ref, o_ref, f_test, o_test, n_components=params.n_components,
                           random_state=params.seed, statistic=statistic or params.statistic, hide=hide)
    if memo is not None:
        tmp = memo.with_name(f".{memo.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, curve=curve, n_reference=ref.size, n_test=test.size)
        os.replace(tmp, memo)
    return curve, int(ref.size), int(test.size)


def _curve_memo_path(flux, error, ref, test, params, valid, statistic, hide=None):
    """Where :func:`ism_residual_curve` keeps its result for these inputs, or None.

    Only for memory-mapped spectra (files identified by path, size and modification time):
    chapter 4 and :func:`rsca_inputs` then compute the same curve once.
    """
    files = []
    for arr in (flux, error):
        name = getattr(arr, "filename", None)
        if name is None:
            return None
        st = os.stat(name)
        files.append([str(name), st.st_size, st.st_mtime_ns])
    h = hashlib.sha256()
    h.update(json.dumps({"format": "ism-curve-v1", "ppca_engine": ENGINE_VERSION,
                         "files": files, "params": params.to_dict(),
                         "statistic": statistic}, sort_keys=True, default=list).encode())
    for arr in (np.asarray(ref, dtype=np.int64), np.asarray(test, dtype=np.int64),
                None if valid is None else np.asarray(valid, dtype=bool)):
        h.update(b"-" if arr is None else arr.tobytes())
    if hide is not None:   # (absent from the key when not given: earlier curves stay valid)
        h.update(b"hide" + np.asarray(hide, dtype=bool).tobytes())
    return cache_dir("ism_curves") / f"{h.hexdigest()[:20]}.npz"


def _key(source_key: str, selection: SelectionParams, mask: MaskParams) -> str:
    # the interstellar windows come from a PPCA fit: the engine version is part of the key
    blob = json.dumps({"format": _FORMAT, "ppca_engine": ENGINE_VERSION, "source": source_key,
                       "selection": dataclasses.asdict(selection), "mask": mask.to_dict()},
                      sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_rows(folder: Path, name: str, flux, error, rows, pixel_mask, max_error, chunk=4096):
    """Copy the selected rows to ``<name>_flux.npy`` and ``<name>_observed.npy``, by chunks."""
    n, d = len(rows), flux.shape[1]
    out_f = np.lib.format.open_memmap(folder / f"{name}_flux.npy", mode="w+", dtype=np.float32, shape=(n, d))
    out_o = np.lib.format.open_memmap(folder / f"{name}_observed.npy", mode="w+", dtype=bool, shape=(n, d))
    for a in range(0, n, chunk):
        idx = rows[a:a + chunk]
        f = np.asarray(flux[idx], dtype=np.float32)
        obs = censor(f, np.asarray(error[idx]), max_error, pixel_mask)
        out_f[a:a + len(idx)] = np.where(obs, f, 0.0)
        out_o[a:a + len(idx)] = obs
    out_f.flush()
    out_o.flush()
    del out_f, out_o


def _load(path: Path, allstar: pd.DataFrame) -> RscaInputs:
    manifest = json.loads((path / "manifest.json").read_text())
    arrays = np.load(path / "arrays.npz", allow_pickle=False)
    return RscaInputs(
        path=path,
        allstar=allstar,
        field_flux=np.load(path / "field_flux.npy", mmap_mode="r"),
        field_observed=np.load(path / "field_observed.npy", mmap_mode="r"),
        cluster_flux=np.load(path / "cluster_flux.npy", mmap_mode="r"),
        cluster_observed=np.load(path / "cluster_observed.npy", mmap_mode="r"),
        field_rows=arrays["field_rows"],
        cluster_rows=arrays["cluster_rows"],
        cluster_labels=arrays["cluster_labels"].astype(str),
        pixel_mask=arrays["pixel_mask"],
        ism_windows=[tuple(w) for w in manifest["ism_windows"]],
        ism_curve=arrays["ism_curve"],
        field_cuts=pd.DataFrame(manifest["field_cuts"]),
        cluster_cuts=pd.DataFrame(manifest["cluster_cuts"]),
        manifest=manifest,
    )


def rsca_inputs(source, selection: SelectionParams = SelectionParams(),
                mask: MaskParams = MaskParams(), cache_root=None) -> RscaInputs:
    """Selected, censored and masked spectra for RSCA, computed once and cached.

    Book: {ref}`sec-pipeline`

    Parameters
    ----------
    source : SurveyParams, Survey or dict
        See :func:`open_source`: a synthetic survey or a real spectra cache plus OCCAM.
    selection : SelectionParams
        Chapter 3's cuts.
    mask : MaskParams
        Chapter 4's censoring and interstellar windows.
    cache_root : path, optional
        Where the cache lives (default ``.cache/rsca_inputs``).

    Returns
    -------
    RscaInputs
    """
    allstar, flux, error, members, source_key = open_source(source)
    if flux.shape[0] != len(allstar):
        raise ValueError(f"catalogue has {len(allstar)} rows but the spectra {flux.shape[0]}")
    root = Path(cache_root) if cache_root else cache_dir("rsca_inputs")
    path = root / _key(source_key, selection, mask)
    if (path / "manifest.json").exists():
        return _load(path, allstar)

    sel: Selection = select_rsca_sample(allstar, members, selection)
    valid = chip_mask()
    curve = np.full(valid.size, np.nan)
    if mask.ism_windows == "auto":
        ak = allstar["AK_TARG"].to_numpy(dtype=float)
        curve, _, _ = ism_residual_curve(flux, error, ak, sel.field_rows, mask, valid)
        windows = find_windows(curve, wavelength_grid(), mask.rule, valid=valid)
    elif mask.ism_windows == "paper":
        windows = list(PAPER_ISM_WINDOWS)
    else:
        windows = []
    pixel_mask = valid.copy()
    for a, b in windows:
        pixel_mask[a:b] = False

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=root))
    try:
        _write_rows(tmp, "field", flux, error, sel.field_rows, pixel_mask, mask.max_error)
        _write_rows(tmp, "cluster", flux, error, sel.cluster_rows, pixel_mask, mask.max_error)
        np.savez(tmp / "arrays.npz", field_rows=sel.field_rows, cluster_rows=sel.cluster_rows,
                 cluster_labels=sel.cluster_labels.astype("U"), pixel_mask=pixel_mask, ism_curve=curve)
        manifest = {
            "format": _FORMAT, "source": source_key, "selection": dataclasses.asdict(selection),
            "mask": mask.to_dict(), "ism_windows": [list(map(int, w)) for w in windows],
            "n_field": int(sel.field_rows.size), "n_members": int(sel.cluster_rows.size),
            "n_clusters": sel.n_clusters,
            "field_cuts": sel.field_cuts.to_dict(orient="list"),
            "cluster_cuts": sel.cluster_cuts.to_dict(orient="list"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=list))
        if path.exists():  # an incomplete leftover (no manifest): replace it
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _load(path, allstar)

