"""Tests of helpers.ppca (book chapter 5, 'Step 1: PPCA with missing pixels')."""
import numpy as np
import pytest
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from helpers.ppca import PPCA, fit_ppca


def _max_angle(A, B):
    """Largest principal angle in degrees between column spaces of A and B."""
    return float(np.degrees(subspace_angles(A, B)).max())


def _lowrank(N=1500, D=200, K=4, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((D, K)) * np.linspace(2.0, 1.0, K)
    Z = rng.standard_normal((N, K))
    X = Z @ W.T + noise * rng.standard_normal((N, D)) + 1.0
    return X, W, rng


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_sklearn_pca_on_complete_data(dtype):
    X, _, _ = _lowrank(N=1200, D=150, K=5, noise=0.3)
    # float32 resolves the objective to ~1e-6 relative, so its tolerance is looser
    tol = 1e-9 if dtype == np.float64 else 1e-6
    p = PPCA(5, dtype=dtype, tol=tol).fit(X)
    sk = PCA(5).fit(X)
    assert _max_angle(p.components_.T, sk.components_.T) < 0.1
    # per-axis alignment too (same order, signs fixed)
    assert np.all(np.abs(np.sum(p.components_ * sk.components_, axis=1)) > 0.9999)
    assert np.allclose(p.mean_, sk.mean_, atol=1e-5)
    # ML noise variance divides by N, sklearn by N - 1
    assert p.noise_variance_ == pytest.approx(sk.noise_variance_ * (len(X) - 1) / len(X), rel=1e-3)
    assert p.converged_
    assert np.all(np.diff(p.history_) <= 10 * tol * abs(p.history_[0]))


def test_recovers_subspace_with_random_missing():
    X, W, rng = _lowrank()
    ref = PPCA(4).fit(X)
    Xm = X.copy()
    Xm[rng.random(X.shape) < 0.05] = np.nan
    p = PPCA(4).fit(Xm)
    assert p.converged_
    assert _max_angle(p.components_.T, W) < 0.5
    # and agrees with the complete-data fit far better than the truth does
    assert _max_angle(p.components_.T, ref.components_.T) < 0.3
    assert p.noise_variance_ == pytest.approx(0.05 ** 2, rel=0.05)


def test_recovers_subspace_with_missing_windows():
    X, W, rng = _lowrank()
    Xm = X.copy()
    # whole windows missing for a third of the stars each, plus an 'interstellar' window
    Xm[:500, 20:60] = np.nan
    Xm[500:1000, 100:140] = np.nan
    Xm[::3, 160:180] = np.nan
    p = PPCA(4).fit(Xm)
    assert _max_angle(p.components_.T, W) < 0.5
    # mean-imputed PCA is visibly biased on the same data (the test can fail)
    Xi = np.where(np.isnan(Xm), np.nanmean(Xm, axis=0), Xm)
    naive = PCA(4).fit(Xi)
    assert _max_angle(naive.components_.T, W) > 3 * _max_angle(p.components_.T, W)


def test_mask_argument_equals_nan_convention():
    X, _, rng = _lowrank(N=600, D=80)
    miss = rng.random(X.shape) < 0.05
    Xn = X.copy()
    Xn[miss] = np.nan
    Xz = X.copy()
    Xz[miss] = 0.0                      # e.g. flux 0 in gaps of a memmap
    a = PPCA(3).fit(Xn)
    b = PPCA(3).fit(Xz, mask=~miss)
    assert np.array_equal(a.components_, b.components_)
    assert np.array_equal(a.history_, b.history_)


def test_same_seed_same_bits_and_seed_matters_only_slightly():
    X, _, rng = _lowrank(N=800, D=120)
    X[rng.random(X.shape) < 0.05] = np.nan
    a = PPCA(4, random_state=3, n_init_rows=300).fit(X)
    b = PPCA(4, random_state=3, n_init_rows=300).fit(X)
    assert np.array_equal(a.components_, b.components_)
    assert np.array_equal(a.mean_, b.mean_)
    assert a.noise_variance_ == b.noise_variance_
    assert np.array_equal(a.history_, b.history_)
    c = PPCA(4, random_state=4, n_init_rows=300).fit(X)
    assert not np.array_equal(a.history_, c.history_)
    assert _max_angle(a.components_.T, c.components_.T) < 0.1


def test_transform_with_missing_pixels_close_to_complete():
    X, _, rng = _lowrank(N=1000, D=200, noise=0.05)
    p = PPCA(4).fit(X[:800])
    Xt = X[800:]
    Xm = Xt.copy()
    Xm[rng.random(Xt.shape) < 0.1] = np.nan
    Xm[:, 50:90] = np.nan
    z_full = p.transform(Xt)
    z_miss = p.transform(Xm)
    scale = np.std(z_full, axis=0)
    assert np.max(np.abs(z_miss - z_full) / scale) < 0.05
    # filling the gaps with the mean instead would be far worse
    Xf = np.where(np.isnan(Xm), p.mean_, Xm)
    assert np.max(np.abs(p.transform(Xf) - z_full) / scale) > 0.2
    # reconstruction round trip is close to the data
    rec = p.inverse_transform(z_full)
    assert np.sqrt(np.mean((rec - Xt) ** 2)) < 0.06
    assert p.fit_transform(X[:800]).shape == (800, 4)


def test_memmap_chunked_equals_in_memory(flux_mask_memmaps):
    X, _, rng = _lowrank(N=700, D=90)
    X = X.astype(np.float32)
    miss = rng.random(X.shape) < 0.04
    X[miss] = 0.0
    fx, fm = flux_mask_memmaps(X, ~miss)
    a = PPCA(3, chunk_size=128).fit(fx, mask=fm)
    b = PPCA(3, chunk_size=128).fit(np.array(X), mask=~miss)
    assert np.array_equal(a.components_, b.components_)
    # chunk size only changes rounding
    c = PPCA(3, chunk_size=10_000).fit(np.array(X), mask=~miss)
    assert _max_angle(a.components_.T, c.components_.T) < 1e-3
    assert np.allclose(a.transform(fx, mask=fm), b.transform(X, mask=~miss))


def test_error_weighting_improves_recovery():
    rng = np.random.default_rng(5)
    N, D, K = 1500, 120, 3
    W = rng.standard_normal((D, K))
    Z = rng.standard_normal((N, K))
    sig = np.full((N, D), 0.05)
    noisy = rng.random((N, D)) < 0.15
    sig[noisy] = 2.0                    # a few very noisy pixels (e.g. sky lines)
    X = Z @ W.T + sig * rng.standard_normal((N, D))
    plain = PPCA(K).fit(X)
    w = PPCA(K).fit(X, weights=1.0 / sig ** 2)
    a_plain = _max_angle(plain.components_.T, W)
    a_w = _max_angle(w.components_.T, W)
    assert a_w < 0.5 * a_plain
    # correct errors: sigma2 is a factor ~1 on the reported variances
    assert w.noise_variance_ == pytest.approx(1.0, rel=0.1)
    # weights with zeros behave as missing pixels
    miss = rng.random((N, D)) < 0.05
    w2 = np.where(miss, 0.0, 1.0)
    a = PPCA(K, tol=1e-8).fit(np.where(miss, np.nan, X), weights=None)
    b = PPCA(K, tol=1e-8).fit(X, weights=w2)
    assert _max_angle(a.components_.T, b.components_.T) < 0.05
    assert w.transform(X[:5], weights=1.0 / sig[:5] ** 2).shape == (5, K)


def test_convergence_history_and_fit_ppca():
    X, _, _ = _lowrank(N=500, D=60)
    p = fit_ppca(X, 3, tol=1e-6, max_iter=50)
    assert isinstance(p, PPCA)
    assert p.history_.shape == (p.n_iter_ + 1,)
    assert p.angle_history_.shape == (p.n_iter_,)
    h = p.history_
    assert abs(h[-1] - h[-2]) <= 1e-6 * abs(h[-1])
    short = PPCA(3, tol=0.0, max_iter=2).fit(X)
    assert short.n_iter_ == 2 and not short.converged_


# ------------------------------------------------------------------------ bad input
def test_bad_input_mismatched_shapes():
    X, _, _ = _lowrank(N=100, D=30)
    with pytest.raises(ValueError, match="mask has shape"):
        PPCA(2).fit(X, mask=np.ones((100, 29), bool))
    with pytest.raises(ValueError, match="weights has shape"):
        PPCA(2).fit(X, weights=np.ones((99, 30)))
    with pytest.raises(ValueError, match="2-D"):
        PPCA(2).fit(X[0])
    p = PPCA(2).fit(X)
    with pytest.raises(ValueError, match="30"):
        p.transform(X[:, :20])
    with pytest.raises(TypeError, match="mask must be boolean"):
        PPCA(2).fit(X, mask=np.ones((100, 30)))


def test_bad_input_all_missing_column_or_star():
    X, _, _ = _lowrank(N=100, D=30)
    Xc = X.copy()
    Xc[:, 7] = np.nan
    with pytest.raises(ValueError, match=r"pixel column.*\[7\]"):
        PPCA(2).fit(Xc)
    Xs = X.copy()
    Xs[13] = np.nan
    with pytest.raises(ValueError, match=r"star.*\[13\]"):
        PPCA(2).fit(Xs)
    m = np.ones(X.shape, bool)
    m[:, 3] = False
    with pytest.raises(ValueError, match=r"pixel column.*\[3\]"):
        PPCA(2).fit(X, mask=m)


def test_bad_input_n_init_rows_too_small():
    X, _, _ = _lowrank(N=200, D=40)
    with pytest.raises(ValueError, match="n_init_rows must be an integer > n_components=4"):
        PPCA(4, n_init_rows=4).fit(X)


def test_bad_input_too_many_components():
    X, _, _ = _lowrank(N=20, D=30)
    with pytest.raises(ValueError, match="n_components=20 is too large"):
        PPCA(20).fit(X)
    with pytest.raises(ValueError, match="n_components=30 is too large"):
        PPCA(30).fit(X.T[:, :25].T if False else np.vstack([X, X]))
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        PPCA(0).fit(X)


def test_bad_input_non_finite():
    X, _, _ = _lowrank(N=100, D=30)
    Xi = X.copy()
    Xi[4, 5] = np.inf
    with pytest.raises(ValueError, match="infinite value at star 4, pixel 5"):
        PPCA(2).fit(Xi)
    Xn = X.copy()
    Xn[6, 2] = np.nan
    m = np.ones(X.shape, bool)
    with pytest.raises(ValueError, match="star 6, pixel 2, which mask marks as observed"):
        PPCA(2).fit(Xn, mask=m)
    w = np.ones_like(X)
    w[1, 1] = -1
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        PPCA(2).fit(X, weights=w)
    w[1, 1] = np.nan
    with pytest.raises(ValueError, match="weights must be finite"):
        PPCA(2).fit(X, weights=w)
    with pytest.raises(RuntimeError, match="not fitted"):
        PPCA(2).transform(X)


# ------------------------------------------------------------------------ engine internals
def test_missing_layout_covers_exactly_the_missing_pixels():
    from helpers.ppca.layout import missing_layout
    rng = np.random.default_rng(7)
    miss = rng.random((300, 50)) < 0.1
    miss[:40, 10:30] = True              # a window: uneven counts across groups
    miss[50] = False                     # a complete star
    lay = missing_layout(miss, 50, group_size=64)
    seen = np.zeros_like(miss)
    for stars, idx, flat in lay.groups():
        for s, row, fl in zip(stars, idx, flat.reshape(idx.shape)):
            real = row[row < 50]
            assert np.array_equal(np.sort(real), np.flatnonzero(miss[s]))
            assert np.array_equal(fl, s * 51 + row)
            seen[s, real] = True
    assert np.array_equal(seen, miss)
    assert lay.n_miss == miss.sum()


def test_threaded_groups_give_the_same_bits_as_sequential(monkeypatch):
    from helpers.ppca import threads
    X, _, rng = _lowrank(N=900, D=100)
    X[rng.random(X.shape) < 0.05] = np.nan
    X[:200, 30:50] = np.nan
    a = PPCA(4, chunk_size=300).fit(X)
    monkeypatch.setattr(threads, "group_mapper", lambda: map)
    b = PPCA(4, chunk_size=300).fit(X)
    assert np.array_equal(a.components_, b.components_)
    assert np.array_equal(a.history_, b.history_)


def test_nonzero_sparse_and_row_sq_match_numpy():
    from helpers.ppca.layout import nonzero_sparse
    from helpers.ppca.linalg import row_sq
    rng = np.random.default_rng(5)
    for shape in [(37, 101), (1, 8), (5, 3)]:
        miss = rng.random(shape) < 0.1
        r, c = nonzero_sparse(miss)
        r0, c0 = np.nonzero(miss)
        assert np.array_equal(r, r0) and np.array_equal(c, c0)
    x = rng.standard_normal((600, 300)).astype(np.float32)
    ref = np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64))
    assert np.allclose(row_sq(x), ref, rtol=1e-6, atol=0)


