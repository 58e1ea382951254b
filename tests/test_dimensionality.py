"""helpers.rsca.dimensionality and helpers.rsca.representation (chapter 6) on small planted data."""

import numpy as np
import pandas as pd
import pytest

from helpers.rsca import dimensionality as dm
from helpers.rsca import representation as rp
from helpers.rsca.pairs import PairFilter


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
    byk = dm.rates_vs_k(rep, labels, [1, 3, 8], pairs, n_boot=20)
    assert list(byk.K) == [1, 3, 8] and byk.cv.all()
    assert byk.rate.iloc[1] < byk.rate.iloc[0]
    raw = dm.top_n_rates(rep, labels, [1, 2, 3, None], pairs, n_repeats=2, n_boot=20)
    assert len(raw) == 4 * 3
    table = dm.summarise_top_n(raw)
    assert list(table.index) == ["1", "2", "3", "all (8)"]
    assert table.rate["3"] < table.rate["1"]
    assert np.isfinite(table.repeat_std).all()


def test_rates_vs_training_clusters():
    rep, labels, pairs = planted()
    out = dm.rates_vs_training_clusters(rep, labels, [2, 6], pairs, n_subsets=3, seed=1)
    assert isinstance(out, pd.DataFrame) and len(out) == 6
    again = dm.rates_vs_training_clusters(rep, labels, [2, 6], pairs, n_subsets=3, seed=1)
    pd.testing.assert_frame_equal(out, again)
    with pytest.raises(ValueError, match="n_train_values"):
        dm.rates_vs_training_clusters(rep, labels, [8], pairs)


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


def test_plateau_n():
    from helpers.rsca.dimensionality import plateau_n

    assert plateau_n([0.10, 0.05, 0.021, 0.02, 0.022], [1, 2, 3, 4, 5]) == 3
    assert plateau_n([0.10, 0.05, 0.03, 0.02], [1, 2, 3, 4]) == 4
    with pytest.raises(ValueError, match="one per N"):
        plateau_n([0.1, np.nan], [1, 2])
