"""Tests of helpers.rsca.doppelganger: rates by hand, leave-one-cluster-out without leaks."""
import numpy as np
import pytest

from helpers.rsca.doppelganger import (doppelganger_rate, leave_one_cluster_out_splits,
                                  loco_doppelganger_rates, weighted_bootstrap)
from helpers.rsca import RelevantScaling


def hand_case():
    # 1-D coordinates.  Cluster "A": members 0, 1, 3; cluster "B": members 100, 104.
    Zc = np.array([[0.0], [1.0], [3.0], [100.0], [104.0]])
    lab = np.array(["A", "A", "A", "B", "B"])
    vc = np.zeros(5)
    akc = np.zeros(5)
    # field: 0.5, 2.5, 10, 1.5 (velocity 100: never allowed), 101 (AK 0.3: never allowed), 102
    Zp = np.array([[0.5], [2.5], [10.0], [1.5], [101.0], [102.0]])
    vp = np.array([0.0, 0.0, 0.0, 100.0, 0.0, 0.0])
    akp = np.array([0.0, 0.0, 0.0, 0.0, 0.3, 0.0])
    return Zc, lab, Zp, vp, akp, vc, akc


def test_rate_by_hand():
    Zc, lab, Zp, vp, akp, vc, akc = hand_case()
    res = doppelganger_rate(Zc, lab, Zp, vhelio_pop=vp, ak_pop=akp, vhelio_clust=vc,
                            ak_clust=akc)
    t = res.table.set_index("cluster")
    # A: pair distances 1, 3, 2 -> threshold 2.  Allowed field: 0.5, 2.5, 10, 102 (4 each).
    #    member 0: 0.5 | 2.5, 10, 102   -> 1 below
    #    member 1: 0.5, 1.5 | 9, 101    -> 2 below
    #    member 3: 0.5 | 2.5, 7, 99     -> 1 below      => 4 / 12 = 1/3
    assert t.loc["A", "threshold"] == pytest.approx(2.0)
    assert t.loc["A", "n_pairs"] == 12 and t.loc["A", "n_below"] == 4
    assert t.loc["A", "rate"] == pytest.approx(1 / 3)
    # B: one pair, distance 4 -> threshold 4.  Allowed field: 0.5, 2.5, 10, 102.
    #    only 102 is closer than 4 (to both members) => 2 / 8
    assert t.loc["B", "threshold"] == pytest.approx(4.0)
    assert t.loc["B", "n_pairs"] == 8 and t.loc["B", "rate"] == pytest.approx(0.25)
    # global: (3 * 1/3 + 2 * 1/4) / 5 = 0.3
    assert res.global_rate == pytest.approx(0.3)


def test_no_filter_and_strict_threshold():
    # members 0 and 2 -> threshold 2; field star at 2: distance 2 from member 0 (not below),
    # 0 from member 2 (below); field star at -5: never below.  => 1 / 4
    Zc = np.array([[0.0, 0.0], [2.0, 0.0]])
    Zp = np.array([[2.0, 0.0], [-5.0, 0.0]])
    res = doppelganger_rate(Zc, [1, 1], Zp)
    assert res.table["n_pairs"].iloc[0] == 4
    assert res.global_rate == pytest.approx(0.25)


def test_blockwise_matches_brute_force():
    rng = np.random.default_rng(3)
    Zc = rng.normal(size=(30, 5)) * 0.5
    lab = np.repeat(np.arange(5), 6)
    Zc += rng.normal(size=(5, 5))[lab]
    Zp = rng.normal(size=(20000, 5))
    vc = rng.normal(0, 30, 5)[lab]
    vp = rng.normal(0, 30, 20000)
    akc = rng.random(5)[lab]
    akp = rng.random(20000)
    res = doppelganger_rate(Zc, lab, Zp, vhelio_pop=vp, ak_pop=akp, vhelio_clust=vc,
                            ak_clust=akc)
    for k in range(5):
        m = Zc[lab == k]
        iu = np.triu_indices(len(m), 1)
        d_in = np.linalg.norm(m[:, None] - m[None], axis=-1)[iu]
        thr = np.median(d_in)
        d = np.linalg.norm(m[:, None] - Zp[None], axis=-1)
        ok = (np.abs(vc[lab == k][:, None] - vp) < 5) & (np.abs(akc[lab == k][:, None] - akp) < 0.05)
        assert res.table["n_pairs"].iloc[k] == ok.sum()
        assert res.table["n_below"].iloc[k] == ((d < thr) & ok).sum()


def test_bad_pair_filters():
    Zc, lab, Zp, vp, akp, vc, akc = hand_case()
    with pytest.raises(ValueError, match=r"vhelio_pop must be 1-D with 6 entries"):
        doppelganger_rate(Zc, lab, Zp, vhelio_pop=vp[:-1], vhelio_clust=vc)
    with pytest.raises(ValueError, match="given together"):
        doppelganger_rate(Zc, lab, Zp, vhelio_pop=vp)
    with pytest.raises(ValueError, match=r"ak_clust has a non-finite value"):
        doppelganger_rate(Zc, lab, Zp, ak_pop=akp, ak_clust=np.r_[akc[:-1], np.nan])
    with pytest.raises(ValueError, match="dv_max"):
        doppelganger_rate(Zc, lab, Zp, vhelio_pop=vp, vhelio_clust=vc, dv_max=-1)
    with pytest.raises(ValueError, match="Z_pop has 2 columns"):
        doppelganger_rate(Zc, lab, np.c_[Zp, Zp])
    with pytest.raises(ValueError, match="fewer than 2"):
        doppelganger_rate(Zc[:4], lab[:4], Zp)


