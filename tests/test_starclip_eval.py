"""Retrieval figures, the information limit and label estimation from embeddings."""

import numpy as np
import pytest
from sklearn.metrics import r2_score

from helpers.starclip.estimate import few_shot, knn_labels, r2_per_label
from helpers.starclip.retrieval import (chance_level, information_limit, match_ranks, retrieval,
                                        similarity, top1_label_differences)


def test_ranks_agree_with_a_brute_force_sort():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    for metric in ("cosine", "euclidean"):
        ranks = match_ranks(q, g, metric, block=64)
        sim = similarity(q, g, metric)
        brute = [1 + np.sum(np.delete(sim[i], i) >= sim[i, i]) for i in range(300)]
        assert np.array_equal(ranks, brute)


def test_perfect_random_and_constant_embeddings():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2000, 16))
    m = retrieval(z, z).metrics
    assert m["R@1"] == 1 and m["MRR"] == 1 and m["median_rank"] == 1
    r = retrieval(z, rng.normal(size=(2000, 16))).metrics
    ch = chance_level(2000)
    assert r["R@10"] < 4 * ch["R@10"] + 0.005
    assert abs(r["median_rank"] - ch["median_rank"]) < 150
    const = retrieval(np.ones((50, 3)), np.ones((50, 3)))
    assert np.all(const.ranks == 50)                # ties count against the query


def test_chance_levels():
    c = chance_level(4)
    assert c["R@1"] == 0.25 and c["R@5"] == 1 and c["median_rank"] == 2.5
    assert c["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_embedding_dimension_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="embedding dimension 20 but the other side has 128"):
        retrieval(np.ones((5, 128)), np.ones((5, 20)))
    with pytest.raises(ValueError, match="same stars"):
        match_ranks(np.ones((5, 4)), np.ones((6, 4)))


def test_information_limit_moves_with_the_errors():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(1500, 5)) * [250, 0.4, 0.2, 0.1, 0.1]
    sig = np.array([250, 0.4, 0.2, 0.1, 0.1])
    exact = information_limit(y, 1e-6 * sig, 1e-6 * sig, n_draws=2)
    assert np.all(exact["R@1"] == 1)
    small = information_limit(y, 0.05 * sig, 0.05 * sig, n_draws=3)["R@1"].mean()
    large = information_limit(y, 0.5 * sig, 0.5 * sig, n_draws=3)["R@1"].mean()
    hopeless = information_limit(y, 30 * sig, 30 * sig, n_draws=3)["R@1"].mean()
    assert 1 > small > large > hopeless and hopeless < 5 * chance_level(1500)["R@1"]
    with pytest.raises(ValueError, match="one entry per label"):
        information_limit(y, sig[:3], sig)


def test_top1_neighbour_is_closer_in_labels_than_a_random_pick():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(800, 3))
    z = y + 0.05 * rng.normal(size=y.shape)
    t = top1_label_differences(z, z, y, y, ["a", "b", "c"], metric="euclidean", exclude_self=True)
    assert np.all(t["top1"] < 0.5 * t["random"])
    t_self = top1_label_differences(z, z, y, y, ["a", "b", "c"], metric="euclidean")
    assert np.all(t_self["top1"] == 0)


def test_r2_per_label_matches_scikit_learn_and_skips_missing_truth():
    rng = np.random.default_rng(4)
    t = rng.normal(size=(200, 2))
    p = t + 0.3 * rng.normal(size=t.shape)
    r2 = r2_per_label(p, t, ["x", "y"])
    assert r2["x"] == pytest.approx(r2_score(t[:, 0], p[:, 0]))
    t2 = t.copy()
    t2[:10, 1] = np.nan
    assert r2_per_label(p, t2, ["x", "y"])["y"] == pytest.approx(r2_score(t[10:, 1], p[10:, 1]))


def test_knn_and_few_shot_recover_labels_that_the_embedding_holds():
    rng = np.random.default_rng(5)
    y = rng.normal(size=(3000, 2))
    z = np.column_stack([y, np.ones(3000)]) + 0.02 * rng.normal(size=(3000, 3))
    pred = knn_labels(z[:2000], y[:2000], z[2000:], k=16)
    assert np.all(r2_per_label(pred, y[2000:], ["a", "b"]) > 0.95)
    unrelated = knn_labels(rng.normal(size=(2000, 3)), y[:2000], z[2000:], k=16)
    assert np.all(r2_per_label(unrelated, y[2000:], ["a", "b"]) < 0.1)
    y_missing = y[:2000].copy()
    y_missing[::3, 1] = np.nan
    part = knn_labels(z[:2000], y_missing, z[2000:], k=16)
    assert np.all(np.isfinite(part)) and r2_per_label(part, y[2000:], ["a", "b"])["b"] > 0.9
    table = few_shot(z[:2000], y[:2000], z[2000:], y[2000:], ["a", "b"],
                     n_values=(10, 100, None), n_repeats=2)
    assert list(table.n) == [10, 10, 10, 10, 100, 100, 100, 100, 2000, 2000]
    best = table[(table.n == 2000) & (table.method == "ridge")]
    assert float(best["a"].iloc[0]) > 0.99
    with pytest.raises(ValueError, match="n_values"):
        few_shot(z[:50], y[:50], z[2000:], y[2000:], ["a", "b"], n_values=(100,))
    with pytest.raises(ValueError, match="k must be"):
        knn_labels(z[:10], y[:10], z[2000:], k=64)
    with pytest.raises(ValueError, match="dimension"):
        knn_labels(z[:100], y[:100], z[2000:, :2], k=16)


def test_xgboost_rounds_are_a_parameter():
    from helpers.starclip.estimate import fit_regressor

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(60, 3)), rng.normal(size=(60, 2))
    assert fit_regressor("xgboost", x, y).get_booster().num_boosted_rounds() == 200
    assert fit_regressor("xgboost", x, y, n_trees=7).get_booster().num_boosted_rounds() == 7
    table = few_shot(x[:40], y[:40], x[40:], y[40:], ["a", "b"], n_values=(None,), n_trees=3)
    assert list(table.method) == ["ridge", "xgboost"]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="n_trees"):
            fit_regressor("xgboost", x, y, n_trees=bad)
