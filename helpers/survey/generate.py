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
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from threadpoolctl import threadpool_limits

from helpers import apogee
from helpers.apogee.cache_writer import SpectraCacheWriter
from helpers.apogee.cache_zarr import write_zarr_cache
from helpers.paths import cache_dir
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


def _progress(enabled: bool):
    return bool(enabled) and not os.environ.get("CI")


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
        Show a tqdm bar (quiet when the environment variable CI is set).
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
    if out.exists() and any(out.iterdir()) and not is_complete_survey(out):
        raise FileExistsError(f"{out} exists and is not a synthetic survey; refusing to "
                              f"replace it")
    if n_threads is None:
        n_threads = min(4, os.cpu_count() or 1)
    t0 = time.perf_counter()
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
    try:
        timings = {}
        allstar, truth, occ = build_catalogue(p)
        n = len(allstar)
        root = tmp / "sas"
        star_path = apogee.allstar_path(root, p.release)
        apogee.write_allstar(star_path, allstar, apogee.DR16_ELEM_SYMBOL, p.release)
        occ_dir = root.joinpath(*OCCAM_DIR)
        apogee.write_occam_members(occ_dir / "occam_member-DR16.fits", occ)
        apogee.write_occam_clusters(occ_dir / "occam_cluster-DR16.fits",
                                    occam_cluster_table(occ, truth))
        catalogue = apogee.read_allstar(star_path)
        timings["catalogue_s"] = time.perf_counter() - t0
        # which stars get files: OCCAM member-file stars first, then field stars
        order = np.r_[np.flatnonzero(truth["IN_OCCAM_FILE"]),
                      np.flatnonzero(~truth["IN_OCCAM_FILE"])]
        has_file = np.zeros(n, bool)
        has_file[order[:min(p.n_files, n)]] = True
        jrows = select_jwst(p, truth) if p.n_jwst != 0 else np.zeros(0, int)
        n_jwst = int(jrows.size)
        jrng = np.random.default_rng([p.seed, STREAMS["jwst"]])
        jsnr = (p.jwst_snr_median * np.exp(0.3 * jrng.standard_normal(n_jwst))
                ).astype(np.float32)
        apo = apogee_model(22500.0)
        physics = line_physics("apogee", 22500.0)
        tell_t, sky_t = observed_frame_templates(22500.0)
        q = shift_index(truth["VHELIO_TRUE"])
        uq, tell_bank = shift_bank(tell_t, q)
        _, sky_bank = shift_bank(sky_t, q)
        models = (apo, physics, error_profile(), apogee.chip_mask(), apogee.wavelength_grid(),
                  (uq, q), tell_bank, sky_bank,
                  sky_bad_rate(sky_t, apogee.chip_mask()) if p.bad_pixel_rate > 0 else 0.0)
        jdir = tmp / "jwst"
        jdir.mkdir()
        gaps, shutters = None, None
        if p.jwst_gap == "msa":
            shutters = draw_detector_gaps(n_jwst, jrng)
            gaps = np.column_stack([shutters["gap_start"], shutters["gap_end"]])
        elif p.jwst_gap is not None:
            gaps = np.tile(np.asarray(p.jwst_gap, float), (n_jwst, 1))
        if n_jwst:
            nir = nirspec_model(p.jwst_resolution, p.jwst_n_pixels, p.jwst_wmin, p.jwst_wmax)
            nphys = line_physics("nirspec", p.jwst_resolution, p.jwst_n_pixels, p.jwst_wmin,
                                 p.jwst_wmax)
            nmodels = (nir, nphys, nir.wavelength, gaps, jsnr, twin_profile(nir.wavelength))
            jflux = open_memmap(jdir / "flux.npy", mode="w+", dtype=np.float32,
                                shape=(n_jwst, p.jwst_n_pixels))
            jerr = open_memmap(jdir / "error.npy", mode="w+", dtype=np.float32,
                               shape=(n_jwst, p.jwst_n_pixels))
        pbar = None
        if _progress(progress):
            # imported only when a bar is shown: in a Jupyter kernel without ipywidgets the
            # import of tqdm.auto itself warns on stderr
            from tqdm.auto import tqdm
            pbar = tqdm(total=n, desc="synthetic survey", unit="star")
        t1 = time.perf_counter()
        file_pool = ThreadPoolExecutor(max_workers=max(1, n_threads))
        file_jobs = collections.deque()
        with file_pool, _single_threaded_blas(), SpectraCacheWriter(
                tmp / "cache", catalogue, release=f"synthetic-{p.release}",
                key_extra={"survey_key": p.key()},
                key_info={"survey_params": p.to_dict()}) as w:
            n_blocks = int(np.ceil(n / BLOCK))
            file_blocks = set((np.flatnonzero(has_file) // BLOCK).tolist())

            def work(blk):
                res = synth_block(p, blk, n, truth, models, keep_model=blk in file_blocks)
                if n_jwst:
                    r = res["rows"]
                    lo, hi = np.searchsorted(jrows, [r[0], r[-1] + 1])
                    res["jwst"] = (lo, hi, jwst_spectra(p, jrows[lo:hi], np.arange(lo, hi),
                                                         truth, nmodels) if hi > lo else None)
                return res

            for blk, s in enumerate(_ordered_map(work, range(n_blocks), n_threads)):
                rows = s["rows"]
                start = int(rows[0])
                w.write(slice(start, start + rows.size), s["flux"], s["error"])
                if blk % 16 == 15:
                    w.release_pages()
                for r in rows[has_file[rows]]:
                    k = r - start
                    file_jobs.append(file_pool.submit(
                        apogee.write_aspcapstar,
                        apogee.aspcapstar_path(root, p.release, allstar.TELESCOPE[r],
                                               allstar.FIELD[r], allstar.APOGEE_ID[r]),
                        s["flux"][k], s["error"][k], s["model"][k],
                        apogee_id=allstar.APOGEE_ID[r],
                        bad=_row_mask(s["hard"], k),
                        telescope=allstar.TELESCOPE[r], field=allstar.FIELD[r],
                        params={"TEFF": float(allstar.TEFF[r]), "LOGG": float(allstar.LOGG[r]),
                                "FE_H": float(allstar.FE_H[r]), "SNR": float(allstar.SNR[r])}))
                while len(file_jobs) > 64:  # bound the spectra held for pending files
                    file_jobs.popleft().result()
                if n_jwst and s["jwst"][2] is not None:
                    lo, hi, (jf, je) = s["jwst"]
                    jflux[lo:hi] = jf
                    jerr[lo:hi] = je
                del s
                if pbar is not None:
                    pbar.update(rows.size)
            while file_jobs:  # aspcapStar files finished before the cache commits
                file_jobs.popleft().result()
        if pbar is not None:
            pbar.close()
        timings["spectra_s"] = time.perf_counter() - t1
        if n_jwst:
            jflux.flush()
            jerr.flush()
            del jflux, jerr
            np.save(jdir / "wavelength.npy", nir.wavelength)
        else:
            np.save(jdir / "flux.npy", np.zeros((0, p.jwst_n_pixels), np.float32))
            np.save(jdir / "error.npy", np.zeros((0, p.jwst_n_pixels), np.float32))
            np.save(jdir / "wavelength.npy", nirspec_grid(p.jwst_n_pixels, p.jwst_wmin,
                                                          p.jwst_wmax))
        np.save(jdir / "gap.npy", gaps if gaps is not None else np.zeros((n_jwst, 0)))
        if shutters is not None:
            np.save(jdir / "shutter_column.npy", shutters["shutter_column"])
            np.save(jdir / "shutter_quadrants.npy", shutters["quadrants"].astype(str))
        np.save(jdir / "rows.npy", jrows.astype(np.int64))
        np.save(jdir / "apogee_ids.npy", np.asarray(truth["APOGEE_ID"])[jrows].astype(str))
        np.save(jdir / "snr.npy", jsnr)
        tr = dict(truth)
        tr["HAS_FILE"] = has_file
        tr["JWST_ROW"] = np.full(n, -1, np.int64)
        tr["JWST_ROW"][jrows] = np.arange(jrows.size)
        tr["ELEMENTS"] = np.array(chem.ELEMENTS)
        tr["LATENT_SCALE"] = chem.chemical_model(p.n_latent, p.intrinsic_scatter).latent_scale
        tr["X_FE_REF"] = reference_pattern(truth["FE_H"]).astype(np.float32)
        tr["MISMATCH_COEF"] = mismatch_coefficients(truth["TEFF"], truth["LOGG"], truth["FE_H"])
        np.savez(tmp / "truth.npz", **{k: np.asarray(v) for k, v in tr.items()})
        timings["total_s"] = time.perf_counter() - t0
        manifest = {"complete": True, "key": p.key(), "generator_version": GENERATOR_VERSION,
                    "params": p.to_dict(), "n_stars": int(n), "n_field": int(p.n_field),
                    "n_occam_rows": int(len(occ)), "n_files": int(has_file.sum()),
                    "n_jwst": n_jwst, "release": p.release,
                    "allstar": str(star_path.relative_to(tmp)), "timings": timings}
        (tmp / SURVEY_MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if zarr:
        write_zarr_cache(out / "cache", progress=progress)
    return out


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
