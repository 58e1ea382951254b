"""When a long loop shows a progress bar: one rule for the whole package.

Book: {ref}`sec-run-it`

A bar is shown when the caller asks for one (``progress=True``), except under continuous
integration (the environment variable ``CI`` set to anything non-empty) or when tqdm's own
switch ``TQDM_DISABLE`` is set to anything but ``0``. The survey generator, the spectra
cache and Zarr writers, the PPCA runs, StarNet and StarCLIP training all ask this function.
"""

from __future__ import annotations

import os

__all__ = ["progress_enabled"]


def progress_enabled(progress: bool = True) -> bool:
    """Whether to show a progress bar: asked for, ``CI`` unset and ``TQDM_DISABLE`` unset or 0.

    Book: {ref}`sec-run-it`

    Parameters
    ----------
    progress : bool
        The caller's wish (a function's ``progress`` argument).

    Returns
    -------
    bool
    """
    return (bool(progress) and not os.environ.get("CI")
            and os.environ.get("TQDM_DISABLE", "0") in ("", "0"))
