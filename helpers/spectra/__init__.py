"""Stellar spectra: the Cannon model on instrument grids, and small measurements on spectra.

Book: {ref}`ch-spectra`

==================================  ======================================================
:mod:`helpers.spectra.cannon`       the Cannon model of APOGEE DR14 giants, broadened and
                                    resampled onto the APOGEE and NIRSpec-like grids;
                                    air/vacuum wavelengths
:mod:`helpers.spectra.spectroscopy` equivalent widths, pixels per resolution element, noise
==================================  ======================================================
"""
from helpers.spectra.cannon import (APOGEE_RESOLUTION, LABEL_NAMES, NIRSPEC_RESOLUTION,
                                    CannonModel, InstrumentModel, air_to_vacuum, apogee_model,
                                    cannon_model_path, load_cannon_model, nirspec_grid,
                                    nirspec_model, vacuum_to_air)
from helpers.spectra.spectroscopy import add_noise, equivalent_width, pixels_per_resolution_element

__all__ = ["APOGEE_RESOLUTION", "LABEL_NAMES", "NIRSPEC_RESOLUTION", "CannonModel", "InstrumentModel",
           "air_to_vacuum", "apogee_model", "cannon_model_path", "load_cannon_model", "nirspec_grid",
           "nirspec_model", "vacuum_to_air", "add_noise", "equivalent_width",
           "pixels_per_resolution_element"]
