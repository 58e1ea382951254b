"""Scratch surveys: generated for one measurement, kept as a small cached result, then removed.

Book: {ref}`sec-imprint-table`

The imprint table of chapter 5b and the ground truth of chapter 6 each need surveys at
settings no other chapter uses (an imprint switched off, another number of chemical
dimensions).  A survey of 40,000 stars takes about 3 GB of disk, so these surveys are
*scratch*: :func:`scratch_inputs` generates one (unless it exists already), hands its
RSCA inputs to the measurement, and removes what it generated afterwards; the measurement's
numbers are kept by :func:`cached_arrays`, keyed by everything they depend on, so a
second run of the chapter reads them without generating anything.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager

import numpy as np

from helpers.paths import cache_dir
from helpers.ppca.model import ENGINE_VERSION
from helpers.rsca.pipeline import MaskParams, rsca_inputs
from helpers.rsca.selection import SelectionParams
from helpers.survey import GENERATOR_VERSION, SurveyParams, generate_survey, load_survey
from helpers.survey.generate import is_complete_survey, survey_dir

__all__ = ["scratch_inputs", "cached_arrays", "result_key", "lean"]


def lean(params: SurveyParams) -> SurveyParams:
    """The same survey without what RSCA does not read: no JWST twins, no aspcapStar files.

    Book: {ref}`sec-imprint-table`

    The twins and the files come from their own random streams (or are plain output), so
    the catalogue and the spectra are those of ``params`` exactly
    (``tests/test_runs_knee.py`` checks it); a lean survey is several times faster to
    generate and smaller on disk.
    """
    return params.replace(n_jwst=0, n_files=0)


def result_key(kind: str, **parts) -> str:
    """A 16-hex-digit key of a cached result: its kind, its inputs, the code versions.

    Book: {ref}`sec-imprint-table`
    """
    blob = json.dumps({"kind": kind, "generator": GENERATOR_VERSION, "ppca_engine": ENGINE_VERSION,
                       **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_arrays(kind: str, key: str, compute) -> dict:
    """Arrays computed once per key and kept in ``.cache/rsca_results/<kind>/<key>.npz``.

    Book: {ref}`sec-imprint-table`

    Parameters
    ----------
    kind : str
        Folder name (one per kind of result).
    key : str
        From :func:`result_key`.
    compute : callable
        ``compute() -> dict of str -> array_like`` (numbers, strings).

    Returns
    -------
    dict of str -> ndarray
    """
    path = cache_dir("rsca_results", kind) / f"{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    result = {}
    for k, v in compute().items():
        v = np.asarray(v)
        result[k] = v.astype(str) if v.dtype == object else v      # no pickled objects on disk
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **result)
    os.replace(tmp, path)
    return result


@contextmanager
def scratch_inputs(params: SurveyParams, *, mask: MaskParams = MaskParams(ism_windows="paper"),
                   selection: SelectionParams = SelectionParams(), keep: bool = False):
    """The RSCA inputs of a survey generated for one measurement, removed afterwards.

    Book: {ref}`sec-imprint-table`

    A survey (and its inputs) that already existed before the call is left in place; one
    this call generated is deleted on exit unless ``keep``.  Two processes must not use
    the same scratch survey at once.

    Parameters
    ----------
    params : SurveyParams
    mask : MaskParams
        Default: the paper's four interstellar windows, which small surveys need (too few
        high-extinction stars to find windows from) and which keep the pixels the same for
        every setting.
    selection : SelectionParams
    keep : bool
        Keep what was generated.

    Yields
    ------
    (helpers.rsca.pipeline.RscaInputs, helpers.survey.Survey)
    """
    folder = survey_dir(params)
    existed = is_complete_survey(folder, params)
    path = generate_survey(params, progress=False)
    survey = load_survey(path)
    inputs = rsca_inputs(survey, selection, mask)
    try:
        yield inputs, survey
    finally:
        if not (existed or keep):
            del survey
            shutil.rmtree(inputs.path, ignore_errors=True)
            shutil.rmtree(path, ignore_errors=True)
