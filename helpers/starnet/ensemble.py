"""A deep ensemble of StarNet runs: the mean of M networks, and an uncertainty from all of them.

Book: {ref}`sec-starnet-ensemble`

:func:`train_ensemble` trains (or loads from the cache) M runs of one recipe that differ only
in their seed (``config.seed``, ``config.seed + 1``, ...): each is an ordinary cached
:func:`helpers.starnet.train_starnet` run, so member 0 is the single network of the same
recipe. :func:`predict_ensemble` averages the members' predictions, and gives each label the
variance of the mixture of the members' Gaussians (Lakshminarayanan et al. 2017),

    sigma^2 = mean_m sigma_m^2 + var_m mu_m,

rescaled by one factor per label so that (y - mu) / sigma has unit RMS on the validation
stars, as a single run's variance head is (:attr:`StarNetEnsemble.sigma_scale`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .data import StarnetSource, starnet_data
from .evaluate import unit_rms_scale
from .infer import Prediction, predict
from .split import StarSplit
from .train import StarNetRun, TrainConfig, train_starnet

__all__ = ["StarNetEnsemble", "train_ensemble", "predict_ensemble"]


@dataclass
class StarNetEnsemble:
    """M trained StarNet runs of one recipe and seeds ``seed, seed + 1, ...``.

    Book: {ref}`sec-starnet-ensemble`

    Attributes
    ----------
    runs : list of StarNetRun
        The members, member 0 first (seed ``config.seed``).
    sigma_scale : ndarray, shape (n_labels,)
        Per-label factor that makes the ensemble's normalised validation errors have unit RMS.
    """

    runs: list
    sigma_scale: np.ndarray

    @property
    def members(self) -> int:
        """Number of networks M."""
        return len(self.runs)

    @property
    def train_seconds(self) -> float:
        """Training time of all members, when they were trained (s)."""
        return float(sum(r.meta["train_seconds"] for r in self.runs))


def _mixture(preds: list) -> tuple:
    """Mean, and mixture standard deviation, of members' predictions (physical units)."""
    means = np.stack([p.mean for p in preds])
    var = np.mean(np.stack([p.sigma for p in preds]) ** 2, axis=0) + means.var(axis=0)
    return means.mean(axis=0), np.sqrt(var)


def train_ensemble(source: StarnetSource, split: StarSplit, modality: str = "apogee",
                   labels: str = "true", config: TrainConfig | None = None, members: int = 3,
                   max_error="default", progress: bool = True) -> StarNetEnsemble:
    """Train (or load) ``members`` runs of one recipe with consecutive seeds, and calibrate them.

    Book: {ref}`sec-starnet-ensemble`

    Parameters
    ----------
    source, split, modality, labels, config, max_error, progress
        As for :func:`helpers.starnet.train_starnet`; member m uses
        ``dataclasses.replace(config, seed=config.seed + m)``.
    members : int
        M >= 1 (M = 1 is the single network, with the mixture variance equal to its own).

    Returns
    -------
    StarNetEnsemble
    """
    if isinstance(members, bool) or int(members) != members or members < 1:
        raise ValueError(f"members must be an integer >= 1, got {members!r}")
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    runs = [train_starnet(source, split, modality, labels,
                          dataclasses.replace(config, seed=config.seed + m), max_error, progress)
            for m in range(int(members))]
    val = starnet_data(source, split, modality, max_error)["val"]
    mu, sig = _mixture([predict(r, val) for r in runs])
    scale = unit_rms_scale((source.labels(val.ids, labels) - mu) / sig)
    return StarNetEnsemble(runs=runs, sigma_scale=scale)


def predict_ensemble(ensemble: StarNetEnsemble, data, batch_size: int = 256) -> Prediction:
    """The ensemble's labels and calibrated uncertainties for a data set or array of spectra.

    Book: {ref}`sec-starnet-ensemble`

    Returns
    -------
    Prediction
        ``mean``: the members' mean; ``sigma``: the mixture standard deviation times
        :attr:`StarNetEnsemble.sigma_scale`; ``sigma_raw``: the mixture standard deviation
        (of the members' calibrated sigmas and their spread).
    """
    preds = [predict(r, data, batch_size) for r in ensemble.runs]
    mu, sig = _mixture(preds)
    return Prediction(mean=mu, sigma=sig * ensemble.sigma_scale, sigma_raw=sig,
                      names=preds[0].names)
