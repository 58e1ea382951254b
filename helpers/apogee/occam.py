"""The OCCAM DR16 open-cluster catalogues (members and clusters): readers and writers.

Book: {ref}`sec-survey-files`
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from helpers.apogee.fits_io import read_simple_table, write_simple_table

__all__ = ["OCCAM_MEMBER_REQUIRED", "OCCAM_CLUSTER_REQUIRED", "read_occam_members",
           "read_occam_clusters", "write_occam_members", "write_occam_clusters"]


OCCAM_MEMBER_REQUIRED = ("CLUSTER", "APOGEE_ID", "VHELIO_AVG", "FE_H", "RV_PROB",
                         "FEH_PROB", "PM_PROB", "CG_PROB")


OCCAM_CLUSTER_REQUIRED = ("NAME", "RV", "FE_H", "NUM_STARS", "QUAL")


def read_occam_members(path) -> pd.DataFrame:
    """Read the OCCAM DR16 member catalogue (``occam_member-DR16.fits``).

    Parameters
    ----------
    path : str or path-like
        FITS file with the member table in HDU1.

    Returns
    -------
    pandas.DataFrame, one row per (cluster, star) candidate
        All columns of the file; required ``CLUSTER``, ``APOGEE_ID``, ``VHELIO_AVG``
        (km/s), ``FE_H`` (dex), ``RV_PROB``, ``FEH_PROB``, ``PM_PROB``, ``CG_PROB``
        (probabilities; ``CG_PROB`` = -9999.99 where Cantat-Gaudin et al. give none).
        Strings are stripped of blanks.  Note the member file spells cluster names with
        spaces ('NGC 6791') where the cluster file may use underscores.

    Raises
    ------
    FileNotFoundError, ApogeeFormatError
        Missing file; corrupt FITS or a missing required column.

    Book: {ref}`sec-survey-files`
    """
    return read_simple_table(path, OCCAM_MEMBER_REQUIRED, "OCCAM member")


def read_occam_clusters(path) -> pd.DataFrame:
    """Read the OCCAM DR16 cluster catalogue (``occam_cluster-DR16.fits``).

    Parameters
    ----------
    path : str or path-like
        FITS file with the cluster table in HDU1.

    Returns
    -------
    pandas.DataFrame, one row per cluster
        All columns of the file; required ``NAME``, ``RV`` (km/s), ``FE_H`` (dex),
        ``NUM_STARS``, ``QUAL``; per-element ``<EL>_FE`` (dex) when present.

    Raises
    ------
    FileNotFoundError, ApogeeFormatError
        Missing file; corrupt FITS or a missing required column.

    Book: {ref}`sec-survey-files`
    """
    return read_simple_table(path, OCCAM_CLUSTER_REQUIRED, "OCCAM cluster")


def write_occam_members(path, table) -> Path:
    """Write an OCCAM-like member catalogue (HDU1 table, all columns of ``table``).

    Parameters
    ----------
    path : str or path-like
    table : pandas.DataFrame or mapping
        Must hold the columns :func:`read_occam_members` requires; ``CG_PROB`` uses
        -9999.99 for "none".

    Returns
    -------
    pathlib.Path

    Book: {ref}`sec-survey-files`
    """
    return write_simple_table(path, table, OCCAM_MEMBER_REQUIRED, "OCCAM member")


def write_occam_clusters(path, table) -> Path:
    """Write an OCCAM-like cluster catalogue (HDU1 table, all columns of ``table``).

    Parameters
    ----------
    path : str or path-like
    table : pandas.DataFrame or mapping
        Must hold the columns :func:`read_occam_clusters` requires.

    Returns
    -------
    pathlib.Path

    Book: {ref}`sec-survey-files`
    """
    return write_simple_table(path, table, OCCAM_CLUSTER_REQUIRED, "OCCAM cluster")
