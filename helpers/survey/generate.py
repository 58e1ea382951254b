"""Writing a synthetic survey: atomic, cached by its parameters, deterministic, threaded.

Book: {ref}`ch-survey`

The book runs without internet, so it ships a survey of its own, written in APOGEE's
formats through :mod:`helpers.apogee`:

* an allStar catalogue (``allStar-r12-l33.fits`` for DR16) with ASPCAP-like labels,
  flags, missing abundances, AK_TARG, VHELIO_AVG, S/N and visits;
* aspcapStar files for a subset of stars and a memory-mapped spectra cache for all;
* OCCAM-like member and cluster catalogues of the 22 RSCA open clusters;
* JWST/NIRSpec-like spectra of the same stars (StarCLIP pairs);
* the ground truth (true labels, latent chemical coordinates, membership, injected
  non-chemical imprints) in ``truth.npz``.
"""
from __future__ import annotations

import collections
import json
import os
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from threadpoolctl import threadpool_limits

from helpers import apogee
from helpers.apogee.cache_writer import SpectraCacheWriter
from helpers.apogee.cache_zarr import write_zarr_cache
from helpers.paths import cache_dir, replace_atomically
from helpers.progress import progress_enabled
from helpers.spectra.cannon import apogee_model, nirspec_grid, nirspec_model
from helpers.survey import chemistry as chem
from helpers.survey.catalogue import build_catalogue, occam_cluster_table
from helpers.survey.linephysics import line_physics, reference_pattern
from helpers.survey.lines import observed_frame_templates
from helpers.survey.mismatch import mismatch_coefficients
from helpers.survey.nirspec import draw_detector_gaps
from helpers.survey.twins import jwst_spectra, select_jwst, twin_profile
from helpers.survey.params import BLOCK, GENERATOR_VERSION, STREAMS, SurveyParams
from helpers.survey.spectrum import (error_profile, shift_bank, shift_index, sky_bad_rate,
                                     synth_block)

__all__ = ["SURVEY_MANIFEST", "OCCAM_DIR", "survey_dir", "is_complete_survey", "generate_survey"]


SURVEY_MANIFEST = "survey.json"


OCCAM_DIR = ("dr16", "apogee", "vac", "apogee-occam")


def survey_dir(params: SurveyParams) -> Path:
    """Default folder of a survey: ``cache_dir('surveys', params.key())``.

    Book: {ref}`ch-survey`
    """
    return cache_dir("surveys", create=False) / params.key()


def is_complete_survey(path, params: SurveyParams | None = None) -> bool:
    """Whether ``path`` holds a complete survey (of ``params``, when given).

    Book: {ref}`ch-survey`
    """
    m = Path(path) / SURVEY_MANIFEST
    if not m.is_file():
        return False
    try:
        info = json.loads(m.read_text())
    except (OSError, ValueError):
        return False
    if not info.get("complete"):
        return False
    return params is None or info.get("key") == params.key()


