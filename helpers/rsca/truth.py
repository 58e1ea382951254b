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

import numpy as np
import pandas as pd

from helpers.rsca.metric import RelevantScaling
from helpers.survey import Survey, SurveyParams, generate_survey, load_survey

__all__ = ["survey_truth", "explained_share", "plate_share", "dimension_roles", "latent_ranks",
           "explain_knee", "ROLE_THRESHOLD"]

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
    x_h = t["X_FE"] + t["FE_H"][:, None]
    return {
        "latent chemistry": t["LATENT"],
        "every abundance": x_h,
        "Teff, logg, mismatch": np.column_stack([tau, gam, tau ** 2, gam ** 2, tau * gam,
                                                 t.get("MISMATCH_COEF", np.zeros((len(tau), 0)))]),
        "imprints": np.column_stack([t[k] for k in ("AK_TRUE", "DIB_EW", "TELLURIC_AMP", "SKY_AMP",
                                                     "PERSISTENCE_AMP", "VHELIO_TRUE") if k in t]),
    }


def dimension_roles(rep, labels, truth: dict, field_rows, *, max_rank: int = 12) -> pd.DataFrame:
    """What each RSCA dimension (ranked by weight) follows among the field stars.

    Book: {ref}`sec-ground-truth`

    The metric is fitted on every cluster (this describes the metric, it evaluates nothing).
    For the top ``max_rank`` dimensions, the R^2 of a linear fit of the dimension's field
    values on: the true latent coordinates; every true abundance (latents plus each
    element's own scatter); Teff, logg and the model-mismatch coefficients; the injected
    imprints (extinction, DIB, telluric, sky, persistence, velocity); and the plate
    (:func:`plate_share`).  ``role`` names the largest of the chemical share (latent or
    element scatter), the stellar-parameter share and the imprint share, or "noise" when
    none reaches 0.3.

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
        ``r2_abundances``, ``r2_stellar``, ``r2_imprints``, ``r2_plate``, ``role``.
    """
    model = RelevantScaling("transformed").fit(rep.field, rep.cluster, labels)
    order = np.argsort(-model.scale_, kind="stable")
    order = order[model.scale_[order] > 0][:int(max_rank)]
    Z = model.reparametrize(rep.field)[:, order]
    g = _groups(truth, field_rows)
    shares = {name: explained_share(Z, X) for name, X in g.items()}
    plates = np.asarray(truth["PLATE_IDX"])[field_rows]
    table = pd.DataFrame({
        "rank": np.arange(1, order.size + 1), "weight": model.scale_[order],
        "sigma_clust": model.sigma_clust_[order],
        "r2_latent": shares["latent chemistry"], "r2_abundances": shares["every abundance"],
        "r2_stellar": shares["Teff, logg, mismatch"], "r2_imprints": shares["imprints"],
        "r2_plate": plate_share(Z, plates)}).set_index("rank")
    scatter = table.r2_abundances - table.r2_latent
    candidates = pd.DataFrame({"latent chemistry": table.r2_latent, "element scatter": scatter,
                               "Teff, logg, mismatch": table.r2_stellar,
                               "imprints": np.maximum(table.r2_imprints, table.r2_plate)})
    best = candidates.idxmax(axis=1)
    table["role"] = np.where(candidates.max(axis=1) >= 0.3, best, "noise")
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
                 threshold: float = ROLE_THRESHOLD) -> str:
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

    Returns
    -------
    str
        ``"hit"``, or the reason: which latent coordinates the first ``knee`` dimensions
        miss and why (not resolved by the PPCA coefficients; or ranked beyond the knee by
        RSCA), or what the dimensions beyond ``n_latent`` up to the knee follow.
    """
    if abs(knee - n_latent) <= 1:
        return "hit"
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
        return "knee below the truth; " + "; ".join(parts) if parts else \
            "knee below the truth although every latent coordinate is recovered by N = knee"
    extra = roles.loc[(roles.index > n_latent) & (roles.index <= knee), "role"]
    counts = extra.value_counts()
    return "knee above the truth; dimensions {}-{} follow: ".format(n_latent + 1, knee) + ", ".join(
        f"{name} ({n})" for name, n in counts.items())
