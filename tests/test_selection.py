"""The RSCA selection on a hand-made catalogue (chapter 3)."""

import numpy as np
import pandas as pd
import pytest

from helpers.apogee import ASPCAPFLAG_BITS, MISSING, RSCA_ELEMENTS
from helpers.rsca.selection import (SelectionParams, cut_table, field_cut_masks, select_rsca_sample,
                                    selection_vs_truth)


def make_allstar(rows):
    """rows: list of (id, teff, logg, star_bad, missing_element_or_None, snr)."""
    data = {"APOGEE_ID": [], "TEFF": [], "LOGG": [], "ASPCAPFLAG": [], "SNR": []}
    xh = {f"X_H_{e}": [] for e in RSCA_ELEMENTS}
    for apogee_id, teff, logg, bad, missing, snr in rows:
        data["APOGEE_ID"].append(apogee_id)
        data["TEFF"].append(teff)
        data["LOGG"].append(logg)
        data["ASPCAPFLAG"].append((1 << ASPCAPFLAG_BITS["STAR_BAD"]) if bad else 0)
        data["SNR"].append(snr)
        for e in RSCA_ELEMENTS:
            xh[f"X_H_{e}"].append(MISSING if e == missing else -0.1)
    return pd.DataFrame({**data, **xh})


ALLSTAR = make_allstar([
    ("A", 4500, 2.5, False, None, 100),   # 0 good, member of C1
    ("B", 4600, 2.4, False, None, 100),   # 1 good, member of C1
    ("C", 4700, 2.2, False, None, 100),   # 2 good, member of C2 (alone after cuts) -> field
    ("D", 3900, 2.2, False, None, 100),   # 3 too cool, member of C2
    ("E", 4500, 3.2, False, None, 100),   # 4 logg too high
    ("F", 4500, 2.5, True, None, 100),    # 5 STAR_BAD
    ("G", 4500, 2.5, False, "Mn", 100),   # 6 missing Mn
    ("H", 4500, 2.5, False, None, 50),    # 7 duplicate of H, lower S/N
    ("H", 4500, 2.5, False, None, 90),    # 8 duplicate of H, kept
    ("I", 4800, 2.0, False, None, 100),   # 9 good, CG_PROB too low for C1
    ("2M19203303+3755558", 4500, 2.5, False, None, 100),  # 10 excluded by hand
    ("J", 5000, 2.5, False, None, 100),   # 11 TEFF == 5000 is outside the open interval
])
MEMBERS = pd.DataFrame({
    "CLUSTER": ["C1", "C1", "C2", "C2", "C1", "C1"],
    "APOGEE_ID": ["A", "B", "C", "D", "I", "2M19203303+3755558"],
    "CG_PROB": [0.9, 0.95, 0.99, 0.99, 0.5, 0.9],
})


def test_field_cuts_one_by_one():
    masks = field_cut_masks(ALLSTAR)
    teff, logg, bad, measured, unique = masks.values()
    assert list(np.flatnonzero(~teff)) == [3, 11]
    assert list(np.flatnonzero(~logg)) == [4]
    assert list(np.flatnonzero(~bad)) == [5]
    assert list(np.flatnonzero(~measured)) == [6]
    assert list(np.flatnonzero(~unique)) == [7]


def test_cut_table_counts():
    table = cut_table(field_cut_masks(ALLSTAR), len(ALLSTAR))
    assert table["removed"].tolist() == [0, 2, 1, 1, 1, 1]
    assert table["remaining"].iloc[-1] == 6


def test_select_rsca_sample():
    sel = select_rsca_sample(ALLSTAR, MEMBERS)
    assert sel.cluster_rows.tolist() == [0, 1]
    assert sel.cluster_labels.tolist() == ["C1", "C1"]
    assert sel.n_clusters == 1
    # C is alone in C2 after the cuts: its cluster is dropped and it stays a field star;
    # I fails CG_PROB and stays in the field; the excluded star is in neither set.
    assert sel.field_rows.tolist() == [2, 8, 9]
    assert sel.cluster_cuts["remaining"].iloc[-1] == 2


def test_min_members_and_threshold_are_parameters():
    sel = select_rsca_sample(ALLSTAR, MEMBERS, SelectionParams(cg_prob_min=0.4))
    assert sorted(ALLSTAR["APOGEE_ID"].iloc[sel.cluster_rows]) == ["A", "B", "I"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(teff_range=(5000, 4000)), "teff_range"),
    (dict(cg_prob_min=1.5), "cg_prob_min"),
    (dict(min_members=1), "min_members"),
    (dict(elements=("Xx",)), "elements"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SelectionParams(**kwargs)


def test_missing_column_is_named():
    with pytest.raises(KeyError, match="X_H_Mg"):
        field_cut_masks(ALLSTAR.drop(columns=["X_H_Mg"]))
    with pytest.raises(KeyError, match="CG_PROB"):
        select_rsca_sample(ALLSTAR, MEMBERS.drop(columns=["CG_PROB"]))


def test_selection_vs_truth_counts_by_hand():
    # true members: A, B (C1), I (C1, low CG_PROB: lost), D (C2, too cool: not eligible), the
    # excluded star (not eligible); B is selected into C1 but truly belongs to C3: a contaminant
    truth = pd.DataFrame({"IS_MEMBER": [True, True, False, True] + [False] * 5 + [True, True, False],
                          "CLUSTER": ["C1", "C3", "", "C2"] + [""] * 5 + ["C1", "C1", ""]})
    sel = select_rsca_sample(ALLSTAR, MEMBERS)
    got = selection_vs_truth(sel, ALLSTAR, truth)
    assert {k: got[k] for k in ("eligible", "kept", "lost", "selected", "contaminants")} == \
        {"eligible": 3, "kept": 2, "lost": 1, "selected": 2, "contaminants": 1}
    assert got["completeness"] == pytest.approx(2 / 3) and got["contamination"] == 0.5
    with pytest.raises(ValueError, match="rows"):
        selection_vs_truth(sel, ALLSTAR, truth.iloc[:5])
    with pytest.raises(KeyError, match="IS_MEMBER"):
        selection_vs_truth(sel, ALLSTAR, truth.drop(columns=["IS_MEMBER"]))
