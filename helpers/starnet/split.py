"""One star-level train/validation/test split, written once and reused by every chapter.

Book: {ref}`sec-starnet-split`

The StarCLIP essay trained its encoders and its contrastive model on different random
splits, so most of its CLIP test stars had been seen in training. The book draws one
seeded split of the paired stars (those with an APOGEE and a NIRSpec spectrum) in the
ratio 5:1:2, by star (APOGEE_ID), and writes it to
``<cache>/splits/<source key>/starnet-seed<seed>.json`` the first time it is asked for;
every later call, in this chapter or the next, reads that file. A split whose parts share
a star is refused wherever it comes from.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers.paths import cache_dir

__all__ = ["PARTS", "SPLIT_RATIOS", "StarSplit", "SplitOverlapError", "make_split",
           "load_split", "starnet_split", "split_path"]

#: The three parts, in order.
PARTS = ("train", "val", "test")
#: train : validation : test (the issue's 5:1:2; 11,875 / 2,375 / 4,750 of 19,000 stars).
SPLIT_RATIOS = (5, 1, 2)
_FORMAT = "stars-ml-book/starnet-split/1"


class SplitOverlapError(ValueError):
    """A star appears in two parts of a split (or twice in one).

    Book: {ref}`sec-starnet-split`
    """


@dataclass(frozen=True, eq=False)
class StarSplit:
    """A star-level split: three disjoint arrays of APOGEE_IDs.

    Book: {ref}`sec-starnet-split`

    Constructing one checks that no star is in two parts (:class:`SplitOverlapError`).

    Attributes
    ----------
    train, val, test : ndarray of str
        APOGEE_IDs of each part, in the order the data sets use.
    seed : int or None
        Seed it was drawn with (None for a hand-made split).
    source_key : str
        Key of the data it was drawn from ('' if unknown).
    path : pathlib.Path or None
        The file it was read from or written to.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int | None = None
    source_key: str = ""
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self):
        for name in PARTS:
            arr = np.asarray([str(x).strip() for x in np.atleast_1d(getattr(self, name))],
                             dtype=str)
            object.__setattr__(self, name, arr)
        _check_disjoint({name: getattr(self, name) for name in PARTS})

    def __eq__(self, other) -> bool:
        return isinstance(other, StarSplit) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def part(self, name: str) -> np.ndarray:
        """APOGEE_IDs of part ``name`` ('train', 'val' or 'test')."""
        if name not in PARTS:
            raise ValueError(f"split part must be one of {PARTS}, got {name!r}")
        return getattr(self, name)

    @property
    def sizes(self) -> dict:
        """Number of stars per part."""
        return {name: int(getattr(self, name).size) for name in PARTS}

    @property
    def key(self) -> str:
        """16-hex-digit hash of the three ID lists (enters every cache key built on it)."""
        h = hashlib.sha256()
        for name in PARTS:
            h.update(name.encode())
            h.update("\n".join(getattr(self, name).tolist()).encode())
        return h.hexdigest()[:16]

    def to_json(self) -> str:
        """JSON text of the split (format, seed, source key, the three ID lists)."""
        return json.dumps({"format": _FORMAT, "seed": self.seed, "source_key": self.source_key,
                           "key": self.key, "sizes": self.sizes,
                           **{name: getattr(self, name).tolist() for name in PARTS}})


def _check_disjoint(parts: dict) -> None:
    for name, ids in parts.items():
        u, c = np.unique(ids, return_counts=True)
        if np.any(c > 1):
            raise SplitOverlapError(f"split part {name!r} lists {int(np.sum(c > 1))} star(s) "
                                    f"more than once (e.g. {u[c > 1][0]!r})")
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = np.intersect1d(parts[a], parts[b])
            if both.size:
                raise SplitOverlapError(
                    f"split overlaps: {both.size} star(s) are in both {a!r} and {b!r} "
                    f"(e.g. {both[0]!r}); a star may be in one part only")


