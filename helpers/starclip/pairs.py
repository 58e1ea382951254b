"""StarCLIP on the book's data: APOGEE and NIRSpec pairs of the StarNet split, aligned.

Book: {ref}`sec-starclip-training`

:func:`starclip_pairs` opens both modalities of every split part (StarNet's gathered,
filled spectra, plus the NIRSpec errors and S/N the mock-JWST transforms need) and picks the
template star of transform (i). :func:`mock_chain` builds the transforms for a set of
:class:`MockSettings`. :func:`train_starclip` trains the two towers on the *training* part
only (the validation part gives the per-epoch retrieval curve; the test part is never read
during training) and caches the run by the survey, the split, both StarNet runs, the
settings and the configuration. :func:`embed_parts` gives a run's (or a pretrained
encoder's) embeddings of a split part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from helpers.starnet import LABEL_NAMES, PARTS, StarnetSource, StarSplit, starnet_data

from .model import ClipTower
from .train import (ClipConfig, ClipRun, ModalityBatches, retrieval_validator, train_clip)
from .transforms import PASCHEN_LINES, GapDistribution, MockJWST, View

#: Labels by which the template star is chosen (closest to the training median).
TEMPLATE_LABELS = ("TEFF", "LOGG", "FE_H")

__all__ = ["TEMPLATE_LABELS", "MockSettings", "PairParts", "starclip_pairs", "template_star", "mock_chain",
           "train_starclip", "describe_inputs", "make_towers", "embed_parts", "pretrained_towers"]


@dataclass(frozen=True)
class MockSettings:
    """Settings of the mock-JWST transforms (the essay's values as defaults).

    Book: {ref}`sec-starclip-transforms`

    Attributes
    ----------
    half_width : int
        (i) pixels on each side of a Paschen line.
    amplitude : float
        (ii) A of the denormalising polynomial.
    stuck_fraction : float
        (iii) fraction of pixels set to 1.
    snr_min, snr_max : float
        (iv) bounds of the target S/N.
    steps : tuple of str
        Which of 'i'-'v' are applied.
    """

    half_width: int = 10
    amplitude: float = 0.01
    stuck_fraction: float = 0.001
    snr_min: float = 30.0
    snr_max: float = 300.0
    steps: tuple = ("i", "ii", "iii", "iv", "v")

    def to_dict(self) -> dict:
        """Plain dict (enters cache keys)."""
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d


@dataclass
class PairParts:
    """Both modalities of every split part, ready for StarCLIP.

    Book: {ref}`sec-starclip-training`

    Attributes
    ----------
    source : StarnetSource
    split : StarSplit
    sets : dict
        ``sets[modality][part]``: StarNet's :class:`helpers.starnet.SpectraSet` (filled flux,
        observed pixels, ids in split order).
    nirspec_error : dict of str -> ndarray, shape (n_part, n_pixels), float32
        NIRSpec flux errors per part (rows as in ``sets``).
    template : dict
        Transform (i)'s template star: ``id``, ``flux``, ``error``, ``labels`` (Teff, logg,
        [Fe/H]).
    """

    source: StarnetSource
    split: StarSplit
    sets: dict
    nirspec_error: dict
    template: dict

    def labels(self, part: str, kind: str = "true") -> np.ndarray:
        """The 20 StarNet labels of a part's stars, shape (n, 20)."""
        return self.source.labels(self.sets["apogee"][part].ids, kind)

    def view(self, part: str, rows=None) -> View:
        """A :class:`View` of the NIRSpec spectra of a part (rows: default all)."""
        s = self.sets["nirspec"][part]
        rows = np.arange(len(s)) if rows is None else np.asarray(rows)
        return View(np.asarray(s.flux[rows]), np.asarray(s.observed[rows]),
                    self.nirspec_error[part][rows], s.snr[rows])


