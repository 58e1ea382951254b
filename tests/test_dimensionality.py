"""helpers.rsca.dimensionality and helpers.rsca.representation (chapter 6) on small planted data."""

import numpy as np
import pandas as pd
import pytest

from helpers.rsca import dimensionality as dm
from helpers.rsca import representation as rp
from helpers.rsca.pairs import PairFilter
from helpers.rsca.runs import RateEvaluator


def planted(seed=0, n_field=3000, K=8, n_clusters=8, per=6, tight=3):
    """Field ~ N(0, I_K); clusters tight along the first ``tight`` axes."""
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(n_field, K))
    labels = np.repeat([f"c{k:02d}" for k in range(n_clusters)], per)
    centres = rng.normal(size=(n_clusters, K))[np.repeat(np.arange(n_clusters), per)]
    scatter = np.ones(K)
    scatter[:tight] = 0.1
    clust = centres * np.where(scatter < 1, 1.0, 0.0) + rng.normal(size=(labels.size, K)) * scatter
    comps = np.linalg.qr(rng.normal(size=(50, K)))[0].T
    rep = rp.Representation(field, clust, comps, np.linspace(2, 1, K), 0.01, {"K": K})
    pairs = PairFilter(rng.normal(0, 3, n_field), np.full(n_field, 0.1),
                       rng.normal(0, 1, labels.size), np.full(labels.size, 0.1))
    return rep, labels, pairs


def test_truncated_is_nested():
    rep, _, _ = planted()
    r3 = rep.truncated(3)
    assert r3.K == 3 and r3.info["nested_from"] == 8
    np.testing.assert_array_equal(r3.field, rep.field[:, :3])
    np.testing.assert_array_equal(r3.components, rep.components[:3])
    with pytest.raises(ValueError, match="K must be"):
        rep.truncated(9)


def test_principal_angles():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(3, 20))
    mix = rng.normal(size=(3, 3))
    np.testing.assert_allclose(rp.principal_angles(A, mix @ A), 0, atol=1e-5)
    B = np.eye(20)[:3]
    C = np.eye(20)[3:6]
    np.testing.assert_allclose(rp.principal_angles(B, C), 90, atol=1e-9)
    with pytest.raises(ValueError, match="same number of columns"):
        rp.principal_angles(A, np.ones((2, 5)))


def test_scans_find_the_planted_dimensions():
    rep, labels, pairs = planted()
    runs = [rep, rp.Representation(rep.field[:, ::-1].copy(), rep.cluster[:, ::-1].copy(),
                                   rep.components[::-1], rep.explained_variance[::-1], 0.01, {})]
    ev = RateEvaluator(labels, pairs, n_boot=50)
    byk, spreads = dm.rates_vs_k({K: [r.truncated(K) for r in runs[:1]] * 2 for K in (1, 3, 8)}, ev)
    assert list(byk.K) == [1, 3, 8] and byk.cv.all() and set(spreads) == {1, 3, 8}
    assert byk.rate.iloc[1] < byk.rate.iloc[0]
    assert (byk.run_sd == 0).all()                     # identical runs: no spread over runs
    tops = dm.top_n_spreads(runs, ev, [1, 2, 3, 8])
    table = dm.table1(tops, 8)
    assert list(table.index) == ["1", "2", "3", "all (8)"]
    assert table.rate["3"] < table.rate["1"]
    # the order of the axes does not matter to RSCA: both runs give the same rates
    np.testing.assert_allclose(tops[8].per_cluster[0], tops[8].per_cluster[1], atol=1e-9)


