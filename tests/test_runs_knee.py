"""helpers.rsca.runs (rates over PPCA runs and clusters) and helpers.rsca.knee (the knee of Table 1)."""

import numpy as np
import pytest

from helpers.rsca.doppelganger import LocoFit, loco_doppelganger_rates
from helpers.rsca.knee import find_knee
from helpers.rsca.pairs import PairFilter
from helpers.rsca.representation import Representation
from helpers.rsca.runs import RateEvaluator, RateSpread, joint_bootstrap


def planted_runs(n_runs=3, seed=0, n_field=2000, K=6, n_clusters=8, per=6, tight=3, jitter=0.05):
    """Field ~ N(0, I_K); clusters tight along the first ``tight`` axes; each "run" adds a
    small random rotation, as PPCA runs that differ in their weak axes."""
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(n_field, K))
    labels = np.repeat([f"c{k:02d}" for k in range(n_clusters)], per)
    centres = rng.normal(size=(n_clusters, K))[np.repeat(np.arange(n_clusters), per)]
    scatter = np.where(np.arange(K) < tight, 0.15, 1.0)
    clust = centres * (scatter < 1) + rng.normal(size=(labels.size, K)) * scatter
    runs = []
    for r in range(n_runs):
        Q, _ = np.linalg.qr(np.eye(K) + jitter * np.random.default_rng(100 + r).normal(size=(K, K)))
        runs.append(Representation(field @ Q, clust @ Q, np.eye(K), np.ones(K), 0.0, {"seed": r}))
    pairs = PairFilter(rng.normal(0, 3, n_field), np.full(n_field, 0.1),
                       rng.normal(0, 1, labels.size), np.full(labels.size, 0.1))
    return runs, labels, pairs


def test_evaluator_matches_full_field_loco():
    runs, labels, pairs = planted_runs(n_runs=2)
    ev = RateEvaluator(labels, pairs, n_boot=200)
    assert ev.candidates.size < runs[0].field.shape[0]
    for rep in runs:
        full = loco_doppelganger_rates(rep.field, rep.cluster, labels, fit_fn=LocoFit(rep.field),
                                       n_boot=0, **pairs.as_kwargs())
        np.testing.assert_allclose(ev.per_cluster(rep.field, rep.cluster), full.table["rate"], atol=1e-12)


def test_rates_are_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path))
    runs, labels, pairs = planted_runs(n_runs=2)
    ev = RateEvaluator(labels, pairs, n_boot=50)
    a = ev.per_cluster(runs[0].field, runs[0].cluster, top_n=3)
    assert len(list((tmp_path / "rsca_rates").glob("*.npy"))) == 1
    # a fresh evaluator reads the file; the rates are those computed without any cache
    again = RateEvaluator(labels, pairs, n_boot=50)
    np.testing.assert_array_equal(again.per_cluster(runs[0].field, runs[0].cluster, top_n=3), a)
    np.testing.assert_array_equal(a, ev.per_cluster(runs[0].field, runs[0].cluster, top_n=3, cache=False))
    # other coordinates, another N or another pair filter are other entries, with their own rates
    other = ev.per_cluster(runs[1].field, runs[1].cluster, top_n=3)
    np.testing.assert_array_equal(other, ev.per_cluster(runs[1].field, runs[1].cluster, top_n=3,
                                                        cache=False))
    ev.per_cluster(runs[0].field, runs[0].cluster, top_n=2)
    wide = RateEvaluator(labels, PairFilter(pairs.vhelio_pop, pairs.ak_pop, pairs.vhelio_clust,
                                            pairs.ak_clust, dv_max=50.0), n_boot=50)
    np.testing.assert_array_equal(wide.per_cluster(runs[0].field, runs[0].cluster, top_n=3),
                                  wide.per_cluster(runs[0].field, runs[0].cluster, top_n=3, cache=False))
    assert len(list((tmp_path / "rsca_rates").glob("*.npy"))) == 4
    with pytest.raises(TypeError, match="unknown"):
        ev.per_cluster(runs[0].field, runs[0].cluster, top=3)