def test_start_imputes_missing_pixels_close_to_the_maximum(monkeypatch):
    """The start (hard-imputation rounds) lands near the maximum: EM then moves the
    objective by a tiny fraction of what a start from mean imputation alone leaves."""
    from helpers.ppca import start
    X, W, rng = _lowrank(N=2000, D=150, K=4, noise=0.05)
    X[rng.random(X.shape) < 0.08] = np.nan

    def gap(p):
        return (p.history_[0] - p.history_.min()) / abs(p.history_[-1])

    p = PPCA(4, tol=0, max_iter=30, dtype=np.float64).fit(X)
    assert p.start_info_["rounds"] >= 2
    assert 0 <= gap(p) < 5e-3
    assert p.angle_history_[0] < 0.2         # EM's first step barely turns the subspace
    assert _max_angle(p.components_.T, W) < 1.0
    monkeypatch.setattr(start, "START_MAX_ROUNDS", 1)   # mean imputation only
    q = PPCA(4, tol=0, max_iter=30, dtype=np.float64).fit(X)
    assert gap(q) > 20 * gap(p)
    assert _max_angle(q.components_.T, p.components_.T) < 1e-3   # same maximum


def test_streamed_and_kept_copy_paths_agree():
    """N > n_init_rows streams X chunk by chunk from a start on a subsample; N <= n_init_rows
    works on a kept copy and starts from all stars.  Same model, to what EM's slow tail
    allows; the start on all stars is the closer one."""
    X, _, rng = _lowrank(N=900, D=80, noise=0.3)
    X[rng.random(X.shape) < 0.05] = np.nan
    X[:300, 20:35] = np.nan
    kept = PPCA(4, tol=1e-7, chunk_size=128, dtype=np.float64).fit(X)
    streamed = PPCA(4, tol=1e-7, chunk_size=128, n_init_rows=400, dtype=np.float64).fit(X)
    assert _max_angle(kept.components_.T, streamed.components_.T) < 0.5
    assert np.isclose(kept.noise_variance_, streamed.noise_variance_, rtol=1e-3)
    assert np.allclose(kept.mean_, streamed.mean_, atol=0.05)   # EM crawls along the mean
    assert np.isclose(kept.history_[-1], streamed.history_[-1], rtol=1e-4)
    assert kept.history_[0] < streamed.history_[0]
    assert kept.n_iter_ < streamed.n_iter_


