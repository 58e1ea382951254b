"""APOGEE DR16/DR17 file formats: wavelength grid, bitmasks, paths, readers, writers, and the
memory-mapped spectra cache.

Book: {ref}`sec-survey-files`

Everything the book reads from (or writes to look like) the SDSS Science Archive Server
(SAS) goes through this package, one format per module:

==================================  ======================================================
:mod:`helpers.apogee.grid`          the 8,575-pixel wavelength grid and its three chips
:mod:`helpers.apogee.bitmasks`      ``ASPCAPFLAG`` and ``APOGEE_PIXMASK`` bit names
:mod:`helpers.apogee.sas`           file paths in the SAS layout (DR16, DR17)
:mod:`helpers.apogee.fits_io`       FITS utilities and :class:`ApogeeFormatError`
:mod:`helpers.apogee.allstar`       the allStar catalogue (element order from ``ELEM_SYMBOL``)
:mod:`helpers.apogee.aspcapstar`    aspcapStar files (flux, error, best-fit model)
:mod:`helpers.apogee.occam`         the OCCAM DR16 member and cluster catalogues
:mod:`helpers.apogee.cache_format`  the spectra cache: layout, key, manifest
:mod:`helpers.apogee.cache_writer`  writing a spectra cache atomically
:mod:`helpers.apogee.cache_loader`  opening a spectra cache as memory maps
:mod:`helpers.apogee.cache_builder` building a spectra cache from aspcapStar files
:mod:`helpers.apogee.cache_zarr`    the spectra cache as a Zarr store (for Dask workers)
==================================  ======================================================

Every reader checks what it reads and raises :class:`ApogeeFormatError` (a ``ValueError``)
whose message names the file and the problem.  Missing files raise ``FileNotFoundError``
naming the file.  Nothing is silently replaced by NaN.  The public names of every module are
available here too (``from helpers.apogee import read_allstar``).
"""
from helpers.apogee.grid import (BAD_PIXEL_ERROR, BAD_PIXEL_FLUX, CDELT1, CHIPS, CRPIX1, CRVAL1,
                                 CTYPE1, MISSING, N_PIXELS, chip_mask, wavelength_grid)
from helpers.apogee.bitmasks import ASPCAPFLAG_BITS, PIXMASK_BITS, flag_names, flag_set
from helpers.apogee.sas import RELEASES, allstar_path, aspcapstar_path
from helpers.apogee.fits_io import ApogeeFormatError
from helpers.apogee.allstar import (ALLSTAR_OPTIONAL, ALLSTAR_REQUIRED, DR16_ELEM_SYMBOL,
                                    RSCA_ELEMENTS, elem_column, read_allstar, write_allstar)
from helpers.apogee.aspcapstar import AspcapStar, read_aspcapstar, write_aspcapstar
from helpers.apogee.occam import (OCCAM_CLUSTER_REQUIRED, OCCAM_MEMBER_REQUIRED,
                                  read_occam_clusters, read_occam_members, write_occam_clusters,
                                  write_occam_members)
from helpers.apogee.cache_format import (CACHE_FORMAT, SpectraCacheError, cache_key,
                                         is_complete_cache)
from helpers.apogee.cache_writer import SpectraCacheWriter
from helpers.apogee.cache_loader import SpectraCache, load_spectra_cache
from helpers.apogee.cache_builder import build_spectra_cache, default_n_jobs
from helpers.apogee.cache_zarr import (ZARR_FORMAT, ZarrSpectra, load_zarr_cache,
                                       open_zarr_store, write_zarr_cache, write_zarr_store)

__all__ = [
    "N_PIXELS",
    "CRVAL1",
    "CDELT1",
    "CRPIX1",
    "CTYPE1",
    "CHIPS",
    "MISSING",
    "BAD_PIXEL_FLUX",
    "BAD_PIXEL_ERROR",
    "wavelength_grid",
    "chip_mask",
    "ASPCAPFLAG_BITS",
    "PIXMASK_BITS",
    "flag_set",
    "flag_names",
    "RELEASES",
    "allstar_path",
    "aspcapstar_path",
    "ApogeeFormatError",
    "DR16_ELEM_SYMBOL",
    "RSCA_ELEMENTS",
    "ALLSTAR_REQUIRED",
    "ALLSTAR_OPTIONAL",
    "elem_column",
    "read_allstar",
    "write_allstar",
    "AspcapStar",
    "read_aspcapstar",
    "write_aspcapstar",
    "OCCAM_MEMBER_REQUIRED",
    "OCCAM_CLUSTER_REQUIRED",
    "read_occam_members",
    "read_occam_clusters",
    "write_occam_members",
    "write_occam_clusters",
    "CACHE_FORMAT",
    "SpectraCacheError",
    "cache_key",
    "is_complete_cache",
    "SpectraCacheWriter",
    "SpectraCache",
    "load_spectra_cache",
    "default_n_jobs",
    "build_spectra_cache",
    "ZARR_FORMAT",
    "ZarrSpectra",
    "write_zarr_store",
    "open_zarr_store",
    "write_zarr_cache",
    "load_zarr_cache",
]
