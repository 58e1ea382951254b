"""The NIRSpec detector-gap table (data/nirspec_detector_gap.csv) is usable as documented."""

import numpy as np
import pandas as pd

from helpers.paths import data_dir


def test_gap_table_cites_its_source_and_is_consistent():
    path = data_dir() / "nirspec_detector_gap.csv"
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and "msaexp" in first
    gap = pd.read_csv(path, comment="#")
    assert set(gap.grating) == {"G140H"} and set(gap["filter"]) == {"F100LP"}
    assert set(gap.quadrants) == {"Q3,Q4", "Q1,Q2"}
    width = gap.nrs2_wave_min_um - gap.nrs1_wave_max_um
    assert (width > 0).all() and (width < 0.06).all(), "a gap is a few hundredths of a micron"
    # inside the grating's range (0.97-1.89 um), and it moves with the shutter column:
    # further along the dispersion direction, shorter wavelengths fall into the gap
    assert gap.nrs1_wave_max_um.between(0.97, 1.89).all()
    q34 = gap[gap.quadrants == "Q3,Q4"].sort_values("shutter_column")
    r = np.corrcoef(q34.shutter_column, q34.nrs1_wave_max_um)[0, 1]
    assert r > 0.9, f"gap position should follow the shutter column (r = {r:.2f})"
    assert gap[gap.quadrants == "Q1,Q2"].nrs1_wave_max_um.max() < q34.nrs1_wave_max_um.min()
