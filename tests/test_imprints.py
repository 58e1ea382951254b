"""Measurements of the survey's imprints (chapter 2), on hand-made spectra with known answers."""

import numpy as np
import pytest

from helpers.apogee import CDELT1, wavelength_grid
from helpers.survey.imprints import band_equivalent_width, observed_frame_mask, velocity_binned_residuals

C_KMS = 299_792.458


def gaussian_band(wave, centre, sigma, ew):
    return ew / (sigma * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((wave - centre) / sigma) ** 2)


def test_band_equivalent_width_recovers_injected_width():
    wave = wavelength_grid()
    model = np.full((3, wave.size), 0.9)
    shifts = np.array([0.0, 20.0, -30.0])
    ews = np.array([0.1, 0.3, 0.5])
    flux = np.stack([m * (1 - gaussian_band(wave, 15272.42 * (1 + v / C_KMS), 1.5, w))
                     for m, v, w in zip(model, shifts, ews)])
    error = np.full_like(flux, 0.01)
    got = band_equivalent_width(flux, error, model, 15272.42, shifts, half_width=8.0)
    np.testing.assert_allclose(got, ews, rtol=0.01)
    error[0, :] = 1.0  # every pixel of star 0 unusable
    assert np.isnan(band_equivalent_width(flux, error, model, 15272.42, shifts)[0])
    with pytest.raises(ValueError, match="shape"):
        band_equivalent_width(flux, error[:2], model, 15272.42, shifts)


def test_velocity_binned_residuals_moves_with_velocity():
    wave = wavelength_grid()
    v = np.array([-100.0, -100.0, 0.0, 100.0])
    centre = 16000.0
    residual = np.stack([gaussian_band(wave, centre / (1 + vi / C_KMS), 0.3, 0.1) for vi in v])
    w, vc, image = velocity_binned_residuals(residual, np.ones(4), v, centre, half_width=8.0, bins=[-110, -90, -10, 10, 90, 110])
    peaks = w[np.argmax(image[[0, 2, 4]], axis=1)]
    expected = centre / (1 + np.array([-100, 0, 100]) / C_KMS)
    assert np.all(np.abs(peaks - expected) < 2 * np.median(np.diff(w)))
    assert np.isnan(image[1]).all() and np.isnan(image[3]).all()  # empty bins


def test_observed_frame_mask_shifts_with_velocity():
    m0, m1 = observed_frame_mask([0.0, 150.0])
    assert m0.any() and m1.any()
    # a 150 km/s shift is ~36 pixels on the log grid: the patterns differ
    shift = int(round(np.log10(1 + 150 / C_KMS) / CDELT1))
    assert 30 < shift < 40
    assert (m0 != m1).mean() > 0.01
    with pytest.raises(ValueError, match="finite"):
        observed_frame_mask([np.nan])
