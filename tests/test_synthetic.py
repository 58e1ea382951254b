"""Tests of the synthetic survey generator (helpers.survey).

Determinism, atomic caching by parameters, files-vs-cache agreement, the formats written,
and realism with tolerances a broken generator fails: median S/N, censored pixels, DIB
equivalent width proportional to AK_TARG, cluster scatter, alpha bimodality, element
responses, and the non-chemical imprints moving as they should.
"""

import json

import numpy as np
import pytest

from helpers import apogee
from helpers import survey as syn
from helpers.constants import C_KMS
from helpers.rsca.selection import passes_field_cuts, select_rsca_sample
from helpers.survey import generate, lines, spectrum
from helpers.survey.catalogue import EXCLUDED_STAR
from helpers.survey.chemistry import ELEMENTS

TINY = syn.SurveyParams(n_field=600, n_jwst=20, n_files=25, seed=7)
MEDIUM = syn.SurveyParams(n_field=3000, n_jwst=0, n_files=0, seed=11)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = syn.generate_survey(TINY, tmp_path_factory.mktemp("tiny") / "survey", progress=False)
    return syn.load_survey(out)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    out = syn.generate_survey(MEDIUM, tmp_path_factory.mktemp("medium") / "survey",
                              progress=False)
    return syn.load_survey(out)


@pytest.fixture(scope="module")
def medium_residuals(medium):
    """Flux minus the noise-free stellar spectrum from the true labels, (n, 8575)."""
    t = medium.truth
    x_fe = t[[f"X_FE_{e}" for e in ELEMENTS]].to_numpy()
    ref = syn.synthesize_apogee(t.TEFF, t.LOGG, t.FE_H, x_fe,
                                mismatch_amplitude=medium.params.mismatch_amplitude)
    flux = np.asarray(medium.spectra.flux)
    err = np.asarray(medium.spectra.error)
    good = (err > 0) & (err < 0.05)
    return flux - ref, good, ref


# ---------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------

def test_docstrings_name_book_sections():
    assert "Book:" in syn.__doc__
    for name in syn.__all__:
        obj = getattr(syn, name)
        if callable(obj) and obj.__doc__:
            assert "Book:" in obj.__doc__, name


@pytest.mark.parametrize("field,value", [("n_field", 0), ("bad_pixel_rate", 0.9),
                                         ("snr_median", -1.0), ("release", "dr99"),
                                         ("n_latent", 1), ("teff_range", (5000, 4000)),
                                         ("n_jwst", 1.5), ("jwst_resolution", 50_000.0),
                                         ("jwst_wmax", 25_000.0), ("jwst_wmin", 3000.0),
                                         ("jwst_gap", "somewhere"), ("jwst_n_pixels", 100),
                                         ("cluster_members_per_plate", 0),
                                         ("mismatch_amplitude", -0.01)])
def test_params_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        syn.SurveyParams(**{field: value})


def test_key_is_stable_and_parameter_sensitive():
    a, b = syn.SurveyParams(), syn.SurveyParams()
    assert a.key() == b.key() and len(a.key()) == 16
    assert a.key() != a.replace(seed=1).key()
    assert a.key() != a.replace(dib_strength=2.0).key()
    assert syn.SurveyParams.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_paper_scale_is_one_call_away():
    p = syn.paper_scale_params()
    assert p.n_field > 200_000 and p.n_jwst == 19_000


# ---------------------------------------------------------------------------------------
# the files written
# ---------------------------------------------------------------------------------------