# ------------------------------------------------------------------ leave-one-cluster-out
def planted(seed=0, N=3000, K=5, n_clusters=6, per=5):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(K, K)) + 2 * np.eye(K)
    Xp = rng.normal(size=(N, K)) @ A.T
    lab = np.repeat(np.arange(n_clusters), per)
    scat = np.array([0.1, 0.2, 1.0, 1.0, 1.0])
    Xc = (rng.normal(size=(n_clusters, K))[lab] + rng.normal(size=(lab.size, K)) * scat) @ A.T
    return Xp, Xc, lab


def test_loco_spy_never_sees_held_out_cluster():
    Xp, Xc, lab = planted()
    seen = []

    def spy(X_pop, X_train, labels_train):
        seen.append(set(np.unique(labels_train)))
        return RelevantScaling().fit(X_pop, X_train, labels_train)

    res = loco_doppelganger_rates(Xp, Xc, lab, fit_fn=spy, n_boot=0)
    names = list(res.table["cluster"])
    assert len(seen) == len(names) == 6
    for name, s in zip(names, seen):
        assert name not in s and s == set(range(6)) - {name}
    # leak=True: the (single) fit sees every cluster
    seen.clear()
    leaky = loco_doppelganger_rates(Xp, Xc, lab, fit_fn=spy, leak=True, n_boot=0)
    assert seen == [set(range(6))] and leaky.leak


def test_loco_held_out_perturbation_does_not_change_its_model():
    Xp, Xc, lab = planted()
    maps = {}

    def recorder(tag):
        def fit(X_pop, X_train, labels_train):
            m = RelevantScaling().fit(X_pop, X_train, labels_train)
            maps.setdefault(tag, []).append(m.linear_map_.copy())
            return m
        return fit

    loco_doppelganger_rates(Xp, Xc, lab, fit_fn=recorder("a"), n_boot=0)
    Xc2 = Xc.copy()
    Xc2[lab == 2] += 7.0 * np.random.default_rng(9).normal(size=Xc2[lab == 2].shape)
    loco_doppelganger_rates(Xp, Xc2, lab, fit_fn=recorder("b"), n_boot=0)
    np.testing.assert_array_equal(maps["a"][2], maps["b"][2])   # fold of cluster 2: same model
    assert not np.allclose(maps["a"][0], maps["b"][0])          # other folds did use cluster 2


def test_loco_default_matches_manual_and_leak_flatters():
    Xp, Xc, lab = planted(per=4)
    res = loco_doppelganger_rates(Xp, Xc, lab, n_boot=200, random_state=1)
    m = RelevantScaling().fit(Xp, Xc[lab != 3], lab[lab != 3])
    one = doppelganger_rate(m.transform(Xc[lab == 3]), lab[lab == 3], m.transform(Xp))
    assert res.table["rate"].iloc[3] == pytest.approx(one.global_rate, abs=1e-15)
    assert res.global_rate_std >= 0 and res.bootstrap.size == 200
    lo, hi = res.global_rate_interval
    assert lo <= hi
    again = loco_doppelganger_rates(Xp, Xc, lab, n_boot=200, random_state=1)
    assert again.to_dict() == res.to_dict()
    # make_model route gives the same rates as the default fit_fn
    mm = loco_doppelganger_rates(Xp, Xc, lab, make_model=RelevantScaling, n_boot=0)
    np.testing.assert_allclose(mm.table["rate"], res.table["rate"], atol=1e-15)
    # letting the held-out cluster into the fit makes the rate look better (here ~2x)
    leaky = loco_doppelganger_rates(Xp, Xc, lab, leak=True, n_boot=0)
    assert leaky.global_rate < res.global_rate


def test_loco_bad_inputs():
    Xp, Xc, lab = planted()
    with pytest.raises(ValueError, match="at least 3 clusters"):
        loco_doppelganger_rates(Xp, Xc[lab < 2], lab[lab < 2])
    with pytest.raises(ValueError, match=r"ak_pop must be 1-D with 3000"):
        loco_doppelganger_rates(Xp, Xc, lab, ak_pop=np.zeros(10), ak_clust=np.zeros(len(lab)))
    with pytest.raises(ValueError, match="not both"):
        loco_doppelganger_rates(Xp, Xc, lab, fit_fn=lambda *a: None, make_model=RelevantScaling)


def test_splits_and_bootstrap():
    lab = np.array(["b", "a", "b", "a", "c", "c"])
    splits = list(leave_one_cluster_out_splits(lab))
    assert [s[0] for s in splits] == ["a", "b", "c"]
    for _, tr, te in splits:
        assert not (tr & te).any() and (tr | te).all()
    reps = weighted_bootstrap([0.1, 0.1, 0.1], [1, 2, 3], n_boot=50)
    np.testing.assert_allclose(reps, 0.1)
