"""Calibration on Arcturus (helpers.arcturus): recomputed from ../shared/facts/arcturus."""

import numpy as np
import pandas as pd
import pytest

from helpers.survey import arcturus as A
from helpers.paths import data_dir

needs_atlas = pytest.mark.skipif(not (A.default_atlas_dir() / "arct.20190830.txt").is_file(),
                                 reason="the Arcturus atlas (../shared/facts/arcturus) is absent")


def test_missing_atlas_says_where_it_should_be(tmp_path):
    with pytest.raises(FileNotFoundError, match="arcturus_dir"):
        A.load_atlas(tmp_path)


@needs_atlas
def test_reference_table_is_what_the_helper_computes():
    committed = pd.read_csv(data_dir() / "cannon_reference_pattern.csv", comment="#")
    fresh = A.calibrate_reference_pattern()
    np.testing.assert_allclose(fresh.x_fe.to_numpy(), committed.x_fe.to_numpy(), atol=2e-3)


@needs_atlas
def test_issue_goals_on_arcturus():
    """Noiseless model within 1.8 % pixel RMS of the atlas on every chip, strong-line depth
    ratios within 0.85-1.15, and on held-out lines mostly so."""
    c = A.compare_with_atlas()
    assert (c["rms"]["survey v5"] < 0.018).all()
    many = c["ratios"][c["ratios"].n_lines >= 2]
    assert many["survey v5"].between(0.85, 1.15).all()
    held = A.holdout_check().stack()
    assert held.between(0.8, 1.25).mean() > 0.85


def test_solar_anchor():
    """At solar labels the Cannon (the reference, solar pattern) reproduces the Sun's line
    depths of the main species to 25 %."""
    s = A.solar_check()
    main = s[s.n_lines >= 3]
    assert len(main) >= 6 and main.median_ratio.between(0.75, 1.25).all()
