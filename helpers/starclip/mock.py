"""MockStarCLIP: aligning mock-JWST views of NIRSpec spectra with the spectra as simulated.

Book: {ref}`sec-starclip-mock`

In the book's terms (the essay's catalogues are not public, so the book defines them):

* a star's **mock** spectrum is its NIRSpec twin as the survey simulates it (its own noise,
  error array and detector gap); the **mock encoder** is the pretrained StarNet NIRSpec
  encoder, frozen whole;
* its **extended-mock** spectrum is the same twin passed through the five mock-JWST
  transforms (i)-(v), drawn afresh at every epoch; the **extended-mock encoder** starts as a
  copy of the same encoder, with its convolutions frozen and its fully connected layers
  trained.

Training pairs (mock, extended-mock) of 500 training stars drawn as uniformly as possible
over 15 equal-width [Fe/H] bins (:func:`uniform_feh_sample`) teaches the extended-mock
encoder to put a degraded spectrum where the frozen encoder puts the clean one: a small,
label-balanced set, as a real NIRSpec programme with a few hundred APOGEE stars would give.
"""

from __future__ import annotations

import numpy as np

from helpers.starnet import LABEL_NAMES

from .model import ClipTower
from .pairs import MockSettings, PairParts, describe_inputs, mock_chain
from .retrieval import retrieval
from .train import ClipConfig, ClipRun, ModalityBatches, train_clip
from .transforms import GapDistribution

__all__ = ["MOCK_TOWERS", "uniform_feh_sample", "train_mock_starclip", "mock_towers"]

#: Tower names of a MockStarCLIP run: the frozen encoder, the trained one.
MOCK_TOWERS = ("mock", "extended")


def uniform_feh_sample(feh, n: int = 500, n_bins: int = 15, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` stars spread as evenly as possible over ``n_bins`` [Fe/H] bins.

    Book: {ref}`sec-starclip-mock`

    The bins divide the range of ``feh`` into equal widths. Every bin gets the same quota;
    a bin with fewer stars than its quota gives all it has and the rest is shared among
    the others (water filling), the last few by a seeded random choice; within a bin the
    stars are a seeded random draw.

    Parameters
    ----------
    feh : array_like, shape (n_stars,)
        [Fe/H] of the candidate stars (NaN: never chosen).
    n : int
        Stars to draw (1 <= n <= the finite values).
    n_bins : int
        1 <= n_bins <= n.
    seed : int

    Returns
    -------
    ndarray of int, shape (n,), sorted
    """
    x = np.asarray(feh, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(x))
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= ok.size:
        raise ValueError(f"n (MockStarCLIP stars) must be an integer in [1, {ok.size}] "
                         f"(candidate stars with [Fe/H]), got {n!r}")
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or not 1 <= n_bins <= n:
        raise ValueError(f"n_bins must be an integer in [1, n={n}], got {n_bins!r}")
    n, n_bins = int(n), int(n_bins)
    rng = np.random.default_rng([int(seed), 19])
    edges = np.linspace(x[ok].min(), x[ok].max(), n_bins + 1)
    which = np.clip(np.searchsorted(edges, x[ok], side="right") - 1, 0, n_bins - 1)
    members = [ok[which == b] for b in range(n_bins)]
    counts = np.array([m.size for m in members])
    take = np.zeros(n_bins, dtype=np.int64)
    remaining, left = n, n_bins
    for b in np.argsort(counts, kind="stable"):          # smallest bins first
        take[b] = min(counts[b], remaining // left)
        remaining -= take[b]
        left -= 1
    while remaining > 0:                                  # integer remainders
        spare = np.flatnonzero(take < counts)
        extra = rng.choice(spare, min(remaining, spare.size), replace=False)
        take[extra] += 1
        remaining -= extra.size
    chosen = [rng.choice(m, k, replace=False) for m, k in zip(members, take) if k]
    return np.sort(np.concatenate(chosen))


def mock_towers(nirspec_run, config: ClipConfig) -> dict:
    """The frozen mock tower and the trainable extended-mock tower (both from StarNet NIRSpec).

    Book: {ref}`sec-starclip-mock`
    """
    if config.embedding != "output":
        raise ValueError("MockStarCLIP aligns with the frozen encoder's own 20 outputs: "
                         "config.embedding must be 'output'")
    return {"mock": ClipTower(nirspec_run.model, "output", train_from=None),
            "extended": ClipTower(nirspec_run.model, "output", train_from=config.train_from,
                                  seed=config.seed)}


def train_mock_starclip(pairs: PairParts, nirspec_run, config: ClipConfig,
                        settings: MockSettings = MockSettings(), n_stars: int = 500,
                        n_bins: int = 15, sample_seed: int = 0,
                        gaps: GapDistribution | None = None, progress: bool = True,
                        retrain: bool = False) -> tuple:
    """Train MockStarCLIP on ``n_stars`` training stars spread over ``n_bins`` [Fe/H] bins.

    Book: {ref}`sec-starclip-mock`

    Parameters
    ----------
    pairs : PairParts
    nirspec_run : helpers.starnet.StarNetRun
        The pretrained NIRSpec encoder.
    config : ClipConfig
        ``embedding`` must be 'output'; ``train_from`` applies to the extended-mock
        encoder (the essay: the fully connected layers, 'fc1'); ``augment`` is ignored (the
        extended-mock view is always transformed).
    settings : MockSettings
    n_stars, n_bins, sample_seed :
        See :func:`uniform_feh_sample` (over the training stars' true [Fe/H], or allStar
        [Fe/H] for real data).
    gaps : GapDistribution, optional
    progress, retrain : bool

    Returns
    -------
    run : ClipRun
        Towers ``'mock'`` (frozen) and ``'extended'``; ``history`` with the validation R@1
        (extended-mock view -> mock) per epoch.
    chosen : ndarray of int
        Rows of the training part used.
    """
    train = pairs.sets["nirspec"]["train"]
    kind = "true" if pairs.source.truth is not None else "aspcap"
    feh = pairs.source.labels(train.ids, kind)[:, LABEL_NAMES.index("FE_H")]
    chosen = uniform_feh_sample(feh, n_stars, n_bins, sample_seed)
    if config.batch_size > chosen.size:
        raise ValueError(f"batch_size ({config.batch_size}) is larger than the {chosen.size} "
                         "MockStarCLIP training stars")
    describe = describe_inputs(pairs, {"nirspec": nirspec_run}, settings, gaps)
    describe.update(stars="mock", n_stars=int(n_stars), n_bins=int(n_bins),
                    sample_seed=int(sample_seed))
    chain = mock_chain(pairs, settings, gaps)

    def make_data():
        err = pairs.nirspec_error["train"][chosen]
        flux = np.asarray(train.flux[chosen])
        return (ModalityBatches(flux),
                ModalityBatches(flux, np.asarray(train.observed[chosen]), err,
                                train.snr[chosen], chain))

    val = pairs.sets["nirspec"]["val"]
    val_view = chain(pairs.view("val"), np.random.default_rng([int(sample_seed), 23])).flux

    def validate(towers):
        def figures():
            zm = towers["mock"].embed(val.flux)
            ze = towers["extended"].embed(val_view)
            return {"val_R@1": retrieval(ze, zm).metrics["R@1"]}
        return figures

    run = train_clip(describe, config, lambda c: mock_towers(nirspec_run, c), make_data,
                     validate=validate, ids=train.ids[chosen], progress=progress,
                     retrain=retrain, desc="MockStarCLIP", folder="mock")
    return run, chosen
