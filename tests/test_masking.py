"""Censoring, residual curves and the automatic window rule (chapter 4)."""

import numpy as np
import pytest

from helpers.apogee import chip_mask, wavelength_grid
from helpers.rsca.masking import (WindowRule, band_coverage, censor, censored_fractions, find_windows,
                             residual_curve, windows_in_angstrom, windows_to_mask)


def test_censor_rules():
    flux = np.ones((2, 6), dtype=np.float32)
    error = np.array([[0.01, 0.06, 0.05, 0.01, 1e10, 0.01],
                      [0.01, 0.01, 0.01, np.nan, 0.01, 0.01]], dtype=np.float32)
    valid = np.array([True, True, True, True, True, False])
    obs = censor(flux, error, 0.05, valid)
    assert obs.tolist() == [[True, False, True, True, False, False],
                            [True, True, True, False, True, False]]
    per_star, per_pixel = censored_fractions(obs, valid)
    np.testing.assert_allclose(per_star, [0.4, 0.2])
    assert np.isnan(per_pixel[5]) and per_pixel[1] == 0.5


def test_censor_defaults_to_apogee_chips():
    flux = np.ones((1, 8575), np.float32)
    obs = censor(flux, np.full_like(flux, 0.01))
    assert obs.sum() == chip_mask().sum() == 7514


def test_censor_bad_input():
    with pytest.raises(ValueError, match="equal shape"):
        censor(np.ones((2, 5)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="max_error"):
        censor(np.ones((2, 5)), np.ones((2, 5)), max_error=-1, valid=np.ones(5, bool))


def test_find_windows_recovers_known_bumps():
    rng = np.random.default_rng(1)
    wave = wavelength_grid()
    valid = chip_mask()
    curve = 0.004 + 0.0003 * rng.standard_normal(wave.size) + 1e-7 * (wave - 15000)
    bumps = [(15272.4, 2.0, 0.004), (15653.0, 1.5, 0.002), (16232.0, 1.8, 0.0025)]
    for centre, sigma, amp in bumps:
        curve += amp * np.exp(-0.5 * ((wave - centre) / sigma) ** 2)
    curve[~valid] = np.nan
    windows = find_windows(curve, wave, WindowRule())
    spans = windows_in_angstrom(windows, wave)
    assert len(spans) == 3
    for (lo, hi), (centre, sigma, amp) in zip(spans, bumps):
        # covers where the bump exceeds the noise (0.0003), with at least 1 A to spare
        half = sigma * np.sqrt(2 * np.log(amp / 0.0003))
        assert lo <= centre - half - 1.0 and hi >= centre + half + 1.0
        assert hi - lo < 30
    mask = windows_to_mask(windows, wave.size)
    assert mask[valid].mean() < 0.05


def test_find_windows_ignores_noise_and_single_pixels():
    rng = np.random.default_rng(2)
    wave = wavelength_grid()
    curve = 0.004 + 0.0003 * rng.standard_normal(wave.size)
    curve[4000] += 0.01  # a single hot pixel
    assert find_windows(curve, wave) == []


def test_window_rule_validation():
    with pytest.raises(ValueError, match="n_sigma"):
        WindowRule(n_sigma=0)
    with pytest.raises(ValueError, match="outside"):
        windows_to_mask([(10, 5)], 20)


def test_residual_curve_finds_a_feature_missing_from_the_reference():
    rng = np.random.default_rng(3)
    n_pix, k = 400, 3
    basis = rng.standard_normal((k, n_pix)) * 0.02
    ref = 0.9 + rng.standard_normal((300, k)) @ basis + 0.002 * rng.standard_normal((300, n_pix))
    test = 0.9 + rng.standard_normal((100, k)) @ basis + 0.002 * rng.standard_normal((100, n_pix))
    band = np.exp(-0.5 * ((np.arange(n_pix) - 200) / 4.0) ** 2)
    test -= 0.05 * rng.uniform(0.5, 1.0, (100, 1)) * band
    obs_ref = rng.random(ref.shape) > 0.03
    obs_test = rng.random(test.shape) > 0.03
    curve = residual_curve(ref, obs_ref, test, obs_test, n_components=k)
    assert curve[195:206].mean() > 5 * np.median(curve)


def test_hiding_a_band_from_the_projection_removes_its_leak():
    """A strong band pulls a test star's coordinates: the reconstruction then misses the star
    away from the band too. Hidden from the projection, the band stays in the curve and the
    leak goes."""
    rng = np.random.default_rng(0)
    n_pix, k = 400, 3
    basis = rng.standard_normal((k, n_pix)) * 0.02
    ref = 0.9 + rng.standard_normal((300, k)) @ basis + 0.002 * rng.standard_normal((300, n_pix))
    test = 0.9 + rng.standard_normal((200, k)) @ basis + 0.002 * rng.standard_normal((200, n_pix))
    pix = np.arange(n_pix)
    test -= 0.2 * rng.uniform(0.5, 1.0, (200, 1)) * np.exp(-0.5 * ((pix - 200) / 4.0) ** 2)
    obs_ref, obs_test = np.ones(ref.shape, bool), np.ones(test.shape, bool)
    band = np.abs(pix - 200) <= 16
    leaky = residual_curve(ref, obs_ref, test, obs_test, n_components=k, statistic="absorption")
    clean = residual_curve(ref, obs_ref, test, obs_test, n_components=k, statistic="absorption",
                           hide=band)
    assert clean[band].max() > 0.8 * leaky[band].max() > 0.05          # the band is still seen
    rms_leaky, rms_clean = (np.sqrt(np.mean(c[~band] ** 2)) for c in (leaky, clean))  # away from it
    noise = 0.002 / np.sqrt(200)                                      # of a mean of 200 stars
    assert rms_leaky > 5 * rms_clean and rms_clean < 1.5 * noise      # the leak is gone
    np.testing.assert_array_equal(
        residual_curve(ref, obs_ref, test, obs_test, n_components=k, statistic="absorption", hide=None), leaky)
    with pytest.raises(ValueError, match="hide"):
        residual_curve(ref, obs_ref, test, obs_test, n_components=k, hide=band[:10])


def test_band_coverage():
    wave = wavelength_grid()
    win = [(int(np.searchsorted(wave, 15260.0)), int(np.searchsorted(wave, 15285.0)))]
    covered, spare = band_coverage(win, wave, [15272.4, 15272.4, 15616.5], [3.0, 12.0, 1.0])
    assert covered.tolist() == [True, False, False]
    assert 8.5 < spare[0] < 9.7 and spare[1] < 1.0 and spare[2] == -np.inf
