"""What flatters the rate: the doppelganger rate with each imprint of the survey switched off.

Book: {ref}`sec-imprint-table`

The synthetic survey knows every imprint it injects (chapter 2b).  :func:`imprint_ablation`
generates the same survey (same seed, same stars, same clusters) once with every imprint
and once with each imprint switched off in turn, and measures on each the cross-validated
rate of RSCA on spectra (the paper's protocol: PPCA on every field star, several runs) and of
RSCA on the measured abundances.  Each setting's per-cluster rates are cached
(:func:`helpers.rsca.scratch.cached_arrays`) and its survey is scratch
(:func:`helpers.rsca.scratch.scratch_inputs`), so the table costs disk only while it is
computed.  Differences to the full survey are paired by cluster and by PPCA run.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from helpers.apogee import RSCA_ELEMENTS
from helpers.rsca.abundances import RSCA_SUBSET, abundance_matrix
from helpers.rsca.pairs import PairFilter
from helpers.rsca.pipeline import MaskParams
from helpers.rsca.representation import PPCA_TOL, ppca_runs
from helpers.rsca.runs import RateEvaluator, RateSpread
from helpers.rsca.scratch import cached_arrays, lean, result_key, scratch_inputs
from helpers.rsca.selection import SelectionParams
from helpers.survey import SurveyParams

__all__ = ["IMPRINTS", "imprint_settings", "imprint_ablation", "ablation_table", "setting_rates"]

#: Each imprint of chapter 2b and the SurveyParams fields that switch it off.
IMPRINTS = {
    "every imprint (the survey)": {},
    "no plate patterns": {"plate_systematic": 0.0},
    "no telluric or sky residuals": {"telluric_residual": 0.0, "sky_residual": 0.0},
    "no interstellar bands (DIBs)": {"dib_strength": 0.0},
    "no persistence": {"persistence_fraction": 0.0},
    "no model mismatch": {"mismatch_amplitude": 0.0},
    "no systematic label errors": {"synthetic_gap": 0.0},
}


def imprint_settings(rows=None) -> dict:
    """The settings of an imprint table: the survey as it is, then the imprints switched off.

    Book: {ref}`sec-imprint-table`

    Parameters
    ----------
    rows : list of str, optional
        Names of :data:`IMPRINTS` (other than its first entry, the survey with every imprint)
        to switch off, in the order of :data:`IMPRINTS`; ``None``: every one of them.

    Returns
    -------
    dict of str -> dict
        The first entry of :data:`IMPRINTS` (the reference of the differences), then the
        chosen ones: the ``settings`` of :func:`imprint_ablation`.

    Raises
    ------
    ValueError
        A name that is not an imprint of :data:`IMPRINTS`, or an empty list.
    """
    names = list(IMPRINTS)
    if rows is None:
        return dict(IMPRINTS)
    if isinstance(rows, str) or not all(isinstance(r, str) for r in rows) or not len(rows):
        raise ValueError(f"imprint rows must be None or a non-empty list of names from {names[1:]}, "
                         f"got {rows!r}")
    unknown = [r for r in rows if r not in names[1:]]
    if unknown:
        raise ValueError(f"imprint rows {unknown} are not imprints of the table; choose from {names[1:]}")
    return {name: IMPRINTS[name] for name in names if name == names[0] or name in rows}


def setting_rates(params: SurveyParams, *, n_components: int = 30, n_runs: int = 3, seed: int = 0,
                  mask: MaskParams = MaskParams(ism_windows="paper"),
                  selection: SelectionParams = SelectionParams(), keep_survey: bool = False) -> dict:
    """Per-cluster rates of spectra and abundances on one survey (cached; scratch survey).

    Book: {ref}`sec-imprint-table`

    Parameters
    ----------
    params : SurveyParams
        The survey.
    n_components : int
        K of the PPCA representation.
    n_runs : int
        PPCA runs (start seeds ``seed ...``), every field star in each.
    seed : int
    mask, selection :
        Chapters 4 and 3's choices (the paper's windows by default: see
        :func:`helpers.rsca.scratch.scratch_inputs`).
    keep_survey : bool
        Keep the generated survey.

    Returns
    -------
    dict
        ``clusters`` (n_clusters,), ``n_members`` (n_clusters,), ``spectra`` (n_runs,
        n_clusters), ``subset`` and ``all21`` (n_clusters,) for RSCA on the 7-element subset
        and on the 21 abundances, ``n_field`` (selected field giants).
    """
    key = result_key("imprint-setting-v1", survey=params.key(), mask=mask.to_dict(),
                     selection=selection.__dict__, K=int(n_components), n_runs=int(n_runs),
                     seed=int(seed), tol=PPCA_TOL)

    def compute():
        with scratch_inputs(params, mask=mask, selection=selection, keep=keep_survey) as (inputs, _):
            labels = inputs.cluster_labels
            ev = RateEvaluator(labels, PairFilter.from_inputs(inputs))
            runs = ppca_runs(inputs, n_components, n_runs, seed=seed, cache=False, progress=False)
            spectra = np.stack([ev.per_cluster(r.field, r.cluster) for r in runs])
            abund = {}
            for name, elements in (("subset", RSCA_SUBSET), ("all21", RSCA_ELEMENTS)):
                F = abundance_matrix(inputs.allstar, elements, inputs.field_rows)
                C = abundance_matrix(inputs.allstar, elements, inputs.cluster_rows)
                abund[name] = ev.per_cluster(F, C)
            return {"clusters": ev.clusters.astype(str), "n_members": ev.n_members,
                    "spectra": spectra, "n_field": inputs.field_flux.shape[0], **abund}

    return cached_arrays("imprints", key, compute)


def imprint_ablation(base: SurveyParams, settings: dict = IMPRINTS, *, progress: bool = False,
                     **kwargs) -> dict:
    """:func:`setting_rates` for each setting: ``base`` with the given fields changed.

    Book: {ref}`sec-imprint-table`

    Parameters
    ----------
    base : SurveyParams
        The survey with every imprint (e.g. ``chapter_source(n_field, survey_seed)``); the
        settings are generated lean (:func:`helpers.rsca.scratch.lean`: no twins, no files).
    settings : dict of str -> dict
        Name -> SurveyParams fields to change (default :data:`IMPRINTS`); the first entry
        is the reference of the differences.
    progress : bool
        Print one line per setting as it is computed.
    **kwargs
        Passed to :func:`setting_rates`.

    Returns
    -------
    dict of str -> dict
        Name -> the result of :func:`setting_rates`.
    """
    out = {}
    for name, changes in settings.items():
        unknown = set(changes) - set(SurveyParams.__dataclass_fields__)
        if unknown:
            raise ValueError(f"setting {name!r} changes unknown SurveyParams field(s) {sorted(unknown)}")
        out[name] = setting_rates(lean(base.replace(**changes)), **kwargs)
        if progress:
            print(f"  {name}: done", flush=True)
    return out


def ablation_table(results: dict, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The imprint table: rates and paired differences to the first setting.

    Book: {ref}`sec-imprint-table`

    Parameters
    ----------
    results : dict
        From :func:`imprint_ablation`.
    n_boot, seed : int
        Bootstrap over clusters.

    Returns
    -------
    pandas.DataFrame
        One row per setting: ``spectra`` (mean over runs), ``run_sd``, ``boot_sd``,
        ``spectra_diff`` (minus the first setting, paired by cluster and run) and
        ``spectra_diff_sd`` (joint bootstrap of the difference), the same for the abundance
        subset (``subset``, ``subset_diff``, ``subset_diff_sd``; no PPCA, so no run spread),
        and ``n_field``.
    """
    names = list(results)
    ref = results[names[0]]
    rows = []
    for name in names:
        r = results[name]
        if not np.array_equal(r["clusters"], ref["clusters"]):
            raise ValueError(f"setting {name!r} has other clusters than {names[0]!r}: "
                             "no paired difference")
        kw = dict(n_boot=n_boot, seed=seed)
        spec = RateSpread(r["spectra"], r["n_members"], r["clusters"], **kw)
        spec0 = RateSpread(ref["spectra"], ref["n_members"], ref["clusters"], **kw)
        sub = RateSpread(r["subset"], r["n_members"], r["clusters"], fixed=True, **kw)
        sub0 = RateSpread(ref["subset"], ref["n_members"], ref["clusters"], fixed=True, **kw)
        ds, dsub = spec - spec0, sub - sub0
        rows.append({"setting": name, "spectra": spec.mean, "run_sd": spec.run_sd,
                     "boot_sd": spec.boot_sd, "spectra_diff": ds.mean,
                     "spectra_diff_sd": ds.total_sd, "subset": sub.mean, "subset_diff": dsub.mean,
                     "subset_diff_sd": dsub.boot_sd, "n_field": int(r["n_field"])})
    return pd.DataFrame(rows).set_index("setting")
