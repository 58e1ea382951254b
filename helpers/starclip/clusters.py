"""Open clusters in an embedding: APOGEE spectra of catalogue rows embedded by towers, cached.

Book: {ref}`sec-starclip-clusters`

The doppelganger rate (chapter 5) needs a representation of every field giant that can
form an allowed pair with a cluster member, of a random field sample (for the sphering of
RSCA's step 2) and of the members. :func:`embed_catalogue_rows` reads those APOGEE spectra
from the survey's spectra cache in row order, marks the missing pixels as StarNet does
(:func:`helpers.starnet.observed_pixels`: chip gaps, flagged pixels, errors above the
censoring threshold), fills them with the StarNet training stars' mean flux and passes them
through any number of towers in one read. The result is cached by the source, the rows,
the towers' runs and the threshold.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from tqdm import tqdm   # not tqdm.auto: its import warns on stderr in a kernel without ipywidgets

from helpers.paths import cache_dir
from helpers.starnet import observed_pixels

from .train import progress_enabled

__all__ = ["embed_catalogue_rows", "training_star_rows"]


def embed_catalogue_rows(flux, error, rows, towers: dict, fill, max_error: float | None = 0.05,
                         key_parts: dict | None = None, chunk: int = 2048,
                         progress: bool = True) -> dict:
    """Embeddings of catalogue rows by several towers, from one read of their spectra.

    Book: {ref}`sec-starclip-clusters`

    Parameters
    ----------
    flux, error : array_like, shape (n_catalogue, n_pixels)
        The spectra cache (memory maps).
    rows : array_like of int, shape (n,)
        Catalogue rows to embed (any order; the output follows it).
    towers : dict of str -> ClipTower
        All on the grid of ``flux``.
    fill : ndarray, shape (n_pixels,)
        Flux put into missing pixels (the StarNet APOGEE run's ``fill``).
    max_error : float or None
        Pixels with a larger error are missing (StarNet's APOGEE default: 0.05).
    key_parts : dict, optional
        JSON-able description of the data and the towers' runs; when given, the result is
        cached in ``<cache>/starclip/embeddings/<key>.npz``.
    chunk : int
    progress : bool

    Returns
    -------
    dict of str -> ndarray, shape (n, dim), float32
    """
    rows = np.asarray(rows, dtype=np.int64)
    fill = np.asarray(fill, np.float32)
    if rows.ndim != 1 or rows.size == 0:
        raise ValueError("rows must be a non-empty 1-D array of catalogue rows")
    if rows.min() < 0 or rows.max() >= flux.shape[0]:
        raise ValueError(f"rows must lie in [0, {flux.shape[0]})")
    if fill.shape != (flux.shape[1],):
        raise ValueError(f"fill has shape {fill.shape}, the spectra {flux.shape[1]} pixels")
    path = None
    if key_parts is not None:
        blob = json.dumps({"parts": key_parts, "towers": sorted(towers), "max_error": max_error,
                           "rows": hashlib.sha256(rows.tobytes()).hexdigest()}, sort_keys=True,
                          default=str)
        path = cache_dir("starclip", "embeddings") / \
            f"{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npz"
        if path.exists():
            with np.load(path) as z:
                return {name: z[name] for name in towers}
    order = np.argsort(rows, kind="stable")
    out = {name: np.empty((rows.size, t.dim), np.float32) for name, t in towers.items()}
    bar = tqdm(total=rows.size, desc="embedding APOGEE spectra", unit="star",
               disable=not progress_enabled(progress))
    for s in range(0, rows.size, chunk):
        pos = order[s:s + chunk]
        f = np.asarray(flux[rows[pos]], dtype=np.float32)
        e = np.asarray(error[rows[pos]], dtype=np.float32)
        ok = observed_pixels(f, e, max_error)
        f = np.where(ok, f, fill)
        for name, t in towers.items():
            out[name][pos] = t.embed(f)
        bar.update(pos.size)
    bar.close()
    if path is not None:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **out)
        os.replace(tmp, path)
    return out


def training_star_rows(source, split, part: str = "train") -> np.ndarray:
    """Catalogue rows of the stars of a split part (e.g. StarNet's training stars).

    Book: {ref}`sec-starclip-clusters`
    """
    spec = source.modality("apogee")
    return np.sort(spec.catalogue_rows[spec.rows_of(split.part(part))])
