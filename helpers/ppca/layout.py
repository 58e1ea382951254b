"""Where each star's missing pixels are: the layout every PPCA pass works from.

Book: {ref}`sec-rsca-ppca`

A chunk of stars is described once, in the scan, by the positions of its missing entries,
grouped by how many each star has (:class:`MissingChunk`); the E-steps and the start then
work group by group with batched products of the rows of ``W`` at those pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MissingChunk", "missing_layout", "layout_from_entries", "missing_per_pixel",
           "nonzero_sparse"]


@dataclass
class MissingChunk:
    """Missing-pixel layout of one chunk of stars, grouped by missing count.

    Book: {ref}`sec-rsca-ppca`

    Stars are sorted by their number of missing pixels and cut into groups of up to
    ``group_size`` stars.  Group ``j`` holds the stars ``order[starts[j]:starts[j + 1]]``; its
    missing pixel indices, padded with ``D`` (a row of zeros in the extended ``W``) to the
    group's largest count ``widths[j]``, are ``idx[offsets[j]:offsets[j + 1]]`` (flattened
    ``(g, widths[j])``, int16 when ``D < 32767``, else int32).  ``flat`` holds the same
    entries as positions ``star * (D + 1) + pixel`` in a ``(n, D + 1)`` chunk buffer whose last
    column absorbs the padding.  ``n_miss`` counts the real (unpadded) missing entries.
    """

    order: np.ndarray
    starts: np.ndarray
    widths: np.ndarray
    offsets: np.ndarray
    idx: np.ndarray
    flat: np.ndarray
    n_miss: int

    def groups(self):
        """Yield ``(stars, idx, flat)``; ``idx`` has shape ``(len(stars), width)``."""
        for j in range(self.widths.size):
            stars = self.order[self.starts[j]:self.starts[j + 1]]
            sl = slice(self.offsets[j], self.offsets[j + 1])
            yield stars, self.idx[sl].reshape(stars.size, -1), self.flat[sl]


def missing_layout(miss, D, group_size=256):
    """Build the :class:`MissingChunk` for a boolean ``miss`` array of shape (n, D).

    Book: {ref}`sec-rsca-ppca`
    """
    r, c = nonzero_sparse(miss)
    return layout_from_entries(r, c, miss.shape[0], D, group_size)


def missing_per_pixel(layouts, D):
    """Number of stars missing each of the D pixels, from missing-pixel layouts.

    Book: {ref}`sec-rsca-ppca`
    """
    c = np.zeros(D + 1)
    for lay in layouts:
        if lay.n_miss:
            c += np.bincount(lay.idx.reshape(-1).astype(np.intp), minlength=D + 1)
    return c[:D]                    # entry D counted the padding


def nonzero_sparse(miss):
    """``np.nonzero`` of a 2-D boolean array, 3x faster: ``flatnonzero`` then ``divmod``.

    Book: {ref}`sec-rsca-ppca`

    (NumPy's 2-D ``nonzero`` builds the multi-index entry by entry.)  Same result, same
    row-major order.
    """
    miss = np.ascontiguousarray(miss, dtype=bool)
    return np.divmod(np.flatnonzero(miss.reshape(-1)), miss.shape[1])


def layout_from_entries(r, c, n, D, group_size=256):
    """Build the :class:`MissingChunk` of ``n`` stars from the missing entries ``(r, c)``.

    Book: {ref}`sec-rsca-ppca`

    ``r, c`` are the row and pixel indices of the missing entries in row-major order (as
    returned by ``np.nonzero``).
    """
    counts = np.bincount(r, minlength=n)
    order = np.argsort(counts, kind="stable")
    cs = counts[order]
    it = np.int16 if D < np.iinfo(np.int16).max else np.int32
    starts = np.unique(np.minimum(np.arange(0, n + group_size, group_size), n))
    widths = cs[starts[1:] - 1].astype(np.int64)
    sizes = np.diff(starts)
    offsets = np.concatenate(([0], np.cumsum(sizes * widths)))
    idx = np.full(int(offsets[-1]), D, dtype=it)
    n_miss = int(r.size)
    if n_miss:
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        rk = rank[r]                                 # position of the star in sorted order
        grp = np.searchsorted(starts, rk, side="right") - 1
        rowstart = np.concatenate(([0], np.cumsum(counts)[:-1]))
        pos = np.arange(n_miss) - rowstart[r]        # position within the star's list
        idx[offsets[grp] + (rk - starts[grp]) * widths[grp] + pos] = c
    rows = np.repeat(order, np.repeat(widths, sizes)).astype(np.int64)
    flat_pos = (rows * (D + 1) + idx).astype(np.int32 if n * (D + 1) < 2 ** 31 else np.int64)
    return MissingChunk(order.astype(np.intp), starts, widths, offsets, idx, flat_pos, n_miss)