def test_rates_vs_training_clusters(tmp_path, monkeypatch):
    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path))
    rep, labels, pairs = planted()
    ev = RateEvaluator(labels, pairs)
    out = dm.rates_vs_training_clusters([rep, rep], ev, [1, 6], n_subsets=3, seed=1)
    assert isinstance(out, pd.DataFrame) and len(out) == 12 and set(out.run) == {0, 1}
    assert len(list((tmp_path / "rsca_rates").glob("fig5-*.npz"))) == 1
    # read back from the cache: the same table as computed without it
    again = dm.rates_vs_training_clusters([rep, rep], ev, [1, 6], n_subsets=3, seed=1)
    pd.testing.assert_frame_equal(out, again)
    pd.testing.assert_frame_equal(out, dm.rates_vs_training_clusters([rep, rep], ev, [1, 6], n_subsets=3,
                                                                      seed=1, cache=False))
    dm.rates_vs_training_clusters([rep, rep], ev, [1, 6], n_subsets=3, seed=2)   # another seed: own entry
    assert len(list((tmp_path / "rsca_rates").glob("fig5-*.npz"))) == 2
    summary = dm.summarise_training_clusters(out.assign(K=8))
    assert summary.loc[(8, 6), "run_sd"] == 0 and summary.loc[(8, 6), "defined"] == 3
    # one cluster of 6 members has 5 within-cluster degrees of freedom, fewer than 8 dimensions
    assert not out.loc[out.n_train == 1, "defined"].any() and out.loc[out.n_train == 6, "defined"].all()
    with pytest.raises(ValueError, match="n_train_values"):
        dm.rates_vs_training_clusters([rep], ev, [8])


def test_latent_recovery():
    rng = np.random.default_rng(2)
    L = rng.normal(size=(500, 2))
    Z = np.column_stack([L[:, 0], rng.normal(size=500), np.zeros(500)])
    r2 = dm.latent_recovery(Z, L)
    assert r2[0] > 0.999 and r2[1] < 0.05


def test_ppca_representation_caches(tmp_path, monkeypatch):
    from pathlib import Path
    from types import SimpleNamespace

    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path))
    rng = np.random.default_rng(3)
    D, K = 60, 3
    basis = rng.normal(size=(K, D))
    make = lambda n: (1 + 0.1 * rng.normal(size=(n, K)) @ basis + 0.01 * rng.normal(size=(n, D))).astype(np.float32)
    pixel_mask = np.ones(D, bool)
    pixel_mask[:5] = False                          # never observed: dropped before PPCA
    obs_f = np.broadcast_to(pixel_mask, (400, D)).copy()
    obs_f[rng.random((400, D)) < 0.02] = False
    inputs = SimpleNamespace(path=Path("fake-inputs"), field_flux=make(400), field_observed=obs_f,
                             cluster_flux=make(12), cluster_observed=np.broadcast_to(pixel_mask, (12, D)).copy(),
                             pixel_mask=pixel_mask)
    rep = rp.ppca_representation(inputs, K, n_fit=200, seed=0)
    assert rep.field.shape == (400, K) and rep.cluster.shape == (12, K)
    assert rep.components.shape == (K, D - 5) and not rep.info["from_cache"]
    again = rp.ppca_representation(inputs, K, n_fit=200, seed=0)
    assert again.info["from_cache"]
    np.testing.assert_array_equal(rep.field, again.field)
    # the fitted subspace is the planted one
    assert rp.principal_angles(rep.components, basis[:, 5:]).max() < 5


def test_pixel_columns_copy_runs_or_gather_the_same_values():
    from helpers.rsca.representation import PixelColumns, column_runs, read_rows, select_columns

    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 40)).astype(np.float32)
    keep = np.ones(40, bool)
    keep[[0, 7, 8, 20, 39]] = False                       # 4 runs of consecutive pixels
    cols = np.flatnonzero(keep)
    assert column_runs(cols) == [(1, 7), (9, 20), (21, 39)]
    assert column_runs([3, 2]) is None and column_runs(np.arange(0, 40, 2)) is None   # gather
    for runs in (column_runs(cols), None):
        got = select_columns(X, cols, runs)
        assert got.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(got, X[:, cols])
    rows = np.array([4, 2, 30, 31, 32])
    np.testing.assert_array_equal(PixelColumns(X, keep)[rows], X[rows][:, cols])
    np.testing.assert_array_equal(PixelColumns(X, keep, rows)[1:4], X[rows[1:4]][:, cols])
    np.testing.assert_array_equal(read_rows(X > 0, rows, cols, dtype=bool, chunk_size=2),
                                  (X > 0)[rows][:, cols])
