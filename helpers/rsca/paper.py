"""The RSCA paper's own numbers, from one cited table (``data/rsca_paper_values.csv``).

Book: {ref}`sec-rsca-rates`

Every chapter that compares with de Mijolla & Ness (2022) reads their values here, so each
number of the paper is typed once, with its source.
"""
from __future__ import annotations

import functools

import pandas as pd

from helpers.paths import data_dir

__all__ = ["paper_values", "paper_rate"]

_FIGURES = ("fig2", "fig4", "fig5", "table1")


@functools.lru_cache(maxsize=1)
def _table() -> pd.DataFrame:
    return pd.read_csv(data_dir() / "rsca_paper_values.csv", comment="#")


def paper_values(figure: str) -> pd.DataFrame:
    """The paper's rates of one figure or table.

    Book: {ref}`sec-rsca-rates`

    Parameters
    ----------
    figure : {"fig2", "fig4", "fig5", "table1"}
        Fig. 2 (rate against K), Fig. 4 (representations and modes at K = 30), Fig. 5 (rate
        against training clusters, K = 30), Table 1 (top-N dimensions; ``x`` = 30 is "all").

    Returns
    -------
    pandas.DataFrame
        Columns ``representation, mode, x, rate`` (``x``: K, N, clusters or dimensions).
    """
    if figure not in _FIGURES:
        raise ValueError(f"figure must be one of {_FIGURES}, got {figure!r}")
    t = _table()
    return t[t.figure == figure].drop(columns="figure").reset_index(drop=True)


def paper_rate(figure: str, representation: str = "spectra", mode: str = "transformed",
               x: int | None = None) -> float:
    """One of the paper's rates, e.g. ``paper_rate("fig4", "7-element subset")``.

    Book: {ref}`sec-rsca-rates`
    """
    t = paper_values(figure)
    t = t[(t.representation == representation) & (t["mode"] == mode)]
    if x is not None:
        t = t[t.x == x]
    if len(t) != 1:
        raise KeyError(f"the paper gives no single {figure} rate for {representation}, {mode}, x={x}")
    return float(t.rate.iloc[0])
