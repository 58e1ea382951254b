"""StarCLIP: contrastive alignment of APOGEE and NIRSpec spectra, retrieval and labels.

Book: {ref}`ch-starclip`

===================================  =====================================================
:mod:`helpers.starclip.transforms`   the mock-JWST transforms (i)-(v) and the detector-gap
                                     density estimate
:mod:`helpers.starclip.retrieval`    ranks, R@k, median rank, MRR, chance, the information
                                     limit, top-1 neighbours' labels
:mod:`helpers.starclip.estimate`     zero-shot kNN and few-shot ridge / XGBoost labels
:mod:`helpers.starclip.model`        the towers (StarNet encoder + embedding), InfoNCE
:mod:`helpers.starclip.train`        the training loop and cached runs
:mod:`helpers.starclip.pairs`        StarCLIP on the StarNet split
:mod:`helpers.starclip.mock`         MockStarCLIP
:mod:`helpers.starclip.clusters`     APOGEE spectra of catalogue rows embedded (clusters)
===================================  =====================================================
"""
from helpers.starclip.clusters import embed_catalogue_rows, training_star_rows
from helpers.starclip.estimate import FEW_SHOT_METHODS, few_shot, fit_regressor, knn_labels, r2_per_label
from helpers.starclip.mock import MOCK_TOWERS, mock_towers, train_mock_starclip, uniform_feh_sample
from helpers.starclip.model import (EMBEDDINGS, ESSAY_LOGIT_SCALE, STAGES, ClipTower, LogitScale,
                                    clip_loss)
from helpers.starclip.pairs import (TEMPLATE_LABELS, MockSettings, PairParts, describe_inputs,
                                    embed_parts, make_towers, mock_chain, pretrained_towers,
                                    starclip_pairs, template_star, train_starclip)
from helpers.starclip.retrieval import (RetrievalResult, chance_level, information_limit,
                                        match_ranks, normalise, retrieval, similarity,
                                        top1_label_differences)
from helpers.starclip.train import (CLIP_VERSION, ClipConfig, ClipRun, ModalityBatches, fit_clip,
                                    load_clip_run, progress_enabled, retrieval_validator,
                                    train_clip)
from helpers.starclip.transforms import (PASCHEN_LINES, Denormalise, GapDistribution, GapMask,
                                         MockJWST, NoiseToSNR, PaschenImputation, StuckPixels,
                                         Transform, View, check_gap_table)

__all__ = [
    "embed_catalogue_rows", "training_star_rows",
    "FEW_SHOT_METHODS", "few_shot", "fit_regressor", "knn_labels", "r2_per_label",
    "MOCK_TOWERS", "mock_towers", "train_mock_starclip", "uniform_feh_sample",
    "EMBEDDINGS", "ESSAY_LOGIT_SCALE", "STAGES", "ClipTower", "LogitScale", "clip_loss",
    "TEMPLATE_LABELS", "MockSettings", "PairParts", "describe_inputs", "embed_parts",
    "make_towers", "mock_chain", "pretrained_towers", "starclip_pairs", "template_star",
    "train_starclip",
    "RetrievalResult", "chance_level", "information_limit", "match_ranks", "normalise",
    "retrieval", "similarity", "top1_label_differences",
    "CLIP_VERSION", "ClipConfig", "ClipRun", "ModalityBatches", "fit_clip", "load_clip_run",
    "progress_enabled", "retrieval_validator", "train_clip",
    "PASCHEN_LINES", "Denormalise", "GapDistribution", "GapMask", "MockJWST", "NoiseToSNR",
    "PaschenImputation", "StuckPixels", "Transform", "View", "check_gap_table",
]