def template_star(parts_sets: dict, source: StarnetSource, error: np.ndarray,
                  half_width: int = 10) -> dict:
    """The fixed template star of transform (i), chosen among the training stars.

    Book: {ref}`sec-starclip-transforms`

    The training star whose Teff, logg and [Fe/H] (true labels where known, else the
    allStar ones), each standardised over the training stars, lie closest to the training
    median, among the stars with at least the median S/N that are observed in every
    imputed window.
    """
    train = parts_sets["nirspec"]["train"]
    kind = "true" if source.truth is not None else "aspcap"
    y = source.labels(train.ids, kind)[:, [LABEL_NAMES.index(n) for n in TEMPLATE_LABELS]]
    y = y.astype(np.float64)
    wave = train.wavelength
    windows = []
    for line in PASCHEN_LINES:
        c = int(np.argmin(np.abs(wave - line)))
        if wave[0] <= line <= wave[-1] and c - half_width >= 0 and c + half_width < wave.size:
            windows.append(np.arange(c - half_width, c + half_width + 1))
    cols = np.concatenate(windows) if windows else np.zeros(0, int)
    ok = np.asarray(train.observed[:, cols]).all(axis=1) if cols.size else np.ones(len(train), bool)
    ok &= train.snr >= np.nanmedian(train.snr)
    ok &= np.isfinite(y).all(axis=1)
    if not ok.any():
        raise ValueError("no training star is observed in every Paschen window with median S/N: "
                         "cannot choose a template star")
    z = (y - np.nanmedian(y, axis=0)) / np.nanstd(y, axis=0)
    d = np.where(ok, (z ** 2).sum(axis=1), np.inf)
    i = int(np.argmin(d))
    return {"id": str(train.ids[i]), "flux": np.asarray(train.flux[i], np.float32),
            "error": np.asarray(error[i], np.float32), "labels": y[i], "row": i}


def starclip_pairs(source: StarnetSource, split: StarSplit, half_width: int = 10) -> PairParts:
    """Open both modalities of every part of the split (gathered once by StarNet's helpers).

    Book: {ref}`sec-starclip-training`
    """
    for m in ("apogee", "nirspec"):
        source.modality(m)               # a clear error if the source lacks a modality
    sets = {m: starnet_data(source, split, m) for m in ("apogee", "nirspec")}
    spec = source.modality("nirspec")
    err = {}
    for part in PARTS:
        rows = spec.rows_of(sets["nirspec"][part].ids)
        order = np.argsort(rows, kind="stable")
        e = np.empty((rows.size, spec.n_pixels), np.float32)
        if spec.error is None:
            raise ValueError("the NIRSpec spectra carry no error array: the noise transform "
                             "(iv) needs one")
        for s in range(0, rows.size, 2048):
            pos = order[s:s + 2048]
            e[pos] = spec.error[rows[pos]]
        err[part] = e
        if not np.array_equal(sets["apogee"][part].ids, sets["nirspec"][part].ids):
            raise ValueError(f"split part {part!r}: APOGEE and NIRSpec rows list different stars")
    template = template_star(sets, source, err["train"], half_width)
    return PairParts(source=source, split=split, sets=sets, nirspec_error=err, template=template)


def mock_chain(pairs: PairParts, settings: MockSettings = MockSettings(),
               gaps: GapDistribution | None = None) -> MockJWST:
    """The mock-JWST chain for the NIRSpec spectra of ``pairs`` (fill: StarNet's).

    Book: {ref}`sec-starclip-transforms`
    """
    train = pairs.sets["nirspec"]["train"]
    return MockJWST.essay(train.wavelength, pairs.template["flux"], train.fill,
                          template_error=pairs.template["error"],
                          half_width=settings.half_width, amplitude=settings.amplitude,
                          stuck_fraction=settings.stuck_fraction,
                          snr_range=(settings.snr_min, settings.snr_max), gaps=gaps,
                          steps=settings.steps)


def make_towers(encoders: dict, config: ClipConfig, frozen: tuple = ()) -> dict:
    """Towers for StarCLIP (APOGEE, then NIRSpec) from StarNet runs.

    Book: {ref}`sec-starclip-model`

    ``frozen``: modalities whose tower is not trained at all.
    """
    return {m: ClipTower(encoders[m].model, config.embedding, config.proj_dim,
                         None if m in frozen else config.train_from, seed=config.seed + i)
            for i, m in enumerate(("apogee", "nirspec"))}