def generate_survey(params: SurveyParams | None = None, out_dir=None, progress: bool = True,
                    overwrite: bool = False, n_threads: int | None = None,
                    zarr: bool = False) -> Path:
    """Generate (or reuse) a synthetic survey; returns its folder.

    Book: {ref}`ch-survey`

    Layout of the folder::

        survey.json                       parameters, key, counts, timings (written last)
        sas/dr16/apogee/spectro/aspcap/r12/l33/allStar-r12-l33.fits
        sas/dr16/apogee/spectro/aspcap/r12/l33/{TELESCOPE}/{FIELD}/aspcapStar-r12-*.fits
        sas/dr16/apogee/vac/apogee-occam/occam_member-DR16.fits, occam_cluster-DR16.fits
        cache/                            spectra cache of every allStar row
        jwst/flux.npy, error.npy, wavelength.npy, apogee_ids.npy, rows.npy, snr.npy,
             gap.npy, shutter_column.npy, shutter_quadrants.npy
        truth.npz                         the ground truth

    The survey is cached by its parameters: if ``out_dir`` already holds a complete survey
    with the same :meth:`SurveyParams.key`, nothing is recomputed.  It is atomic: built in
    a hidden temporary folder next to ``out_dir`` and renamed into place when complete.
    It is deterministic: the same parameters give the same numbers (spectra are made in
    blocks of 256 stars, each with its own random stream).

    Parameters
    ----------
    params : SurveyParams, optional
        Default ``SurveyParams()``.
    out_dir : path-like, optional
        Default :func:`survey_dir` (``<cache>/surveys/<key>``).
    progress : bool
        Show a tqdm bar (quiet under ``CI`` or ``TQDM_DISABLE=1``:
        :func:`helpers.progress.progress_enabled`).
    overwrite : bool
        Rebuild even if a complete survey with the same key exists.
    n_threads : int, optional
        Threads synthesising blocks (default: the number of CPUs, at most 4).  The
        result does not depend on it.
    zarr : bool
        Also write the spectra cache's Zarr copy, ``cache/spectra.zarr``
        (:func:`helpers.apogee.cache_zarr.write_zarr_cache`), for the workers of a Dask
        cluster; added to an existing survey if missing.  It changes no number of the
        survey, so it is not part of its key.

    Returns
    -------
    pathlib.Path
        The survey folder.
    """
    p = SurveyParams() if params is None else params
    if not isinstance(p, SurveyParams):
        raise TypeError(f"params must be a SurveyParams, got {type(p).__name__}")
    out = Path(out_dir) if out_dir is not None else survey_dir(p)
    if not overwrite and is_complete_survey(out, p):
        if zarr:
            write_zarr_cache(out / "cache", progress=progress)
        return out
    if n_threads is None:
        n_threads = min(4, os.cpu_count() or 1)
    t0 = time.perf_counter()
    tmp = _new_build_folder(out)
    try:
        timings = {}
        allstar, truth, occ, star_path, catalogue = _write_catalogue_files(p, tmp)
        timings["catalogue_s"] = time.perf_counter() - t0
        has_file = _file_rows(p, truth)
        twins = _plan_twins(p, truth, tmp / "jwst")
        models = _apogee_models(p, truth)
        t1 = time.perf_counter()
        _synthesise_spectra(p, tmp, allstar, truth, catalogue, has_file, models, twins,
                            n_threads, progress)
        timings["spectra_s"] = time.perf_counter() - t1
        _write_twin_arrays(p, tmp / "jwst", twins, truth)
        _write_truth(p, tmp / "truth.npz", truth, has_file, twins.rows)
        timings["total_s"] = time.perf_counter() - t0
        _write_manifest(p, tmp, len(allstar), len(occ), int(has_file.sum()), twins.rows.size,
                        star_path, timings)
        replace_atomically(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if zarr:
        write_zarr_cache(out / "cache", progress=progress)
    return out


def _new_build_folder(out: Path) -> Path:
    """A new hidden folder beside ``out`` to build the survey in, after removing the
    build folders of processes that no longer run.

    Book: {ref}`sec-survey-files`

    Returns
    -------
    pathlib.Path
        ``<parent>/.<name>.building-<pid>-<random hex>``, created empty.

    Raises
    ------
    FileExistsError
        ``out`` holds something that is not a synthetic survey.
    """
    if out.exists() and any(out.iterdir()) and not is_complete_survey(out):
        raise FileExistsError(f"{out} exists and is not a synthetic survey; refusing to "
                              f"replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.building-*"):
        try:
            pid = int(stale.name.split("-")[-2])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, IndexError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _write_manifest(p: SurveyParams, tmp: Path, n_stars: int, n_occam_rows: int, n_files: int,
                    n_jwst: int, star_path: Path, timings: dict) -> None:
    """Write ``survey.json``, last: parameters, key, generator version, counts, the allStar
    file's place and the timings (s); its ``complete`` marks the survey as whole.

    Book: {ref}`sec-survey-files`
    """
    manifest = {"complete": True, "key": p.key(), "generator_version": GENERATOR_VERSION,
                "params": p.to_dict(), "n_stars": int(n_stars), "n_field": int(p.n_field),
                "n_occam_rows": int(n_occam_rows), "n_files": int(n_files),
                "n_jwst": int(n_jwst), "release": p.release,
                "allstar": str(star_path.relative_to(tmp)), "timings": timings}
    (tmp / SURVEY_MANIFEST).write_text(json.dumps(manifest, indent=1))


def _write_catalogue_files(p: SurveyParams, tmp: Path):
    """Build the catalogue and write the allStar and OCCAM files under ``tmp/sas``.

    Book: {ref}`sec-survey-files`

    Returns
    -------
    allstar : pandas.DataFrame
        The table as built (:func:`helpers.survey.catalogue.build_catalogue`).
    truth : dict of ndarray
        The ground truth of the catalogue.
    occ : pandas.DataFrame
        The OCCAM member table.
    star_path : pathlib.Path
        The allStar file.
    catalogue : pandas.DataFrame
        The allStar file as read back, the spectra cache's catalogue.
    """
    allstar, truth, occ = build_catalogue(p)
    root = tmp / "sas"
    star_path = apogee.allstar_path(root, p.release)
    apogee.write_allstar(star_path, allstar, apogee.DR16_ELEM_SYMBOL, p.release)
    occ_dir = root.joinpath(*OCCAM_DIR)
    apogee.write_occam_members(occ_dir / "occam_member-DR16.fits", occ)
    apogee.write_occam_clusters(occ_dir / "occam_cluster-DR16.fits",
                                occam_cluster_table(occ, truth))
    return allstar, truth, occ, star_path, apogee.read_allstar(star_path)


def _file_rows(p: SurveyParams, truth: dict) -> np.ndarray:
    """Which stars get aspcapStar files: the OCCAM member-file stars first, then field
    stars in catalogue order, ``p.n_files`` in all; bool mask, shape (N,).

    Book: {ref}`sec-survey-files`
    """
    n = truth["IN_OCCAM_FILE"].size
    order = np.r_[np.flatnonzero(truth["IN_OCCAM_FILE"]),
                  np.flatnonzero(~truth["IN_OCCAM_FILE"])]
    has_file = np.zeros(n, bool)
    has_file[order[:min(p.n_files, n)]] = True
    return has_file


@dataclass
class _Twins:
    """The NIRSpec twins of a survey being written (see :func:`_plan_twins`).

    Book: {ref}`sec-jwst`

    Attributes
    ----------
    rows : ndarray of int, shape (n_jwst,)
        Catalogue rows with a twin, increasing.
    snr : ndarray of float32, shape (n_jwst,)
        Their S/N.
    gaps : ndarray, shape (n_jwst, 2), or None
        Detector gap of each twin (Angstrom), or None without gaps.
    shutters : dict or None
        The MSA shutters drawn for the gaps (``jwst_gap='msa'``).
    models : tuple or None
        What :func:`helpers.survey.twins.jwst_spectra` needs (None without twins).
    wavelength : ndarray or None
        The NIRSpec grid (Angstrom).
    flux, error : numpy.memmap, shape (n_jwst, jwst_n_pixels), float32, or None
        ``jwst/flux.npy`` and ``jwst/error.npy``, filled block by block.
    """

    rows: np.ndarray
    snr: np.ndarray
    gaps: np.ndarray | None = None
    shutters: dict | None = None
    models: tuple | None = None
    wavelength: np.ndarray | None = None
    flux: np.ndarray | None = None
    error: np.ndarray | None = None


def _plan_twins(p: SurveyParams, truth: dict, jdir: Path) -> _Twins:
    """Choose the stars with a NIRSpec twin, draw their S/N and detector gaps, build the
    NIRSpec model and open the twins' flux and error files in ``jdir`` (created).

    Book: {ref}`sec-jwst`
    """
    jrows = select_jwst(p, truth) if p.n_jwst != 0 else np.zeros(0, int)
    n_jwst = int(jrows.size)
    jrng = np.random.default_rng([p.seed, STREAMS["jwst"]])
    jsnr = (p.jwst_snr_median * np.exp(0.3 * jrng.standard_normal(n_jwst))
            ).astype(np.float32)
    jdir.mkdir()
    twins = _Twins(rows=jrows, snr=jsnr)
    if p.jwst_gap == "msa":
        twins.shutters = draw_detector_gaps(n_jwst, jrng)
        twins.gaps = np.column_stack([twins.shutters["gap_start"], twins.shutters["gap_end"]])
    elif p.jwst_gap is not None:
        twins.gaps = np.tile(np.asarray(p.jwst_gap, float), (n_jwst, 1))
    if n_jwst:
        nir = nirspec_model(p.jwst_resolution, p.jwst_n_pixels, p.jwst_wmin, p.jwst_wmax)
        nphys = line_physics("nirspec", p.jwst_resolution, p.jwst_n_pixels, p.jwst_wmin,
                             p.jwst_wmax)
        twins.wavelength = nir.wavelength
        twins.models = (nir, nphys, nir.wavelength, twins.gaps, jsnr,
                        twin_profile(nir.wavelength))
        twins.flux = open_memmap(jdir / "flux.npy", mode="w+", dtype=np.float32,
                                 shape=(n_jwst, p.jwst_n_pixels))
        twins.error = open_memmap(jdir / "error.npy", mode="w+", dtype=np.float32,
                                  shape=(n_jwst, p.jwst_n_pixels))
    return twins


def _apogee_models(p: SurveyParams, truth: dict) -> tuple:
    """What :func:`helpers.survey.spectrum.synth_block` needs: the Cannon model, the line
    physics, the error profile, the chip mask, the wavelength grid, each star's velocity
    shift and the telluric and sky templates shifted to it, and the rate of bad pixels
    under sky lines.

    Book: {ref}`sec-spectrum-model`
    """
    apo = apogee_model(22500.0)
    physics = line_physics("apogee", 22500.0)
    tell_t, sky_t = observed_frame_templates(22500.0)
    q = shift_index(truth["VHELIO_TRUE"])
    uq, tell_bank = shift_bank(tell_t, q)
    _, sky_bank = shift_bank(sky_t, q)
    return (apo, physics, error_profile(), apogee.chip_mask(), apogee.wavelength_grid(),
            (uq, q), tell_bank, sky_bank,
            sky_bad_rate(sky_t, apogee.chip_mask()) if p.bad_pixel_rate > 0 else 0.0)


def _synthesise_spectra(p: SurveyParams, tmp: Path, allstar, truth: dict, catalogue,
                        has_file: np.ndarray, models: tuple, twins: _Twins,
                        n_threads: int, progress: bool) -> None:
    """Make every star's spectrum, block by block, into the spectra cache ``tmp/cache``.

    Book: {ref}`sec-spectrum-model`

    Blocks of 256 stars (:data:`helpers.survey.params.BLOCK`, each with its own random
    stream) are made by ``n_threads`` threads (:func:`_block_spectra`) and written in order
    by a :class:`~helpers.apogee.cache_writer.SpectraCacheWriter`; the stars of
    ``has_file`` also get aspcapStar files (written by a pool of threads, at most 64
    pending), and the twins' spectra go into ``twins.flux``/``twins.error``.  The cache
    commits once every block and file is written.  ``models``: from :func:`_apogee_models`.
    """
    n = len(allstar)
    root = tmp / "sas"
    pbar = None
    if progress_enabled(progress):
        # imported only when a bar is shown: in a Jupyter kernel without ipywidgets the
        # import of tqdm.auto itself warns on stderr
        from tqdm.auto import tqdm
        pbar = tqdm(total=n, desc="synthetic survey", unit="star")
    file_pool = ThreadPoolExecutor(max_workers=max(1, n_threads))
    file_jobs = collections.deque()
    with file_pool, _single_threaded_blas(), SpectraCacheWriter(
            tmp / "cache", catalogue, release=f"synthetic-{p.release}",
            key_extra={"survey_key": p.key()},
            key_info={"survey_params": p.to_dict()}) as w:
        n_blocks = int(np.ceil(n / BLOCK))
        file_blocks = set((np.flatnonzero(has_file) // BLOCK).tolist())

        def work(blk):
            return _block_spectra(p, blk, n, truth, models, twins, blk in file_blocks)

        for blk, s in enumerate(_ordered_map(work, range(n_blocks), n_threads)):
            rows = s["rows"]
            start = int(rows[0])
            w.write(slice(start, start + rows.size), s["flux"], s["error"])
            if blk % 16 == 15:
                w.release_pages()
            for r in rows[has_file[rows]]:
                file_jobs.append(_submit_aspcapstar(file_pool, root, p.release, allstar, r, s,
                                                    r - start))
            while len(file_jobs) > 64:  # bound the spectra held for pending files
                file_jobs.popleft().result()
            if s.get("jwst") is not None:
                lo, hi, (jf, je) = s["jwst"]
                twins.flux[lo:hi] = jf
                twins.error[lo:hi] = je
            del s
            if pbar is not None:
                pbar.update(rows.size)
        while file_jobs:  # aspcapStar files finished before the cache commits
            file_jobs.popleft().result()
    if pbar is not None:
        pbar.close()


def _block_spectra(p: SurveyParams, blk: int, n: int, truth: dict, models: tuple,
                   twins: _Twins, keep_model: bool) -> dict:
    """The spectra of block ``blk`` (:func:`helpers.survey.spectrum.synth_block`) and, under
    ``'jwst'``, ``(lo, hi, (flux, error))`` of the twins among its stars (twin rows
    ``lo:hi``), or None when it has none.

    Book: {ref}`sec-spectrum-model`
    """
    res = synth_block(p, blk, n, truth, models, keep_model=keep_model)
    r = res["rows"]
    lo, hi = np.searchsorted(twins.rows, [r[0], r[-1] + 1])
    if hi > lo:
        res["jwst"] = (lo, hi, jwst_spectra(p, twins.rows[lo:hi], np.arange(lo, hi), truth,
                                             twins.models))
    return res


def _submit_aspcapstar(pool: ThreadPoolExecutor, root: Path, release: str, allstar, r: int,
                       s: dict, k: int):
    """Have ``pool`` write the aspcapStar file of catalogue row ``r``, row ``k`` of the block
    result ``s``; returns the future.

    Book: {ref}`sec-survey-files`
    """
    return pool.submit(
        apogee.write_aspcapstar,
        apogee.aspcapstar_path(root, release, allstar.TELESCOPE[r], allstar.FIELD[r],
                               allstar.APOGEE_ID[r]),
        s["flux"][k], s["error"][k], s["model"][k],
        apogee_id=allstar.APOGEE_ID[r], bad=_row_mask(s["hard"], k),
        telescope=allstar.TELESCOPE[r], field=allstar.FIELD[r],
        params={"TEFF": float(allstar.TEFF[r]), "LOGG": float(allstar.LOGG[r]),
                "FE_H": float(allstar.FE_H[r]), "SNR": float(allstar.SNR[r])})


def _write_twin_arrays(p: SurveyParams, jdir: Path, twins: _Twins, truth: dict) -> None:
    """Close the twins' flux and error files (or write empty ones) and write their grid,
    gaps, shutters, rows, identifiers and S/N into ``jdir``.

    Book: {ref}`sec-jwst`
    """
    jrows = twins.rows
    if jrows.size:
        twins.flux.flush()
        twins.error.flush()
        twins.flux = twins.error = None
        np.save(jdir / "wavelength.npy", twins.wavelength)
    else:
        np.save(jdir / "flux.npy", np.zeros((0, p.jwst_n_pixels), np.float32))
        np.save(jdir / "error.npy", np.zeros((0, p.jwst_n_pixels), np.float32))
        np.save(jdir / "wavelength.npy", nirspec_grid(p.jwst_n_pixels, p.jwst_wmin,
                                                      p.jwst_wmax))
    np.save(jdir / "gap.npy", twins.gaps if twins.gaps is not None
            else np.zeros((jrows.size, 0)))
    if twins.shutters is not None:
        np.save(jdir / "shutter_column.npy", twins.shutters["shutter_column"])
        np.save(jdir / "shutter_quadrants.npy", twins.shutters["quadrants"].astype(str))
    np.save(jdir / "rows.npy", jrows.astype(np.int64))
    np.save(jdir / "apogee_ids.npy", np.asarray(truth["APOGEE_ID"])[jrows].astype(str))
    np.save(jdir / "snr.npy", twins.snr)


def _write_truth(p: SurveyParams, path: Path, truth: dict, has_file: np.ndarray,
                 jrows: np.ndarray) -> None:
    """Write ``truth.npz``: the catalogue's truth plus which stars have files and twins,
    the element list, the chemical model's latent scale, each star's reference pattern and
    model-mismatch coefficients.

    Book: {ref}`sec-truth`
    """
    n = has_file.size
    tr = dict(truth)
    tr["HAS_FILE"] = has_file
    tr["JWST_ROW"] = np.full(n, -1, np.int64)
    tr["JWST_ROW"][jrows] = np.arange(jrows.size)
    tr["ELEMENTS"] = np.array(chem.ELEMENTS)
    tr["LATENT_SCALE"] = chem.chemical_model(p.n_latent, p.intrinsic_scatter).latent_scale
    tr["X_FE_REF"] = reference_pattern(truth["FE_H"]).astype(np.float32)
    tr["MISMATCH_COEF"] = mismatch_coefficients(truth["TEFF"], truth["LOGG"], truth["FE_H"])
    np.savez(path, **{k: np.asarray(v) for k, v in tr.items()})


def _single_threaded_blas():
    """Context limiting BLAS to one thread: the matrix products here are small, and
    BLAS threads on top of our block threads oversubscribe the CPUs (2x slower)."""
    return threadpool_limits(limits=1, user_api="blas")


def _row_mask(idx: tuple, k: int) -> np.ndarray:
    """Boolean pixel mask of row ``k`` from (row, pixel) index arrays."""
    m = np.zeros(apogee.N_PIXELS, bool)
    m[idx[1][idx[0] == k]] = True
    return m


def _ordered_map(fn, items, n_threads: int):
    """``map(fn, items)`` computed by ``n_threads`` threads, yielded in order, with at
    most 2 * n_threads results in flight (numpy releases the GIL in the heavy parts)."""
    items = list(items)
    if n_threads <= 1:
        for it in items:
            yield fn(it)
        return
    with ThreadPoolExecutor(max_workers=n_threads) as ex:
        pending = collections.deque()
        it = iter(items)
        for x in it:
            pending.append(ex.submit(fn, x))
            if len(pending) >= 2 * n_threads:
                break
        for x in it:
            yield pending.popleft().result()
            pending.append(ex.submit(fn, x))
        while pending:
            yield pending.popleft().result()
