"""Abundances as a representation of stars: measured ``[X/H]`` and, for the synthetic survey,
the true ones.

Book: {ref}`sec-rsca-rates`
"""
from __future__ import annotations

import numpy as np

from helpers.apogee.grid import MISSING

__all__ = ["RSCA_SUBSET", "abundance_matrix", "true_abundance_matrix"]


#: The paper's best abundance subset (de Mijolla & Ness 2022, section 5).
RSCA_SUBSET = ("Fe", "Mg", "Ni", "Si", "Al", "C", "N")




def abundance_matrix(table, elements, rows=None, prefix="X_H_"):
    """Measured abundances ``[X/H]`` of some stars as a float64 matrix.

    Book: {ref}`sec-rsca-rates`

    Parameters
    ----------
    table : pandas.DataFrame
        An allStar-like catalogue with columns ``<prefix><element>``.
    elements : sequence of str
        Element symbols, e.g. ``helpers.apogee.RSCA_ELEMENTS``.
    rows : array_like of int, optional
        Rows of ``table`` (default all).
    prefix : str, default "X_H_"
        Column prefix.

    Returns
    -------
    X : ndarray, shape (n_rows, n_elements)
        Abundances in dex.
    """
    missing = [f"{prefix}{e}" for e in elements if f"{prefix}{e}" not in table.columns]
    if missing:
        raise KeyError(f"abundance columns {missing} are not in the catalogue")
    X = np.column_stack([table[f"{prefix}{e}"].to_numpy(dtype=np.float64) for e in elements])
    if rows is not None:
        X = X[np.asarray(rows)]
    bad = ~np.isfinite(X) | np.isclose(X, MISSING)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{int(bad.sum())} missing abundances (-9999.99 or NaN), first at row {i}, "
                         f"element {elements[j]}; the RSCA selection should have removed them")
    return X


def true_abundance_matrix(truth, elements, rows=None):
    """True ``[X/H] = [Fe/H] + [X/Fe]`` of a synthetic survey's stars.

    Book: {ref}`sec-rsca-floor`

    Parameters
    ----------
    truth : pandas.DataFrame
        :attr:`helpers.survey.Survey.truth` (columns ``FE_H`` and ``X_FE_<element>``).
    elements : sequence of str
    rows : array_like of int, optional

    Returns
    -------
    X : ndarray, shape (n_rows, n_elements)
        True abundances (dex).
    """
    feh = truth["FE_H"].to_numpy(dtype=np.float64)
    cols = [feh if e == "Fe" else feh + truth[f"X_FE_{e}"].to_numpy(dtype=np.float64)
            for e in elements]
    X = np.column_stack(cols)
    return X if rows is None else X[np.asarray(rows)]
