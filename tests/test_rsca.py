"""Tests of helpers.rsca: sphering, reparametrisation, rescaling (book chapter 5)."""
import numpy as np
import pytest

from helpers.rsca import (MAD_TO_SIGMA, RSCA, RelevantScaling, pooled_mad_scatter,
                          relative_weights)
from helpers.rsca.doppelganger import doppelganger_rate


def planted(seed=0, N=4000, K=6, n_clusters=8, per=6, tight=(0, 1, 2), tight_scale=0.15):
    """Correlated field and clusters that are tight only along some latent axes."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(K, K)) + 2 * np.eye(K)
    lat_pop = rng.normal(size=(N, K))
    labels = np.repeat(np.arange(n_clusters), per)
    centres = rng.normal(size=(n_clusters, K))
    scat = np.ones(K)
    scat[list(tight)] = tight_scale
    lat_cl = centres[labels] + rng.normal(size=(labels.size, K)) * scat
    return lat_pop @ A.T + 3.0, lat_cl @ A.T + 3.0, labels


# ------------------------------------------------------------------ step 2
def test_sphered_field_covariance_is_identity():
    Xp, Xc, lab = planted()
    m = RelevantScaling().fit(Xp, Xc, lab)
    Z = m.sphere(Xp)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(Z, rowvar=False), np.eye(6), atol=1e-10)
    # the rotation keeps the field sphered
    np.testing.assert_allclose(np.cov(m.reparametrize(Xp), rowvar=False), np.eye(6), atol=1e-10)
    np.testing.assert_allclose(m.rotation_ @ m.rotation_.T, np.eye(6), atol=1e-12)


# ------------------------------------------------------------------ step 3
def test_reparametrised_within_cluster_covariance_is_diagonal():
    Xp, Xc, lab = planted()
    m = RelevantScaling().fit(Xp, Xc, lab)
    Zr = m.reparametrize(Xc)
    cen = Zr.copy()
    for k in np.unique(lab):
        cen[lab == k] -= Zr[lab == k].mean(axis=0)
    C = cen.T @ cen
    off = C - np.diag(np.diag(C))
    assert np.max(np.abs(off)) < 1e-10 * np.max(np.diag(C))
    # sorted by decreasing within-cluster variance
    assert np.all(np.diff(np.diag(C)) <= 1e-12)
    # the three planted tight directions are found: three small scatters, three ~ 1
    sc = np.sort(m.sigma_clust_)
    assert np.all(sc[:3] < 0.4) and np.all(sc[3:] > 0.6)


# ------------------------------------------------------------------ step 4
def test_pooled_mad_by_hand():
    # cluster 0: [0, 1, 2] -> median 1, |dev| = [1, 0, 1] -> MAD = 1 (x 1.4826)
    # cluster 1: [0, 4]    -> median 2, |dev| = [2, 2]    -> MAD = 2 (x 1.4826)
    # pooled: (2 * 1^2 + 1 * 2^2) / (2 + 1) = 2  -> sigma = 1.4826 * sqrt(2)
    Z = np.array([[0.0], [1.0], [2.0], [0.0], [4.0]])
    codes = np.array([0, 0, 0, 1, 1])
    s = pooled_mad_scatter(Z, codes)
    assert s[0] == pytest.approx(MAD_TO_SIGMA * np.sqrt(2.0), rel=1e-12)


def test_sigma_r_formula_and_suppression():
    # sigma_r = sc / sqrt(1 - sc^2) (sigma_pop = 1): 0.6 -> 0.6 / 0.8 = 0.75;
    # 0.5 -> w = sqrt(1/0.25 - 1) = sqrt(3); 1.0 and 2.0 carry no information -> weight 0.
    w, sr, sup = relative_weights([0.5, 1.0, 2.0, 0.6])
    np.testing.assert_allclose(w, [np.sqrt(3.0), 0.0, 0.0, 4.0 / 3.0], rtol=1e-12)
    assert sr[0] == pytest.approx(1 / np.sqrt(3.0)) and sr[3] == pytest.approx(0.75)
    assert np.isinf(sr[1]) and np.isinf(sr[2])
    np.testing.assert_array_equal(sup, [False, True, True, False])
    assert np.all(np.isfinite(w))
    with pytest.raises(ValueError, match="sigma_clust"):
        relative_weights([0.5, 0.0])


def test_uninformative_dimension_suppressed_not_nan():
    Xp, Xc, lab = planted(tight=(0,), tight_scale=0.2)
    # make one raw dimension much *wider* inside clusters than in the field
    rng = np.random.default_rng(5)
    Xc = Xc.copy()
    Xc[:, 5] += rng.normal(scale=30.0, size=Xc.shape[0])
    m = RelevantScaling().fit(Xp, Xc, lab)
    assert m.suppressed_.any()
    assert np.all(m.scale_[m.suppressed_] == 0.0)
    assert np.all(np.isfinite(m.linear_map_)) and np.all(np.isfinite(m.transform(Xc)))
    assert np.all(np.isinf(m.sigma_r_[m.suppressed_]))
    assert np.all(np.isfinite(m.sigma_r_[~m.suppressed_]))


def test_top_n_and_linear_map():
    Xp, Xc, lab = planted()
    m = RelevantScaling(top_n=2).fit(Xp, Xc, lab)
    assert m.selected_.sum() == 2
    chosen = np.flatnonzero(m.selected_)
    assert set(chosen) == set(np.argsort(m.sigma_clust_)[:2])
    Z = m.transform(Xc)
    assert np.all(Z[:, ~m.selected_] == 0)
    np.testing.assert_allclose(Z, (Xc - m.mean_) @ m.linear_map_.T, atol=1e-10)
    with pytest.raises(ValueError, match="top_n"):
        RelevantScaling("sphered", top_n=2).fit(Xp, Xc, lab)


def test_modes():
    Xp, Xc, lab = planted()
    raw = RelevantScaling("raw").fit(Xp, Xc, lab)
    np.testing.assert_allclose(raw.transform(Xc), Xc - Xp.mean(axis=0), atol=1e-12)
    sc = RelevantScaling("scaled").fit(Xp, Xc, lab)
    assert np.allclose(sc.rotation_, np.eye(6))
    # "scaled" acts per raw dimension: the map is diagonal
    A = sc.linear_map_
    assert np.allclose(A - np.diag(np.diag(A)), 0)
    with pytest.raises(ValueError, match="mode"):
        RelevantScaling("bogus").fit(Xp, Xc, lab)


# ------------------------------------------------------------------ bad input
def test_bad_inputs_name_the_input():
    Xp, Xc, lab = planted()
    m = RelevantScaling()
    with pytest.raises(ValueError, match="X_clust has 5 columns"):
        m.fit(Xp, Xc[:, :5], lab)
    lab1 = lab.copy()
    lab1[0] = 99  # a single-member cluster
    with pytest.raises(ValueError, match=r"cluster_labels.*\[99\].*fewer than 2"):
        m.fit(Xp, Xc, lab1)
    bad = Xp.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"X_pop has a non-finite value.*row 3, column 2"):
        m.fit(bad, Xc, lab)
    with pytest.raises(ValueError, match="one label per cluster star"):
        m.fit(Xp, Xc, lab[:-1])
    with pytest.raises(ValueError, match="singular"):
        m.fit(np.c_[Xp, Xp[:, :1]], np.c_[Xc, Xc[:, :1]], lab)
    with pytest.raises(RuntimeError, match="not fitted"):
        RelevantScaling().transform(Xc)


# ------------------------------------------------------------------ RSCA on spectra
def _spectra(seed=1, N=1500, D=120, L=6, n_clusters=10, per=6):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(L, D)) / np.sqrt(D)
    lat_pop = rng.normal(size=(N, L)) * np.linspace(3, 1, L)
    labels = np.repeat(np.arange(n_clusters), per)
    centres = rng.normal(size=(n_clusters, L)) * np.linspace(3, 1, L)
    scat = np.linspace(3, 1, L).copy()
    scat[[1, 3, 4]] *= 0.08            # chemistry-like directions: clusters very tight
    lat_cl = centres[labels] + rng.normal(size=(labels.size, L)) * scat
    mean = 1.0 - 0.2 * rng.random(D)
    noise = 0.005
    fp = mean + lat_pop @ basis + noise * rng.normal(size=(N, D))
    fc = mean + lat_cl @ basis + noise * rng.normal(size=(labels.size, D))
    return fp, fc, labels


def test_rsca_end_to_end_separates_clusters_better_than_raw():
    fp, fc, lab = _spectra()
    model = RSCA(n_components=6, ppca_kwargs=dict(random_state=0, tol=1e-7, max_iter=300,
                                                  dtype=np.float64))
    model.fit(fp, fc, lab)
    Zraw_c = model.Z_clust_
    Zraw_p = model.Z_pop_
    raw_rate = doppelganger_rate(Zraw_c, lab, Zraw_p).global_rate
    rsca_rate = doppelganger_rate(model.transform(fc), lab, model.transform(fp)).global_rate
    assert rsca_rate < 0.5 * raw_rate, (rsca_rate, raw_rate)
    # pixel map reproduces transform for complete spectra
    direct = (fc - model.pixel_mean_) @ model.pixel_map_.T + model.pixel_offset_
    np.testing.assert_allclose(direct, model.transform(fc), atol=1e-8)
    assert model.pixel_map_.shape == (6, fc.shape[1])
    # missing pixels go through the PPCA posterior mean and stay finite and close
    holes = fc.copy()
    holes[:, 10:30] = np.nan
    Zh = model.transform(holes)
    assert np.all(np.isfinite(Zh))
    assert np.median(np.abs(Zh - model.transform(fc))) < 0.5 * np.median(np.abs(model.transform(fc)))


def test_rsca_bad_inputs():
    fp, fc, lab = _spectra(N=300, D=40)
    with pytest.raises(ValueError, match="pixels"):
        RSCA(n_components=3).fit(fp, fc[:, :-1], lab)
    with pytest.raises(ValueError, match="fewer than 2"):
        RSCA(n_components=3).fit(fp, fc[:7], lab[:7])
    with pytest.raises(ValueError, match="ppca_on"):
        RSCA(n_components=3, ppca_on="everything").fit(fp, fc, lab)
