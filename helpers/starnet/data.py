"""StarNet's data: the two modalities of a source, gathered once per split part.

Book: {ref}`sec-starnet-data`

A :class:`StarnetSource` is what the chapter's data parameters describe: the synthetic
survey (APOGEE spectra from its spectra cache, NIRSpec-like twins from ``survey.jwst``,
true labels and ASPCAP-like allStar labels) or a real spectra cache built from aspcapStar
files (APOGEE only, allStar labels only).

:func:`starnet_data` gathers the spectra of one modality for the three parts of a split
into one contiguous float32 memory map per part, once, keyed by everything it depends on
(source, split, modality, censoring threshold); training then reads contiguous rows
instead of scattered rows of a 238,000-star cache. Missing pixels are explicit: a boolean
``observed`` array marks them, and their flux is replaced by the training part's mean flux
at that pixel (1 where no training star has the pixel, e.g. outside APOGEE's chips), so
that a missing pixel looks like a typical star there instead of like a deep line.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from helpers import apogee
from helpers.paths import cache_dir
from helpers.rsca.pipeline import PAPER_N_FIELD, chapter_source
from helpers.apogee import load_spectra_cache
from helpers.survey import Survey, SurveyParams, generate_survey, load_survey

from .labels import LABEL_KINDS, aspcap_labels, true_labels
from .split import PARTS, StarSplit

__all__ = ["MODALITIES", "DEFAULT_MAX_ERROR", "FLAGGED_ERROR", "ModalitySpectra", "StarnetSource",
           "starnet_source", "source_from_survey", "SpectraSet", "starnet_data",
           "observed_pixels"]

#: The two kinds of spectra.
MODALITIES = ("apogee", "nirspec")
#: Pixels with a larger flux error are missing (APOGEE: chapter 4's censoring threshold;
#: NIRSpec: only invalid pixels are missing).
DEFAULT_MAX_ERROR = {"apogee": 0.05, "nirspec": None}
#: An error this large flags a pixel without data (both modalities write 1e10 there).
FLAGGED_ERROR = 1e9
#: Real data: at most this many stars (a seeded subsample) enter the split by default,
#: the number of paired stars at paper scale.
DEFAULT_MAX_REAL = 19_000
_FORMAT = "stars-ml-book/starnet-data/1"


@dataclass
class ModalitySpectra:
    """The spectra of one modality of a source, as stored (memory maps).

    Book: {ref}`sec-starnet-data`

    Attributes
    ----------
    name : {'apogee', 'nirspec'}
    flux : ndarray, shape (n_spectra, n_pixels), float32
        Continuum-normalised flux (memory map).
    error : ndarray of the same shape, or None
        1-sigma flux error, if the source has one.
    wavelength : ndarray, shape (n_pixels,)
        Vacuum wavelength (Angstrom).
    ids : ndarray of str, shape (n_spectra,)
        APOGEE_ID of each row.
    catalogue_rows : ndarray of int, shape (n_spectra,)
        Row of the source catalogue (allStar) of each spectrum.
    snr : ndarray, shape (n_spectra,)
        S/N per pixel of each spectrum (NaN if unknown).
    lookup_rows : ndarray of int or None
        Rows that :meth:`rows_of` may return (None: all); a real cache listing a star
        twice offers only the row selected for it.
    """

    name: str
    flux: np.ndarray
    error: np.ndarray | None
    wavelength: np.ndarray
    ids: np.ndarray
    catalogue_rows: np.ndarray
    snr: np.ndarray
    lookup_rows: np.ndarray | None = None

    @property
    def n_pixels(self) -> int:
        """Pixels per spectrum."""
        return int(self.flux.shape[1])

    def rows_of(self, ids) -> np.ndarray:
        """Spectrum rows of the given APOGEE_IDs (``ValueError`` naming any unknown one)."""
        rows = np.arange(len(self.ids)) if self.lookup_rows is None else self.lookup_rows
        index = pd.Index(self.ids[rows])
        if not index.is_unique:
            raise ValueError(f"{self.name} spectra list some APOGEE_IDs more than once; "
                             "select one row per star (lookup_rows)")
        pos = index.get_indexer(np.asarray(ids, dtype=str))
        if np.any(pos < 0):
            bad = np.asarray(ids)[pos < 0]
            raise ValueError(f"{bad.size} star(s) have no {self.name} spectrum "
                             f"(e.g. {bad[0]!r})")
        return rows[pos]


@dataclass
class StarnetSource:
    """The data a StarNet run reads: spectra of one or two modalities, and labels.

    Book: {ref}`sec-starnet-data`

    Attributes
    ----------
    key : str
        Identifies the data (survey key or spectra-cache key); enters every cache key.
    kind : {'synthetic', 'real'}
    catalogue : pandas.DataFrame
        The allStar table (ASPCAP-like labels).
    truth : pandas.DataFrame or None
        The survey's ground truth, one row per catalogue row (synthetic only).
    spectra : dict of str -> ModalitySpectra
        'apogee' always, 'nirspec' for the synthetic survey.
    paired_ids : ndarray of str
        Sorted APOGEE_IDs of the stars that have every modality: the stars the split
        divides.
    survey : Survey or None
    """

    key: str
    kind: str
    catalogue: pd.DataFrame
    truth: pd.DataFrame | None
    spectra: dict
    paired_ids: np.ndarray
    survey: Survey | None = field(default=None, repr=False)

    @property
    def modalities(self) -> tuple:
        """Modalities present, in :data:`MODALITIES` order."""
        return tuple(m for m in MODALITIES if m in self.spectra)

    def modality(self, name: str) -> ModalitySpectra:
        """The spectra of modality ``name`` (a clear error if the source lacks it)."""
        if name not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {name!r}")
        if name not in self.spectra:
            raise ValueError(f"this {self.kind} source has no {name} spectra (it has "
                             f"{list(self.spectra)}); real APOGEE files carry no NIRSpec twins")
        return self.spectra[name]

    def labels(self, ids, kind: str = "true") -> np.ndarray:
        """Labels of stars ``ids``, shape (n, 20) float32, NaN where missing.

        ``kind='true'``: the survey's ground truth; ``'aspcap'``: the allStar labels.
        """
        if kind not in LABEL_KINDS:
            raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {kind!r}")
        rows = self.spectra["apogee"].catalogue_rows[self.spectra["apogee"].rows_of(ids)]
        if kind == "true":
            if self.truth is None:
                raise ValueError("real data have no true labels: use labels='aspcap' (the "
                                 "allStar labels)")
            return true_labels(self.truth, rows)
        return aspcap_labels(self.catalogue, rows)


def _synthetic_source(survey: Survey) -> StarnetSource:
    allstar = survey.allstar
    cache = survey.spectra
    ids = np.asarray(cache.apogee_ids, dtype=str)
    snr = allstar["SNR"].to_numpy(np.float64) if "SNR" in allstar else np.full(len(ids), np.nan)
    spectra = {"apogee": ModalitySpectra("apogee", cache.flux, cache.error,
                                         apogee.wavelength_grid(), ids,
                                         np.arange(len(ids)), snr)}
    jw = survey.jwst
    jflux = jw["flux"]
    jwave = np.asarray(jw["wavelength"], dtype=np.float64)
    if jflux.ndim != 2 or jflux.shape[1] != jwave.size:
        raise ValueError(f"survey {survey.path}: NIRSpec flux has shape {jflux.shape} but its "
                         f"wavelength grid has {jwave.size} pixels")
    jerr = jw.get("error")
    if jerr is not None and jerr.shape != jflux.shape:
        raise ValueError(f"survey {survey.path}: NIRSpec error shape {jerr.shape} differs from "
                         f"its flux shape {jflux.shape}")
    jrows = np.asarray(jw["rows"], dtype=np.int64)
    jids = np.asarray(jw["apogee_ids"], dtype=str)
    if jflux.shape[0]:
        spectra["nirspec"] = ModalitySpectra("nirspec", jflux, jerr, jwave, jids, jrows,
                                             np.asarray(jw["snr"], dtype=np.float64))
    paired = np.sort(jids)
    return StarnetSource(key=f"survey-{survey.params.key()}", kind="synthetic",
                         catalogue=allstar, truth=survey.truth, spectra=spectra,
                         paired_ids=paired, survey=survey)


def _real_source(path, max_stars: int, seed: int) -> StarnetSource:
    cache = load_spectra_cache(path)
    if cache.flux.shape[1] != apogee.N_PIXELS:
        raise ValueError(f"spectra cache {path}: {cache.flux.shape[1]} pixels per spectrum, "
                         f"but APOGEE spectra have {apogee.N_PIXELS} (another grid?)")
    cat = cache.catalogue
    ids = np.asarray(cache.apogee_ids, dtype=str)
    keep = np.ones(len(ids), bool)
    if "ASPCAPFLAG" in cat:
        keep &= ~apogee.flag_set(cat["ASPCAPFLAG"].to_numpy(), "STAR_BAD")
    for col in ("TEFF", "LOGG", "FE_H"):
        if col not in cat:
            raise ValueError(f"spectra cache {path}: its catalogue lacks the label column "
                             f"{col!r}")
        v = cat[col].to_numpy(np.float64)
        keep &= np.isfinite(v) & (v > apogee.MISSING + 1)
    # star level: a star listed twice keeps its row with the highest S/N
    order = np.argsort(-cat["SNR"].to_numpy(np.float64), kind="stable") if "SNR" in cat \
        else np.arange(len(ids))
    order = order[keep[order]]
    _, first = np.unique(ids[order], return_index=True)
    rows = np.sort(order[first])
    if rows.size > max_stars:
        rows = np.sort(np.random.default_rng([int(seed), 7]).choice(rows, max_stars,
                                                                  replace=False))
    snr = cat["SNR"].to_numpy(np.float64) if "SNR" in cat else np.full(len(ids), np.nan)
    spectra = {"apogee": ModalitySpectra("apogee", cache.flux, cache.error,
                                         apogee.wavelength_grid(), ids, np.arange(len(ids)),
                                         snr, lookup_rows=rows)}
    key = f"cache-{cache.manifest['key'][:16]}-n{rows.size}-s{int(seed)}"
    return StarnetSource(key=key, kind="real", catalogue=cat, truth=None, spectra=spectra,
                         paired_ids=np.sort(ids[rows]))


def starnet_source(n_field: int = PAPER_N_FIELD, survey_seed: int = 42, apogee_cache=None,
                   max_real_stars: int = DEFAULT_MAX_REAL, real_seed: int = 0,
                   **survey_overrides) -> StarnetSource:
    """The data source a chapter's parameters describe (synthetic unless ``apogee_cache``).

    Book: {ref}`sec-starnet-data`

    Parameters
    ----------
    n_field : int
        Field stars of the synthetic survey (paper scale: 238,400, with 19,000 NIRSpec
        twins; the twins scale with ``n_field``). Generated on first use.
    survey_seed : int
        Seed of the synthetic survey.
    apogee_cache : path or None
        A spectra cache built from real aspcapStar files (``python -m helpers.survey
        cache``); its catalogue supplies the allStar labels. APOGEE modality only.
    max_real_stars : int
        Real data: at most this many stars (seeded subsample) enter the split.
    real_seed : int
        Seed of that subsample.
    **survey_overrides
        Other ``SurveyParams`` fields.

    Returns
    -------
    StarnetSource
    """
    if apogee_cache is not None:
        if not Path(apogee_cache).exists():
            raise FileNotFoundError(f"apogee_cache: {apogee_cache} does not exist")
        if isinstance(max_real_stars, bool) or int(max_real_stars) != max_real_stars \
                or max_real_stars < 10:
            raise ValueError(f"max_real_stars must be an integer >= 10, got {max_real_stars!r}")
        return _real_source(apogee_cache, int(max_real_stars), real_seed)
    params = chapter_source(n_field, survey_seed, **survey_overrides)
    return source_from_survey(params)


def source_from_survey(survey) -> StarnetSource:
    """A :class:`StarnetSource` from a ``Survey`` or ``SurveyParams`` (generated on demand).

    Book: {ref}`sec-starnet-data`
    """
    if isinstance(survey, SurveyParams):
        survey = load_survey(generate_survey(survey, progress=False))
    if not isinstance(survey, Survey):
        raise TypeError(f"expected a Survey or SurveyParams, got {type(survey).__name__}")
    return _synthetic_source(survey)


def observed_pixels(flux: np.ndarray, error: np.ndarray | None,
                    max_error: float | None) -> np.ndarray:
    """Which pixels carry data: finite, non-zero flux and a valid, small enough error.

    Book: {ref}`sec-starnet-data`

    Parameters
    ----------
    flux : ndarray, shape (n, n_pixels)
    error : ndarray of the same shape, or None
    max_error : float or None
        Pixels with ``error > max_error`` are missing (None: no threshold).

    Returns
    -------
    ndarray of bool, same shape
        False at a chip or detector gap (flux 0 or NaN), a flagged pixel (error of
        :data:`FLAGGED_ERROR` or more: APOGEE and the NIRSpec twins write 1e10 there) or a
        censored one.
    """
    ok = np.isfinite(flux) & (flux != 0)
    if error is not None:
        ok &= np.isfinite(error) & (error > 0) & (error < FLAGGED_ERROR)
        if max_error is not None:
            ok &= error <= max_error
    return ok


@dataclass
class SpectraSet:
    """One modality, one split part, gathered into a contiguous float32 memory map.

    Book: {ref}`sec-starnet-data`

    Row i of every modality's set of a part is the same star (``ids[i]``), so paired
    sets line up for contrastive training. Indexing (``s[i]``, ``len(s)``) follows the
    ``torch.utils.data.Dataset`` protocol and returns flux rows as numpy arrays;
    :meth:`rows` reads a batch at once.

    Attributes
    ----------
    modality, part : str
    flux : numpy.memmap, shape (n, n_pixels), float32
        Flux with missing pixels replaced by ``fill``.
    observed : numpy.memmap, shape (n, n_pixels), bool
        False where the pixel was missing.
    ids : ndarray of str, shape (n,)
    catalogue_rows : ndarray of int, shape (n,)
    snr : ndarray, shape (n,)
    wavelength : ndarray, shape (n_pixels,)
    fill : ndarray, shape (n_pixels,), float32
        The training part's mean observed flux per pixel (1 where never observed).
    path : pathlib.Path
    """

    modality: str
    part: str
    flux: np.ndarray
    observed: np.ndarray
    ids: np.ndarray
    catalogue_rows: np.ndarray
    snr: np.ndarray
    wavelength: np.ndarray
    fill: np.ndarray
    path: Path

    def __len__(self) -> int:
        return int(self.flux.shape[0])

    def __getitem__(self, i):
        return np.asarray(self.flux[i])

    @property
    def n_pixels(self) -> int:
        """Pixels per spectrum."""
        return int(self.flux.shape[1])

    def rows(self, index) -> np.ndarray:
        """Flux of rows ``index`` as one in-memory float32 array (read in sorted order)."""
        index = np.asarray(index)
        order = np.argsort(index, kind="stable")
        out = np.empty((index.size, self.n_pixels), np.float32)
        out[order] = self.flux[index[order]]
        return out

    @property
    def missing_fraction(self) -> np.ndarray:
        """Fraction of missing pixels per star, shape (n,)."""
        return 1.0 - self.observed.mean(axis=1)


def _data_key(source: StarnetSource, split: StarSplit, modality: str, max_error) -> str:
    blob = json.dumps({"format": _FORMAT, "source": source.key, "split": split.key,
                       "modality": modality, "max_error": max_error}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _resolve_max_error(modality: str, max_error):
    if max_error == "default":
        return DEFAULT_MAX_ERROR[modality]
    if max_error is not None and not (np.isfinite(max_error) and max_error > 0):
        raise ValueError(f"max_error must be a positive number or None, got {max_error!r}")
    return None if max_error is None else float(max_error)


def _open_sets(folder: Path, meta: dict, wavelength: np.ndarray) -> dict:
    fill = np.load(folder / "fill.npy")
    out = {}
    for part in PARTS:
        out[part] = SpectraSet(
            modality=meta["modality"], part=part,
            flux=np.load(folder / f"{part}_flux.npy", mmap_mode="r"),
            observed=np.load(folder / f"{part}_observed.npy", mmap_mode="r"),
            ids=np.load(folder / f"{part}_ids.npy"),
            catalogue_rows=np.load(folder / f"{part}_rows.npy"),
            snr=np.load(folder / f"{part}_snr.npy"),
            wavelength=wavelength, fill=fill, path=folder)
    return out


def starnet_data(source: StarnetSource, split: StarSplit, modality: str = "apogee",
                 max_error="default", chunk: int = 512) -> dict:
    """The three parts of a split for one modality, gathered once and memory-mapped.

    Book: {ref}`sec-starnet-data`

    Parameters
    ----------
    source : StarnetSource
    split : StarSplit
        Its stars must all have a spectrum of this modality.
    modality : {'apogee', 'nirspec'}
    max_error : float, None or 'default'
        Pixels with a larger flux error are missing (:data:`DEFAULT_MAX_ERROR`).
    chunk : int
        Rows read at once.

    Returns
    -------
    dict of str -> SpectraSet
        ``'train'``, ``'val'``, ``'test'``. Stored in
        ``<cache>/starnet/data/<key>/`` (key: source, split, modality, ``max_error``);
        a second call only opens the files.
    """
    spec = source.modality(modality)
    max_error = _resolve_max_error(modality, max_error)
    key = _data_key(source, split, modality, max_error)
    folder = cache_dir("starnet", "data") / key
    meta_path = folder / "meta.json"
    if meta_path.exists():
        return _open_sets(folder, json.loads(meta_path.read_text()), spec.wavelength)
    rows = {part: spec.rows_of(split.part(part)) for part in PARTS}
    tmp = folder.parent / f".{key}.building-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        n_pix = spec.n_pixels
        total = np.zeros(n_pix)
        count = np.zeros(n_pix)
        for part in PARTS:
            r = rows[part]
            flux = open_memmap(tmp / f"{part}_flux.npy", "w+", np.float32, (r.size, n_pix))
            obs = open_memmap(tmp / f"{part}_observed.npy", "w+", bool, (r.size, n_pix))
            order = np.argsort(r, kind="stable")      # read the source in row order
            for s in range(0, r.size, chunk):
                pos = order[s:s + chunk]
                f = np.asarray(spec.flux[r[pos]], dtype=np.float32)
                e = None if spec.error is None else np.asarray(spec.error[r[pos]])
                ok = observed_pixels(f, e, max_error)
                if part == "train":
                    total += np.where(ok, f, 0).sum(axis=0, dtype=np.float64)
                    count += ok.sum(axis=0)
                f[~ok] = np.nan
                flux[pos] = f
                obs[pos] = ok
            flux.flush()
            obs.flush()
            del flux, obs
            np.save(tmp / f"{part}_ids.npy", np.asarray(split.part(part), dtype=str))
            np.save(tmp / f"{part}_rows.npy", spec.catalogue_rows[r].astype(np.int64))
            np.save(tmp / f"{part}_snr.npy", spec.snr[r].astype(np.float64))
        fill = np.where(count > 0, total / np.maximum(count, 1), 1.0).astype(np.float32)
        np.save(tmp / "fill.npy", fill)
        for part in PARTS:
            flux = np.load(tmp / f"{part}_flux.npy", mmap_mode="r+")
            for s in range(0, flux.shape[0], chunk):
                f = np.asarray(flux[s:s + chunk])
                bad = np.isnan(f)
                if bad.any():
                    f[bad] = np.broadcast_to(fill, f.shape)[bad]
                    flux[s:s + chunk] = f
            flux.flush()
            del flux
        meta = {"format": _FORMAT, "key": key, "source": source.key, "split": split.key,
                "modality": modality, "max_error": max_error, "n_pixels": n_pix,
                "sizes": split.sizes}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: use theirs
            if not meta_path.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _open_sets(folder, json.loads(meta_path.read_text()), spec.wavelength)