@pytest.mark.parametrize("fit", ["kept copy", "streamed", "weighted"])
def test_em_never_increases_the_objective_with_missing_pixels(monkeypatch, fit):
    """The claim of the PPCA docstring: both EM algorithms are exact EM for the likelihood of
    the observed pixels, so with missing pixels (random, and a window missing for a quarter of
    the stars) the objective never increases from one iteration to the next.  The start is
    cut to mean imputation so that EM has a long way to go (and the check real work)."""
    from helpers.ppca import start
    monkeypatch.setattr(start, "START_MAX_ROUNDS", 1)
    X, _, rng = _lowrank(N=1200, D=120, K=4, noise=0.2)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[:300, 40:70] = np.nan
    kw, fit_kw = {}, {}
    if fit != "kept copy":
        kw = dict(n_init_rows=500, chunk_size=256)
    if fit == "weighted":
        fit_kw = dict(weights=np.where(np.isnan(X), 0, 1 / (0.2 + 0.1 * rng.random(X.shape)) ** 2))
    p = PPCA(4, tol=0, max_iter=40, dtype=np.float64, **kw).fit(X, **fit_kw)
    h = p.history_
    assert h.size == 41
    assert h[0] - h[-1] > 1e-2 * abs(h[-1])                  # EM made real progress ...
    assert np.all(np.diff(h) <= 1e-12 * abs(h[-1])), np.diff(h).max()   # ... never uphill
