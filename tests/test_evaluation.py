"""Tests of the RSCA evaluation layer: pair filter, LOCO fit function, representations, abundances,
the same-plate check (chapter 5)."""

import numpy as np
import pandas as pd
import pytest

from helpers.rsca.abundances import abundance_matrix, true_abundance_matrix
from helpers.rsca.doppelganger import LocoFit, loco_doppelganger_rates, loco_pair_distances
from helpers.rsca.pairs import pair_candidates
from helpers.rsca.plates import parse_visits, shared_visits
from helpers.rsca.representation import inverse_variance, ppca_coordinates, read_rows
from helpers.ppca import PPCA


def _toy(seed=0, n_field=800, n_clusters=5, per=6, K=4):
    rng = np.random.default_rng(seed)
    Xf = rng.normal(size=(n_field, K))
    centres = rng.normal(size=(n_clusters, K))
    Xc = np.repeat(centres, per, axis=0) + 0.3 * rng.normal(size=(n_clusters * per, K))
    labels = np.repeat([f"c{i}" for i in range(n_clusters)], per)
    vf, af = rng.normal(0, 20, n_field), rng.uniform(0, 0.3, n_field)
    vc, ac = rng.normal(0, 20, labels.size), rng.uniform(0, 0.3, labels.size)
    return Xf, Xc, labels, vf, af, vc, ac


def test_pair_candidates_match_brute_force():
    _, _, _, vf, af, vc, ac = _toy()
    got = pair_candidates(vf, af, vc, ac, 5.0, 0.05)
    allowed = (np.abs(vc[:, None] - vf[None]) < 5.0) & (np.abs(ac[:, None] - af[None]) < 0.05)
    np.testing.assert_array_equal(got, np.flatnonzero(allowed.any(axis=0)))


def test_candidates_and_reference_fit_reproduce_full_loco():
    Xf, Xc, labels, vf, af, vc, ac = _toy()
    full = loco_doppelganger_rates(Xf, Xc, labels, vhelio_pop=vf, ak_pop=af, vhelio_clust=vc,
                                   ak_clust=ac, n_boot=0)
    cand = pair_candidates(vf, af, vc, ac)
    fit = LocoFit(Xf)
    part = loco_doppelganger_rates(Xf[cand], Xc, labels, vhelio_pop=vf[cand], ak_pop=af[cand],
                                   vhelio_clust=vc, ak_clust=ac, fit_fn=fit, n_boot=0)
    np.testing.assert_allclose(part.table["rate"], full.table["rate"], atol=1e-12)
    dist = loco_pair_distances(fit, Xf[cand], Xc, labels, vf[cand], af[cand], vc, ac)
    n_below = [int(np.sum(c["distance"] < c["threshold"])) for c in dist]
    np.testing.assert_array_equal(n_below, part.table["n_below"])
    np.testing.assert_array_equal([c["distance"].size for c in dist], part.table["n_pairs"])


def test_abundance_matrices():
    t = pd.DataFrame({"X_H_Fe": [0.1, -0.2], "X_H_Mg": [0.2, -9999.99]})
    np.testing.assert_allclose(abundance_matrix(t, ["Fe", "Mg"], rows=[0]), [[0.1, 0.2]])
    with pytest.raises(ValueError, match="missing abundances"):
        abundance_matrix(t, ["Fe", "Mg"])
    with pytest.raises(KeyError):
        abundance_matrix(t, ["Ni"])
    truth = pd.DataFrame({"FE_H": [0.1], "X_FE_Mg": [0.05]})
    np.testing.assert_allclose(true_abundance_matrix(truth, ["Fe", "Mg"]), [[0.1, 0.15]])


def test_visits_parsing_and_sharing():
    plates, mjds = parse_visits(["apo25m-4000-57048-076,apo25m-4001-57070-011"])
    assert plates[0] == {"4000", "4001"} and mjds[0] == {"57048", "57070"}
    a = ["apo25m-4000-57048-076", "apo25m-5000-1-2"]
    b = ["apo25m-4000-57048-011", "apo25m-4000-57049-011"]
    same_plate, same_night = shared_visits(a, b, [0, 0, 1], [0, 1, 1])
    np.testing.assert_array_equal(same_plate, [True, True, False])
    np.testing.assert_array_equal(same_night, [True, False, False])


def test_read_rows_inverse_variance_and_ppca_coordinates():
    rng = np.random.default_rng(1)
    N, D, K = 300, 40, 3
    X = (rng.normal(size=(N, K)) @ rng.normal(size=(K, D)) + 0.05 * rng.normal(size=(N, D))).astype(np.float32)
    obs = rng.random((N, D)) > 0.05
    obs[:, 0] = False                       # a column nobody observes, dropped by `columns`
    cols = np.arange(1, D)
    rows = np.array([5, 2, 250])
    np.testing.assert_array_equal(read_rows(X, rows, cols, chunk_size=2), X[rows][:, cols])
    w = inverse_variance(np.full((2, 3), 0.5), np.array([[True, False, True]] * 2))
    np.testing.assert_allclose(w, [[4, 0, 4]] * 2)
    p = PPCA(K, random_state=0).fit(X[:, cols], mask=obs[:, cols])
    amp = np.sqrt(p.explained_variance_ - p.noise_variance_)
    got = ppca_coordinates(p, X, obs, rows, cols, chunk_size=2)
    np.testing.assert_allclose(got, p.transform(X[rows][:, cols], mask=obs[rows][:, cols]) * amp, rtol=1e-6)
    with pytest.raises(ValueError, match="error_rows"):
        ppca_coordinates(p, X, obs, rows, cols, error=np.ones_like(X))
