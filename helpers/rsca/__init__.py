"""Relevant Scaled Component Analysis (de Mijolla & Ness 2022): the RSCA chapters' code.

Book: {ref}`ch-rsca`

The data (chapters 3-4), the metric (chapter 5) and ONE evaluation layer that every rate of
the book goes through (chapters 5-6):

===================================  =====================================================
:mod:`helpers.rsca.selection`        the field cuts and open-cluster members (chapter 3)
:mod:`helpers.rsca.masking`          censoring and interstellar-band windows (chapter 4)
:mod:`helpers.rsca.pipeline`         one cached call from a survey to RSCA-ready inputs
:mod:`helpers.rsca.metric`           steps 2-4 (:class:`RelevantScaling`) and PPCA + metric
                                     (:class:`RSCA`)
:mod:`helpers.rsca.checks`           input checks with errors naming the input
:mod:`helpers.rsca.representation`   step 1 on the inputs: PPCA coordinates and runs
                                     (start seeds), every field star by default, cached
:mod:`helpers.rsca.abundances`       abundances as a representation (measured and true)
:mod:`helpers.rsca.pairs`            the member-field pair filter
:mod:`helpers.rsca.doppelganger`     doppelganger rates, leave-one-cluster-out, bootstrap
:mod:`helpers.rsca.runs`             THE evaluation: rates over PPCA runs and clusters,
                                     with both spreads (:class:`RateEvaluator`,
                                     :class:`RateSpread`)
:mod:`helpers.rsca.dimensionality`   rates against K, top-N dimensions and clusters
:mod:`helpers.rsca.knee`             the knee of Table 1, by a paired bootstrap
:mod:`helpers.rsca.truth`            the survey's truth: roles of RSCA dimensions, the
                                     knee against the true number of dimensions
:mod:`helpers.rsca.errors`           error-aware PPCA on subsamples
:mod:`helpers.rsca.plates`           the same-plate check
:mod:`helpers.rsca.scratch`          scratch surveys and cached results
:mod:`helpers.rsca.ablation`         the imprint table (each imprint switched off)
:mod:`helpers.rsca.paper`            the paper's numbers, from one cited table
===================================  =====================================================
"""
from helpers.rsca.abundances import RSCA_SUBSET, abundance_matrix, true_abundance_matrix
from helpers.rsca.doppelganger import (DoppelgangerResult, LocoFit, doppelganger_rate,
                                       leave_one_cluster_out_splits, loco_doppelganger_rates,
                                       loco_pair_distances, weighted_bootstrap)
from helpers.rsca.metric import (MAD_TO_SIGMA, RSCA, RelevantScaling, pooled_mad_scatter,
                                 relative_weights)
from helpers.rsca.pairs import PairFilter, pair_candidates
from helpers.rsca.pipeline import (PAPER_N_FIELD, SMOKE_N_FIELD, MaskParams, RscaInputs,
                                   chapter_source, open_source, rsca_inputs)
from helpers.rsca.plates import parse_visits, shared_visits
from helpers.rsca.knee import Knee, find_knee
from helpers.rsca.paper import paper_rate, paper_values
from helpers.rsca.representation import (PPCA_TOL, Representation, inverse_variance,
                                         ppca_coordinates, ppca_representation, ppca_runs,
                                         read_rows)
from helpers.rsca.runs import RateEvaluator, RateSpread
from helpers.rsca.selection import Selection, SelectionParams, select_rsca_sample

__all__ = ["RSCA_SUBSET", "abundance_matrix", "true_abundance_matrix", "DoppelgangerResult",
           "LocoFit", "doppelganger_rate", "leave_one_cluster_out_splits",
           "loco_doppelganger_rates", "loco_pair_distances", "weighted_bootstrap", "MAD_TO_SIGMA",
           "RSCA", "RelevantScaling", "pooled_mad_scatter", "relative_weights", "PairFilter",
           "pair_candidates", "PAPER_N_FIELD", "SMOKE_N_FIELD", "MaskParams", "RscaInputs",
           "chapter_source", "open_source", "rsca_inputs", "parse_visits", "shared_visits",
           "PPCA_TOL", "Representation", "inverse_variance", "ppca_coordinates",
           "ppca_representation", "ppca_runs", "read_rows", "Selection", "SelectionParams",
           "select_rsca_sample", "Knee", "find_knee", "paper_rate", "paper_values",
           "RateEvaluator", "RateSpread"]
