"""Tests of PPCA(method="fast") (helpers/ppca/fast.py; book chapter 5, 'Step 1: PPCA with
missing pixels'): the fast E-step against the exact engine."""
import numpy as np
import pytest
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from helpers.ppca import PPCA


def _max_angle(A, B):
    return float(np.degrees(subspace_angles(A, B)).max())


def _data(N=2000, D=300, K=5, noise=0.05, seed=0):
    """Low-rank data with ~3% of pixels missing at random plus 30-pixel missing windows."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((D, K)) * np.linspace(2.0, 0.5, K)
    X = rng.standard_normal((N, K)) @ W.T + noise * rng.standard_normal((N, D)) + 1.0
    Xm = X.copy()
    Xm[rng.random(X.shape) < 0.03] = np.nan
    starts = rng.integers(0, D - 30, N)
    for i in range(0, N, 3):                       # a window for a third of the stars
        Xm[i, starts[i]:starts[i] + 30] = np.nan
    return X, Xm, W


@pytest.fixture(scope="module")
def exact_and_fast():
    _, Xm, _ = _data()
    kw = dict(dtype=np.float64, tol=1e-9, max_iter=3000)
    return Xm, PPCA(5, **kw).fit(Xm), PPCA(5, method="fast", **kw).fit(Xm)


def test_fast_matches_exact_with_missing_pixels(exact_and_fast):
    Xm, e, f = exact_and_fast
    assert e.converged_ and f.converged_
    assert _max_angle(e.components_.T, f.components_.T) < 0.1
    assert f.noise_variance_ == pytest.approx(e.noise_variance_, rel=1e-2)
    assert np.max(np.abs(f.mean_ - e.mean_)) < 1e-5
    assert np.allclose(f.explained_variance_, e.explained_variance_, rtol=1e-2)
    # the objective (its log-det part is a series) agrees closely too (measured: 1.6e-5)
    assert abs(f.history_[-1] - e.history_[-1]) < 5e-5 * abs(e.history_[-1])
    assert len(f.cg_steps_) == f.n_iter_ + 1 and max(f.cg_steps_) <= 10


def test_fast_equals_sklearn_pca_on_complete_data():
    X, _, _ = _data(N=1200, D=150, noise=0.3)
    p = PPCA(5, method="fast", dtype=np.float64, tol=1e-9).fit(X)
    sk = PCA(5).fit(X)
    assert p.converged_
    assert _max_angle(p.components_.T, sk.components_.T) < 0.1
    assert np.allclose(p.mean_, sk.mean_, atol=1e-5)
    assert p.noise_variance_ == pytest.approx(sk.noise_variance_ * (len(X) - 1) / len(X),
                                              rel=1e-3)
    # no missing pixel: the fast step is the exact one up to rounding
    e = PPCA(5, dtype=np.float64, tol=1e-9).fit(X)
    assert np.allclose(p.history_, e.history_[:len(p.history_)], rtol=1e-10)


def test_fast_same_seed_same_bits():
    _, Xm, _ = _data(N=800, D=120, seed=1)
    a = PPCA(4, method="fast", random_state=3, n_init_rows=300).fit(Xm)
    b = PPCA(4, method="fast", random_state=3, n_init_rows=300).fit(Xm)
    assert np.array_equal(a.components_, b.components_)
    assert np.array_equal(a.mean_, b.mean_)
    assert a.noise_variance_ == b.noise_variance_
    assert np.array_equal(a.history_, b.history_)


def test_fast_memmap_equals_in_memory(flux_mask_memmaps):
    _, Xm, _ = _data(N=700, D=90, seed=2)
    miss = np.isnan(Xm)
    X = np.where(miss, 0.0, Xm).astype(np.float32)
    fx, fm = flux_mask_memmaps(X, ~miss)
    a = PPCA(3, method="fast", chunk_size=128).fit(fx, mask=fm)
    b = PPCA(3, method="fast", chunk_size=128).fit(np.array(X), mask=~miss)
    assert np.array_equal(a.components_, b.components_)
    assert np.array_equal(a.history_, b.history_)
    e = PPCA(3, chunk_size=128).fit(fx, mask=fm)
    assert _max_angle(a.components_.T, e.components_.T) < 0.1


def test_fast_bad_method_and_weights():
    X, Xm, _ = _data(N=300, D=40, seed=3)
    with pytest.raises(ValueError, match="method"):
        PPCA(3, method="approx").fit(X)
    with pytest.raises(ValueError, match="weights"):
        PPCA(3, method="fast").fit(X, weights=np.ones_like(X))
