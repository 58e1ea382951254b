"""Numbers as a chapter's prose quotes them (glued with myst_nb).

Book: {ref}`sec-rsca-spread`

Every number in a chapter's text is computed by the chapter and glued; these helpers give
the same number the same form everywhere: a doppelganger rate with three decimals (two
significant figures below 0.01), a fraction as a percentage, a ratio with one decimal.
"""
from __future__ import annotations

import numpy as np

__all__ = ["rate_text", "percent_text", "ratio_text", "signed_text"]


def rate_text(x) -> str:
    """A doppelganger rate: ``0.023``, or two significant figures below 0.01 (``0.0087``).

    Book: {ref}`sec-rsca-spread`
    """
    x = float(x)
    if not np.isfinite(x):
        return "n/a"
    return f"{x:.3f}" if abs(x) >= 0.01 else f"{x:#.2g}"


def signed_text(x, digits: int = 4) -> str:
    """A difference with its sign: ``+0.0012``.

    Book: {ref}`sec-rsca-spread`
    """
    x = float(x)
    return "n/a" if not np.isfinite(x) else f"{x:+.{digits}f}"


def percent_text(x, digits: int = 0) -> str:
    """A fraction as a percentage: ``0.42`` -> ``42%``.

    Book: {ref}`sec-rsca-spread`
    """
    x = float(x)
    return "n/a" if not np.isfinite(x) else f"{x:.{digits}%}"


def ratio_text(x) -> str:
    """A ratio: one decimal below 10, none above (``2.4``, ``17``).

    Book: {ref}`sec-rsca-spread`
    """
    x = float(x)
    if not np.isfinite(x):
        return "n/a"
    return f"{x:.1f}" if abs(x) < 10 else f"{x:.0f}"
