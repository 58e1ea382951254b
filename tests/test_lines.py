"""The line physics (helpers.lines), the model mismatch and the NIRSpec twins' physics."""

import numpy as np
import pandas as pd
import pytest

from helpers import apogee
from helpers.survey import linephysics as L
from helpers import survey as syn
from helpers.survey import spectrum
from helpers.spectra.cannon import apogee_model, nirspec_model
from helpers.survey.chemistry import ELEMENTS
from helpers.survey.mismatch import mismatch_coefficients, mismatch_scale, model_mismatch

LABELS = (4400.0, 2.0, -0.3)


def _equivalent_width(wave, flux, ref, lo, hi):
    w = (wave > lo) & (wave < hi)
    return np.sum((ref[w] - flux[w]) * np.gradient(wave)[w])


def test_line_list_must_cite_its_source(tmp_path):
    body = "species,wave_vac,depth_arcturus\nMg I,15770.1,0.7\n"
    (tmp_path / "no_source.csv").write_text(body)
    with pytest.raises(ValueError, match="first line must be a '#' comment citing"):
        L.load_line_list(tmp_path / "no_source.csv")
    (tmp_path / "unknown.csv").write_text("# lines from a cited paper (Someone et al. 2020)\n"
                                          + body + "Xx I,15800.0,0.3\n")
    with pytest.raises(ValueError, match=r"species \['Xx I'\] belong to no element"):
        L.load_line_list(tmp_path / "unknown.csv")
    (tmp_path / "depth.csv").write_text("# lines from a cited paper (Someone et al. 2020)\n"
                                        "species,wave_vac,depth_arcturus\nMg I,15770.1,1.7\n")
    with pytest.raises(ValueError, match="depth_arcturus"):
        L.load_line_list(tmp_path / "depth.csv")


def test_book_line_list_covers_every_channel():
    ll = L.load_line_list()
    assert set(ll.channel.dropna()) == set(L.CHANNELS) - {"S"} | ({"S"} & set(ll.channel))
    assert (ll.species == "CN").sum() > 100 and (ll.species == "OH").sum() > 50


def test_molecular_equilibrium():
    """More O: more OH, less CN (free carbon falls); more C: more CO and CN, less OH."""
    base = L.reference_pattern([-0.2])
    io, ic = ELEMENTS.index("O"), ELEMENTS.index("C")
    k = {c: L.CHANNELS.index(c) for c in ("CN", "CO", "OH")}
    x = base.copy(); x[0, io] += 0.1
    r = L.channel_factors(x, base)[0]
    assert r[k["OH"]] > 10 ** 0.1 and r[k["CN"]] < 1 and r[k["CO"]] == pytest.approx(1)
    x = base.copy(); x[0, ic] += 0.1
    r = L.channel_factors(x, base)[0]
    assert r[k["CO"]] == pytest.approx(10 ** 0.1) and r[k["CN"]] > 10 ** 0.1 and r[k["OH"]] < 1
    assert np.allclose(L.channel_factors(base, base), 1.0)
    assert np.allclose(L.channel_factors(x, base, scale=0.0), 1.0)


def test_curve_of_growth_saturates():
    """A weak line's equivalent width grows ~ linearly with the abundance, a strong one's
    much less: the response is not the weak-line 10^[X/Fe] - 1 on every line."""
    wave = apogee.wavelength_grid()
    base = L.reference_pattern([LABELS[2]])
    slopes = {}
    for name, (lo, hi) in {"strong Mg I 15770": (15768.5, 15771.8),
                           "weak Ti I 15719": (15718.8, 15720.9)}.items():
        el = "Mg" if "Mg" in name else "Ti"
        ews = []
        for d in (-0.1, 0.1):
            x = base.copy(); x[0, ELEMENTS.index(el)] += d
            f = syn.synthesize_apogee(*[[v] for v in LABELS], x)[0]
            ews.append(_equivalent_width(wave, f, np.ones_like(f), lo, hi))
        slopes[name] = np.log10(ews[1] / ews[0]) / 0.2
    assert slopes["strong Mg I 15770"] < 0.75 * slopes["weak Ti I 15719"]
    assert 0.05 < slopes["strong Mg I 15770"] and 0.5 < slopes["weak Ti I 15719"] < 1.1


def test_nirspec_absorption_matches_apogee():
    """The same star's element absorption has the same equivalent width at R = 22,500 on
    APOGEE's grid and at R = 2,700 on the twin grid (the LSF moves light, it does not
    remove it), summed over the H-band lines."""
    p = syn.SurveyParams()
    apo = apogee_model()
    nir = nirspec_model(p.jwst_resolution, p.jwst_n_pixels, p.jwst_wmin, p.jwst_wmax)
    phys_a = L.line_physics("apogee", 22500.0)
    phys_n = L.line_physics("nirspec", p.jwst_resolution, p.jwst_n_pixels, p.jwst_wmin,
                            p.jwst_wmax)
    base = L.reference_pattern([LABELS[2]])
    x = base.copy()
    for e in ("Mg", "Si", "Al", "O", "N"):
        x[0, ELEMENTS.index(e)] += 0.15
    fac = L.channel_factors(x, base)
    ews = []
    for model, phys in ((apo, phys_a), (nir, phys_n)):
        lv = spectrum.clipped_label_vector(model, *[[v] for v in LABELS])
        delta = np.zeros((1, model.wavelength.size), np.float32)
        phys.apply(delta, lv, fac)
        w = (model.wavelength > 15950) & (model.wavelength < 16400)  # inside APOGEE's green chip
        ews.append(-np.sum(delta[0, w] * np.gradient(model.wavelength)[w]))
    assert ews[0] > 0.2, "the change must be measurable"
    assert ews[1] == pytest.approx(ews[0], rel=0.08)


def test_mismatch_is_label_dependent_and_sized():
    apo = apogee_model()
    s = mismatch_scale(apo)
    teff = np.array([4500.0, 4500.0, 4100.0])
    logg = np.array([2.5, 2.5, 1.8])
    feh = np.array([-0.2, -0.2, -0.4])
    f = apo.flux(teff, logg, feh)
    m = model_mismatch(teff, logg, feh, f, 0.015, s, apo.valid)
    rms = np.sqrt(np.mean(m[:, apo.valid] ** 2, axis=1))
    assert np.all((rms > 0.005) & (rms < 0.03)), "1-2 % for typical giants"
    np.testing.assert_array_equal(m[0], m[1])  # same labels, same mismatch
    assert np.corrcoef(m[0, apo.valid], m[2, apo.valid])[0, 1] < 0.95
    assert mismatch_coefficients(teff, logg, feh).shape == (3, 8)
    assert np.all(m[:, ~apo.valid] == 0)