def test_survey_layout_and_alignment(tiny):
    a = tiny.allstar
    n = len(a)
    assert n == len(tiny.truth) == tiny.spectra.flux.shape[0]
    assert tiny.spectra.flux.shape[1] == apogee.N_PIXELS
    assert tiny.spectra.flux.dtype == np.float32
    np.testing.assert_array_equal(tiny.spectra.apogee_ids, a.APOGEE_ID.to_numpy())
    np.testing.assert_array_equal(tiny.truth.APOGEE_ID.to_numpy(), a.APOGEE_ID.to_numpy())
    assert a.APOGEE_ID.is_unique
    assert a.APOGEE_ID.str.match(r"^2M\d{8}[+-]\d{7}$").all()
    assert EXCLUDED_STAR in set(a.APOGEE_ID)
    # catalogue columns that the RSCA selection needs
    for c in ("TEFF", "LOGG", "ASPCAPFLAG", "AK_TARG", "VHELIO_AVG", "SNR", "VISITS",
              "TELESCOPE", "FIELD", "VSCATTER", "NVISITS"):
        assert c in a.columns, c
    assert a.attrs["elem_symbol"] == list(apogee.DR16_ELEM_SYMBOL)
    mjd = a.VISITS.str.split(",").str[0].str.split("-").str[2].astype(int)
    assert mjd.between(55000, 60000).all()
    nv = a.VISITS.str.count(",") + 1
    np.testing.assert_array_equal(nv.to_numpy(), a.NVISITS.to_numpy())
    # flux is 0 outside the chips
    outside = ~apogee.chip_mask()
    assert np.all(np.asarray(tiny.spectra.flux[:, outside]) == 0)
    # OCCAM files
    m, c = tiny.occam_members, tiny.occam_clusters
    assert len(c) == 22 and set(m.CLUSTER) == set(c.NAME)
    assert (m.CG_PROB == np.float32(apogee.MISSING)).any()
    assert set(m.APOGEE_ID) <= set(a.APOGEE_ID)
    # JWST twins
    j = tiny.jwst
    assert j["flux"].shape == j["error"].shape == (TINY.n_jwst, TINY.jwst_n_pixels)
    assert np.all(np.isfinite(j["flux"])) and 0.8 < np.median(j["flux"]) < 1.05
    np.testing.assert_array_equal(a.APOGEE_ID.to_numpy()[j["rows"]], j["apogee_ids"])
    assert 9690 < j["wavelength"][0] < 9710 and 17900 < j["wavelength"][-1] < 18000
    # the detector gap (on by default): flux 0 and error 1e10 inside, nowhere else
    flux, err, wave = np.asarray(j["flux"]), np.asarray(j["error"]), j["wavelength"]
    assert j["gap"].shape == (TINY.n_jwst, 2)
    for k, (lo, hi) in enumerate(j["gap"]):
        inside = (wave >= lo) & (wave < hi)
        assert 100 < inside.sum() < 250, "a gap covers ~0.03 um, 100-250 pixels"
        assert np.all(flux[k, inside] == 0) and np.all(err[k, inside] >= 1e9)
        assert np.all(err[k, ~inside] < 0.1)
    # twins sample G140H/F100LP at about two pixels per resolution element
    per_element = 1 / (TINY.jwst_resolution * np.log(wave[1] / wave[0]))
    assert 1.9 < per_element < 2.1


def test_flags_and_missing_values(medium):
    a = medium.allstar
    bad = apogee.flag_set(a.ASPCAPFLAG.to_numpy(), "STAR_BAD")
    assert 0.01 < bad.mean() < 0.06
    x = a[[f"X_H_{e}" for e in apogee.RSCA_ELEMENTS]].to_numpy()
    any_missing = (x == np.float32(apogee.MISSING)).any(axis=1)
    assert 0.03 < any_missing.mean() < 0.10
    assert (a.X_H_Fe != np.float32(apogee.MISSING)).all()
    sel = passes_field_cuts(a)
    assert 0.4 < sel[medium.truth.CLUSTER.to_numpy() == ""].mean() < 0.75


def test_files_and_cache_agree(tiny):
    has = np.flatnonzero(tiny.truth.HAS_FILE.to_numpy())
    assert has.size == TINY.n_files
    # OCCAM member-file stars get their files first
    assert tiny.truth.IN_OCCAM_FILE.to_numpy()[has].all()
    for r in has:
        s = apogee.read_aspcapstar(tiny.aspcapstar_path(r))
        np.testing.assert_array_equal(s.flux, tiny.spectra.flux[r])
        np.testing.assert_array_equal(s.error, tiny.spectra.error[r])
    # bad pixels follow the aspcapStar convention in both
    assert (np.asarray(tiny.spectra.error[has]) == np.float32(apogee.BAD_PIXEL_ERROR)).any()


