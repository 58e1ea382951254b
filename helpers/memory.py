"""Keeping the resident memory of streamed memory maps small.

Book: {ref}`sec-rsca-ppca`

PPCA passes over a memory-mapped survey many times, and the survey generator writes one of
18 GB; without help the pages they touched count towards the process's resident set until
the kernel needs them back.  :func:`release_pages` tells the kernel that a range of rows is no
longer needed by this process: the pages stay in the page cache (a later pass reads them from
memory), they just stop counting towards this process.
"""

from __future__ import annotations

import mmap

__all__ = ["release_pages"]


def release_pages(array, start: int = 0, stop: int | None = None, *, flush: bool = False) -> None:
    """Drop rows ``start:stop`` of a memory map from this process's resident memory.

    Book: {ref}`sec-rsca-ppca`

    Parameters
    ----------
    array : numpy.memmap or ndarray, shape (n_rows, ...)
        A memory map (anything else, e.g. an in-memory array, is left alone: no-op).
    start, stop : int
        Row range (default: every row).
    flush : bool
        Write dirty pages of a writable map to its file first.

    Notes
    -----
    Best effort: a platform without ``madvise`` or a map that refuses it is left as is.
    """
    mm = getattr(array, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise"):
        return
    try:
        if flush:
            array.flush()
        if start == 0 and stop is None:
            mm.madvise(mmap.MADV_DONTNEED)
            return
        row = array.strides[0]
        off = getattr(array, "offset", 0)
        stop = array.shape[0] if stop is None else stop
        a = off + start * row
        b = off + stop * row
        a0 = (a // mmap.PAGESIZE) * mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, a0, max(0, b - a0))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - best effort only
        pass

