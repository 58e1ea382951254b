"""What the synthetic survey knows and RSCA should find: roles of RSCA dimensions, and the knee
against the true number of chemical dimensions.

Book: {ref}`sec-ground-truth`

The survey's chemistry has ``n_latent`` latent dimensions plus 0.02 dex of independent
scatter per element (chapter 2); its spectra carry Teff, logg, model mismatch and the
imprints of chapter 2b.  For a fitted RSCA metric, :func:`dimension_roles` says what each
of its dimensions (ranked by weight) follows among the field stars: the fraction of its
variance a linear fit on each group of true quantities explains.  :func:`latent_ranks`
says, for each true latent coordinate, whether the K PPCA coefficients resolve it at all
and from which N the top-N RSCA dimensions recover it.  :func:`explain_knee` turns both
into the reason for a knee that misses the true number of dimensions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers.rsca.knee import Knee, find_knee
from helpers.rsca.metric import RelevantScaling
from helpers.rsca.pairs import PairFilter
from helpers.rsca.pipeline import MaskParams
from helpers.rsca.representation import PPCA_TOL, ppca_runs
from helpers.rsca.runs import RateEvaluator
from helpers.rsca.scratch import cached_arrays, lean, result_key, scratch_inputs
from helpers.survey import Survey, SurveyParams, generate_survey, load_survey

__all__ = ["survey_truth", "explained_share", "plate_share", "dimension_roles", "latent_ranks",
           "explain_knee", "TruthScan", "truth_scan", "scratch_plate_shares", "ROLE_THRESHOLD"]

#: R^2 from which a quantity counts as followed by a dimension (dimension_roles, latent_ranks).
ROLE_THRESHOLD = 0.5


def survey_truth(source) -> Survey:
    """The synthetic survey behind a chapter's source, or a clear error for real data.

    Book: {ref}`sec-ground-truth`

    Parameters
    ----------
    source : SurveyParams or Survey or dict
        What :func:`helpers.rsca.pipeline.chapter_source` returned.

    Returns
    -------
    helpers.survey.Survey
        With ``truth`` and ``truth_arrays``.
    """
    if isinstance(source, SurveyParams):
        source = load_survey(generate_survey(source, progress=False))
    if not isinstance(source, Survey):
        raise ValueError("the ground truth needs a synthetic survey (its truth.npz knows every "
                         "star's chemistry); real data has no truth: skip this section for "
                         f"{type(source).__name__} sources")
    if not (source.path / "truth.npz").exists():
        raise ValueError(f"{source.path} has no truth.npz: the ground truth needs a synthetic "
                         "survey with its truth")
    return source


def explained_share(Z, design) -> np.ndarray:
    """R^2 of a least-squares fit (with intercept) of each column of ``Z`` on ``design``.

    Book: {ref}`sec-ground-truth`

    Parameters
    ----------
    Z : array_like, shape (n_stars, n_dims)
    design : array_like, shape (n_stars, p)

    Returns
    -------
    ndarray, shape (n_dims,)
    """
    Z = np.asarray(Z, float)
    A = np.column_stack([np.ones(len(Z)), np.asarray(design, float)])
    coef, *_ = np.linalg.lstsq(A, Z, rcond=None)
    var = Z.var(axis=0)
    return np.where(var > 0, 1.0 - (Z - A @ coef).var(axis=0) / np.where(var > 0, var, 1), 0.0)


def plate_share(Z, plates) -> np.ndarray:
    """Fraction of each column's variance explained by plate membership (adjusted R^2).

    Book: {ref}`sec-rsca-plates`

    The between-plate variance over the total, corrected for the share that random groups of
    the same sizes would explain (``(n_plates - 1) / (n_stars - 1)`` on average), so that 0
    means "no plate pattern" whatever the number of plates.

    Parameters
    ----------
    Z : array_like, shape (n_stars, n_dims)
    plates : array_like, shape (n_stars,)
        Plate of each star.

    Returns
    -------
    ndarray, shape (n_dims,)
    """
    Z = np.asarray(Z, float)
    _, codes = np.unique(np.asarray(plates), return_inverse=True)
    n, p = Z.shape[0], codes.max() + 1
    counts = np.bincount(codes, minlength=p).astype(float)
    means = np.zeros((p, Z.shape[1]))
    np.add.at(means, codes, Z)
    means /= counts[:, None]
    total = ((Z - Z.mean(axis=0)) ** 2).sum(axis=0)
    within = ((Z - means[codes]) ** 2).sum(axis=0)
    r2 = 1 - within / np.where(total > 0, total, 1)
    if n - p <= 0:
        return np.full(Z.shape[1], np.nan)
    return 1 - (1 - r2) * (n - 1) / (n - p)


def _groups(truth: dict, rows):
    """Design matrices of the truth groups for some allStar rows."""
    t = {k: np.asarray(v)[rows] for k, v in truth.items() if k not in ("ELEMENTS", "LATENT_SCALE")}
    tau, gam = (t["TEFF"] - 4500) / 500, t["LOGG"] - 2.5
    return {
        "latent": t["LATENT"],
        "abundances": t["X_FE"] + t["FE_H"][:, None],
        "teff_logg": np.column_stack([tau, gam, tau ** 2, gam ** 2, tau * gam]),
        "imprints": np.column_stack([t[k] for k in ("AK_TRUE", "DIB_EW", "TELLURIC_AMP", "SKY_AMP",
                                                     "PERSISTENCE_AMP", "VHELIO_TRUE") if k in t]),
    }


def dimension_roles(rep, labels, truth: dict, field_rows, *, max_rank: int = 12) -> pd.DataFrame:
    """What each RSCA dimension (ranked by weight) follows among the field stars.

    Book: {ref}`sec-ground-truth`

    The metric is fitted on every cluster (this describes the metric, it evaluates nothing).
    For each of the top ``max_rank`` dimensions, the R^2 of a linear fit of its field values
    on: the true latent coordinates (``r2_latent``); every true abundance, i.e. the latents
    plus each element's own scatter (``r2_abundances``); true Teff and logg, to second order
    (``r2_teff_logg``); the injected imprints: extinction, DIB strength, telluric, sky and
    persistence amplitudes, velocity (``r2_imprints``); and the plate (:func:`plate_share`).
    Chemistry and Teff/logg are correlated along the giant branch, so the ``role`` is decided
    on what each group explains *beyond* the others (R^2 of everything minus R^2 without the
    group): "latent chemistry" or "element scatter" (the abundances beyond the latents),
    "Teff, logg", "imprints", "plate", or "noise" when no group adds 0.1 and all together
    explain less than 0.3.  (The survey's model mismatch varies with Teff, logg and [Fe/H]:
    it counts with those.)

    Parameters
    ----------
    rep : helpers.rsca.representation.Representation
        One PPCA run (``field``, ``cluster``).
    labels : array_like, shape (n_members,)
    truth : dict
        :attr:`helpers.survey.Survey.truth_arrays`.
    field_rows : array_like of int, shape (n_field,)
        allStar rows of ``rep.field`` (``RscaInputs.field_rows``).
    max_rank : int

    Returns
    -------
    pandas.DataFrame
        One row per rank (1 = largest weight): ``weight``, ``sigma_clust``, ``r2_latent``,
        ``r2_abundances``, ``r2_teff_logg``, ``r2_imprints``, ``r2_plate``, ``r2_all``,
        ``role``.
    """
    model = RelevantScaling("transformed").fit(rep.field, rep.cluster, labels)
    order = np.argsort(-model.scale_, kind="stable")
    order = order[model.scale_[order] > 0][:int(max_rank)]
    Z = model.reparametrize(rep.field)[:, order]
    g = _groups(truth, field_rows)
    share = {name: explained_share(Z, X) for name, X in g.items()}
    chem = np.column_stack([g["latent"], g["abundances"]])
    full = explained_share(Z, np.column_stack([chem, g["teff_logg"], g["imprints"]]))
    without = {"chemistry": explained_share(Z, np.column_stack([g["teff_logg"], g["imprints"]])),
               "teff_logg": explained_share(Z, np.column_stack([chem, g["imprints"]])),
               "imprints": explained_share(Z, np.column_stack([chem, g["teff_logg"]]))}
    plates = plate_share(Z, np.asarray(truth["PLATE_IDX"])[field_rows])
    table = pd.DataFrame({
        "rank": np.arange(1, order.size + 1), "weight": model.scale_[order],
        "sigma_clust": model.sigma_clust_[order], "r2_latent": share["latent"],
        "r2_abundances": share["abundances"], "r2_teff_logg": share["teff_logg"],
        "r2_imprints": share["imprints"], "r2_plate": plates, "r2_all": full}).set_index("rank")
    unique = pd.DataFrame({"chemistry": full - without["chemistry"],
                           "Teff, logg": full - without["teff_logg"],
                           "imprints": full - without["imprints"], "plate": plates},
                          index=table.index)
    role = unique.idxmax(axis=1)
    scatter_wins = table.r2_abundances - table.r2_latent > table.r2_latent
    role = role.where(role != "chemistry", np.where(scatter_wins, "element scatter", "latent chemistry"))
    noise = (unique.max(axis=1) < 0.1) & (np.maximum(full, plates) < 0.3)
    table["role"] = role.where(~noise, "noise")
    return table


def latent_ranks(rep, labels, latent, *, max_rank: int = 12,
                 threshold: float = ROLE_THRESHOLD) -> pd.DataFrame:
    """For each true latent coordinate: resolved by PPCA at all, and from which N by RSCA.

    Book: {ref}`sec-ground-truth`

    Parameters
    ----------
    rep : helpers.rsca.representation.Representation
    labels : array_like, shape (n_members,)
    latent : array_like, shape (n_field, n_latent)
        True latent coordinates of the field stars of ``rep``.
    max_rank : int
        Largest N tried.
    threshold : float
        R^2 from which a coordinate counts as recovered.

    Returns
    -------
    pandas.DataFrame
        One row per latent coordinate: ``scale`` (its standard deviation among the field
        stars, dex), ``r2_ppca`` (from all K PPCA coordinates), ``r2_top`` (from the top
        ``max_rank`` RSCA dimensions), ``first_N`` (smallest N whose top-N RSCA
        dimensions give R^2 >= threshold; 0 if none up to ``max_rank``).
    """
    L = np.asarray(latent, float)
    model = RelevantScaling("transformed").fit(rep.field, rep.cluster, labels)
    order = np.argsort(-model.scale_, kind="stable")
    order = order[model.scale_[order] > 0][:int(max_rank)]
    R = model.reparametrize(rep.field)[:, order]
    r2_ppca = explained_share(L, rep.field)
    first = np.zeros(L.shape[1], int)
    r2_top = np.zeros(L.shape[1])
    for n in range(1, order.size + 1):
        r2 = explained_share(L, R[:, :n])
        newly = (first == 0) & (r2 >= threshold)
        first[newly] = n
        r2_top = r2
    names = ["[Fe/H]", "[alpha/M]"] + [f"weak {j}" for j in range(1, L.shape[1] - 1)]
    return pd.DataFrame({"scale": L.std(axis=0), "r2_ppca": r2_ppca, "r2_top": r2_top,
                         "first_N": first}, index=names[:L.shape[1]])


def explain_knee(knee: int, n_latent: int, roles: pd.DataFrame, ranks: pd.DataFrame,
                 threshold: float = ROLE_THRESHOLD, without=None) -> str:
    """Why a knee misses the true number of chemical dimensions (``"hit"`` when within 1).

    Book: {ref}`sec-ground-truth`

    Parameters
    ----------
    knee : int
        From :func:`helpers.rsca.knee.find_knee`.
    n_latent : int
        The survey's true number of latent chemical dimensions.
    roles, ranks : pandas.DataFrame
        From :func:`dimension_roles` and :func:`latent_ranks` of the same representation.
    threshold : float
        R^2 from which a latent coordinate counts as recovered or resolved.
    without : pandas.Series, optional
        :attr:`helpers.rsca.knee.Knee.without`: the knee with each cluster left out.

    Returns
    -------
    str
        ``"hit"``, or the reason: a single cluster whose removal makes the knee a hit (it
        makes the drops beyond the knee insignificant, or significant, on its own); which
        latent coordinates the first ``knee`` dimensions miss and why (not resolved by the
        PPCA coefficients; or ranked beyond the knee by RSCA); or what the dimensions beyond
        ``n_latent`` up to the knee follow.
    """
    if abs(knee - n_latent) <= 1:
        return "hit"
    prefix = ""
    if without is not None and len(without):
        hits = without[(without - n_latent).abs() <= 1]
        if len(hits):
            prefix = "; ".join(f"without {name} the knee is {int(k)}" for name, k in hits.items()) + "; "
    if knee < n_latent:
        missed = ranks[(ranks.first_N == 0) | (ranks.first_N > knee)]
        unresolved = missed[missed.r2_ppca < threshold]
        late = missed[missed.r2_ppca >= threshold]
        parts = []
        if len(unresolved):
            parts.append("not resolved by the PPCA coefficients: " + ", ".join(
                f"{n} (R2 {r.r2_ppca:.2f}, {r.scale:.3f} dex)" for n, r in unresolved.iterrows()))
        if len(late):
            parts.append("resolved, but ranked beyond the knee: " + ", ".join(
                f"{n} (from N = {int(r.first_N)})" if r.first_N else f"{n} (not within the scan)"
                for n, r in late.iterrows()))
        return "knee below the truth; " + prefix + ("; ".join(parts) if parts else
                                                    "every latent coordinate is recovered by N = knee")
    extra = roles.loc[(roles.index > n_latent) & (roles.index <= knee), "role"]
    counts = extra.value_counts()
    return "knee above the truth; " + prefix + "dimensions {}-{} follow: ".format(n_latent + 1, knee) + \
        ", ".join(f"{name} ({n})" for name, n in counts.items())


@dataclass
class TruthScan:
    """Table 1 of one survey, its knee, and what the true chemistry says about it.

    Book: {ref}`sec-ground-truth`

    Attributes
    ----------
    n_latent : int
        The survey's true number of latent chemical dimensions.
    N_values : ndarray of int
        Dimensions kept (the last one: all K).
    per_cluster : ndarray, shape (n_N, n_runs, n_clusters)
        Leave-one-cluster-out rates.
    n_members : ndarray, shape (n_clusters,)
    knee : helpers.rsca.knee.Knee
    roles : pandas.DataFrame
        :func:`dimension_roles` of run 0.
    ranks : pandas.DataFrame
        :func:`latent_ranks` of run 0.
    reason : str
        :func:`explain_knee`: ``"hit"`` or why not.
    n_field : int
        Selected field giants.
    """

    n_latent: int
    N_values: np.ndarray
    per_cluster: np.ndarray
    n_members: np.ndarray
    knee: Knee
    roles: pd.DataFrame
    ranks: pd.DataFrame
    reason: str
    n_field: int

    @property
    def hit(self) -> bool:
        """Whether the knee is the true number of dimensions +- 1."""
        return abs(self.knee.knee - self.n_latent) <= 1


def _scan(inputs, truth, runs, N_values, max_rank):
    labels = inputs.cluster_labels
    ev = RateEvaluator(labels, PairFilter.from_inputs(inputs))
    K = runs[0].field.shape[1]
    P = np.stack([np.stack([ev.per_cluster(r.field, r.cluster, top_n=None if N >= K else int(N))
                            for r in runs]) for N in N_values])
    roles = dimension_roles(runs[0], labels, truth, inputs.field_rows, max_rank=max_rank)
    ranks = latent_ranks(runs[0], labels, np.asarray(truth["LATENT"])[inputs.field_rows],
                         max_rank=max_rank)
    return P, ev.n_members, ev.clusters, roles, ranks


def truth_scan(params: SurveyParams, *, n_components: int = 30, n_runs: int = 5, seed: int = 0,
               N_values=None, z: float = 2.0, n_boot: int = 1000, n_fit=None, margin: str = "sd",
               mask: MaskParams = MaskParams(ism_windows="paper"),
               keep_survey: bool = False) -> TruthScan:
    """Table 1, its knee and the truth's account of it, for another synthetic survey.

    Book: {ref}`sec-ground-truth`

    The survey is scratch: generated for the measurement and removed afterwards
    (:func:`helpers.rsca.scratch.scratch_inputs`, unless ``keep_survey``), while its
    per-cluster rates and truth tables are cached (:func:`helpers.rsca.scratch.cached_arrays`),
    so a second call generates nothing.

    Parameters
    ----------
    params : SurveyParams
        The survey (e.g. ``chapter_source(n_field_alt, seed, n_latent=6)``).
    n_components, n_runs, seed, n_fit :
        The PPCA runs (every field star by default), as in
        :func:`helpers.rsca.representation.ppca_runs`.
    N_values : sequence of int, optional
        Dimensions kept (default 1..15); ``n_components`` ("all") is added.
    z, n_boot, margin :
        The knee rule (:func:`helpers.rsca.knee.find_knee`).
    mask : MaskParams
        The paper's windows by default, which small surveys need.
    keep_survey : bool
        Keep the generated survey.

    Returns
    -------
    TruthScan
    """
    if not isinstance(params, SurveyParams):
        raise ValueError("truth_scan needs the SurveyParams of a synthetic survey: only a synthetic "
                         f"survey knows its true chemistry (got {type(params).__name__})")
    params = lean(params)            # no twins, no files: the same catalogue and spectra
    n_latent = int(params.n_latent)
    N = sorted({int(n) for n in (N_values or range(1, 16)) if n < n_components} | {int(n_components)})
    max_rank = max(N[-2] if len(N) > 1 else 1, n_latent + 2)
    key = result_key("truth-scan-v2", survey=params.key(), mask=mask.to_dict(), K=int(n_components),
                     n_runs=int(n_runs), seed=int(seed), n_fit=n_fit, N=N, tol=PPCA_TOL,
                     max_rank=max_rank)

    def compute():
        with scratch_inputs(params, mask=mask, keep=keep_survey) as (inp, survey):
            runs = ppca_runs(inp, n_components, n_runs, seed=seed, n_fit=n_fit, cache=False,
                             progress=False)
            P, n_members, clusters, roles, ranks = _scan(inp, survey.truth_arrays, runs, N, max_rank)
            out = {"P": P, "n_members": n_members, "clusters": clusters, "n_field": inp.field_flux.shape[0],
                   "ranks_index": ranks.index.to_numpy().astype(str)}
            out.update({f"roles_{c}": roles[c].to_numpy() for c in roles.columns})
            out.update({f"ranks_{c}": ranks[c].to_numpy() for c in ranks.columns})
            return out

    arr = cached_arrays("truth_scan", key, compute)
    roles = pd.DataFrame({k[6:]: v for k, v in arr.items() if k.startswith("roles_")})
    roles.index = pd.Index(np.arange(1, len(roles) + 1), name="rank")
    ranks = pd.DataFrame({k[6:]: v for k, v in arr.items()
                          if k.startswith("ranks_") and k != "ranks_index"}, index=arr["ranks_index"])
    knee = find_knee(arr["P"], arr["n_members"], N, z=z, n_boot=n_boot, seed=seed, margin=margin,
                     clusters=arr["clusters"])
    return TruthScan(n_latent=n_latent, N_values=np.asarray(N), per_cluster=arr["P"],
                     n_members=arr["n_members"], knee=knee, roles=roles, ranks=ranks,
                     reason=explain_knee(knee.knee, n_latent, roles, ranks, without=knee.without),
                     n_field=int(arr["n_field"]))


def scratch_plate_shares(params: SurveyParams, *, n_components: int = 30, seed: int = 0,
                         max_rank: int = 10, mask: MaskParams = MaskParams(ism_windows="paper")) -> np.ndarray:
    """Plate share of the top RSCA dimensions of one PPCA run on a scratch survey (cached).

    Book: {ref}`sec-rsca-plates`

    Generates ``params`` (scratch: removed after use, :func:`helpers.rsca.scratch.scratch_inputs`),
    fits one PPCA run (start seed ``seed``) on every field star, and returns the ``r2_plate``
    column of :func:`dimension_roles`: how much of each top dimension plate membership
    explains.  The result is cached by its inputs (:func:`helpers.rsca.scratch.cached_arrays`),
    so a second call generates nothing.

    Parameters
    ----------
    params : SurveyParams
        A synthetic survey (e.g. ``lean(chapter_source(6000, 42, plate_systematic=0.0))``).
    n_components : int
        K of the PPCA run.
    seed : int
    max_rank : int
        Top dimensions reported.
    mask : MaskParams
        The paper's interstellar windows by default (small surveys need them).

    Returns
    -------
    ndarray, shape (max_rank,)
        Plate share of dimensions 1 .. max_rank, ranked by the metric's weight.
    """
    if not isinstance(params, SurveyParams):
        raise ValueError("scratch_plate_shares needs the SurveyParams of a synthetic survey: only a "
                         f"synthetic survey knows its plates' imprint (got {type(params).__name__})")
    key = result_key("plate-shares-v1", survey=params.key(), mask=mask.to_dict(), K=int(n_components),
                     seed=int(seed), tol=PPCA_TOL, max_rank=int(max_rank))

    def compute():
        with scratch_inputs(params, mask=mask) as (inp, survey):
            run = ppca_runs(inp, n_components, 1, seed=seed, cache=False, progress=False)[0]
            roles = dimension_roles(run, inp.cluster_labels, survey.truth_arrays, inp.field_rows,
                                    max_rank=max_rank)
        return {"r2_plate": roles.r2_plate.to_numpy()}

    return cached_arrays("plate_shares", key, compute)["r2_plate"]
