"""The Cannon model from thedoppler, on APOGEE's and NIRSpec's grids (chapter 1)."""

import numpy as np
import pytest

from helpers import apogee
from helpers.spectra.cannon import (air_to_vacuum, apogee_model, load_cannon_model, nirspec_model,
                            vacuum_to_air)
from helpers.spectra.spectroscopy import add_noise, equivalent_width, pixels_per_resolution_element


@pytest.fixture(scope="module")
def apo():
    return apogee_model()


def test_model_reproduces_its_training_label_range():
    model = load_cannon_model()
    lo, hi = model.label_range
    np.testing.assert_allclose(lo, [3500, 0.0, -2.5])
    np.testing.assert_allclose(hi, [8000, 5.0, 0.5])
    # the label scaling is centred on the training median: the median star's label vector
    # is (1, 0, 0, ...)
    v = model.label_vector(*np.median(model.training_labels, axis=0))
    np.testing.assert_allclose(v[0], np.r_[1.0, np.zeros(v.shape[1] - 1)], atol=1e-12)


def test_flux_within_physical_range_for_rsca_giants(apo):
    rng = np.random.default_rng(0)
    n = 200
    flux = apo.flux(rng.uniform(4000, 5000, n), rng.uniform(1.5, 3.0, n), rng.uniform(-1.0, 0.4, n))
    inside = flux[:, apo.valid]
    assert inside.min() > 0.0 and inside.max() <= 1.05
    assert np.all(flux[:, ~apo.valid] == 0.0), "flux must be 0 outside the chips"


def test_line_depths_grow_with_metallicity(apo):
    fehs = np.linspace(-1.5, 0.4, 8)
    flux = apo.flux(np.full(8, 4500.0), np.full(8, 2.5), fehs)
    absorption = (1 - flux[:, apo.valid]).sum(axis=1)
    assert np.all(np.diff(absorption) > 0)


def test_apogee_model_grid_and_resolution(apo):
    assert apo.wavelength.shape == (apogee.N_PIXELS,)
    np.testing.assert_array_equal(apo.valid, apogee.chip_mask())
    # lower resolution gives shallower lines at a fixed equivalent width
    low = apogee_model(5000.0)
    f_hi, f_lo = apo.flux(4500, 2.5, 0.0)[0], low.flux(4500, 2.5, 0.0)[0]
    blue = apogee.CHIPS["blue"]
    assert f_lo[blue].min() > f_hi[blue].min() + 0.05
    window = (15194.0, 15200.0)
    assert equivalent_width(apo.wavelength, f_lo, window) == pytest.approx(
        equivalent_width(apo.wavelength, f_hi, window), rel=0.1)


def test_nirspec_model():
    nir = nirspec_model()
    assert nir.wavelength.size == 8192
    assert 8990 < nir.wavelength[0] < 9010 and 17900 < nir.wavelength[-1] < 18000
    ratio = nir.wavelength[1:] / nir.wavelength[:-1]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)  # log-uniform
    f = nir.flux(4500, 2.5, 0.0)[0]
    assert 0 < f.min() and f.max() <= 1.05


def test_air_vacuum_round_trip():
    wave = np.linspace(15000, 17000, 11)
    np.testing.assert_allclose(vacuum_to_air(air_to_vacuum(wave)), wave, atol=1e-8)
    shift = air_to_vacuum(15268.25) - 15268.25
    assert 4.0 < shift < 4.5  # n - 1 ~ 2.7e-4 in the H band


def test_bad_inputs():
    with pytest.raises(ValueError, match="resolution"):
        apogee_model(-1.0)
    with pytest.raises(ValueError, match="finite"):
        load_cannon_model().label_vector(np.nan, 2.5, 0.0)
    with pytest.raises(ValueError, match="window"):
        equivalent_width(np.arange(10.0), np.ones(10), (5.0, 4.0))
    with pytest.raises(ValueError, match="snr"):
        add_noise(np.ones((1, 5)), 0.0, np.random.default_rng(0))


def test_noise_is_seeded_and_scaled():
    flux = np.full((2, 5000), 0.9, dtype=np.float32)
    a, err = add_noise(flux, [100.0, 50.0], np.random.default_rng(3))
    b, _ = add_noise(flux, [100.0, 50.0], np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(err[:, 0], [0.009, 0.018], rtol=1e-6)
    assert abs(np.std(a[1] - flux[1]) / 0.018 - 1) < 0.05


def test_pixels_per_resolution_element():
    assert pixels_per_resolution_element(22500, 6e-6) == pytest.approx(3.217, abs=1e-3)
