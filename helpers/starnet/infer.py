"""Batched inference with a trained StarNet: labels, calibrated uncertainties, embeddings.

Book: {ref}`sec-starnet-results`
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import SpectraSet
from .speed import fast_allocation
from .train import StarNetRun

__all__ = ["Prediction", "predict", "embed"]


@dataclass
class Prediction:
    """Labels predicted for n spectra, in physical units.

    Book: {ref}`sec-starnet-results`

    Attributes
    ----------
    mean : ndarray, shape (n, 20), float64
        Predicted labels (K, dex).
    sigma : ndarray, shape (n, 20), float64
        Calibrated 1-sigma uncertainties (variance head x the validation factor).
    sigma_raw : ndarray, shape (n, 20), float64
        The variance head's uncertainties before calibration.
    names : tuple of str
    """

    mean: np.ndarray
    sigma: np.ndarray
    sigma_raw: np.ndarray
    names: tuple


def _as_input(run: StarNetRun, data):
    if isinstance(data, SpectraSet):
        if data.modality != run.modality:
            raise ValueError(f"this StarNet was trained on {run.modality} spectra, got a "
                             f"{data.modality} data set")
        run.check_grid(data.n_pixels, data.wavelength)
        return data
    return run.prepare(data)


def _outputs(run: StarNetRun, data, batch_size: int, what: str) -> tuple:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x_all = _as_input(run, data)
    n = len(x_all)
    model = run.model.eval()
    outs = None
    with torch.inference_mode(), fast_allocation():
        for s in range(0, n, int(batch_size)):
            x = torch.from_numpy(np.array(x_all[s:s + batch_size], dtype=np.float32))
            if what == "labels":
                res = model.predict_with_logvar(x)
            elif what == "embedding":
                res = (model(x),)
            else:
                res = (model.hidden(x),)
            if outs is None:
                outs = [np.empty((n, r.shape[1]), np.float32) for r in res]
            for o, r in zip(outs, res):
                o[s:s + batch_size] = r.numpy()
    return tuple(outs)


def predict(run: StarNetRun, data, batch_size: int = 256) -> Prediction:
    """Labels and calibrated uncertainties for a data set or an array of spectra.

    Book: {ref}`sec-starnet-results`

    Parameters
    ----------
    run : StarNetRun
    data : SpectraSet or array_like, shape (n, n_pixels)
        A gathered data set of the run's modality, or raw spectra on the run's grid
        (missing pixels: NaN or 0, filled as in training).
    batch_size : int
        Spectra per forward pass (memory, not results, depends on it).

    Returns
    -------
    Prediction
    """
    mu, logvar = _outputs(run, data, batch_size, "labels")
    sig = np.exp(0.5 * logvar.astype(np.float64))
    return Prediction(mean=run.scaler.inverse(mu), sigma=run.scaler.inverse_sigma(sig) *
                      run.sigma_scale, sigma_raw=run.scaler.inverse_sigma(sig),
                      names=run.scaler.names)


def embed(run: StarNetRun, data, layer: str = "output", batch_size: int = 256) -> np.ndarray:
    """StarNet's representation of spectra, for StarCLIP and for nearest neighbours.

    Book: {ref}`sec-starnet-results`

    Parameters
    ----------
    run : StarNetRun
    data : SpectraSet or array_like, shape (n, n_pixels)
    layer : {'output', 'hidden'}
        The 20 standardised label outputs (the essay's embedding) or the 128 units.
    batch_size : int

    Returns
    -------
    ndarray, shape (n, 20) or (n, 128), float32
    """
    if layer not in ("output", "hidden"):
        raise ValueError(f"layer must be 'output' or 'hidden', got {layer!r}")
    return _outputs(run, data, batch_size, "embedding" if layer == "output" else "hidden")[0]
