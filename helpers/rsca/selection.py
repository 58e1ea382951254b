"""The RSCA data selection: field red giants and open-cluster members.

Book: {ref}`ch-selection`

De Mijolla & Ness (2022, section 4.1) keep APOGEE stars with 4000 < TEFF < 5000 K,
1.5 < LOGG < 3.0, ``STAR_BAD`` unset and all 21 abundances measured; cluster members
are OCCAM stars with ``CG_PROB > 0.8``, in clusters that keep at least two members after
the cuts, minus one star the paper excluded by hand; cluster members are removed from the
field set.  Here each cut is a named step so that the chapter can tabulate what each one
removes, and so that the same code runs on the synthetic survey and on real allStar files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd

from helpers.apogee.allstar import RSCA_ELEMENTS
from helpers.apogee.bitmasks import ASPCAPFLAG_BITS, flag_set
from helpers.apogee.grid import MISSING

__all__ = ["SelectionParams", "Selection", "field_cut_masks", "passes_field_cuts", "cut_table",
           "select_rsca_sample", "selection_vs_truth", "PAPER_SAMPLE", "PAPER_EXCLUDED_IDS"]

#: The star de Mijolla & Ness removed from their cluster set (section 4.1).
PAPER_EXCLUDED_IDS = ("2M19203303+3755558",)

#: The size of the paper's sample (de Mijolla & Ness 2022, section 4.1; APOGEE DR16): field
#: giants after the cuts, cluster members, and the OCCAM clusters they belong to.
PAPER_SAMPLE = MappingProxyType({"field_giants": 151_145, "cluster_members": 185, "clusters": 22})


@dataclass(frozen=True)
class SelectionParams:
    """Every threshold of the RSCA selection, with the paper's values as defaults.

    Book: {ref}`ch-selection`

    Attributes
    ----------
    teff_range : tuple of float
        Open interval of TEFF, K.
    logg_range : tuple of float
        Open interval of LOGG, dex (cgs).
    elements : tuple of str
        Abundances ``X_H_<EL>`` that must all be measured (not -9999.99).
    cg_prob_min : float
        OCCAM members need ``CG_PROB`` strictly above this (Cantat-Gaudin membership).
    min_members : int
        Clusters with fewer selected members than this are dropped.
    exclude_ids : tuple of str
        APOGEE_IDs removed from the cluster set (and the field set).
    """

    teff_range: tuple = (4000.0, 5000.0)
    logg_range: tuple = (1.5, 3.0)
    elements: tuple = RSCA_ELEMENTS
    cg_prob_min: float = 0.8
    min_members: int = 2
    exclude_ids: tuple = PAPER_EXCLUDED_IDS

    def __post_init__(self):
        for name in ("teff_range", "logg_range"):
            lo, hi = getattr(self, name)
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"SelectionParams.{name} must be (low, high) with low < high, "
                                 f"got {getattr(self, name)}")
        if not 0.0 <= self.cg_prob_min < 1.0:
            raise ValueError(f"SelectionParams.cg_prob_min must lie in [0, 1), got {self.cg_prob_min}")
        if int(self.min_members) != self.min_members or self.min_members < 2:
            raise ValueError("SelectionParams.min_members must be an integer >= 2 "
                             f"(a cluster needs pairs), got {self.min_members}")
        unknown = set(self.elements) - set(RSCA_ELEMENTS) - {"P", "Ge", "Rb", "Nd", "Yb"}
        if unknown:
            raise ValueError(f"SelectionParams.elements has unknown symbols {sorted(unknown)}")


@dataclass
class Selection:
    """The result of :func:`select_rsca_sample`.

    Book: {ref}`ch-selection`

    Attributes
    ----------
    field_rows : ndarray of int, shape (n_field,)
        Row numbers (positions) in the allStar table of the field giants.
    cluster_rows : ndarray of int, shape (n_members,)
        Row numbers of the selected cluster members, sorted by cluster then APOGEE_ID.
    cluster_labels : ndarray of str, shape (n_members,)
        OCCAM cluster name of each member.
    field_cuts : pandas.DataFrame
        One row per field cut: stars removed and remaining.
    cluster_cuts : pandas.DataFrame
        The same for the cluster set.
    params : SelectionParams
    """

    field_rows: np.ndarray
    cluster_rows: np.ndarray
    cluster_labels: np.ndarray
    field_cuts: pd.DataFrame
    cluster_cuts: pd.DataFrame
    params: SelectionParams = field(default_factory=SelectionParams)

    @property
    def n_clusters(self) -> int:
        """Number of clusters in the cluster set."""
        return int(np.unique(self.cluster_labels).size)


def _require(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what} lacks column(s) {missing} (source {df.attrs.get('source', '?')})")


def field_cut_masks(allstar: pd.DataFrame, params: SelectionParams = SelectionParams()) -> dict:
    """Each RSCA quality cut as a boolean mask over allStar rows, in the paper's order.

    Book: {ref}`sec-field-cuts`

    Parameters
    ----------
    allstar : pandas.DataFrame, n_rows rows
        As returned by :func:`helpers.apogee.read_allstar` (TEFF, LOGG, ASPCAPFLAG,
        X_H_<EL>, APOGEE_ID; SNR if present is used to choose among duplicates).
    params : SelectionParams

    Returns
    -------
    dict of str -> ndarray of bool, shape (n_rows,)
        Masks of the stars *passing* each cut on its own (not cumulative). Keys describe
        the cut. A last entry keeps one row per APOGEE_ID (the highest S/N), since real
        allStar files list stars observed from both hemispheres twice.
    """
    need = ["APOGEE_ID", "TEFF", "LOGG", "ASPCAPFLAG"] + [f"X_H_{e}" for e in params.elements]
    _require(allstar, need, "allStar table")
    teff = allstar["TEFF"].to_numpy(dtype=float)
    logg = allstar["LOGG"].to_numpy(dtype=float)
    (t0, t1), (g0, g1) = params.teff_range, params.logg_range
    x_h = allstar[[f"X_H_{e}" for e in params.elements]].to_numpy(dtype=float)
    measured = np.all(np.isfinite(x_h) & (x_h > MISSING + 1.0), axis=1)
    masks = {
        f"{t0:.0f} < TEFF < {t1:.0f} K": (teff > t0) & (teff < t1),
        f"{g0:g} < LOGG < {g1:g}": (logg > g0) & (logg < g1),
        "STAR_BAD unset": ~flag_set(allstar["ASPCAPFLAG"].to_numpy(), "STAR_BAD", ASPCAPFLAG_BITS),
        f"all {len(params.elements)} X_H measured": measured,
    }
    ids = allstar["APOGEE_ID"].astype(str).str.strip().to_numpy()
    snr = allstar["SNR"].to_numpy(dtype=float) if "SNR" in allstar else np.zeros(len(ids))
    order = np.lexsort((-np.nan_to_num(snr, nan=-np.inf), ids))
    first = np.ones(len(ids), dtype=bool)
    first[order[1:]] = ids[order[1:]] != ids[order[:-1]]
    masks["one entry per APOGEE_ID (highest S/N)"] = first
    return masks


def passes_field_cuts(allstar: pd.DataFrame, params: SelectionParams = SelectionParams()) -> np.ndarray:
    """Rows passing every field cut of :func:`field_cut_masks` (before cluster matching).

    Book: {ref}`sec-field-cuts`

    Returns
    -------
    ndarray of bool, shape (len(allstar),)
    """
    return np.logical_and.reduce(list(field_cut_masks(allstar, params).values()))


def cut_table(masks: dict, n_start: int) -> pd.DataFrame:
    """Apply masks one after another and count what each removes.

    Book: {ref}`sec-field-cuts`

    Parameters
    ----------
    masks : dict of str -> ndarray of bool
        Passing masks, applied cumulatively in dict order.
    n_start : int
        Number of stars before the first cut.

    Returns
    -------
    pandas.DataFrame with columns ``cut``, ``removed``, ``remaining``.
    """
    rows = [("start", 0, n_start)]
    keep = np.ones(n_start, dtype=bool)
    for name, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n_start,):
            raise ValueError(f"cut {name!r} has shape {mask.shape}, expected ({n_start},)")
        before = int(keep.sum())
        keep &= mask
        rows.append((name, before - int(keep.sum()), int(keep.sum())))
    return pd.DataFrame(rows, columns=["cut", "removed", "remaining"])


def select_rsca_sample(allstar: pd.DataFrame, occam_members: pd.DataFrame,
                       params: SelectionParams = SelectionParams()) -> Selection:
    """The RSCA field set and cluster set from an allStar table and OCCAM members.

    Book: {ref}`ch-selection`

    Parameters
    ----------
    allstar : pandas.DataFrame
        allStar rows (see :func:`field_cut_masks` for the columns).
    occam_members : pandas.DataFrame
        OCCAM member catalogue: CLUSTER, APOGEE_ID, CG_PROB (-9999.99 when absent).
    params : SelectionParams

    Returns
    -------
    Selection
        Field giants (passing every cut, not a selected cluster member, not excluded) and
        cluster members (passing every cut, CG_PROB > cg_prob_min, in a cluster with at
        least ``min_members`` such stars, not excluded).
    """
    _require(occam_members, ["CLUSTER", "APOGEE_ID", "CG_PROB"], "OCCAM member table")
    masks = field_cut_masks(allstar, params)
    good = np.logical_and.reduce(list(masks.values()))  # = passes_field_cuts
    ids = allstar["APOGEE_ID"].astype(str).str.strip().to_numpy()
    excluded = np.isin(ids, np.asarray(params.exclude_ids, dtype=str))

    members = occam_members.assign(APOGEE_ID=occam_members["APOGEE_ID"].astype(str).str.strip(),
                                   CLUSTER=occam_members["CLUSTER"].astype(str).str.strip())
    cg = members["CG_PROB"].to_numpy(dtype=float)
    row_of = pd.Series(np.flatnonzero(good), index=ids[good])
    row_of = row_of[~row_of.index.duplicated()]
    in_allstar = members["APOGEE_ID"].isin(row_of.index).to_numpy()
    cg_ok = np.isfinite(cg) & (cg != MISSING) & (cg > params.cg_prob_min)
    not_excluded = ~members["APOGEE_ID"].isin(params.exclude_ids).to_numpy()
    cluster_masks = {
        "passes the field cuts": in_allstar,
        f"CG_PROB > {params.cg_prob_min:g}": cg_ok,
        "not excluded by hand": not_excluded,
    }
    keep = np.logical_and.reduce(list(cluster_masks.values()))
    # a star listed in two clusters is ambiguous: keep neither
    dup = members["APOGEE_ID"].where(keep).duplicated(keep=False).to_numpy() & keep
    cluster_masks["in one cluster only"] = ~dup
    keep &= ~dup
    counts = members.loc[keep, "CLUSTER"].value_counts()
    big = members["CLUSTER"].map(counts).fillna(0).to_numpy() >= params.min_members
    cluster_masks[f"cluster keeps >= {params.min_members} members"] = big
    keep &= big
    chosen = members.loc[keep].sort_values(["CLUSTER", "APOGEE_ID"])
    cluster_rows = row_of.loc[chosen["APOGEE_ID"]].to_numpy()
    cluster_labels = chosen["CLUSTER"].to_numpy(dtype=str)

    is_member = np.zeros(len(allstar), dtype=bool)
    is_member[cluster_rows] = True
    field_masks = dict(masks)
    field_masks["not a selected cluster member"] = ~is_member
    field_masks["not excluded by hand"] = ~excluded
    field_rows = np.flatnonzero(np.logical_and.reduce(list(field_masks.values())))
    return Selection(
        field_rows=field_rows,
        cluster_rows=cluster_rows,
        cluster_labels=cluster_labels,
        field_cuts=cut_table(field_masks, len(allstar)),
        cluster_cuts=cut_table(cluster_masks, len(members)),
        params=params,
    )


def selection_vs_truth(selection: Selection, allstar: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """How many true cluster members a selection keeps, and how many strangers it lets in.

    Book: {ref}`sec-selection-truth`

    The field cuts use the *measured* labels, so the fair denominator is the true members
    whose measured labels pass them (and who are not excluded by hand): the *eligible*
    members. A selected star is a *contaminant* when it is not a true member of the cluster
    it was assigned to.

    Parameters
    ----------
    selection : Selection
        From :func:`select_rsca_sample` on ``allstar``.
    allstar : pandas.DataFrame, n_rows rows
        The catalogue the selection was made from.
    truth : pandas.DataFrame, n_rows rows
        Row ``i`` describes allStar row ``i``: ``IS_MEMBER`` (bool) and ``CLUSTER`` (the
        true cluster name, '' for field stars), as in :attr:`helpers.survey.Survey.truth`.

    Returns
    -------
    dict
        ``eligible``, ``kept`` (eligible and selected), ``lost`` (eligible, not selected),
        ``selected``, ``contaminants`` (ints), ``completeness`` = kept / eligible and
        ``contamination`` = contaminants / selected (floats, NaN for an empty denominator).
    """
    _require(truth, ["IS_MEMBER", "CLUSTER"], "truth table")
    if len(truth) != len(allstar):
        raise ValueError(f"truth has {len(truth)} rows, the allStar table {len(allstar)}: "
                         "row i of each must describe the same star")
    ids = allstar["APOGEE_ID"].astype(str).str.strip().to_numpy()
    excluded = np.isin(ids, np.asarray(selection.params.exclude_ids, dtype=str))
    true_member = truth["IS_MEMBER"].to_numpy(dtype=bool)
    eligible = true_member & passes_field_cuts(allstar, selection.params) & ~excluded
    rows = selection.cluster_rows
    right = true_member[rows] & (truth["CLUSTER"].astype(str).to_numpy()[rows] == selection.cluster_labels)
    kept = int(eligible[rows].sum())
    n_eligible, n_selected, contaminants = int(eligible.sum()), int(rows.size), int((~right).sum())
    return {
        "eligible": n_eligible, "kept": kept, "lost": n_eligible - kept, "selected": n_selected,
        "contaminants": contaminants,
        "completeness": kept / n_eligible if n_eligible else float("nan"),
        "contamination": contaminants / n_selected if n_selected else float("nan"),
    }
