"""The mock-JWST transforms (i)-(v) and the detector-gap density estimate."""

import numpy as np
import pandas as pd
import pytest

from helpers.starclip.transforms import (PASCHEN_LINES, Denormalise, GapDistribution, GapMask,
                                         MockJWST, NoiseToSNR, PaschenImputation, StuckPixels,
                                         View, check_gap_table)
from helpers.survey.nirspec import load_detector_gap_table, twin_grid_size

WAVE = np.geomspace(9700.0, 17950.0, twin_grid_size(2700.0, 9700.0, 17950.0))


def spectra(n=8, seed=0, snr=100.0):
    rng = np.random.default_rng(seed)
    flux = (1 - 0.3 * rng.random((n, WAVE.size))).astype(np.float32)
    err = np.full_like(flux, 1 / snr)
    return View(flux, np.ones_like(flux, bool), err, np.full(n, snr))


def test_paschen_imputation_replaces_the_windows_and_skips_lines_off_the_grid():
    template = np.linspace(0.5, 0.9, WAVE.size).astype(np.float32)
    t = PaschenImputation(WAVE, template, half_width=10)
    assert t.skipped == (9548.6,) and t.used == PASCHEN_LINES[1:]
    assert t.pixels.size == 3 * 21
    v = spectra()
    out = t(v, np.random.default_rng(0))
    assert np.array_equal(out.flux[:, t.pixels], np.broadcast_to(template[t.pixels], (8, 63)))
    rest = np.setdiff1d(np.arange(WAVE.size), t.pixels)
    assert np.array_equal(out.flux[:, rest], v.flux[:, rest])
    for line in t.used:        # the window is centred on the line
        c = np.argmin(np.abs(WAVE - line))
        assert {c - 10, c + 10} <= set(t.pixels) and c + 11 not in t.pixels


def test_denormalisation_is_a_cubic_per_spectrum_within_its_amplitude():
    v = spectra(n=20)
    out = Denormalise(WAVE, amplitude=0.01)(v, np.random.default_rng(3))
    ratio = out.flux / v.flux
    x = 2 * (WAVE - WAVE[0]) / (WAVE[-1] - WAVE[0]) - 1
    for r in ratio:
        coef = np.polynomial.polynomial.polyfit(x, r, 3)
        assert np.max(np.abs(np.polynomial.polynomial.polyval(x, coef) - r)) < 1e-5
        assert np.max(np.abs(r - 1)) <= 0.04 + 1e-6
    assert np.std(ratio[:, 0]) > 1e-4                 # every spectrum its own polynomial


def test_stuck_pixels_sets_the_given_fraction_to_one():
    v = spectra(n=50)
    out = StuckPixels(0.001)(v, np.random.default_rng(1))
    changed = out.flux != v.flux
    k = round(0.001 * WAVE.size)
    assert np.all(changed.sum(1) <= k) and changed.sum() > 0.9 * 50 * k
    assert np.all(out.flux[changed] == 1.0)


def test_noise_reaches_the_target_snr_and_never_removes_noise():
    v = View(np.ones((400, WAVE.size), np.float32), np.ones((400, WAVE.size), bool),
             np.full((400, WAVE.size), 0.01, np.float32), np.full(400, 100.0))
    out = NoiseToSNR((50.0, 50.0))(v, np.random.default_rng(2))
    assert np.std(out.flux - 1) == pytest.approx(np.sqrt(1 / 50 ** 2 - 1 / 100 ** 2), rel=0.01)
    assert np.allclose(out.error, 0.02, rtol=1e-5) and np.allclose(out.snr, 50)
    same = NoiseToSNR((200.0, 300.0))(v, np.random.default_rng(2))
    assert np.array_equal(same.flux, v.flux) and np.allclose(same.snr, 100)


def test_gap_distribution_follows_the_table():
    table = load_detector_gap_table()
    g = GapDistribution()
    lo, hi = g.sample(20_000, np.random.default_rng(0))
    width, centre = hi - lo, (lo + hi) / 2
    assert np.all(width > 0)
    clean = table[table.blended == 0]
    w_tab = (clean.nrs2_wave_min_um - clean.nrs1_wave_max_um) * 1e4
    assert np.median(width) == pytest.approx(np.median(w_tab), rel=0.15)
    c_tab = (table.nrs1_wave_max_um + table.nrs2_wave_min_um) / 2 * 1e4
    assert c_tab.min() - 1500 < np.percentile(centre, 1) and np.percentile(centre, 99) < c_tab.max() + 1500
    # the density integrates to about 1 over a wide range
    grid = np.linspace(8000, 17000, 4000)
    assert np.trapezoid(g.density(centre=grid), grid) == pytest.approx(1, abs=0.02)


def test_gap_table_with_a_negative_width_is_refused():
    t = load_detector_gap_table().copy()
    t.loc[2, "nrs2_wave_min_um"] = t.loc[2, "nrs1_wave_max_um"] - 0.01
    with pytest.raises(ValueError, match=r"rows \[2\].*negative or zero gap width"):
        GapDistribution(t)
    with pytest.raises(ValueError, match="lacks the column"):
        check_gap_table(pd.DataFrame({"nrs1_wave_max_um": [1.2, 1.3]}))


def test_gap_mask_removes_one_contiguous_interval():
    t = GapMask(WAVE)
    out = t(spectra(n=30), np.random.default_rng(4))
    for row in ~out.observed:
        idx = np.flatnonzero(row)
        assert idx.size > 50 and np.all(np.diff(idx) == 1)
        assert 9700 < WAVE[idx[0]] and WAVE[idx[-1]] < 17950


def test_chain_gives_a_fresh_view_per_epoch_and_reproduces_with_its_seed():
    fill = np.full(WAVE.size, 0.97, np.float32)
    chain = MockJWST.essay(WAVE, np.full(WAVE.size, 0.8, np.float32), fill)
    assert len(chain.transforms) == 5 and "(v)" in chain.describe()[-1]
    v = spectra(n=6, snr=300.0)
    a = chain(v, np.random.default_rng([0, 1]))
    b = chain(v, np.random.default_rng([0, 1]))
    c = chain(v, np.random.default_rng([0, 2]))
    assert np.array_equal(a.flux, b.flux) and not np.array_equal(a.flux, c.flux)
    assert np.all(a.flux[~a.observed] == 0.97) and (~a.observed).any()
    assert not np.shares_memory(a.flux, v.flux) and np.all(v.observed)


@pytest.mark.parametrize("make, match", [
    (lambda: Denormalise(WAVE, amplitude=-0.01), "amplitude"),
    (lambda: Denormalise(WAVE, amplitude=0.5), "amplitude"),
    (lambda: StuckPixels(0.5), "fraction"),
    (lambda: NoiseToSNR((300, 30)), "snr_range"),
    (lambda: NoiseToSNR((0.0, 30)), "snr_range"),
    (lambda: PaschenImputation(WAVE, np.ones(WAVE.size), half_width=-1), "half_width"),
    (lambda: PaschenImputation(WAVE, np.ones(10)), "template_flux"),
    (lambda: MockJWST.essay(WAVE, np.ones(WAVE.size), np.ones(WAVE.size), steps=("vi",)), "steps"),
])
def test_mock_parameters_outside_their_ranges_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_transforms_refuse_spectra_on_another_grid():
    with pytest.raises(ValueError, match="pixels"):
        Denormalise(WAVE)(View(np.ones((2, 100)), np.ones((2, 100), bool)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="errors and S/N"):
        NoiseToSNR()(View(np.ones((2, 100)), np.ones((2, 100), bool)), np.random.default_rng(0))
