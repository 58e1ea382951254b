"""Contrastive training of two towers, with a fresh mock-JWST view per star and epoch.

Book: {ref}`sec-starclip-training`

:func:`fit_clip` is the loop: every epoch the training stars are permuted and cut into
batches of distinct stars (each star once per epoch, so never twice in a batch: a star
whose two spectra appeared twice would be its own negative); each side's spectra pass
through its transform (for NIRSpec, the mock-JWST chain, drawn afresh from a generator
seeded by (seed, epoch)), then through its tower; the loss is the symmetric InfoNCE of
:func:`helpers.starclip.model.clip_loss`. A side without a transform whose tower begins with
frozen stages has those stages computed once, before the first epoch.

:func:`train_clip` caches the result: the weights, the configuration and the training
curve are written to ``<cache>/starclip/runs/<key>/``, the key hashing every input that
changes the result (the caller's data description, the configuration, the code version).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm   # not tqdm.auto: its import warns on stderr in a kernel without ipywidgets

from helpers.paths import cache_dir
from helpers.progress import progress_enabled   # the package's one rule for progress bars

from .model import EMBEDDINGS, ESSAY_LOGIT_SCALE, STAGES, ClipTower, LogitScale, clip_loss
from .retrieval import retrieval
from .transforms import MockJWST, View

__all__ = ["CLIP_VERSION", "ClipConfig", "ModalityBatches", "fit_clip", "retrieval_validator",
           "ClipRun", "train_clip", "load_clip_run", "progress_enabled"]

#: Bump when the training code changes what a run computes (enters every key).
CLIP_VERSION = "1"
_FORMAT = "stars-ml-book/starclip-run/1"


@dataclass(frozen=True)
class ClipConfig:
    """Hyper-parameters of a contrastive run.

    Book: {ref}`sec-starclip-training`

    Attributes
    ----------
    epochs : int
        Passes over the training pairs (>= 1).
    batch_size : int
        Stars per batch (>= 2; at most the training stars).
    lr : float
        AdamW learning rate.
    weight_decay : float
        AdamW weight decay.
    schedule : {'cosine', 'constant'}
        Learning rate over the run: cosine decay to zero, or constant.
    embedding : {'output', 'projection'}
        See :class:`helpers.starclip.model.ClipTower`.
    proj_dim : int
        Projection head's output dimension.
    train_from : {'conv', 'fc1', 'fc2', 'out'}
        First stage trained (both towers; MockStarCLIP freezes one tower whole).
    logit_scale : float
        s of logits = s x cosine (AstroCLIP: 15.5).
    learn_scale : bool
        Learn s (starting from ``logit_scale``) instead of fixing it.
    augment : bool
        Pass NIRSpec spectra through the mock-JWST transforms (a fresh view per star and
        epoch).
    seed : int
        Seed of the batch order, the views and the head's initialisation.
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.01
    schedule: str = "cosine"
    embedding: str = "output"
    proj_dim: int = 20
    train_from: str = "fc1"
    logit_scale: float = ESSAY_LOGIT_SCALE
    learn_scale: bool = False
    augment: bool = True
    seed: int = 0

    def __post_init__(self):
        for name, low in (("epochs", 1), ("batch_size", 2), ("seed", 0), ("proj_dim", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"ClipConfig.{name} must be an integer >= {low}, got {v!r}")
            object.__setattr__(self, name, int(v))
        for name, low_open in (("lr", True), ("weight_decay", False), ("logit_scale", True)):
            v = getattr(self, name)
            ok = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and np.isfinite(v)
            if not ok or (v <= 0 if low_open else v < 0):
                raise ValueError(f"ClipConfig.{name} must be a {'positive' if low_open else 'non-negative'}"
                                 f" number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.logit_scale > 100:
            raise ValueError(f"ClipConfig.logit_scale must be <= 100, got {self.logit_scale!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"ClipConfig.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"ClipConfig.embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.train_from not in STAGES:
            raise ValueError(f"ClipConfig.train_from must be one of {STAGES}, got {self.train_from!r}")
        for name in ("learn_scale", "augment"):
            object.__setattr__(self, name, bool(getattr(self, name)))

    def to_dict(self) -> dict:
        """Plain dict (enters the run's key)."""
        return dataclasses.asdict(self)


class ModalityBatches:
    """One modality's spectra of the training (or evaluation) stars, and how a batch is made.

    Book: {ref}`sec-starclip-training`

    Parameters
    ----------
    flux : ndarray, shape (n, n_pixels), float32
        Network-ready flux (missing pixels already filled), in memory or memory-mapped.
    observed, error, snr : arrays, optional
        Needed when a ``transform`` is given (shapes (n, n_pixels), (n, n_pixels), (n,)).
    transform : MockJWST, optional
        Applied to every batch, with the generator the loop passes (a fresh view each time).
    """

    def __init__(self, flux, observed=None, error=None, snr=None, transform: MockJWST | None = None):
        self.flux = flux
        self.observed, self.error, self.snr = observed, error, snr
        self.transform = transform
        if transform is not None and (observed is None or error is None or snr is None):
            raise ValueError("ModalityBatches: a transform needs observed, error and snr")
        for name, a in (("observed", observed), ("error", error)):
            if a is not None and a.shape != flux.shape:
                raise ValueError(f"ModalityBatches: {name} has shape {a.shape}, flux {flux.shape}")
        if snr is not None and len(snr) != len(flux):
            raise ValueError(f"ModalityBatches: {len(snr)} S/N values for {len(flux)} spectra")

    def __len__(self) -> int:
        return int(self.flux.shape[0])

    def inputs(self, idx, rng: np.random.Generator | None) -> np.ndarray:
        """Network input of stars ``idx`` (sorted reads), transformed if a transform is set."""
        idx = np.asarray(idx)
        flux = np.asarray(self.flux[idx], dtype=np.float32)
        if self.transform is None:
            return flux
        if rng is None:
            raise ValueError("a transformed batch needs a random generator")
        view = View(flux, np.asarray(self.observed[idx]), np.asarray(self.error[idx]),
                    np.asarray(self.snr[idx]))
        return self.transform(view, rng).flux


def _prefix_all(tower: ClipTower, data: ModalityBatches, chunk: int = 1024) -> torch.Tensor:
    out = None
    for s in range(0, len(data), chunk):
        h = tower.prefix(torch.from_numpy(data.inputs(np.arange(s, min(s + chunk, len(data))),
                                                      None)))
        if out is None:
            out = torch.empty((len(data), h.shape[1]), dtype=h.dtype)
        out[s:s + h.shape[0]] = h
    return out


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list:
    perm = rng.permutation(n)
    cuts = list(range(0, n, batch_size))
    out = [np.sort(perm[c:c + batch_size]) for c in cuts]
    if len(out) > 1 and out[-1].size < 2:          # a batch of one star has no negative
        out[-2] = np.sort(np.concatenate([out[-2], out.pop()]))
    return out


def fit_clip(tower_a: ClipTower, tower_b: ClipTower, data_a: ModalityBatches,
             data_b: ModalityBatches, config: ClipConfig, validate=None, ids=None,
             progress: bool = True, desc: str = "CLIP", max_cache_bytes: float = 2.5e9
             ) -> pd.DataFrame:
    """Train two towers contrastively on paired spectra (row i of both = star i).

    Book: {ref}`sec-starclip-training`

    Parameters
    ----------
    tower_a, tower_b : ClipTower
        Changed in place; their frozen stages are not.
    data_a, data_b : ModalityBatches
        The same stars in the same order.
    config : ClipConfig
    validate : callable, optional
        ``validate() -> dict`` of figures, called after every epoch (towers in eval mode),
        recorded in the history.
    ids : array_like of str, optional
        Star identifiers of the rows; checked to be unique (no star twice in a batch).
    progress : bool
    desc : str
        Progress-bar label.
    max_cache_bytes : float
        A side without transform has its frozen prefix computed once if the result takes
        at most this much memory (APOGEE's convolution features of 11,875 stars: 1.6 GB),
        else at every batch.

    Returns
    -------
    pandas.DataFrame
        One row per epoch: ``epoch``, ``loss`` (mean training loss), ``lr``, ``scale``,
        ``seconds`` and the figures of ``validate``; ``attrs['prefix_seconds']`` is the
        time spent computing frozen prefixes once.
    """
    n = len(data_a)
    if len(data_b) != n:
        raise ValueError(f"the two modalities list {n} and {len(data_b)} stars: pairs must match")
    if config.batch_size > n:
        raise ValueError(f"batch_size ({config.batch_size}) is larger than the {n} training pairs")
    if ids is not None:
        ids = np.asarray(ids)
        if ids.size != n or np.unique(ids).size != n:
            raise ValueError("the training pairs must list each star once (a star twice would "
                             "be its own negative in a batch)")
    scale = LogitScale(config.logit_scale, config.learn_scale)
    params = tower_a.trainable_parameters() + tower_b.trainable_parameters()
    if config.learn_scale:
        params.append(scale.log_scale)
    if not params:
        raise ValueError("both towers are frozen: nothing to train")
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng([config.seed, 11])
    n_steps = config.epochs * len(_batches(n, config.batch_size, np.random.default_rng(0)))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps)
             if config.schedule == "cosine" else None)
    cached = {}
    t_prefix = time.perf_counter()
    for key, tower, data in (("a", tower_a, data_a), ("b", tower_b, data_b)):
        if data.transform is None and tower.prefix_stages:
            width = tower.prefix(torch.from_numpy(data.inputs(np.arange(1), None))).shape[1]
            if 4.0 * width * n <= max_cache_bytes:
                cached[key] = _prefix_all(tower, data)
    t_prefix = time.perf_counter() - t_prefix
    bar = tqdm(total=n_steps, desc=desc, unit="batch", disable=not progress_enabled(progress))
    history = []
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        view_rng = np.random.default_rng([config.seed, 13, epoch])
        tower_a.train()
        tower_b.train()
        total, count = 0.0, 0
        lr = opt.param_groups[0]["lr"]
        for idx in _batches(n, config.batch_size, rng):
            z = []
            for key, tower, data in (("a", tower_a, data_a), ("b", tower_b, data_b)):
                if key in cached:
                    h = cached[key][idx]
                else:
                    h = tower.prefix(torch.from_numpy(data.inputs(idx, view_rng)))
                z.append(tower.suffix(h))
            loss = clip_loss(z[0], z[1], scale())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * idx.size
            count += idx.size
            bar.update(1)
        row = {"epoch": epoch + 1, "loss": total / count, "lr": lr,
               "scale": float(scale().detach()), "seconds": time.perf_counter() - t0}
        if validate is not None:
            tower_a.eval()
            tower_b.eval()
            row.update(validate())
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
    bar.close()
    tower_a.eval()
    tower_b.eval()
    out = pd.DataFrame(history)
    out.attrs["prefix_seconds"] = t_prefix
    return out


def retrieval_validator(tower_a: ClipTower, tower_b: ClipTower, flux_a, flux_b):
    """A ``validate`` callable for :func:`fit_clip`: R@1 both ways on held-out pairs.

    Book: {ref}`sec-starclip-training`
    """
    def validate() -> dict:
        za, zb = tower_a.embed(flux_a), tower_b.embed(flux_b)
        return {"val_R@1_ba": retrieval(zb, za).metrics["R@1"],
                "val_R@1_ab": retrieval(za, zb).metrics["R@1"]}
    return validate


@dataclass
class ClipRun:
    """A trained (or loaded) pair of towers with its configuration and curve.

    Book: {ref}`sec-starclip-training`

    Attributes
    ----------
    towers : dict of str -> ClipTower
        By modality name (e.g. 'apogee', 'nirspec'), in evaluation mode.
    config : ClipConfig
    history : pandas.DataFrame
    meta : dict
        Key, data description, timings.
    path : pathlib.Path
    """

    towers: dict
    config: ClipConfig
    history: pd.DataFrame
    meta: dict
    path: Path

    @property
    def train_seconds(self) -> float:
        """Wall time of the training loop when the run was made."""
        return float(self.meta.get("train_seconds", float("nan")))


def _key(describe: dict, config: ClipConfig) -> str:
    blob = json.dumps({"format": _FORMAT, "version": CLIP_VERSION, "torch": torch.__version__,
                       "data": describe, "config": config.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_clip_run(path, make_towers) -> ClipRun:
    """Open a run folder written by :func:`train_clip`.

    Book: {ref}`sec-starclip-training`

    ``make_towers(config) -> dict of ClipTower`` builds towers of the right shape; their
    weights are then read from the folder.
    """
    p = Path(path)
    meta_path = p / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no StarCLIP run at {p} (no meta.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{p}: not a StarCLIP run of this version (format {meta.get('format')!r})")
    config = ClipConfig(**meta["config"])
    towers = make_towers(config)
    state = torch.load(p / "towers.pt", map_location="cpu", weights_only=True)
    for name, tower in towers.items():
        tower.load_state_dict(state[name])
        tower.eval()
    return ClipRun(towers=towers, config=config, history=pd.DataFrame(meta["history"]),
                   meta=meta, path=p)


def train_clip(describe: dict, config: ClipConfig, make_towers, make_data, validate=None,
               ids=None, progress: bool = True, retrain: bool = False, desc: str = "CLIP",
               folder: str = "runs") -> ClipRun:
    """Train two towers (or load the cached run with the same inputs).

    Book: {ref}`sec-starclip-training`

    Parameters
    ----------
    describe : dict
        JSON-able description of everything the data depend on (source, split, encoder
        runs, transform settings, stars used); enters the cache key with ``config``.
    config : ClipConfig
    make_towers : callable
        ``make_towers(config) -> {'a_name': ClipTower, 'b_name': ClipTower}`` (two, in the
        order of ``make_data``'s output).
    make_data : callable
        ``make_data() -> (ModalityBatches, ModalityBatches)``; called only when training.
    validate : callable, optional
        ``validate(towers) -> callable`` giving :func:`fit_clip`'s per-epoch figures.
    ids : array_like of str, optional
        Training stars (checked unique).
    progress, retrain, desc :
        Progress bar; train again even if cached; its label.
    folder : str
        Sub-folder of ``<cache>/starclip``.

    Returns
    -------
    ClipRun
    """
    if not isinstance(config, ClipConfig):
        raise TypeError(f"config must be a ClipConfig, got {type(config).__name__}")
    key = _key(describe, config)
    path = cache_dir("starclip", folder) / key
    if (path / "meta.json").exists() and not retrain:
        return load_clip_run(path, make_towers)
    towers = make_towers(config)
    if len(towers) != 2:
        raise ValueError("make_towers must return two towers")
    (name_a, tower_a), (name_b, tower_b) = towers.items()
    data_a, data_b = make_data()
    t0 = time.perf_counter()
    history = fit_clip(tower_a, tower_b, data_a, data_b, config,
                       validate=None if validate is None else validate(towers), ids=ids,
                       progress=progress, desc=desc)
    t_train = time.perf_counter() - t0
    meta = {"format": _FORMAT, "key": key, "version": CLIP_VERSION, "torch": torch.__version__,
            "data": describe, "config": config.to_dict(), "towers": [name_a, name_b],
            "n_pairs": len(data_a), "train_seconds": t_train,
            "prefix_seconds": history.attrs.get("prefix_seconds", 0.0),
            "n_threads": torch.get_num_threads(), "history": history.to_dict(orient="list")}
    tmp = path.parent / f".{key}.building-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        torch.save({name: t.state_dict() for name, t in towers.items()}, tmp / "towers.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ClipRun(towers=towers, config=config, history=history, meta=meta, path=path)
