"""Opening a spectra cache as memory maps, checked and aligned (:func:`load_spectra_cache`).

Book: {ref}`sec-survey-files`
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from helpers.apogee.cache_format import (CACHE_FILES, CACHE_FORMAT, CATALOGUE, ERROR, FLUX, IDS,
                                         MANIFEST, SpectraCacheError, ids_of, read_manifest)
from helpers.apogee.grid import wavelength_grid

__all__ = ["SpectraCache", "load_spectra_cache"]


@dataclass
class SpectraCache:
    """A loaded spectra cache.

    Attributes
    ----------
    path : pathlib.Path
        Cache directory.
    catalogue : pandas.DataFrame, N rows
        The catalogue, row i describing spectrum i.
    flux : numpy.memmap, shape (N, 8575), float32
        Normalised flux (memory-mapped read-only by default).
    error : numpy.memmap, shape (N, 8575), float32
        1-sigma flux error (1e10 at bad pixels, 0 outside the chips).
    apogee_ids : numpy.ndarray of str, shape (N,)
    manifest : dict
        Contents of manifest.json (key, creation time, skipped-file report, ...).

    Book: {ref}`sec-survey-files`
    """

    path: Path
    catalogue: pd.DataFrame
    flux: np.ndarray
    error: np.ndarray
    apogee_ids: np.ndarray
    manifest: dict

    def __len__(self) -> int:
        return len(self.apogee_ids)

    @property
    def wavelength(self) -> np.ndarray:
        """Vacuum wavelength grid in Angstrom, shape (8575,), float64."""
        return wavelength_grid()

    @property
    def skipped(self) -> list[dict]:
        """Rows left out at build time: dicts with row, apogee_id, path, reason."""
        return list(self.manifest.get("skipped", []))


def load_spectra_cache(path, expect_ids: Sequence[str] | None = None,
                       mmap_mode: str | None = "r") -> SpectraCache:
    """Open a spectra cache and check that it is complete and aligned.

    Parameters
    ----------
    path : str or path-like
        Cache directory written by :func:`build_spectra_cache` or
        :class:`SpectraCacheWriter`.
    expect_ids : sequence of str, optional
        The APOGEE_IDs the caller expects, in order; a different length or any different
        entry raises :class:`SpectraCacheError` naming the first mismatch.
    mmap_mode : {'r', 'r+', 'c', None}
        Passed to ``np.load`` for flux and error; ``None`` reads them into memory.

    Returns
    -------
    SpectraCache

    Raises
    ------
    FileNotFoundError
        No directory at ``path``.
    SpectraCacheError
        Incomplete cache (no manifest, wrong format, missing file), shapes or dtype not as
        in the manifest, or IDs that disagree with the catalogue or ``expect_ids``.

    Book: {ref}`sec-survey-files`
    """
    p = Path(path)
    if not p.is_dir():
        leftovers = sorted(p.parent.glob(f".{p.name}.building-*")) if p.parent.is_dir() \
            else []
        hint = (f"; {len(leftovers)} interrupted build(s) left {leftovers[0].name}, which is "
                f"not a cache") if leftovers else ""
        raise FileNotFoundError(f"no spectra cache at {p}{hint}")
    manifest = read_manifest(p)
    if not manifest:
        raise SpectraCacheError(f"spectra cache {p}: no readable {MANIFEST}; the directory "
                                f"is not a complete cache")
    if manifest.get("format") != CACHE_FORMAT or manifest.get("complete") is not True:
        raise SpectraCacheError(f"spectra cache {p}: manifest format "
                                f"{manifest.get('format')!r} / complete="
                                f"{manifest.get('complete')!r}, expected {CACHE_FORMAT!r} "
                                f"and complete=true")
    missing = [f for f in CACHE_FILES if not (p / f).is_file()]
    if missing:
        raise SpectraCacheError(f"spectra cache {p}: missing file(s) {missing}")
    n = int(manifest["n_stars"])
    n_pix = int(manifest["n_pixels"])
    try:
        flux = np.load(p / FLUX, mmap_mode=mmap_mode, allow_pickle=False)
        error = np.load(p / ERROR, mmap_mode=mmap_mode, allow_pickle=False)
        ids = np.load(p / IDS, allow_pickle=False)
        with np.load(p / CATALOGUE, allow_pickle=False) as z:
            cols = {c["name"]: z[c["key"]] for c in manifest["catalogue_columns"]}
    except (OSError, ValueError, KeyError) as exc:
        raise SpectraCacheError(f"spectra cache {p}: cannot read its arrays ({exc})") from exc
    for name, arr in (("flux", flux), ("error", error)):
        if arr.shape != (n, n_pix) or arr.dtype != np.float32:
            raise SpectraCacheError(f"spectra cache {p}: {name}.npy has shape {arr.shape} "
                                    f"dtype {arr.dtype}, manifest says ({n}, {n_pix}) "
                                    f"float32")
    catalogue = pd.DataFrame(cols)
    catalogue.attrs.update(manifest.get("catalogue_attrs", {}))
    if ids.shape != (n,) or len(catalogue) != n:
        raise SpectraCacheError(f"spectra cache {p}: {ids.shape[0]} ids and "
                                f"{len(catalogue)} catalogue rows, manifest says {n}")
    id_col = manifest.get("id_column", "APOGEE_ID")
    cat_ids = ids_of(catalogue, id_col)
    _check_same_ids(ids, cat_ids, f"spectra cache {p}: stored apogee_ids vs catalogue "
                                  f"column {id_col}")
    if expect_ids is not None:
        exp = np.asarray([str(i).strip() for i in expect_ids], dtype=str)
        _check_same_ids(ids, exp, f"spectra cache {p}: stored apogee_ids vs expect_ids")
    return SpectraCache(path=p, catalogue=catalogue, flux=flux, error=error, apogee_ids=ids,
                        manifest=manifest)


def _check_same_ids(have: np.ndarray, want: np.ndarray, what: str) -> None:
    if have.shape != want.shape:
        raise SpectraCacheError(f"{what}: {have.shape[0]} vs {want.shape[0]} rows")
    diff = np.flatnonzero(have != want)
    if diff.size:
        i = int(diff[0])
        raise SpectraCacheError(f"{what}: {diff.size} rows differ, first at row {i} "
                                f"({have[i]!r} != {want[i]!r}); rows would be misaligned")
