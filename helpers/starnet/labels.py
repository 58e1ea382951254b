"""The twenty labels StarNet predicts, where they come from, and their standardisation.

Book: {ref}`sec-starnet-labels`

StarNet (Fabbro et al. 2018) and the StarCLIP essay predict 20 numbers per star: Teff,
logg and 18 abundances [X/H]. The essay does not name its 18 elements; this book takes
the 21 abundances of the RSCA chapters and leaves out three:

* ``CI`` and ``TiII``: second measurements (neutral carbon, ionised titanium) of elements
  already in the list (C from the molecular bands, Ti from neutral lines); and
* ``Cu``: a single window in ASPCAP DR17 (its two H-band lines are not identified in the
  Arcturus atlas), and with Na the worst precision floor of the survey's ASPCAP-like
  labels (0.10 dex); Na keeps two DR17 windows.

Labels come in two kinds: the synthetic survey's *true* labels (``kind='true'``) and the
ASPCAP-like labels of its allStar file (``kind='aspcap'``, the only kind real data have),
where missing abundances (-9999.99) become NaN and are left out of the loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["STARNET_ELEMENTS", "LABEL_NAMES", "LABEL_UNITS", "LABEL_KINDS", "label_display",
           "label_columns", "aspcap_labels", "true_labels", "LabelScaler"]

#: The 18 elements whose [X/H] StarNet predicts (Fe is [Fe/H]); see the module docstring.
STARNET_ELEMENTS = ("C", "N", "O", "Na", "Mg", "Al", "Si", "S", "K", "Ca", "Ti", "V", "Cr",
                    "Mn", "Fe", "Co", "Ni", "Ce")
#: The 20 label names, in output order: TEFF, LOGG, then ``<EL>_H`` (allStar spelling,
#: ``FE_H`` for iron).
LABEL_NAMES = ("TEFF", "LOGG") + tuple(f"{e.upper()}_H" for e in STARNET_ELEMENTS)
#: Unit of each label, for tables and axes.
LABEL_UNITS = {name: ("K" if name == "TEFF" else "dex") for name in LABEL_NAMES}
#: Where labels come from: the survey's ground truth, or the allStar (ASPCAP-like) file.
LABEL_KINDS = ("true", "aspcap")

_MISSING = -9999.99


def label_display(name: str) -> str:
    """A label's name for figures and tables: ``'Teff'``, ``'logg'``, ``'[Mg/H]'``.

    Book: {ref}`sec-starnet-labels`
    """
    if name == "TEFF":
        return "Teff"
    if name == "LOGG":
        return "logg"
    el = name[:-2]
    return f"[{el[0]}{el[1:].lower()}/H]"


def label_columns() -> dict:
    """allStar column of each label: ``TEFF``, ``LOGG``, ``FE_H``, else ``X_H_<El>``.

    Book: {ref}`sec-starnet-labels`
    """
    out = {"TEFF": "TEFF", "LOGG": "LOGG"}
    for el, name in zip(STARNET_ELEMENTS, LABEL_NAMES[2:]):
        out[name] = "FE_H" if el == "Fe" else f"X_H_{el}"
    return out


def _need_columns(table: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks the label column(s) {missing} that StarNet needs "
                         f"(labels {list(LABEL_NAMES)}); it has {len(table.columns)} columns "
                         f"such as {list(table.columns[:8])}")


def aspcap_labels(allstar: pd.DataFrame, rows=None) -> np.ndarray:
    """ASPCAP(-like) labels from an allStar table, NaN where missing.

    Book: {ref}`sec-starnet-labels`

    Parameters
    ----------
    allstar : pandas.DataFrame
        An allStar catalogue read by ``helpers.apogee.read_allstar`` (``X_H`` expanded into
        ``X_H_<El>`` columns), or a spectra cache's catalogue.
    rows : array_like of int, optional
        Rows to return (default all).

    Returns
    -------
    ndarray, shape (n, 20), float32
        Columns in :data:`LABEL_NAMES` order (K, dex); -9999.99 and non-finite values are NaN.

    Raises
    ------
    ValueError
        A label column is missing from the table (the message names it).
    """
    cols = label_columns()
    _need_columns(allstar, cols.values(), "the allStar table")
    idx = slice(None) if rows is None else np.asarray(rows)
    out = np.column_stack([np.asarray(allstar[c].to_numpy()[idx], dtype=np.float64)
                           for c in cols.values()])
    out[(out <= _MISSING + 1) | ~np.isfinite(out)] = np.nan
    return out.astype(np.float32)


def true_labels(truth: pd.DataFrame, rows=None) -> np.ndarray:
    """The synthetic survey's true labels: Teff, logg and [X/H] = [X/Fe] + [Fe/H].

    Book: {ref}`sec-starnet-labels`

    Parameters
    ----------
    truth : pandas.DataFrame
        ``Survey.truth`` (columns TEFF, LOGG, FE_H and ``X_FE_<El>``).
    rows : array_like of int, optional
        allStar rows to return (default all).

    Returns
    -------
    ndarray, shape (n, 20), float32
    """
    need = ["TEFF", "LOGG", "FE_H"] + [f"X_FE_{e}" for e in STARNET_ELEMENTS if e != "Fe"]
    _need_columns(truth, need, "the survey's truth table")
    idx = slice(None) if rows is None else np.asarray(rows)
    feh = truth["FE_H"].to_numpy(np.float64)[idx]
    cols = [truth["TEFF"].to_numpy(np.float64)[idx], truth["LOGG"].to_numpy(np.float64)[idx]]
    for el in STARNET_ELEMENTS:
        cols.append(feh if el == "Fe" else truth[f"X_FE_{el}"].to_numpy(np.float64)[idx] + feh)
    return np.column_stack(cols).astype(np.float32)


@dataclass(frozen=True)
class LabelScaler:
    """Per-label standardisation with the training split's statistics.

    Book: {ref}`sec-starnet-training`

    The network sees ``(y - mean) / scale``; the statistics are computed once, on the
    training split only (missing labels ignored), and stored beside the weights.

    Attributes
    ----------
    names : tuple of str
    mean, scale : ndarray, shape (n_labels,), float64
    """

    names: tuple
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, y: np.ndarray, names=LABEL_NAMES) -> "LabelScaler":
        """Mean and standard deviation of each column of ``y`` (n, n_labels), NaN ignored."""
        y = np.asarray(y, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != len(names):
            raise ValueError(f"labels must have shape (n, {len(names)}), got {y.shape}")
        n_ok = np.sum(np.isfinite(y), axis=0)
        if np.any(n_ok < 2):
            bad = [names[i] for i in np.flatnonzero(n_ok < 2)]
            raise ValueError(f"label(s) {bad} have fewer than 2 measured values in the "
                             "training split")
        mean = np.nanmean(y, axis=0)
        scale = np.nanstd(y, axis=0)
        if np.any(scale <= 0):
            bad = [names[i] for i in np.flatnonzero(scale <= 0)]
            raise ValueError(f"label(s) {bad} are constant in the training split")
        return cls(tuple(names), mean, scale)

    def transform(self, y: np.ndarray) -> np.ndarray:
        """Physical units -> standardised (float32; NaN stays NaN)."""
        return ((np.asarray(y, np.float64) - self.mean) / self.scale).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Standardised -> physical units (float64)."""
        return np.asarray(z, np.float64) * self.scale + self.mean

    def inverse_sigma(self, s: np.ndarray) -> np.ndarray:
        """A standardised uncertainty -> physical units (float64)."""
        return np.asarray(s, np.float64) * self.scale

    def to_json(self) -> str:
        """JSON text (stored beside the weights)."""
        return json.dumps({"names": list(self.names), "mean": self.mean.tolist(),
                           "scale": self.scale.tolist()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "LabelScaler":
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(tuple(d["names"]), np.asarray(d["mean"], float), np.asarray(d["scale"], float))