def test_spread_statistics():
    runs, labels, pairs = planted_runs(n_runs=4)
    ev = RateEvaluator(labels, pairs, n_boot=300, seed=1)
    s = ev.over_runs(runs)
    assert s.per_cluster.shape == (4, 8)
    w = s.n_members
    np.testing.assert_allclose(s.runs, s.per_cluster @ w / w.sum())
    assert s.mean == pytest.approx(s.runs.mean())
    assert s.run_sd == pytest.approx(s.runs.std(ddof=1))
    assert s.boot_sd > 0 and s.total_sd > 0 and s.dominant in ("clusters", "PPCA runs")
    # a paired difference with itself is exactly zero, and with a fixed side is broadcast
    d = s - s
    assert d.mean == 0 and d.boot_sd == 0
    fixed = ev.fixed(runs[0].field, runs[0].cluster)
    assert fixed.run_sd == 0 and (s - fixed).n_runs == 4
    assert "±" in s.text()


def test_spread_needs_two_runs():
    runs, labels, pairs = planted_runs(n_runs=1)
    ev = RateEvaluator(labels, pairs)
    with pytest.raises(ValueError, match="at least 2 runs"):
        ev.over_runs(runs)
    with pytest.raises(ValueError, match="at least 2 runs"):
        RateSpread(np.zeros((1, 3)), np.ones(3), np.array(["a", "b", "c"]))


def test_joint_bootstrap_pairs_leading_axes():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.1, size=(3, 10))                      # runs x clusters
    P = np.stack([base, base + 0.01])                              # two N, shifted exactly
    reps = joint_bootstrap(P, np.full(10, 5.0), 200, seed=2)
    np.testing.assert_allclose(reps[:, 1] - reps[:, 0], 0.01)     # paired: no spread in the difference
    assert reps[:, 0].std() > 0.001


def _curve(drops, n_runs=4, n_clusters=22, noise=0.004, seed=0):
    """Per-cluster rates (n_N, n_runs, n_clusters) falling by ``drops`` then flat."""
    rng = np.random.default_rng(seed)
    level = 0.02 + np.concatenate([np.cumsum(drops[::-1])[::-1], [0.0]])
    cluster = rng.normal(0, 0.01, n_clusters)                      # shared by every N
    return np.clip(level[:, None, None] + cluster[None, None, :]
                   + noise * rng.normal(size=(level.size, n_runs, n_clusters)), 0, 1)


def test_knee_finds_a_planted_knee():
    # rate falls over N = 1..4 and is flat from N = 4 on
    P = _curve([0.08, 0.03, 0.015, 0, 0, 0, 0, 0])
    N = np.arange(1, 10)
    k = find_knee(P, np.full(22, 8), N, n_boot=400, seed=3)
    assert k.knee == 4
    assert k.interval[0] <= 4 <= k.interval[1]
    assert list(k.table.N) == list(N) and k.table.knee_share.sum() == pytest.approx(1)
    assert "68 %" in k.text()


def test_knee_ignores_a_drop_within_the_noise_and_sees_a_late_one():
    flat = _curve([0.08, 0, 0, 0, 0, 0], noise=0.004)
    assert find_knee(flat, np.full(22, 8), np.arange(1, 8), n_boot=400).knee == 2
    late = _curve([0.08, 0, 0, 0, 0.02, 0], noise=0.002)           # a real drop between N = 5 and 6
    assert find_knee(late, np.full(22, 8), np.arange(1, 8), n_boot=400).knee == 6


def test_knee_bad_input():
    P = _curve([0.05, 0.01])
    with pytest.raises(ValueError, match="at least 3 values of N"):
        find_knee(P[:2], np.full(22, 8), [1, 2])
    with pytest.raises(ValueError, match="at least 2 PPCA runs"):
        find_knee(P[:, :1], np.full(22, 8), [1, 2, 3])
    with pytest.raises(ValueError, match="increasing"):
        find_knee(P, np.full(22, 8), [3, 2, 1])
    with pytest.raises(ValueError, match="shape"):
        find_knee(P, np.full(22, 8), [1, 2, 3, 4])


def test_truth_needs_a_synthetic_survey(tmp_path):
    from helpers.rsca.truth import scratch_plate_shares, survey_truth, truth_scan

    with pytest.raises(ValueError, match="real data has no truth"):
        survey_truth({"cache": tmp_path, "occam_members": tmp_path / "occam.fits"})
    with pytest.raises(ValueError, match="only a synthetic survey knows"):
        truth_scan({"cache": tmp_path, "occam_members": tmp_path / "occam.fits"})
    with pytest.raises(ValueError, match="only a synthetic survey knows"):
        scratch_plate_shares({"cache": tmp_path, "occam_members": tmp_path / "occam.fits"})