def test_truth_is_loadable_by_params(tiny, monkeypatch, tmp_path):
    t = tiny.truth
    assert {"TEFF", "LOGG", "FE_H", "ALPHA_M", "X_FE_Mg", "LATENT_0", "CLUSTER", "IS_MEMBER",
            "DIB_EW", "PLATE", "VHELIO_TRUE"} <= set(t.columns)
    assert t[[f"LATENT_{k}" for k in range(TINY.n_latent)]].notna().all().all()
    np.testing.assert_allclose(t.LATENT_0, t.FE_H, atol=0.1)
    with pytest.raises(FileNotFoundError, match="generate"):
        monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path))
        syn.load_survey(TINY.replace(seed=999))


# ---------------------------------------------------------------------------------------
# determinism and caching
# ---------------------------------------------------------------------------------------

def test_deterministic_for_a_seed_and_independent_of_threads(tmp_path):
    p = syn.SurveyParams(n_field=600, n_jwst=5, n_files=2, include_clusters=False, seed=3)
    a = syn.load_survey(syn.generate_survey(p, tmp_path / "a", progress=False, n_threads=1))
    b = syn.load_survey(syn.generate_survey(p, tmp_path / "b", progress=False, n_threads=2))
    np.testing.assert_array_equal(np.asarray(a.spectra.flux), np.asarray(b.spectra.flux))
    np.testing.assert_array_equal(np.asarray(a.spectra.error), np.asarray(b.spectra.error))
    np.testing.assert_array_equal(np.asarray(a.jwst["flux"]), np.asarray(b.jwst["flux"]))
    assert a.allstar.equals(b.allstar)
    assert a.truth.equals(b.truth)
    c = syn.load_survey(syn.generate_survey(p.replace(seed=4), tmp_path / "c", progress=False))
    assert not np.array_equal(np.asarray(a.spectra.flux[:50]), np.asarray(c.spectra.flux[:50]))


