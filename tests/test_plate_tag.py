"""A plate pattern must never tag a cluster (issue 14, item 5).

Members of one open cluster are observed together, on a few plates; a plate pattern strong
enough to become one of the RSCA metric's top dimensions makes them look alike for reasons
that are not chemistry (issue 13 found exactly that: the 2nd and 3rd RSCA dimensions were
plate patterns and the best rate was 7 times too low).  These tests generate small surveys and
measure, with the survey's truth, how much of each top RSCA dimension plate membership
explains (:func:`helpers.rsca.truth.plate_share`).  The default survey must stay far from it;
the positive control (a plate pattern ten times stronger) shows that the check can fail.
"""
import os

import pytest

from helpers.rsca.representation import ppca_runs
from helpers.rsca.scratch import scratch_inputs
from helpers.rsca.truth import dimension_roles
from helpers.survey import SurveyParams

N_FIELD = 4000   # ~2,500 selected giants on ~17 field plates, the 22 clusters in full


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    old = os.environ.get("STARS_BOOK_CACHE")
    os.environ["STARS_BOOK_CACHE"] = str(tmp_path_factory.mktemp("plate_tag_cache"))
    yield
    if old is None:
        os.environ.pop("STARS_BOOK_CACHE")
    else:
        os.environ["STARS_BOOK_CACHE"] = old


def top_plate_share(params, K=10, top=5):
    """Largest plate share among the top RSCA dimensions (PPCA on every field star)."""
    with scratch_inputs(params) as (inputs, survey):
        run = ppca_runs(inputs, K, 1, cache=False, progress=False)[0]
        roles = dimension_roles(run, inputs.cluster_labels, survey.truth_arrays, inputs.field_rows,
                                max_rank=top)
    return float(roles.r2_plate.max())


def test_default_plates_tag_no_cluster(cache):
    share = top_plate_share(SurveyParams(n_field=N_FIELD, seed=3))
    assert share < 0.2, (f"a top RSCA dimension of the default survey follows the plates "
                         f"(plate share {share:.2f}): plate patterns tag clusters")


def test_the_check_sees_a_plate_tag(cache):
    share = top_plate_share(SurveyParams(n_field=N_FIELD, seed=3, plate_systematic=0.03))
    assert share > 0.5, f"a plate pattern ten times the default should dominate a top dimension ({share:.2f})"
