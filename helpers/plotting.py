"""The book's figure style and small plotting helpers.

Book: {ref}`sec-figures`
"""

from __future__ import annotations

from pathlib import Path

from helpers.apogee.grid import CHIPS, wavelength_grid

__all__ = ["STYLE_FILE", "OKABE_ITO", "use_book_style", "shade_chip_gaps"]

#: The single matplotlib style file every figure of the book uses.
STYLE_FILE = Path(__file__).with_name("book.mplstyle")

#: Okabe & Ito (2008) colour-blind-safe palette, in the order of the style's colour cycle.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def use_book_style() -> None:
    """Apply the book's matplotlib style (``helpers/book.mplstyle``) globally.

    Book: {ref}`sec-figures`
    """
    import matplotlib.pyplot as plt  # imported when a figure is drawn: keeps `import helpers` light

    plt.style.use(str(STYLE_FILE))


def shade_chip_gaps(ax, color: str = "0.9") -> None:
    """Grey out the wavelength ranges between APOGEE's three detectors on ``ax``.

    Book: {ref}`sec-apogee-grid`

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes whose x axis is vacuum wavelength in Angstrom.
    """
    wave = wavelength_grid()
    edges = sorted((s.start, s.stop) for s in CHIPS.values())
    gaps = [(0, edges[0][0])] + [(a[1], b[0]) for a, b in zip(edges, edges[1:])]
    gaps.append((edges[-1][1], wave.size))
    for start, stop in gaps:
        if stop > start:
            ax.axvspan(wave[start], wave[stop - 1], color=color, lw=0, zorder=0)