def test_cached_by_parameters_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path / "cache"))
    p = syn.SurveyParams(n_field=300, n_jwst=0, n_files=0, include_clusters=False, seed=5)
    out = syn.generate_survey(p, progress=False)
    assert out == syn.survey_dir(p) and syn.is_complete_survey(out, p)
    stamp = (out / "survey.json").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(generate, "build_catalogue", lambda *a: calls.append(1))
    assert syn.generate_survey(p, progress=False) == out  # reused, nothing recomputed
    assert not calls and (out / "survey.json").stat().st_mtime_ns == stamp
    assert syn.load_survey(p).params == p
    monkeypatch.undo()
    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path / "cache"))

    # a failure midway leaves neither a survey nor a temporary folder behind
    q = p.replace(seed=6)
    real = generate.synth_block

    def broken(p_, b, *a, **k):
        if b == 1:
            raise RuntimeError("disk full")
        return real(p_, b, *a, **k)

    monkeypatch.setattr(generate, "synth_block", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        syn.generate_survey(q, progress=False, n_threads=1)
    target = syn.survey_dir(q)
    assert not target.exists()
    assert not list(target.parent.glob(f".{target.name}*"))
    with pytest.raises(FileNotFoundError):
        syn.load_survey(q)


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a synthetic survey"):
        syn.generate_survey(TINY, d, progress=False)
    assert (d / "notes.txt").read_text() == "precious"


# ---------------------------------------------------------------------------------------
# realism
# ---------------------------------------------------------------------------------------

def test_median_snr_and_pixel_noise(medium, medium_residuals):
    snr = medium.allstar.SNR.to_numpy()
    assert 145 < np.median(snr) < 170
    q25, q75 = np.percentile(snr, [25, 75])
    assert 85 < q25 < 120 and 230 < q75 < 310
    resid, good, _ = medium_residuals
    err = np.asarray(medium.spectra.error)
    # away from DIBs, tellurics and sky, (flux - truth) / error is unit normal
    z = (resid / np.where(good, err, 1))[good]
    mad = 1.4826 * np.median(np.abs(z - np.median(z)))
    assert 0.9 < mad < 1.25


def test_censored_pixel_fraction(medium):
    err = np.asarray(medium.spectra.error)[:, apogee.chip_mask()]
    frac = (err > 0.05).mean()
    assert 0.02 < frac < 0.045
    per_star = (err > 0.05).mean(axis=1)
    assert np.median(per_star) > 0.015


def test_dib_equivalent_width_proportional_to_ak(medium, medium_residuals):
    """Measure W(15273) from the spectra: W / AK_TARG ~ 0.88 A/mag (Zasowski et al.)."""
    resid, good, ref = medium_residuals
    t = medium.truth
    wave = apogee.wavelength_grid()
    flux = np.asarray(medium.spectra.flux)
    ratio = np.where(good & (ref > 0.3), flux / np.where(ref > 0, ref, 1), 1.0)
    v = (t.V_ISM - t.VHELIO_TRUE).to_numpy()
    centre = 15272.42 * (1 + v / C_KMS)
    ew = np.empty(len(t))
    dl = np.gradient(wave)
    for i in range(len(t)):
        w = np.abs(wave - centre[i]) < 6.0
        ew[i] = np.sum((1 - ratio[i, w]) * dl[w])
    ak = medium.allstar.AK_TARG.to_numpy()
    sel = (ak > 0.05) & (ak < 1.5) & (medium.allstar.SNR.to_numpy() > 80)
    slope = np.sum(ew[sel] * ak[sel]) / np.sum(ak[sel] ** 2)
    assert 0.6 < slope < 1.2
    assert np.corrcoef(ew[sel], ak[sel])[0, 1] > 0.6
    # and nothing like it where there is no extinction
    low = ak < 0.02
    assert low.sum() >= 5 and abs(np.median(ew[low])) < 0.05  # 0.88 A x AK: AK ~ 0.05


def test_cluster_scatter_and_selection(medium):
    t = medium.truth
    mem = t[t.IS_MEMBER]
    x = mem[[f"X_FE_{e}" for e in ELEMENTS if e != "Fe"]]
    sd = x.groupby(mem.CLUSTER).std().median().median()
    assert 0.01 <= sd <= 0.03
    a = medium.allstar.assign(sel=passes_field_cuts(medium.allstar))
    m = medium.occam_members.merge(a[["APOGEE_ID", "sel"]], on="APOGEE_ID")
    chosen = select_rsca_sample(medium.allstar, medium.occam_members)
    keep = a.iloc[chosen.cluster_rows]
    assert 150 <= chosen.cluster_rows.size <= 230 and chosen.n_clusters >= 20
    # the CG_PROB cut matters both ways
    is_mem = dict(zip(t.APOGEE_ID, t.IS_MEMBER))
    assert not all(is_mem[i] for i in keep.APOGEE_ID)
    dropped = m[(m.CG_PROB <= 0.8) & m.sel]
    assert any(is_mem[i] for i in dropped.APOGEE_ID)
    # members share RV within ~1 km/s, and field, extinction
    for name, g in t[t.IS_MEMBER].groupby("CLUSTER"):
        if len(g) >= 5:
            assert g.VHELIO_TRUE.std() < 1.5
            assert g.AK_TRUE.std() < 0.2 * g.AK_TRUE.mean() + 0.01
    assert medium.allstar[t.IS_MEMBER.to_numpy()].groupby(t.CLUSTER[t.IS_MEMBER]).FIELD.nunique().max() == 1


def test_alpha_bimodality_in_the_catalogue(medium):
    a = medium.allstar
    sel = passes_field_cuts(a) & (a.FE_H > -0.6).to_numpy() & (a.FE_H < -0.2).to_numpy()
    al = a.ALPHA_M.to_numpy()[sel]
    low = np.mean((al > 0.06) & (al < 0.10))
    valley = np.mean((al > 0.15) & (al < 0.19))
    high = np.mean((al > 0.22) & (al < 0.26))
    assert valley < 0.6 * min(low, high)


def test_each_element_responds_at_its_own_lines():
    """Raising one [X/Fe] by 0.2 dex above the Cannon's reference pattern deepens that
    element's lines, and at an atomic line no other metal's change does half as much."""
    from helpers.survey.linephysics import load_line_list, reference_pattern
    teff, logg, feh = 4500.0, 2.4, -0.1
    base = reference_pattern([feh])
    f0 = syn.synthesize_apogee([teff], [logg], [feh], base)[0]
    wave = apogee.wavelength_grid()
    lines = load_line_list()
    species = {"Mg": "Mg I", "Si": "Si I", "Al": "Al I", "Ti": "Ti I", "K": "K I",
               "Ca": "Ca I", "Mn": "Mn I", "Ni": "Ni I", "C": "CO", "O": "OH", "N": "CN"}
    deltas = {}
    for e in species:
        x = base.copy()
        x[0, ELEMENTS.index(e)] += 0.2
        deltas[e] = syn.synthesize_apogee([teff], [logg], [feh], x)[0] - f0
    for e, sp in species.items():
        c = lines.wave_vac[(lines.species == sp) & (lines.depth_arcturus > 0.2)].to_numpy()
        pix = np.searchsorted(wave, c)
        pix = pix[(pix > 0) & (pix < wave.size) & apogee.chip_mask()[np.clip(pix, 0, wave.size - 1)]]
        assert pix.size, e
        own = np.median(deltas[e][pix])
        assert own < -0.002, f"{e}: its lines must deepen ({own:.4f})"
        if e in "CNO":
            continue  # CN, CO and OH lines all depend on C, N and O together
        # atomic lines: no other metal moves them half as much (CN/CO/OH blends may)
        other = max(abs(np.median(deltas[f][pix])) for f in species if f not in (e, "C", "N", "O"))
        assert other < 0.5 * abs(own), f"{e}: another element moves its lines as much"


def test_the_cannon_is_the_reference_star():
    """At the reference pattern (and without mismatch) a survey spectrum is the Cannon's."""
    from helpers.spectra.cannon import apogee_model
    from helpers.survey.linephysics import reference_pattern
    teff, logg, feh = np.array([4200.0, 4800.0]), np.array([1.8, 2.9]), np.array([-0.6, 0.2])
    f = syn.synthesize_apogee(teff, logg, feh, reference_pattern(feh))
    np.testing.assert_allclose(f, apogee_model().flux(teff, logg, feh), atol=2e-6)
    with_mm = syn.synthesize_apogee(teff, logg, feh, reference_pattern(feh),
                                    mismatch_amplitude=0.015)
    rms = np.sqrt(np.mean((with_mm - f)[:, apogee.chip_mask()] ** 2, axis=1))
    assert np.all((rms > 0.005) & (rms < 0.04))


def test_cluster_plates_hold_a_majority_of_field_stars(medium):
    """Every plate with cluster members carries more field stars than cluster stars, and a
    few to a few tens of cluster stars: a plate pattern is never a cluster label."""
    t = medium.truth
    plate = t.PLATE_IDX.to_numpy()
    towards = (t.CLUSTER != "").to_numpy()
    cluster_plates = np.unique(plate[towards])
    assert cluster_plates.size >= 5
    for q in cluster_plates:
        on = plate == q
        assert (on & ~towards).sum() > (on & towards).sum(), f"plate {q}"
    # a few to a few tens per plate (20 at most from 5,000 field giants up; 3,000 here)
    counts = np.bincount(plate[towards])
    assert counts[cluster_plates].max() <= 40


def _fit_amplitude(resid, good, templ):
    w = good & (templ > 0.3 * templ.max(axis=1, keepdims=True))
    num = np.sum(np.where(w, resid * templ, 0), axis=1)
    den = np.sum(np.where(w, templ * templ, 0), axis=1)
    return num / np.maximum(den, 1e-12)


def test_telluric_residuals_move_with_vhelio(medium, medium_residuals):
    resid, good, _ = medium_residuals
    t = medium.truth
    tell, _ = lines.observed_frame_templates(22500.0)
    q = spectrum.shift_index(t.VHELIO_TRUE.to_numpy())
    uq, bank = spectrum.shift_bank(tell, q)
    rest = bank[np.searchsorted(uq, q)]
    amp = _fit_amplitude(resid, good, rest)
    assert np.corrcoef(amp, t.TELLURIC_AMP)[0, 1] > 0.7
    # for fast stars, ignoring the Doppler shift loses most of it
    fast = np.abs(t.VHELIO_TRUE.to_numpy()) > 60
    amp0 = _fit_amplitude(resid[fast], good[fast], np.broadcast_to(tell, rest[fast].shape))
    amp1 = _fit_amplitude(resid[fast], good[fast], rest[fast])
    c0 = np.corrcoef(amp0, t.TELLURIC_AMP[fast])[0, 1]
    c1 = np.corrcoef(amp1, t.TELLURIC_AMP[fast])[0, 1]
    assert c1 > 0.9 and c0 < c1 - 0.1, (c0, c1)


def test_plate_pattern_is_shared(medium, medium_residuals):
    resid, good, _ = medium_residuals
    t = medium.truth
    inside = apogee.chip_mask()
    corrs = []
    for plate, idx in t.groupby("PLATE_IDX").indices.items():
        if len(idx) < 150:
            continue
        n_good = good[idx].sum(0)
        mean = np.where(n_good > 0, np.where(good[idx], resid[idx], 0).sum(0)
                        / np.maximum(n_good, 1), np.nan)
        pat = spectrum.plate_pattern(MEDIUM.seed, int(plate), MEDIUM.plate_systematic)
        ok = inside & np.isfinite(mean)
        corrs.append(np.corrcoef(mean[ok], pat[ok])[0, 1])
    assert len(corrs) >= 5 and np.median(corrs) > 0.5


def test_persistence_on_the_blue_chip(medium, medium_residuals):
    resid, good, _ = medium_residuals
    t = medium.truth
    blue = slice(apogee.CHIPS["blue"].start, apogee.CHIPS["blue"].start + 800)
    level = np.nanmedian(np.where(good[:, blue], resid[:, blue], np.nan), axis=1)
    hit = t.PERSISTENCE_AMP.to_numpy() > 0.02
    assert 0.05 < (t.PERSISTENCE_AMP > 0).mean() < 0.15
    assert np.median(level[hit]) > 0.015
    assert abs(np.median(level[t.PERSISTENCE_AMP.to_numpy() == 0])) < 0.003
    flagged = (medium.allstar.STARFLAG.to_numpy() & (7 << 9)) > 0
    np.testing.assert_array_equal(flagged, t.PERSISTENCE_AMP.to_numpy() > 0)


def test_command_line(tmp_path):
    from helpers.survey import cli as survey
    out = tmp_path / "cli"
    rc = survey.main(["generate", "--n-field", "200", "--n-jwst", "3", "--n-files", "2",
                      "--seed", "9", "--include-clusters", "false", "--out", str(out),
                      "--no-progress"])
    assert rc == 0
    s = syn.load_survey(out)
    assert s.params.n_field == 200 and s.params.seed == 9 and len(s.allstar) == 200
    assert survey.main(["generate", "--n-field", "-1", "--out", str(tmp_path / "x")]) == 2


def test_int_and_float_spellings_share_a_key():
    assert syn.SurveyParams(snr_median=157).key() == syn.SurveyParams(snr_median=157.0).key()
    assert isinstance(syn.SurveyParams(snr_median=157).snr_median, float)
