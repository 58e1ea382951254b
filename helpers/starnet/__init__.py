"""StarNet: supervised 1D CNN encoders for APOGEE and NIRSpec spectra.

Book: {ref}`ch-starnet`

The API the StarNet and StarCLIP chapters use (each name's docstring says more):

* data: :func:`starnet_source` (the chapter's data parameters -> a source with both
  modalities and both label kinds), :func:`starnet_split` (the one star-level split,
  written once), :func:`starnet_data` (a modality's three split parts as contiguous
  memory maps, missing pixels filled and flagged);
* labels: :data:`LABEL_NAMES`, :data:`STARNET_ELEMENTS`, :class:`LabelScaler`;
* model: :class:`StarNet` (the essay's encoder plus a variance head), :func:`starnet_loss`,
  :func:`training_step` (one optimiser step);
* training: :class:`TrainConfig`, :func:`train_starnet` (cached runs), :func:`load_run`,
  :func:`pretrained_encoders` (both modalities at once, e.g. for StarCLIP);
* speed: :func:`bf16_instructions`, :func:`fast_allocation`, :func:`torch_threads`, :func:`training_step_seconds`
  (a step's time in each precision);
* inference: :func:`predict` (labels and calibrated sigmas), :func:`embed` (the 20
  outputs or the 128 hidden units);
* ensembles: :func:`train_ensemble` (M seeds of one recipe), :func:`predict_ensemble`
  (their mean and mixture uncertainty);
* evaluation: :func:`label_metrics`, :func:`calibration`, :func:`fit_ridge`,
  :data:`ESSAY_RMSE`.
"""

from .chapter import ChapterSetup, chapter_setup
from .data import (DEFAULT_MAX_ERROR, MODALITIES, ModalitySpectra, SpectraSet, StarnetSource,
                   observed_pixels, source_from_survey, starnet_data, starnet_source)
from .ensemble import StarNetEnsemble, predict_ensemble, train_ensemble
from .evaluate import (ESSAY_RMSE, RidgeBaseline, bootstrap_rmse, calibration, fit_ridge,
                       label_metrics, label_systematics, unit_rms_scale)
from .infer import Prediction, embed, predict
from .labels import (LABEL_KINDS, LABEL_NAMES, LABEL_UNITS, STARNET_ELEMENTS, LabelScaler,
                     aspcap_labels, label_display, true_labels)
from .model import (PRECISIONS, StarNet, pooled_length, reference_sequential, starnet_loss,
                    training_step)
from .speed import bf16_instructions, fast_allocation, torch_threads, training_step_seconds
from .split import (PARTS, SPLIT_RATIOS, SplitOverlapError, StarSplit, load_split, make_split,
                    split_path, starnet_split)
from .train import (ESSAY_CONFIG, MODEL_VERSION, StarNetRun, TrainConfig, centred_rms,
                    load_run, pixel_rms, pretrained_encoders, progress_enabled, train_epoch,
                    train_starnet)

__all__ = [
    "ChapterSetup", "chapter_setup",
    "DEFAULT_MAX_ERROR", "MODALITIES", "ModalitySpectra", "SpectraSet", "StarnetSource",
    "observed_pixels", "source_from_survey", "starnet_data", "starnet_source",
    "StarNetEnsemble", "predict_ensemble", "train_ensemble",
    "ESSAY_RMSE", "RidgeBaseline", "bootstrap_rmse", "calibration", "fit_ridge",
    "label_metrics", "label_systematics", "unit_rms_scale",
    "Prediction", "embed", "predict",
    "LABEL_KINDS", "LABEL_NAMES", "LABEL_UNITS", "STARNET_ELEMENTS", "LabelScaler",
    "aspcap_labels", "label_display", "true_labels",
    "PRECISIONS", "StarNet", "pooled_length", "reference_sequential",
    "PARTS", "SPLIT_RATIOS", "SplitOverlapError", "StarSplit", "load_split", "make_split",
    "split_path", "starnet_split",
    "ESSAY_CONFIG", "MODEL_VERSION", "StarNetRun", "TrainConfig", "centred_rms",
    "fast_allocation", "load_run", "pixel_rms",
    "pretrained_encoders",
    "progress_enabled", "starnet_loss", "torch_threads", "train_epoch", "train_starnet",
    "bf16_instructions", "training_step", "training_step_seconds",
]
