"""Training StarNet: one cached run per (data, split, modality, labels, hyper-parameters, seed).

Book: {ref}`sec-starnet-training`

:func:`train_starnet` trains the encoder of :mod:`helpers.starnet.model` with the essay's
recipe (AdamW, lr 1e-3, StepLR(5, 0.1), 15 epochs, batch 64; all :class:`TrainConfig`
fields) on the training part of a split, records the training and validation curves,
calibrates the uncertainty head on the validation part, and writes the run to
``<cache>/starnet/runs/<key>/``: ``model.pt`` (weights), ``scaler.json`` (the label
standardisation), ``fill.npy`` (the missing-pixel fill) and ``meta.json`` (configuration,
curves, calibration, grid). The key hashes every input that changes the result, so a
second call with the same inputs (in this chapter or in the StarCLIP chapter) only loads
the files, and any change trains a new run.
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

from helpers.paths import cache_dir
from helpers.progress import progress_enabled   # re-exported: helpers.starnet.progress_enabled

from .data import SpectraSet, StarnetSource, starnet_data
from .evaluate import unit_rms_scale
from .labels import LABEL_KINDS, LABEL_NAMES, LabelScaler
from .model import PRECISIONS, StarNet, training_step
from .speed import fast_allocation, torch_threads
from .split import StarSplit

__all__ = ["MODEL_VERSION", "ESSAY_CONFIG", "TrainConfig", "StarNetRun", "train_starnet", "load_run",
           "pretrained_encoders", "progress_enabled", "train_epoch", "centred_rms", "pixel_rms"]

#: Bump when the model or the training code changes what a run computes (enters the key).
MODEL_VERSION = "2"
_FORMAT = "stars-ml-book/starnet-run/1"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a StarNet run (the book's defaults; the essay's in :data:`ESSAY_CONFIG`).

    Book: {ref}`sec-starnet-training`

    Attributes
    ----------
    epochs : int
        Passes over the training part (>= 1). Default 5, to fit the book's build time; the
        essay trains 15.
    batch_size : int
        Spectra per optimiser step.
    lr : float
        AdamW learning rate.
    weight_decay : float
        AdamW weight decay (PyTorch's default, 0.01).
    step_size, gamma : int, float
        StepLR: the learning rate is multiplied by ``gamma`` every ``step_size`` epochs
        (default 3, so that the last two of the 5 epochs run at a tenth; the essay: 5).
    seed : int
        Seed of the weights' initialisation and of the batch order.
    input_scaling : {'centred', 'pixel', 'none'}
        'centred': the network sees each spectrum minus the training stars' mean spectrum,
        divided by one number, the RMS of that difference over the training stars' observed
        pixels (a missing pixel, filled with the mean, becomes exactly 0); 'pixel': the same
        difference divided pixel by pixel by its standard deviation over the training stars
        (:func:`pixel_rms`; an opt-in the book does not use);
        'none': the flux as it is (the essay).
    precision : {'bf16-fc', 'float32'}
        Arithmetic of the training steps: 'bf16-fc' (default), the fully connected layers
        under bfloat16 autocast: their products in bfloat16 on float32 master weights, the
        convolutions, the loss and the optimiser in float32 (mixed precision); or 'float32'
        throughout. On a processor with bfloat16 instructions (avx512_bf16 or AMX, as this
        book's machine) a step is about 1.2x faster; elsewhere bfloat16 is emulated and
        'float32' is the faster choice. Its effect on the test-split RMSE is measured in
        the chapter ({ref}`sec-starnet-precision`). Predictions are float32 either way.
        Enters the run's key only when not 'float32', so float32 runs cached before the
        field existed keep their keys.
    threads : int or None
        torch's intra-op threads during the training (restored after); None (default):
        torch's current setting, one per core unless changed. One thread is faster when
        other jobs share the cores. Changes no number beyond float rounding, so it is
        **not** part of the run's key (:meth:`key_dict`).
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    step_size: int = 3
    gamma: float = 0.1
    seed: int = 0
    input_scaling: str = "centred"
    precision: str = "bf16-fc"
    threads: int | None = None

    def __post_init__(self):
        for name, low in (("epochs", 1), ("batch_size", 1), ("step_size", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                what = "an epoch count" if name == "epochs" else "an integer"
                raise ValueError(f"TrainConfig.{name} must be {what} >= {low}, got {v!r}")
            object.__setattr__(self, name, int(v))
        for name in ("lr", "gamma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating)) and np.isfinite(v) and v > 0):
                raise ValueError(f"TrainConfig.{name} must be a positive number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.input_scaling not in ("centred", "pixel", "none"):
            raise ValueError(f"TrainConfig.input_scaling must be 'centred', 'pixel' or 'none', got "
                             f"{self.input_scaling!r}")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        object.__setattr__(self, "weight_decay", float(self.weight_decay))
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got "
                             f"{self.precision!r}")
        t = self.threads
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
                raise ValueError(f"TrainConfig.threads must be None or an integer >= 1, "
                                 f"got {t!r}")
            object.__setattr__(self, "threads", int(t))

    def to_dict(self) -> dict:
        """Plain dict of every field (recorded in the run's ``meta.json``)."""
        return dataclasses.asdict(self)

    def key_dict(self) -> dict:
        """The fields that enter the run's key: all but ``threads`` (no effect on the
        numbers beyond float rounding), and ``precision`` only when not 'float32'."""
        d = self.to_dict()
        del d["threads"]
        if d["precision"] == "float32":
            del d["precision"]
        return d


#: The essay's recipe: 15 epochs, StepLR every 5, the flux fed as it is, float32.
ESSAY_CONFIG = TrainConfig(epochs=15, step_size=5, input_scaling="none", precision="float32")


@dataclass
class StarNetRun:
    """A trained StarNet: model, label scaler, curves, calibration; loaded from its folder.

    Book: {ref}`sec-starnet-training`

    Attributes
    ----------
    model : StarNet
        In evaluation mode.
    scaler : LabelScaler
    fill : ndarray, shape (n_pixels,), float32
        Flux put in missing pixels (the training part's mean).
    meta : dict
        Key, source, split, modality, label kind, configuration, grid, calibration factors
        (``sigma_scale``), timings.
    history : pandas.DataFrame
        One row per epoch: ``train_loss`` (MSE of standardised labels), ``val_loss``,
        ``val_nll``, ``lr``, ``seconds``.
    path : pathlib.Path
    """

    model: StarNet
    scaler: LabelScaler
    fill: np.ndarray
    meta: dict
    history: pd.DataFrame
    path: Path

    @property
    def modality(self) -> str:
        """'apogee' or 'nirspec'."""
        return self.meta["modality"]

    @property
    def labels(self) -> str:
        """Label kind it was trained on: 'true' or 'aspcap'."""
        return self.meta["labels"]

    @property
    def sigma_scale(self) -> np.ndarray:
        """Per-label factor that calibrates the variance head on the validation part."""
        return np.asarray(self.meta["sigma_scale"], dtype=np.float64)

    def check_grid(self, n_pixels: int, wavelength=None) -> None:
        """Raise a clear ``ValueError`` if spectra are not on the grid the run was trained on."""
        g = self.meta["grid"]
        if n_pixels != g["n_pixels"]:
            raise ValueError(f"spectra on another grid: this {self.modality} StarNet was "
                             f"trained on {g['n_pixels']} pixels ({g['wmin']:.1f}-"
                             f"{g['wmax']:.1f} A), got spectra of {n_pixels} pixels")
        if wavelength is not None:
            w = np.asarray(wavelength, dtype=np.float64)
            if w.size != g["n_pixels"] or not np.allclose([w[0], w[-1]], [g["wmin"], g["wmax"]],
                                                          rtol=1e-7):
                raise ValueError(f"spectra on another grid: trained on {g['wmin']:.2f}-"
                                 f"{g['wmax']:.2f} A, got {w[0]:.2f}-{w[-1]:.2f} A")

    def prepare(self, flux, observed=None) -> np.ndarray:
        """Spectra ready for the network: float32, missing pixels set to the fill.

        Missing = ``~observed`` if given, else non-finite or exactly 0.
        """
        f = np.array(flux, dtype=np.float32, copy=True)
        if f.ndim == 1:
            f = f[None]
        self.check_grid(f.shape[1])
        bad = ~np.asarray(observed, bool) if observed is not None else ~np.isfinite(f) | (f == 0)
        if bad.any():
            f[bad] = np.broadcast_to(self.fill, f.shape)[bad]
        return f


def _run_key(source: StarnetSource, split: StarSplit, modality: str, labels: str,
             data_path: Path, config: TrainConfig) -> str:
    blob = json.dumps({"format": _FORMAT, "version": MODEL_VERSION, "torch": torch.__version__,
                       "source": source.key, "split": split.key, "modality": modality,
                       "labels": labels, "data": data_path.name, "config": config.key_dict()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_run(path) -> StarNetRun:
    """Open a run folder written by :func:`train_starnet`.

    Book: {ref}`sec-starnet-training`
    """
    p = Path(path)
    meta_path = p / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no StarNet run at {p} (no meta.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{p}: not a StarNet run of this version (format {meta.get('format')!r})")
    model = StarNet(meta["grid"]["n_pixels"], len(meta["label_names"]))
    model.load_state_dict(torch.load(p / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return StarNetRun(model=model, scaler=LabelScaler.from_json((p / "scaler.json").read_text()),
                      fill=np.load(p / "fill.npy"), meta=meta,
                      history=pd.DataFrame(meta["history"]), path=p)


def _masked_targets(y: np.ndarray, scaler: LabelScaler) -> tuple:
    z = scaler.transform(y)
    w = np.isfinite(z)
    return torch.from_numpy(np.where(w, z, 0).astype(np.float32)), \
        torch.from_numpy(w.astype(np.float32))


@torch.inference_mode()
def _predict_std(model: StarNet, data, batch_size: int = 256) -> tuple:
    """Standardised means and log variances of every row of ``data`` (SpectraSet or array)."""
    n = len(data)
    mu = np.empty((n, model.n_labels), np.float32)
    lv = np.empty((n, model.n_labels), np.float32)
    for s in range(0, n, batch_size):
        x = torch.from_numpy(np.array(data[s:s + batch_size], dtype=np.float32))
        m, v = model.predict_with_logvar(x)
        mu[s:s + batch_size] = m.numpy()
        lv[s:s + batch_size] = v.numpy()
    return mu, lv


def _centred_sums(data: SpectraSet, chunk: int = 1024) -> tuple:
    """Per pixel: the sum of (flux - training mean spectrum)^2 over observed values, and their count."""
    total = np.zeros(data.n_pixels)
    count = np.zeros(data.n_pixels)
    for s in range(0, len(data), chunk):
        d = np.asarray(data.flux[s:s + chunk], np.float64) - data.fill
        ok = np.asarray(data.observed[s:s + chunk])
        total += np.where(ok, d * d, 0).sum(axis=0)
        count += ok.sum(axis=0)
    if count.sum() == 0 or total.sum() <= 0:
        raise ValueError("the training spectra have no observed pixel that varies")
    return total, count


def centred_rms(data: SpectraSet, chunk: int = 1024) -> float:
    """RMS of (flux - training mean spectrum) over the observed pixels of a data set.

    Book: {ref}`sec-starnet-training`
    """
    total, count = _centred_sums(data, chunk)
    return float(np.sqrt(total.sum() / count.sum()))


def pixel_rms(data: SpectraSet, chunk: int = 1024) -> np.ndarray:
    """Per-pixel RMS of (flux - training mean spectrum) over the observed values of a data set.

    Book: {ref}`sec-starnet-training`

    Returns
    -------
    ndarray, shape (n_pixels,)
        Pixels observed in fewer than two stars, or that never vary, get the RMS over all
        pixels (what :func:`centred_rms` returns, from the same sums), so that their
        (constant) input is not blown up.
    """
    total, count = _centred_sums(data, chunk)
    rms = np.sqrt(total / np.maximum(count, 1))
    bad = (count < 2) | ~(rms > 0)
    rms[bad] = np.sqrt(total.sum() / count.sum())
    return rms


def train_epoch(model: StarNet, opt: torch.optim.Optimizer, data: SpectraSet, targets, weights,
                batch_size: int, generator: torch.Generator, bar=None) -> float:
    """One pass over ``data`` in random batches; returns the mean training MSE.

    Book: {ref}`sec-starnet-training`

    Parameters
    ----------
    model, opt : StarNet, torch.optim.Optimizer
    data : SpectraSet
        The training part (rows are read in sorted order within a batch).
    targets, weights : torch.Tensor, shape (n, n_labels)
        Standardised labels and their presence weights, rows as in ``data``.
    batch_size : int
        The last partial batch is dropped.
    generator : torch.Generator
        Draws the batch order (seeded: same seed, same order).
    bar : tqdm or None
        Advanced by one per batch.
    """
    model.train()
    perm = torch.randperm(len(data), generator=generator).numpy()
    n_batches = len(data) // batch_size
    total = 0.0
    for b in range(n_batches):
        idx = np.sort(perm[b * batch_size:(b + 1) * batch_size])
        x = torch.from_numpy(data.rows(idx))
        total += training_step(model, opt, x, targets[idx], weights[idx])
        if bar is not None:
            bar.update(1)
    return total / max(n_batches, 1)


def train_starnet(source: StarnetSource, split: StarSplit, modality: str = "apogee",
                  labels: str = "true", config: TrainConfig | None = None,
                  max_error="default", progress: bool = True, retrain: bool = False
                  ) -> StarNetRun:
    """Train (or load the cached) StarNet encoder of one modality.

    Book: {ref}`sec-starnet-training`

    Parameters
    ----------
    source : StarnetSource
    split : StarSplit
        Training uses ``split.train``; the curves and the calibration ``split.val``;
        ``split.test`` is never read here.
    modality : {'apogee', 'nirspec'}
    labels : {'true', 'aspcap'}
        The survey's true labels, or the allStar (ASPCAP-like) ones; missing allStar
        abundances are left out of the loss.
    config : TrainConfig, optional
        Default ``TrainConfig()`` (the essay's recipe).
    max_error : float, None or 'default'
        Censoring threshold of :func:`helpers.starnet.data.starnet_data`.
    progress : bool
        Show a tqdm bar (quiet under CI or ``TQDM_DISABLE=1``).
    retrain : bool
        Train again even if the run exists (the files are replaced).

    Returns
    -------
    StarNetRun
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if labels not in LABEL_KINDS:
        raise ValueError(f"labels must be one of {LABEL_KINDS}, got {labels!r}")
    data = starnet_data(source, split, modality, max_error)
    key = _run_key(source, split, modality, labels, data["train"].path, config)
    folder = cache_dir("starnet", "runs") / key
    if (folder / "meta.json").exists() and not retrain:
        return load_run(folder)
    train, val = data["train"], data["val"]
    y_train = source.labels(train.ids, labels)
    y_val = source.labels(val.ids, labels)
    scaler = LabelScaler.fit(y_train)
    zt, wt = _masked_targets(y_train, scaler)
    zv, wv = _masked_targets(y_val, scaler)
    if len(train) < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(train)} training "
                         "spectra")

    torch.manual_seed(config.seed)
    model = StarNet(train.n_pixels, len(LABEL_NAMES), precision=config.precision)
    if config.input_scaling == "centred":
        model.set_input_scaling(train.fill, 1.0 / centred_rms(train))
    elif config.input_scaling == "pixel":
        model.set_input_scaling(train.fill, 1.0 / pixel_rms(train))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            fused=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.step_size, gamma=config.gamma)
    gen = torch.Generator().manual_seed(config.seed)
    n_batches = len(train) // config.batch_size      # the last partial batch is dropped
    history = []
    bar = None
    if progress_enabled(progress):
        # imported on use: in a Jupyter kernel without ipywidgets tqdm.auto warns on import
        from tqdm.auto import tqdm
        bar = tqdm(total=config.epochs * n_batches, desc=f"StarNet {modality}/{labels}",
                   unit="batch")
    t_start = time.perf_counter()
    with fast_allocation(), torch_threads(config.threads):
        n_threads = torch.get_num_threads()
        for epoch in range(config.epochs):
            t0 = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            total = train_epoch(model, opt, train, zt, wt, config.batch_size, gen, bar)
            sched.step()
            model.eval()
            mu_v, lv_v = _predict_std(model, val)
            mu_v, lv_v = torch.from_numpy(mu_v), torch.from_numpy(lv_v)
            val_loss = float((wv * (mu_v - zv) ** 2).sum() / wv.sum())
            val_nll = float((wv * 0.5 * (lv_v + (zv - mu_v) ** 2 * torch.exp(-lv_v))).sum()
                            / wv.sum())
            history.append({"epoch": epoch + 1, "train_loss": total,
                            "val_loss": val_loss, "val_nll": val_nll, "lr": lr,
                            "seconds": time.perf_counter() - t0})
            if bar is not None:
                bar.set_postfix(epoch=epoch + 1, train=f"{total:.4f}", val=f"{val_loss:.4f}")
    if bar is not None:
        bar.close()
    t_train = time.perf_counter() - t_start
    # calibration: per label, the factor that makes (y - mu) / sigma have unit RMS on val
    mu_v, lv_v = mu_v.numpy(), lv_v.numpy()
    zres = np.where(wv.numpy() > 0, (zv.numpy() - mu_v) * np.exp(-0.5 * lv_v), np.nan)
    sigma_scale = unit_rms_scale(zres)
    wave = train.wavelength
    meta = {"format": _FORMAT, "key": key, "version": MODEL_VERSION, "torch": torch.__version__,
            "source": source.key, "split": split.key, "split_seed": split.seed,
            "modality": modality, "labels": labels, "label_names": list(LABEL_NAMES),
            "data": train.path.name, "config": config.to_dict(),
            "grid": {"n_pixels": int(train.n_pixels), "wmin": float(wave[0]),
                     "wmax": float(wave[-1])},
            "sizes": {p: len(d) for p, d in data.items()},
            "sigma_scale": sigma_scale.tolist(), "train_seconds": t_train,
            "n_threads": n_threads, "history": history}
    tmp = folder.parent / f".{key}.building-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "scaler.json").write_text(scaler.to_json())
        np.save(tmp / "fill.npy", train.fill)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_run(folder)


def pretrained_encoders(source: StarnetSource, split: StarSplit, labels: str = "true",
                        config: TrainConfig | None = None, progress: bool = True) -> dict:
    """The StarNet run of every modality of ``source``, trained once and cached.

    Book: {ref}`sec-starnet-training`

    With the StarNet chapter's parameters (the default ``config``) this loads the
    weights that chapter trained; otherwise it trains them.

    Returns
    -------
    dict of str -> StarNetRun
        ``'apogee'`` and, for the synthetic survey, ``'nirspec'``.
    """
    return {m: train_starnet(source, split, m, labels, config, progress=progress)
            for m in source.modalities}