def test_explain_knee():
    import pandas as pd

    from helpers.rsca.truth import explain_knee

    ranks = pd.DataFrame({"scale": [0.3, 0.1, 0.06, 0.045, 0.035], "r2_ppca": [0.99, 0.9, 0.8, 0.6, 0.1],
                          "r2_top": [0.99, 0.9, 0.8, 0.6, 0.05], "first_N": [1, 1, 3, 9, 0]},
                         index=["[Fe/H]", "[alpha/M]", "weak 1", "weak 2", "weak 3"])
    roles = pd.DataFrame({"role": ["latent chemistry"] * 3 + ["Teff, logg", "element scatter", "noise"]},
                         index=pd.Index(range(1, 7), name="rank"))
    assert explain_knee(4, 5, roles, ranks) == "hit"
    why = explain_knee(3, 5, roles, ranks)
    assert "not resolved by the PPCA coefficients: weak 3" in why and "weak 2 (from N = 9)" in why
    above = explain_knee(6, 3, roles, ranks)
    assert above.startswith("knee above the truth; dimensions 4-6") and "Teff, logg (1)" in above


def test_ablation_table_pairs_settings():
    from helpers.rsca.ablation import ablation_table, imprint_ablation
    from helpers.survey import SurveyParams

    rng = np.random.default_rng(0)
    clusters, members = np.array(["a", "b", "c", "d"]), np.array([5.0, 8, 3, 6])
    base = {"clusters": clusters, "n_members": members, "spectra": rng.uniform(0, 0.05, (3, 4)),
            "subset": rng.uniform(0, 0.05, 4), "all21": rng.uniform(0, 0.05, 4), "n_field": 1000}
    off = dict(base, spectra=base["spectra"] + 0.01)
    t = ablation_table({"all": base, "off": off}, n_boot=200)
    assert t.loc["all", "spectra_diff"] == 0 and t.loc["off", "spectra_diff"] == pytest.approx(0.01)
    assert t.loc["off", "spectra_diff_sd"] == pytest.approx(0, abs=1e-12)    # paired: a constant shift
    with pytest.raises(ValueError, match="other clusters"):
        ablation_table({"all": base, "x": dict(base, clusters=np.array(["a", "b", "c", "e"]))})
    with pytest.raises(ValueError, match="unknown SurveyParams field"):
        imprint_ablation(SurveyParams(n_field=1000), {"x": {"no_such_field": 0}})


def test_imprint_settings_pick_rows_after_the_reference():
    from helpers.rsca.ablation import IMPRINTS, imprint_settings

    names = list(IMPRINTS)
    assert imprint_settings() == IMPRINTS
    picked = imprint_settings(["no systematic label errors", "no plate patterns"])
    assert list(picked) == [names[0], "no plate patterns", "no systematic label errors"]   # table order
    assert picked["no plate patterns"] == IMPRINTS["no plate patterns"]
    for bad in (["no plate pattern"], [names[0]], [], "no plate patterns"):
        with pytest.raises(ValueError, match="imprint"):
            imprint_settings(bad)


def test_knee_percentile_margin_resists_one_wild_cluster():
    # a clean knee at N = 4, plus one cluster whose rate jumps to 0.3 from N = 2 on
    P = _curve([0.06, 0.03, 0.015, 0, 0, 0, 0, 0], noise=0.002)
    P[1:, :, 0] = 0.3
    w = np.full(22, 8.0)
    N = np.arange(1, 10)
    sd_rule = find_knee(P, w, N, n_boot=1000, seed=1)
    pct_rule = find_knee(P, w, N, n_boot=1000, seed=1, margin="percentile")
    assert pct_rule.knee == 4 and pct_rule.margin == "percentile"
    assert sd_rule.knee <= pct_rule.knee
    with pytest.raises(ValueError, match="margin"):
        find_knee(P, w, N, margin="mad")


def test_lean_survey_has_the_same_spectra(tmp_path, monkeypatch):
    from helpers.rsca.scratch import lean
    from helpers.survey import SurveyParams, generate_survey, load_survey

    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path))
    # 20 aspcapStar files instead of the default 500: writing them was most of the test's time
    params = SurveyParams(n_field=600, seed=5, n_files=20)
    full = load_survey(generate_survey(params, progress=False))
    thin = load_survey(generate_survey(lean(params), progress=False))
    assert full.params.n_files == 20 and len(full.jwst["rows"]) > 0     # files and twins were made
    assert thin.params.n_jwst == 0 and thin.params.n_files == 0
    np.testing.assert_array_equal(np.asarray(full.spectra.flux), np.asarray(thin.spectra.flux))
    np.testing.assert_array_equal(np.asarray(full.spectra.error), np.asarray(thin.spectra.error))
    assert full.allstar.equals(thin.allstar)