def make_split(ids, seed: int, ratios=SPLIT_RATIOS, source_key: str = "") -> StarSplit:
    """Draw a seeded star-level split of ``ids`` in the ratio ``ratios``.

    Book: {ref}`sec-starnet-split`

    Parameters
    ----------
    ids : array_like of str, shape (n,)
        APOGEE_IDs of the stars to split; each star once.
    seed : int
        Seed of the permutation.
    ratios : tuple of 3 positive numbers
        train : validation : test.
    source_key : str
        Recorded in the split.

    Returns
    -------
    StarSplit
        Parts of round(n r_train / sum), round(n r_val / sum) and the rest stars, each in
        the order of the random permutation.
    """
    ids = np.asarray([str(x).strip() for x in np.atleast_1d(ids)], dtype=str)
    u, c = np.unique(ids, return_counts=True)
    if np.any(c > 1):
        raise SplitOverlapError(f"make_split: {int(np.sum(c > 1))} APOGEE_ID(s) occur more "
                                f"than once (e.g. {u[c > 1][0]!r}); a star-level split needs "
                                "each star once")
    r = np.asarray(ratios, dtype=float)
    if r.shape != (3,) or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"ratios must be three positive numbers, got {ratios!r}")
    if ids.size < 3:
        raise ValueError(f"make_split needs at least 3 stars, got {ids.size}")
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    n = ids.size
    n_train = int(round(n * r[0] / r.sum()))
    n_val = max(1, int(round(n * r[1] / r.sum())))
    n_train = min(max(1, n_train), n - n_val - 1)
    # sort first: the split depends on the set of stars, not on their order in a file
    perm = np.random.default_rng([int(seed), 15]).permutation(np.sort(ids))
    return StarSplit(perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:],
                     seed=int(seed), source_key=source_key)


def load_split(path) -> StarSplit:
    """Read a split file written by :func:`starnet_split` (overlaps are refused).

    Book: {ref}`sec-starnet-split`
    """
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the split file {p}: {exc}") from exc
    if d.get("format") != _FORMAT:
        raise ValueError(f"{p} is not a StarNet split file (format {d.get('format')!r}, "
                         f"expected {_FORMAT!r})")
    split = StarSplit(np.asarray(d["train"], str), np.asarray(d["val"], str),
                      np.asarray(d["test"], str), seed=d.get("seed"),
                      source_key=d.get("source_key", ""), path=p)
    if d.get("key") and d["key"] != split.key:
        raise ValueError(f"split file {p}: its ID lists do not match its recorded key "
                         f"{d['key']} (edited by hand?)")
    return split


def split_path(source_key: str, seed: int, create: bool = True) -> Path:
    """Where the split of ``source_key`` with ``seed`` lives.

    Book: {ref}`sec-starnet-split`
    """
    return cache_dir("splits", source_key, create=create) / f"starnet-seed{int(seed)}.json"


def starnet_split(source, seed: int = 0) -> StarSplit:
    """The split of a data source's paired stars: read if written before, else drawn once.

    Book: {ref}`sec-starnet-split`

    Parameters
    ----------
    source : helpers.starnet.data.StarnetSource
        Provides ``key`` and ``paired_ids`` (the stars to split).
    seed : int
        Seed of the split.

    Returns
    -------
    StarSplit
        With ``path`` set to the file. The file is written atomically and never replaced:
        if two processes draw the same split at once, both end up reading the first file.

    Raises
    ------
    SplitOverlapError
        The stored file has a star in two parts.
    ValueError
        The stored file names stars that the source does not have.
    """
    path = split_path(source.key, seed)
    if not path.exists():
        split = make_split(source.paired_ids, seed, source_key=source.key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}")
        tmp.write_text(split.to_json())
        try:
            os.link(tmp, path)          # fails if another process wrote it first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    split = load_split(path)
    unknown = np.setdiff1d(np.concatenate([split.train, split.val, split.test]),
                           source.paired_ids)
    if unknown.size:
        raise ValueError(f"split file {path} names {unknown.size} star(s) that this source's "
                         f"paired stars do not include (e.g. {unknown[0]!r}); it belongs to "
                         "other data")
    return split
