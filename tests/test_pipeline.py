"""The cached selection + masking pipeline (chapter 4, 'What later chapters receive')."""

import numpy as np
import pytest

from helpers.rsca.pipeline import MaskParams, chapter_source, rsca_inputs
from helpers.rsca.selection import SelectionParams, select_rsca_sample
from helpers.survey import SurveyParams, generate_survey, load_survey


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("survey")
    params = SurveyParams(n_field=800, n_jwst=20, n_files=30, seed=7)
    return load_survey(generate_survey(params, out_dir=out / "s", progress=False))


def test_inputs_match_selection_and_censoring(survey, tmp_path):
    inputs = rsca_inputs(survey, mask=MaskParams(ism_windows="paper"), cache_root=tmp_path)
    sel = select_rsca_sample(survey.allstar, survey.occam_members)
    np.testing.assert_array_equal(inputs.field_rows, sel.field_rows)
    np.testing.assert_array_equal(inputs.cluster_labels, sel.cluster_labels)
    # observed = error <= 0.05, inside the chips, outside the paper's windows
    row = 3
    err = np.asarray(survey.spectra.error[sel.field_rows[row]])
    expect = (err <= 0.05) & (err > 0) & inputs.pixel_mask
    np.testing.assert_array_equal(inputs.field_observed[row], expect)
    assert not inputs.pixel_mask[720:910].any() and inputs.pixel_mask[1000]
    flux = np.asarray(survey.spectra.flux[sel.field_rows[row]])
    np.testing.assert_array_equal(inputs.field_flux[row][expect], flux[expect])
    assert np.all(inputs.field_flux[row][~expect] == 0)


def test_cached_and_keyed(survey, tmp_path):
    a = rsca_inputs(survey, mask=MaskParams(ism_windows="none"), cache_root=tmp_path)
    b = rsca_inputs(survey, mask=MaskParams(ism_windows="none"), cache_root=tmp_path)
    assert a.path == b.path
    c = rsca_inputs(survey, mask=MaskParams(ism_windows="none", max_error=0.1), cache_root=tmp_path)
    assert c.path != a.path
    d = rsca_inputs(survey, SelectionParams(cg_prob_min=0.5), MaskParams(ism_windows="none"), cache_root=tmp_path)
    assert d.path != a.path and d.cluster_rows.size >= a.cluster_rows.size


def test_interrupted_build_leaves_nothing(survey, tmp_path, monkeypatch):
    import helpers.rsca.pipeline as pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(pipeline, "_write_rows", boom)
    with pytest.raises(RuntimeError):
        rsca_inputs(survey, mask=MaskParams(ism_windows="none"), cache_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_too_few_reference_stars_is_a_clear_error(survey, tmp_path):
    with pytest.raises(ValueError, match="too few stars"):
        rsca_inputs(survey, mask=MaskParams(low_ak=1e-6), cache_root=tmp_path)


def test_real_data_source_from_a_cache(survey, tmp_path):
    from helpers.apogee import write_occam_members
    from helpers.apogee import build_spectra_cache

    has_file = survey.truth.HAS_FILE.to_numpy()
    cat = survey.allstar.iloc[np.r_[np.flatnonzero(has_file), np.flatnonzero(~has_file)[:5]]]
    cat = cat.reset_index(drop=True)
    cache = build_spectra_cache(cat, tmp_path / "cache", paths=None, apogee_root=survey.root,
                                release="dr16", skip_bad=True, n_jobs=1, progress=False)
    members = tmp_path / "occam_member-DR16.fits"
    write_occam_members(members, survey.occam_members)
    src = chapter_source(apogee_cache=tmp_path / "cache", occam_members_file=members)
    inputs = rsca_inputs(src, mask=MaskParams(ism_windows="paper"), cache_root=tmp_path / "inputs")
    assert inputs.manifest["source"].startswith("cache:")
    assert inputs.cluster_flux.shape[0] == inputs.cluster_rows.size > 0  # the files are of OCCAM stars
    assert len(cache) == has_file.sum() and len(cache.skipped) == 5  # files written for 30 stars


def test_chapter_source_validation(tmp_path):
    with pytest.raises(ValueError, match="both"):
        chapter_source(apogee_cache=tmp_path)
    with pytest.raises(FileNotFoundError, match="apogee_cache"):
        chapter_source(apogee_cache=tmp_path / "nope", occam_members_file=tmp_path / "nope2")
    with pytest.raises(ValueError, match="n_field"):
        chapter_source(n_field=10)
    assert chapter_source(n_field=238_400).jwst_count(10 ** 6) == 19_000


def test_mask_params_validation():
    with pytest.raises(ValueError, match="ism_windows"):
        MaskParams(ism_windows="maybe")
    with pytest.raises(ValueError, match="low_ak"):
        MaskParams(low_ak=0.6, high_ak=0.5)


def test_residual_curve_is_computed_once_per_input(survey, tmp_path, monkeypatch):
    """Chapter 4 and rsca_inputs ask for the same curve: the second call reads it back."""
    import helpers.rsca.pipeline as pipeline
    from helpers.apogee import chip_mask

    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path))
    ak = survey.allstar["AK_TARG"].to_numpy(dtype=float)
    rows = np.arange(len(ak))
    params = MaskParams(low_ak=np.quantile(ak, 0.5), high_ak=np.quantile(ak, 0.8), n_components=3)
    a = pipeline.ism_residual_curve(survey.spectra.flux, survey.spectra.error, ak, rows, params,
                                    chip_mask())

    def boom(*args, **kwargs):
        raise AssertionError("computed twice")

    monkeypatch.setattr(pipeline, "residual_curve", boom)
    b = pipeline.ism_residual_curve(survey.spectra.flux, survey.spectra.error, ak, rows, params,
                                    chip_mask())
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
    with pytest.raises(AssertionError, match="computed twice"):   # other rows: a new curve
        pipeline.ism_residual_curve(survey.spectra.flux, survey.spectra.error, ak, rows[::2],
                                    params, chip_mask())


def test_hidden_pixels_are_a_new_curve_and_none_keeps_the_old_key(survey, tmp_path, monkeypatch):
    """``hide`` changes the curve's memo key; ``hide=None`` reads the curve computed without it."""
    import helpers.rsca.pipeline as pipeline
    from helpers.apogee import chip_mask

    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path))
    ak = survey.allstar["AK_TARG"].to_numpy(dtype=float)
    rows = np.arange(len(ak))
    params = MaskParams(low_ak=np.quantile(ak, 0.5), high_ak=np.quantile(ak, 0.8), n_components=3)
    flux, error = survey.spectra.flux, survey.spectra.error
    plain = pipeline.ism_residual_curve(flux, error, ak, rows, params, chip_mask())
    hide = np.zeros(flux.shape[1], bool)
    hide[720:910] = True
    hidden = pipeline.ism_residual_curve(flux, error, ak, rows, params, chip_mask(), hide=hide)
    assert not np.allclose(plain[0], hidden[0], equal_nan=True)

    def boom(*args, **kwargs):
        raise AssertionError("computed twice")

    monkeypatch.setattr(pipeline, "residual_curve", boom)
    again = pipeline.ism_residual_curve(flux, error, ak, rows, params, chip_mask(), hide=None)
    np.testing.assert_array_equal(again[0], plain[0])
    np.testing.assert_array_equal(
        pipeline.ism_residual_curve(flux, error, ak, rows, params, chip_mask(), hide=hide)[0], hidden[0])
