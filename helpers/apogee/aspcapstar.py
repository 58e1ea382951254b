"""aspcapStar files: one star's flux, error and best-fit model on the APOGEE grid.

Book: {ref}`sec-survey-files`
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from helpers.apogee.fits_io import (ApogeeFormatError, astropy_fits, atomic_writeto, fits_column,
                                    native_column, open_fits)
from helpers.apogee.grid import (BAD_PIXEL_ERROR, BAD_PIXEL_FLUX, CDELT1, CRPIX1, CRVAL1, CTYPE1,
                                 N_PIXELS, chip_mask, wavelength_grid)

__all__ = ["AspcapStar", "read_aspcapstar", "write_aspcapstar"]


@dataclass
class AspcapStar:
    """One aspcapStar spectrum.

    Attributes
    ----------
    flux : numpy.ndarray, shape (8575,), float32
        Pseudo-continuum-normalised flux (dimensionless); 0 outside the chips, 1e-4 at bad
        pixels.
    error : numpy.ndarray, shape (8575,), float32
        1-sigma error of ``flux``; 1e10 at bad pixels.
    model : numpy.ndarray, shape (8575,), float32
        ASPCAP best-fit model spectrum (normalised).
    header : astropy.io.fits.Header
        Header of HDU1 (the flux).
    path : pathlib.Path
        The file read.
    apogee_id : str or None
        ``APOGEE_ID`` from the HDU4 table, when present.

    Book: {ref}`sec-survey-files`
    """

    flux: np.ndarray
    error: np.ndarray
    model: np.ndarray
    header: object
    path: Path
    apogee_id: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def wavelength(self) -> np.ndarray:
        """Vacuum wavelengths in Angstrom, shape (8575,), float64."""
        return wavelength_grid()

    def bad_pixels(self) -> np.ndarray:
        """Pixels written as bad (error >= 1e10), bool shape (8575,)."""
        return self.error >= np.float32(BAD_PIXEL_ERROR) * np.float32(0.999)


def _check_grid_header(hdr, path, hdu_index: int) -> None:
    what = f"aspcapStar file {path}: HDU{hdu_index}"
    if hdr.get("NAXIS") != 1:
        raise ApogeeFormatError(f"{what} has NAXIS={hdr.get('NAXIS')}, expected a 1-D "
                                f"spectrum of {N_PIXELS} pixels")
    if hdr.get("NAXIS1") != N_PIXELS:
        raise ApogeeFormatError(f"{what} has NAXIS1={hdr.get('NAXIS1')} pixels, expected "
                                f"{N_PIXELS}")
    for key, want, tol in (("CRVAL1", CRVAL1, 1e-9), ("CDELT1", CDELT1, 1e-12)):
        if key not in hdr:
            raise ApogeeFormatError(f"{what} lacks the {key} keyword (expected {want})")
        try:
            got = float(hdr[key])
        except (TypeError, ValueError):
            raise ApogeeFormatError(f"{what} has non-numeric {key}={hdr[key]!r}, "
                                    f"expected {want}") from None
        if abs(got - want) > tol:
            raise ApogeeFormatError(f"{what} has {key}={got!r}, expected {want} (the "
                                    f"APOGEE log-linear grid)")
    crpix = hdr.get("CRPIX1", 1)
    if crpix != CRPIX1:
        raise ApogeeFormatError(f"{what} has CRPIX1={crpix!r}, expected {CRPIX1}")


def read_aspcapstar(path, check_finite: bool = True, read_table: bool = True) -> AspcapStar:
    """Read one aspcapStar file and check its layout.

    Parameters
    ----------
    path : str or path-like
        aspcapStar FITS file: HDU1 flux, HDU2 error, HDU3 best-fit model, HDU4 one-row
        table.
    check_finite : bool
        Raise if flux, error or model contain NaN or inf (default True).
    read_table : bool
        Read ``APOGEE_ID`` from the HDU4 table (default True; the cache builder skips it
        for speed).

    Returns
    -------
    AspcapStar
        ``flux``, ``error``, ``model`` as float32 arrays of shape (8575,).

    Raises
    ------
    FileNotFoundError, PermissionError
        Missing or unreadable file (message names it).
    ApogeeFormatError
        Corrupt FITS, missing HDU, wrong NAXIS1 / CRVAL1 / CDELT1 / CRPIX1, or non-finite
        values; the message names the file and the problem.

    Book: {ref}`sec-survey-files`
    """
    p = Path(path)
    with open_fits(p, "aspcapStar", memmap=False, lazy_load_hdus=True) as hdul:
        if len(hdul) < 4:
            raise ApogeeFormatError(f"aspcapStar file {p}: has {len(hdul)} HDUs, expected "
                                    f"at least 4 (primary, flux, error, model)")
        arrays = []
        for i, name in ((1, "flux"), (2, "error"), (3, "model")):
            hdu = hdul[i]
            _check_grid_header(hdu.header, p, i)
            try:
                data = hdu.data
            except Exception as exc:
                raise ApogeeFormatError(f"aspcapStar file {p}: cannot read {name} data in "
                                        f"HDU{i} ({type(exc).__name__}: {exc})") from exc
            if data is None or data.shape != (N_PIXELS,):
                shape = None if data is None else data.shape
                raise ApogeeFormatError(f"aspcapStar file {p}: {name} in HDU{i} has shape "
                                        f"{shape}, expected ({N_PIXELS},)")
            arr = np.asarray(data, dtype=np.float32)
            if check_finite and not np.all(np.isfinite(arr)):
                nbad = int(np.count_nonzero(~np.isfinite(arr)))
                first = int(np.flatnonzero(~np.isfinite(arr))[0])
                raise ApogeeFormatError(f"aspcapStar file {p}: {name} (HDU{i}) has {nbad} "
                                        f"non-finite value(s), first at pixel {first}")
            arrays.append(arr)
        header = hdul[1].header.copy()
        apogee_id = None
        if read_table and len(hdul) > 4 and hasattr(hdul[4], "columns") \
                and "APOGEE_ID" in hdul[4].columns.names:
            apogee_id = str(native_column(hdul[4].data.field("APOGEE_ID"))[0])
    return AspcapStar(flux=arrays[0], error=arrays[1], model=arrays[2], header=header,
                      path=p, apogee_id=apogee_id)


def _spectrum_arg(name: str, values, apogee_id) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if arr.shape != (N_PIXELS,):
        raise ValueError(f"write_aspcapstar({apogee_id}): {name} has shape {arr.shape}, "
                         f"expected ({N_PIXELS},)")
    return arr.copy()


def write_aspcapstar(path, flux, error, model, apogee_id: str, *, bad=None,
                     telescope: str | None = None, field: str | None = None,
                     params: Mapping[str, float] | None = None,
                     header_extra: Mapping[str, object] | None = None) -> Path:
    """Write one spectrum in the aspcapStar layout.

    HDU0 empty primary; HDU1 flux, HDU2 error, HDU3 model (float32, with CRVAL1=4.179,
    CDELT1=6e-6, CRPIX1=1, CTYPE1='LOG-LINEAR'); HDU4 a one-row table (``APOGEE_ID``, and
    ``TELESCOPE``, ``FIELD`` and ``params`` when given).  Bad pixels are written as flux 1e-4
    and error 1e10; outside the three chips flux, error and model are written as 0.  The
    file is written atomically.

    Parameters
    ----------
    path : str or path-like
        Output file (use :func:`aspcapstar_path` for the SAS layout).
    flux, error, model : array_like, shape (8575,)
        Normalised flux, its 1-sigma error, best-fit model.  Must be finite inside the
        chips except at ``bad`` pixels.
    apogee_id : str
        Star identifier written to HDU4.
    bad : array_like of bool, shape (8575,), optional
        Pixels to write as bad (flux 1e-4, error 1e10).
    telescope, field : str, optional
        Written to HDU4.
    params : mapping str -> float, optional
        Extra scalar columns of HDU4 (e.g. ``{'TEFF': 4500.0}``).
    header_extra : mapping, optional
        Extra keywords for the HDU1 header.

    Returns
    -------
    pathlib.Path
        The written file.

    Book: {ref}`sec-survey-files`
    """
    fits = astropy_fits()
    f = _spectrum_arg("flux", flux, apogee_id)
    e = _spectrum_arg("error", error, apogee_id)
    m = _spectrum_arg("model", model, apogee_id)
    inside = chip_mask()
    badm = np.zeros(N_PIXELS, bool) if bad is None else np.asarray(bad, dtype=bool)
    if badm.shape != (N_PIXELS,):
        raise ValueError(f"write_aspcapstar({apogee_id}): bad has shape {badm.shape}, "
                         f"expected ({N_PIXELS},)")
    badm = badm & inside
    for name, arr in (("flux", f), ("error", e), ("model", m)):
        nonfinite = ~np.isfinite(arr) & inside & ~badm
        if name == "model":
            nonfinite = ~np.isfinite(arr) & inside
        if nonfinite.any():
            raise ValueError(f"write_aspcapstar({apogee_id}): {name} has "
                             f"{int(nonfinite.sum())} non-finite in-chip value(s) not "
                             f"marked bad, first at pixel {int(np.flatnonzero(nonfinite)[0])}")
    f[badm] = BAD_PIXEL_FLUX
    e[badm] = BAD_PIXEL_ERROR
    for arr in (f, e, m):
        arr[~inside] = 0.0

    def image(arr, what):
        hdu = fits.ImageHDU(arr.astype(">f4"))
        h = hdu.header
        h["CRVAL1"] = (CRVAL1, "log10(lambda/Angstrom) of pixel CRPIX1")
        h["CDELT1"] = (CDELT1, "log10(lambda/Angstrom) step per pixel")
        h["CRPIX1"] = (CRPIX1, "reference pixel")
        h["CTYPE1"] = (CTYPE1, "")
        h["DC-FLAG"] = (1, "log-linear wavelength scale")
        h["BUNIT"] = (what, "")
        h["OBJID"] = (str(apogee_id), "APOGEE_ID")
        return hdu

    hdu1 = image(f, "normalised flux")
    if header_extra:
        for k, v in header_extra.items():
            hdu1.header[k] = v
    cols = [fits_column("APOGEE_ID", np.array([str(apogee_id)]))]
    if telescope is not None:
        cols.append(fits_column("TELESCOPE", np.array([str(telescope)])))
    if field is not None:
        cols.append(fits_column("FIELD", np.array([str(field)])))
    for k, v in (params or {}).items():
        cols.append(fits_column(k, np.array([v])))
    hdul = fits.HDUList([fits.PrimaryHDU(), hdu1, image(e, "flux error"),
                         image(m, "best-fit model"), fits.BinTableHDU.from_columns(cols)])
    return atomic_writeto(hdul, path)