def pretrained_towers(encoders: dict) -> dict:
    """Frozen towers that embed with the StarNet encoders' 20 outputs (before alignment).

    Book: {ref}`sec-starclip-model`
    """
    return {m: ClipTower(run.model, "output", train_from=None) for m, run in encoders.items()}


def describe_inputs(pairs: PairParts, encoders: dict, settings: MockSettings, gaps) -> dict:
    """What a contrastive run's data depend on (enters its cache key).

    Book: {ref}`sec-starclip-training`
    """
    g = GapDistribution() if gaps is None else gaps
    return {"source": pairs.source.key, "split": pairs.split.key,
            "encoders": {m: r.meta["key"] for m, r in encoders.items()},
            "template": pairs.template["id"], "mock": settings.to_dict(),
            "gaps": np.round(g.table[["centre_A", "width_A"]].to_numpy(), 3).tolist()}


def train_starclip(pairs: PairParts, encoders: dict, config: ClipConfig = ClipConfig(),
                   settings: MockSettings = MockSettings(), gaps: GapDistribution | None = None,
                   progress: bool = True, retrain: bool = False) -> ClipRun:
    """Align the APOGEE and NIRSpec encoders contrastively on the training stars (cached).

    Book: {ref}`sec-starclip-training`

    Parameters
    ----------
    pairs : PairParts
    encoders : dict of str -> helpers.starnet.StarNetRun
        ``'apogee'`` and ``'nirspec'`` (:func:`helpers.starnet.pretrained_encoders`).
    config : ClipConfig
    settings : MockSettings
        The NIRSpec views' transforms (used when ``config.augment``).
    gaps : GapDistribution, optional
    progress, retrain : bool

    Returns
    -------
    ClipRun
        Towers ``'apogee'`` and ``'nirspec'``; ``history`` has the validation R@1 of both
        directions per epoch.
    """
    for m in ("apogee", "nirspec"):
        if m not in encoders:
            raise ValueError(f"encoders lacks the {m!r} StarNet run")
    train = {m: pairs.sets[m]["train"] for m in ("apogee", "nirspec")}
    if config.batch_size > len(train["apogee"]):
        raise ValueError(f"batch_size ({config.batch_size}) is larger than the "
                         f"{len(train['apogee'])} training pairs of the split")
    describe = describe_inputs(pairs, encoders, settings, gaps)
    describe["stars"] = "train"

    def make_data():
        chain = mock_chain(pairs, settings, gaps) if config.augment else None
        n = train["nirspec"]
        return (ModalityBatches(train["apogee"].flux),
                ModalityBatches(n.flux, n.observed, pairs.nirspec_error["train"], n.snr, chain))

    def validate(towers):
        return retrieval_validator(towers["apogee"], towers["nirspec"],
                                   pairs.sets["apogee"]["val"].flux,
                                   pairs.sets["nirspec"]["val"].flux)

    return train_clip(describe, config, lambda c: make_towers(encoders, c), make_data,
                      validate=validate, ids=train["apogee"].ids, progress=progress,
                      retrain=retrain, desc=f"StarCLIP ({config.embedding})")


def embed_parts(towers: dict, pairs: PairParts, part: str = "test",
                chain: MockJWST | None = None, seed: int = 0) -> dict:
    """Unit-length embeddings of a split part in both modalities.

    Book: {ref}`sec-starclip-retrieval`

    Parameters
    ----------
    towers : dict of str -> ClipTower
        ``'apogee'`` and ``'nirspec'``.
    pairs : PairParts
    part : {'train', 'val', 'test'}
    chain : MockJWST, optional
        Embed one mock-JWST view of the NIRSpec spectra (seeded by ``seed``) instead of the
        spectra as stored.
    seed : int

    Returns
    -------
    dict of str -> ndarray, shape (n, dim), float32
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    out = {"apogee": towers["apogee"].embed(pairs.sets["apogee"][part].flux)}
    if chain is None:
        out["nirspec"] = towers["nirspec"].embed(pairs.sets["nirspec"][part].flux)
    else:
        v = chain(pairs.view(part), np.random.default_rng([seed, 17]))
        out["nirspec"] = towers["nirspec"].embed(v.flux)
    return out
