"""Which (cluster member, field star) pairs a doppelganger rate compares: the pair filter.

Book: {ref}`sec-rsca-rates`

A doppelganger rate only compares a member with field stars whose radial velocity and
extinction are close to its own (``|dVHELIO_AVG| < dv_max`` and ``|dAK_TARG| < dak_max``;
the paper: 5 km/s and 0.05 mag), so that neither a Doppler shift nor interstellar absorption
can make two spectra differ.  :class:`PairFilter` holds that criterion once; the rates
(:mod:`helpers.rsca.doppelganger`), the field stars worth projecting at all
(:meth:`PairFilter.candidates`) and the distances behind each rate
(:func:`helpers.rsca.doppelganger.loco_pair_distances`) all use it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairFilter", "FieldIndex", "pair_candidates"]


@dataclass
class PairFilter:
    """Which (member, field star) pairs count: ``|dVHELIO| < dv_max`` and ``|dAK| < dak_max``.

    Book: {ref}`sec-rsca-rates`

    Any of the four arrays may be None together with its partner (that criterion is then
    not applied).  Arrays are 1-D: ``*_pop`` of length N_field, ``*_clust`` of length
    n_members.
    """

    vhelio_pop: np.ndarray | None = None
    ak_pop: np.ndarray | None = None
    vhelio_clust: np.ndarray | None = None
    ak_clust: np.ndarray | None = None
    dv_max: float = 5.0
    dak_max: float = 0.05

    @classmethod
    def from_inputs(cls, inputs, dv_max: float = 5.0, dak_max: float = 0.05) -> "PairFilter":
        """The filter of the field and cluster sets of :func:`helpers.rsca.pipeline.rsca_inputs`.

        Book: {ref}`sec-rsca-rates`

        Parameters
        ----------
        inputs : helpers.rsca.pipeline.RscaInputs
        dv_max, dak_max : float
            km/s and mag.

        Returns
        -------
        PairFilter
            With float64 VHELIO_AVG and AK_TARG of the field and of the members.
        """
        return cls(inputs.column("VHELIO_AVG").astype(float), inputs.column("AK_TARG").astype(float),
                   inputs.column("VHELIO_AVG", "cluster").astype(float),
                   inputs.column("AK_TARG", "cluster").astype(float), dv_max, dak_max)

    def checked(self, n_pop, n_clust):
        """Validate shapes and values; return a copy with float64 arrays.

        Book: {ref}`sec-rsca-rates`

        Parameters
        ----------
        n_pop, n_clust : int
            Number of field stars and of cluster members.

        Returns
        -------
        PairFilter
        """
        out = {}
        for base in ("vhelio", "ak"):
            pop, clu = getattr(self, f"{base}_pop"), getattr(self, f"{base}_clust")
            if (pop is None) != (clu is None):
                raise ValueError(f"{base}_pop and {base}_clust must be given together "
                                 f"(got {base}_pop={'None' if pop is None else 'array'}, "
                                 f"{base}_clust={'None' if clu is None else 'array'})")
            for nm, arr, n in ((f"{base}_pop", pop, n_pop), (f"{base}_clust", clu, n_clust)):
                if arr is None:
                    out[nm] = None
                    continue
                a = np.asarray(arr, dtype=np.float64)
                if a.ndim != 1 or a.shape[0] != n:
                    raise ValueError(f"pair filter {nm} must be 1-D with {n} entries (one per "
                                     f"{'field star' if nm.endswith('pop') else 'cluster member'}"
                                     f"), got shape {a.shape}")
                if not np.all(np.isfinite(a)):
                    i = int(np.flatnonzero(~np.isfinite(a))[0])
                    raise ValueError(f"pair filter {nm} has a non-finite value ({a[i]}) at "
                                     f"index {i}; remove such stars or replace the sentinel")
                out[nm] = a
        for nm in ("dv_max", "dak_max"):
            v = getattr(self, nm)
            if not (np.isscalar(v) and np.isfinite(v) and v > 0):
                raise ValueError(f"{nm} must be a finite number > 0, got {v!r}")
        return PairFilter(dv_max=float(self.dv_max), dak_max=float(self.dak_max), **out)

    @property
    def uses_velocity(self):
        """True if the velocity criterion is applied.

        Book: {ref}`sec-rsca-rates`
        """
        return self.vhelio_pop is not None

    def allowed(self, member_idx, rows=None):
        """Which pairs of some members with some field stars are allowed.

        Book: {ref}`sec-rsca-rates`

        Parameters
        ----------
        member_idx : array_like of int, shape (n,)
            Members.
        rows : array_like of int, shape (W,), optional
            Field stars (default: every one).

        Returns
        -------
        ndarray of bool, shape (n, W), or None when no criterion is applied
        """
        allowed = None
        if self.uses_velocity:
            vp = self.vhelio_pop if rows is None else self.vhelio_pop[rows]
            allowed = np.abs(self.vhelio_clust[member_idx][:, None] - vp[None, :]) < self.dv_max
        if self.ak_pop is not None:
            akp = self.ak_pop if rows is None else self.ak_pop[rows]
            a2 = np.abs(self.ak_clust[member_idx][:, None] - akp[None, :]) < self.dak_max
            allowed = a2 if allowed is None else (allowed & a2)
        return allowed

    def candidates(self, block: int = 64) -> np.ndarray:
        """Field stars that form at least one allowed pair with some member.

        Book: {ref}`sec-rsca-rates`

        A doppelganger rate only ever compares a member with these; every other field star
        can be left out of the evaluation without changing any rate.

        Returns
        -------
        ndarray of int
            Sorted field indices.
        """
        n_pop = (self.vhelio_pop if self.uses_velocity else self.ak_pop).shape[0]
        n_clust = (self.vhelio_clust if self.uses_velocity else self.ak_clust).shape[0]
        index = FieldIndex(self)
        keep = np.zeros(n_pop, bool)
        for a in range(0, n_clust, block):
            rows, allowed = index.candidates(np.arange(a, min(a + block, n_clust)))
            hit = allowed.any(axis=0)
            keep[np.arange(n_pop)[hit] if rows is None else rows[hit]] = True
        return np.flatnonzero(keep)

    def restricted(self, rows) -> "PairFilter":
        """The same filter for a subset of the field stars (``rows``).

        Book: {ref}`sec-rsca-rates`
        """
        return PairFilter(None if self.vhelio_pop is None else self.vhelio_pop[rows],
                          None if self.ak_pop is None else self.ak_pop[rows],
                          self.vhelio_clust, self.ak_clust, self.dv_max, self.dak_max)

    def as_kwargs(self) -> dict:
        """``vhelio_pop, ak_pop, vhelio_clust, ak_clust, dv_max, dak_max`` as keyword arguments
        of :func:`helpers.rsca.doppelganger.doppelganger_rate` and
        :func:`helpers.rsca.doppelganger.loco_doppelganger_rates`.

        Book: {ref}`sec-rsca-rates`
        """
        return {"vhelio_pop": self.vhelio_pop, "ak_pop": self.ak_pop,
                "vhelio_clust": self.vhelio_clust, "ak_clust": self.ak_clust,
                "dv_max": self.dv_max, "dak_max": self.dak_max}


class FieldIndex:
    """Field stars sorted by velocity, to find each cluster's candidate window quickly.

    Book: {ref}`sec-rsca-rates`

    Parameters
    ----------
    flt : PairFilter
        A checked filter.
    """

    def __init__(self, flt: PairFilter):
        self.flt = flt
        if flt.uses_velocity:
            self.order = np.argsort(flt.vhelio_pop, kind="stable")
            self.v_sorted = flt.vhelio_pop[self.order]
        else:
            self.order = None

    def candidates(self, member_idx):
        """(field row indices or None for all, allowed (n, W) bool or None) for some members.

        Book: {ref}`sec-rsca-rates`
        """
        flt = self.flt
        if self.order is None:
            rows = None
        else:
            v = flt.vhelio_clust[member_idx]
            lo = np.searchsorted(self.v_sorted, v.min() - flt.dv_max, side="left")
            hi = np.searchsorted(self.v_sorted, v.max() + flt.dv_max, side="right")
            rows = np.sort(self.order[lo:hi])
        return rows, flt.allowed(member_idx, rows)


def pair_candidates(vhelio_pop, ak_pop, vhelio_clust, ak_clust, dv_max=5.0, dak_max=0.05):
    """Field stars that form at least one allowed pair with some cluster member.

    Book: {ref}`sec-rsca-rates`

    :meth:`PairFilter.candidates` of the filter of these arrays.

    Parameters
    ----------
    vhelio_pop, ak_pop : array_like, shape (N_field,)
        Field VHELIO_AVG (km/s) and AK_TARG (mag).
    vhelio_clust, ak_clust : array_like, shape (n_members,)
    dv_max, dak_max : float

    Returns
    -------
    rows : ndarray of int
        Sorted field indices.
    """
    vp, ap = np.asarray(vhelio_pop, float), np.asarray(ak_pop, float)
    vc, ac = np.asarray(vhelio_clust, float), np.asarray(ak_clust, float)
    if vp.shape != ap.shape or vc.shape != ac.shape:
        raise ValueError("vhelio and ak arrays must have matching shapes (field / members)")
    return PairFilter(vp, ap, vc, ac, dv_max, dak_max).checked(vp.size, vc.size).candidates()
