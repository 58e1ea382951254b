"""Tests of the chemical model (helpers.survey.chemistry): dimensions, distributions, clusters."""

import numpy as np
import pytest

from helpers.survey import chemistry as chem


def test_module_docstring_names_book_section():
    assert "Book:" in chem.__doc__


def test_model_shapes_and_iron():
    m = chem.chemical_model(5, 0.02)
    assert m.n_latent == 5
    assert m.loadings.shape == (21, 3)
    lat = np.zeros((3, 5))
    x = m.x_fe(lat, np.random.default_rng(0))
    assert x.shape == (3, 21)
    assert np.all(x[:, chem.ELEMENTS.index("Fe")] == 0)


@pytest.mark.parametrize("bad", [1, 0, 13])
def test_n_latent_validated(bad):
    with pytest.raises(ValueError, match="n_latent"):
        chem.chemical_model(bad)


@pytest.mark.parametrize("k", [2, 4, 6])
def test_number_of_chemical_dimensions_is_known(k):
    """Noise-free [X/Fe] (plus [Fe/H]) span exactly n_latent dimensions; with the
    intrinsic scatter, k eigenvalues stand above the noise floor."""
    m = chem.chemical_model(k, 0.01)
    g = chem.sample_field_labels(4000, np.random.default_rng(1), m)
    clean = np.column_stack([g["feh"], m.x_fe(g["latent"])])
    sv = np.linalg.svd(clean - clean.mean(0), compute_uv=False)
    assert np.sum(sv > 1e-8 * sv[0]) == k
    noisy = np.column_stack([g["feh"], g["x_fe"]])
    ev = np.linalg.eigvalsh(np.cov(noisy.T))[::-1]
    assert np.sum(ev > 3 * 0.01 ** 2) == k


def test_field_labels_match_dr17():
    """[Fe/H] percentiles and the high-alpha fraction of the RSCA box follow the real
    DR17 figures (FACTS.md): -0.73/-0.51/-0.23/+0.06/+0.22 and 33%."""
    m = chem.chemical_model()
    g = chem.sample_field_labels(60000, np.random.default_rng(2), m)
    box = (g["teff"] > 4000) & (g["teff"] < 5000) & (g["logg"] > 1.5) & (g["logg"] < 3.0)
    q = np.percentile(g["feh"][box], [5, 16, 50, 84, 95])
    np.testing.assert_allclose(q, [-0.73, -0.51, -0.23, 0.06, 0.22], atol=0.05)
    high = g["alpha_m"][box] > 0.12
    assert 0.28 < high.mean() < 0.38
    assert np.percentile(g["feh"][box][high], 99) < 0.2


def test_alpha_bimodality():
    """Two peaks in [alpha/M] with a clear valley between them."""
    g = chem.sample_field_labels(60000, np.random.default_rng(3), chem.chemical_model())
    a = g["alpha_m"][(g["feh"] > -0.6) & (g["feh"] < -0.2)]
    low = np.mean((a > 0.06) & (a < 0.10))
    valley = np.mean((a > 0.15) & (a < 0.19))
    high = np.mean((a > 0.22) & (a < 0.26))
    assert valley < 0.4 * low and valley < 0.4 * high
    # and the alpha elements follow it
    mg = g["x_fe"][:, chem.ELEMENTS.index("Mg")]
    assert np.corrcoef(mg, g["alpha_m"])[0, 1] > 0.8


def test_cluster_members_scatter_and_priors():
    table = chem.load_cluster_table()
    assert len(table) == 22 and table.NUM_STARS.sum() > 300
    m = chem.chemical_model()
    cl = chem.sample_cluster_labels(table, m, np.random.default_rng(4), scatter=0.02)
    mem = cl[cl.IS_MEMBER]
    assert (~cl.IS_MEMBER).sum() >= 22
    x = np.stack(mem.x_fe.to_numpy())
    stds = []
    for name, idx in mem.groupby("CLUSTER").indices.items():
        if len(idx) >= 10:
            stds.append(np.std(x[idx], axis=0, ddof=1))
            rv = mem.RV_TRUE.to_numpy()[idx]
            assert np.std(rv) < 1.5
            feh_true = table.set_index("NAME").loc[name, "FE_H"]
            assert abs(np.mean(mem.feh.to_numpy()[idx]) - feh_true) < 0.02
    s = np.median(np.concatenate(stds)[np.concatenate(stds) > 0])
    assert 0.015 < s < 0.025
    # members spread across and beyond the RSCA cuts
    inside = (mem.teff > 4000) & (mem.teff < 5000) & (mem.logg > 1.5) & (mem.logg < 3.0)
    assert 0.4 < inside.mean() < 0.9


def test_measured_labels_have_noise_and_a_synthetic_gap():
    m = chem.chemical_model()
    rng = np.random.default_rng(5)
    g = chem.sample_field_labels(20000, rng, m)
    snr = np.full(20000, 150.0)
    out = chem.measure_labels(g["teff"], g["logg"], g["feh"], g["x_fe"], snr,
                              np.random.default_rng(6), synthetic_gap=0.05)
    x_h_true = g["x_fe"] + g["feh"][:, None]
    err = out["x_h"] - x_h_true
    tau = (g["teff"] - 4500) / 500
    # Teff-dependent systematics exist for most elements with a gap, none without
    corr = [abs(np.corrcoef(err[:, j], tau)[0, 1]) for j in range(21)]
    assert np.sum(np.array(corr) > 0.1) >= 10
    out0 = chem.measure_labels(g["teff"], g["logg"], g["feh"], g["x_fe"], snr,
                               np.random.default_rng(6), synthetic_gap=0.0)
    err0 = out0["x_h"] - x_h_true
    corr0 = [abs(np.corrcoef(err0[:, j], tau)[0, 1]) for j in range(21)]
    assert max(corr0) < 0.05
    # noise grows at low S/N
    low = chem.measure_labels(g["teff"], g["logg"], g["feh"], g["x_fe"], np.full(20000, 30.0),
                              np.random.default_rng(6), synthetic_gap=0.0)
    assert np.std(low["x_h"] - x_h_true) > 1.5 * np.std(err0)


def test_missing_mask_rate():
    miss = chem.missing_mask(50000, np.full(50000, 157.0), np.random.default_rng(7), 0.06)
    frac = miss.any(axis=1).mean()
    assert 0.04 < frac < 0.06
    assert not miss[:, chem.ELEMENTS.index("Fe")].any()
