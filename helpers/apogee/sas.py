"""Paths of APOGEE files in the SDSS Science Archive Server (SAS) layout.

Book: {ref}`sec-survey-files`

One directory (``apogee_root``, the one that *contains* ``dr16/`` or ``dr17/``) pointed at a
DR16 or a DR17 mirror works unmodified.
"""
from __future__ import annotations

from dataclasses import field
from pathlib import Path

__all__ = ["RELEASES", "release_layout", "allstar_path", "aspcapstar_path"]


#: SAS sub-directories and file-name tags of each supported data release.
RELEASES = {
    "dr16": {
        "aspcap_dir": ("dr16", "apogee", "spectro", "aspcap", "r12", "l33"),
        "allstar": "allStar-r12-l33.fits",
        "star_prefix": "aspcapStar-r12-",
    },
    "dr17": {
        "aspcap_dir": ("dr17", "apogee", "spectro", "aspcap", "dr17", "synspec_rev1"),
        "allstar": "allStar-dr17-synspec_rev1.fits",
        "star_prefix": "aspcapStar-dr17-",
    },
}


def release_layout(release: str) -> dict:
    """SAS folders and file-name tags of a release (``'dr16'`` or ``'dr17'``; other values raise).

    Book: {ref}`sec-survey-files`
    """
    key = str(release).lower()
    if key not in RELEASES:
        raise ValueError(f"unknown APOGEE release {release!r}: expected one of "
                         f"{sorted(RELEASES)}")
    return RELEASES[key]


def allstar_path(apogee_root, release: str) -> Path:
    """Path of the allStar catalogue inside a SAS mirror.

    Parameters
    ----------
    apogee_root : str or path-like
        The directory that *contains* ``dr16/`` or ``dr17/`` (the SAS root, as in
        ``https://data.sdss.org/sas/``), not the ``dr16`` directory itself.
    release : {'dr16', 'dr17'}

    Returns
    -------
    pathlib.Path
        DR16: ``apogee_root/dr16/apogee/spectro/aspcap/r12/l33/allStar-r12-l33.fits``;
        DR17: ``apogee_root/dr17/apogee/spectro/aspcap/dr17/synspec_rev1/allStar-dr17-synspec_rev1.fits``.

    Book: {ref}`sec-survey-files`
    """
    rel = release_layout(release)
    return Path(apogee_root).joinpath(*rel["aspcap_dir"], rel["allstar"])


def aspcapstar_path(apogee_root, release: str, telescope: str, field: str,
                    apogee_id: str) -> Path:
    """Path of one star's aspcapStar file inside a SAS mirror.

    Parameters
    ----------
    apogee_root : str or path-like
        The directory that *contains* ``dr16/`` or ``dr17/`` (the SAS root).
    release : {'dr16', 'dr17'}
    telescope : str
        allStar ``TELESCOPE`` (e.g. ``'apo25m'``, ``'lco25m'``).
    field : str
        allStar ``FIELD`` (e.g. ``'120+12'``).
    apogee_id : str
        allStar ``APOGEE_ID`` (e.g. ``'2M00000002+7417074'``).

    Returns
    -------
    pathlib.Path
        DR16: ``.../dr16/apogee/spectro/aspcap/r12/l33/{TELESCOPE}/{FIELD}/aspcapStar-r12-{APOGEE_ID}.fits``;
        DR17: ``.../dr17/apogee/spectro/aspcap/dr17/synspec_rev1/{TELESCOPE}/{FIELD}/aspcapStar-dr17-{APOGEE_ID}.fits``.

    Book: {ref}`sec-survey-files`
    """
    rel = release_layout(release)
    parts = {"telescope": telescope, "field": field, "apogee_id": apogee_id}
    for k, v in parts.items():
        s = str(v).strip()
        if not s or "/" in s or s in (".", ".."):
            raise ValueError(f"aspcapstar_path: {k}={v!r} cannot be a path component")
        parts[k] = s
    return Path(apogee_root).joinpath(*rel["aspcap_dir"], parts["telescope"],
                                      parts["field"],
                                      f"{rel['star_prefix']}{parts['apogee_id']}.fits")
