"""The StarNet chapter's set-up in one call: parameters checked, data opened, split read.

Book: {ref}`ch-starnet`
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import StarnetSource, starnet_source
from .split import StarSplit, starnet_split
from .train import TrainConfig

__all__ = ["ChapterSetup", "chapter_setup"]


@dataclass
class ChapterSetup:
    """What the StarNet (and StarCLIP) chapter works with.

    Book: {ref}`ch-starnet`

    Attributes
    ----------
    source : StarnetSource
    split : StarSplit
    config : TrainConfig
    modalities : tuple of str
        ('apogee', 'nirspec') for the synthetic survey, ('apogee',) for real files.
    label_kinds : tuple of str
        ('true', 'aspcap') for the synthetic survey, ('aspcap',) for real files.
    has_truth : bool
    """

    source: StarnetSource
    split: StarSplit
    config: TrainConfig
    modalities: tuple
    label_kinds: tuple
    has_truth: bool


def chapter_setup(n_field, survey_seed, apogee_cache, max_real_stars, split_seed, epochs,
                  batch_size, lr, step_size, gamma, seed, n_boot,
                  input_scaling="centred", threads=None, precision="bf16-fc") -> ChapterSetup:
    """Check the chapter's parameters, open its data and read (or draw once) its split.

    Book: {ref}`ch-starnet`

    Every argument is the chapter parameter of the same name; a bad one raises a
    ``ValueError`` that names it. ``threads``: torch threads of the trainings
    (:class:`TrainConfig`; not part of a run's key). ``precision``: arithmetic of the
    training steps (:class:`TrainConfig`; {ref}`sec-starnet-precision`).
    """
    for name, v in (("split_seed", split_seed), ("n_boot", n_boot)):
        if isinstance(v, bool) or int(v) != v or v < (0 if name == "split_seed" else 2):
            raise ValueError(f"{name} must be an integer >= {0 if name == 'split_seed' else 2}, "
                             f"got {v!r}")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, step_size=step_size,
                         gamma=gamma, seed=seed, input_scaling=input_scaling,
                         threads=threads, precision=precision)
    source = starnet_source(n_field=n_field, survey_seed=survey_seed, apogee_cache=apogee_cache,
                            max_real_stars=max_real_stars)
    split = starnet_split(source, seed=int(split_seed))
    if config.batch_size > split.sizes["train"]:
        raise ValueError(f"batch_size ({config.batch_size}) exceeds the {split.sizes['train']} "
                         "training stars")
    has_truth = source.truth is not None
    return ChapterSetup(source=source, split=split, config=config,
                        modalities=source.modalities,
                        label_kinds=("true", "aspcap") if has_truth else ("aspcap",),
                        has_truth=has_truth)
