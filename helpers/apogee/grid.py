"""The APOGEE pixel grid: 8,575 log-uniform wavelengths on three detector chips.

Book: {ref}`sec-survey-files`
"""
from __future__ import annotations

import numpy as np

__all__ = ["N_PIXELS", "CRVAL1", "CDELT1", "CRPIX1", "CTYPE1", "CHIPS", "MISSING",
           "BAD_PIXEL_FLUX", "BAD_PIXEL_ERROR", "wavelength_grid", "chip_mask"]


#: Number of pixels of an APOGEE combined (apStar/aspcapStar) spectrum.
N_PIXELS = 8575


#: log10 of the wavelength (Angstrom) of pixel 0.
CRVAL1 = 4.179


#: Step in log10(wavelength / Angstrom) per pixel.
CDELT1 = 6e-6


#: FITS reference pixel (1-based) of CRVAL1.
CRPIX1 = 1


#: FITS axis type of the grid.
CTYPE1 = "LOG-LINEAR"


#: The three detector chips as 0-based python slices into the 8,575-pixel grid
#: (7,514 pixels in all).  aspcapStar flux is zero outside them.
CHIPS = {
    "blue": slice(246, 3274),
    "green": slice(3585, 6080),
    "red": slice(6344, 8335),
}


#: Sentinel of a missing abundance or probability in allStar and OCCAM files.
MISSING = -9999.99


#: Flux written for a bad pixel in an aspcapStar file.
BAD_PIXEL_FLUX = 1e-4


#: Error written for a bad pixel in an aspcapStar file.
BAD_PIXEL_ERROR = 1e10


def wavelength_grid() -> np.ndarray:
    """Vacuum wavelengths of the APOGEE pixel grid.

    Returns
    -------
    numpy.ndarray, shape (8575,), float64
        ``10**(CRVAL1 + CDELT1 * i)`` for ``i = 0..8574``, vacuum Angstrom
        (15100.80 to 16999.81 A).

    Book: {ref}`sec-survey-files`
    """
    return 10.0 ** (CRVAL1 + CDELT1 * np.arange(N_PIXELS, dtype=np.float64))


def chip_mask() -> np.ndarray:
    """Which pixels of the grid fall on one of the three detector chips.

    Returns
    -------
    numpy.ndarray, shape (8575,), bool
        True for the 7,514 pixels inside :data:`CHIPS`.

    Book: {ref}`sec-survey-files`
    """
    mask = np.zeros(N_PIXELS, dtype=bool)
    for sl in CHIPS.values():
        mask[sl] = True
    return mask
