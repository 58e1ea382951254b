"""StarCLIP's two towers and its loss: pretrained StarNet encoders, an embedding, InfoNCE.

Book: {ref}`sec-starclip-model`

A :class:`ClipTower` wraps a copy of a pretrained StarNet encoder (conv1 conv2 pool, FC 256,
FC 128, FC 20) and gives a star its embedding in one of two ways:

* ``embedding='output'``: the encoder's own 20 outputs (its standardised label estimates),
  as the essay does; before any contrastive training the two modalities already share
  this space, because both encoders predict the same labels;
* ``embedding='projection'``: a new projection head on the 128-unit layer (128 -> 128 ELU ->
  ``proj_dim``), as CLIP and AstroCLIP do; it starts random, so before training the two
  modalities share nothing.

``train_from`` says which stages contrastive training may change: ``'conv'`` (all),
``'fc1'`` (the fully connected layers, the convolutions frozen), ``'fc2'``, ``'out'`` (only
the last layer or the head) or ``None`` (a frozen tower). The frozen stages form a prefix of
the network; :meth:`ClipTower.prefix` computes it without gradients, so its output can be
computed once when the input does not change between epochs.

:func:`clip_loss` is the symmetric InfoNCE (cross-entropy) loss of CLIP with logits
``s * cos(z_a, z_b)``; AstroCLIP fixes s = 15.5 (not exponentiated, not learned); a
learnable scale is the alternative (:class:`LogitScale`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["STAGES", "EMBEDDINGS", "ESSAY_LOGIT_SCALE", "ClipTower", "LogitScale", "clip_loss"]

#: Stages of a StarNet encoder, input to output.
STAGES = ("conv", "fc1", "fc2", "out")
#: The two kinds of embedding.
EMBEDDINGS = ("output", "projection")
#: AstroCLIP's fixed logit scale: logits = 15.5 x cosine similarity.
ESSAY_LOGIT_SCALE = 15.5


class ClipTower(nn.Module):
    """One modality's side of StarCLIP: a StarNet encoder copy plus the embedding.

    Book: {ref}`sec-starclip-model`

    Parameters
    ----------
    encoder : helpers.starnet.StarNet
        A pretrained encoder (copied; the original is not changed). Anything with the
        attributes ``features``, ``fc1``, ``fc2``, ``fc3`` works.
    embedding : {'output', 'projection'}
    proj_dim : int
        Dimension of the projection head's output (``'projection'`` only).
    train_from : {'conv', 'fc1', 'fc2', 'out'} or None
        First stage that contrastive training changes; earlier stages stay frozen.
    seed : int
        Seed of the projection head's initialisation.

    Attributes
    ----------
    dim : int
        Embedding dimension.
    n_pixels : int
    """

    def __init__(self, encoder, embedding: str = "output", proj_dim: int = 20,
                 train_from: str | None = "fc1", seed: int = 0):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        if train_from is not None and train_from not in STAGES:
            raise ValueError(f"train_from must be one of {STAGES} or None, got {train_from!r}")
        if isinstance(proj_dim, bool) or int(proj_dim) != proj_dim or not 2 <= proj_dim <= 1024:
            raise ValueError(f"proj_dim must be an integer in [2, 1024], got {proj_dim!r}")
        self.encoder = copy.deepcopy(encoder)
        self.embedding = embedding
        self.train_from = train_from
        self.n_pixels = int(getattr(encoder, "n_pixels", 0))
        n_hidden = self.encoder.fc2.out_features
        if embedding == "projection":
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(int(seed))
            self.head = nn.Sequential(nn.Linear(n_hidden, n_hidden), nn.ELU(),
                                      nn.Linear(n_hidden, int(proj_dim)))
            torch.random.set_rng_state(gen_state)
            self.dim = int(proj_dim)
        else:
            self.head = None
            self.dim = int(self.encoder.fc3.out_features)
        first = len(STAGES) if train_from is None else STAGES.index(train_from)
        self.frozen = STAGES[:first]
        modules = {"conv": (self.encoder.conv1, self.encoder.conv2), "fc1": (self.encoder.fc1,),
                   "fc2": (self.encoder.fc2,),
                   "out": (self.head,) if self.head is not None else (self.encoder.fc3,)}
        for p in self.parameters():
            p.requires_grad_(False)
        for stage in STAGES[first:]:
            for m in modules[stage]:
                for p in m.parameters():
                    p.requires_grad_(True)

    @property
    def prefix_stages(self) -> tuple:
        """The frozen stages before the first trained one (at most conv, fc1, fc2)."""
        return tuple(s for s in self.frozen if s != "out")

    def _stage(self, stage: str, h: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        if stage == "conv":
            return enc.features(h)
        if stage == "fc1":
            return F.elu(enc.fc1(h))
        if stage == "fc2":
            return F.elu(enc.fc2(h))
        return self.head(h) if self.head is not None else enc.fc3(h)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the frozen prefix (no gradients); ``x`` itself if nothing is frozen."""
        with torch.no_grad():
            for stage in self.prefix_stages:
                x = self._stage(stage, x)
        return x

    def suffix(self, h: torch.Tensor) -> torch.Tensor:
        """The embedding (not normalised) from the output of :meth:`prefix`."""
        for stage in STAGES[len(self.prefix_stages):]:
            h = self._stage(stage, h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length embedding of spectra ``x``, shape (n, dim)."""
        return F.normalize(self.suffix(self.prefix(x)), dim=1)

    @torch.inference_mode()
    def embed(self, flux, batch_size: int = 1024) -> np.ndarray:
        """Unit-length embeddings of an array of prepared spectra, in batches (float32)."""
        self.eval()
        n = len(flux)
        out = np.empty((n, self.dim), np.float32)
        for s in range(0, n, batch_size):
            x = torch.from_numpy(np.array(flux[s:s + batch_size], dtype=np.float32))
            out[s:s + batch_size] = self(x).numpy()
        return out

    def trainable_parameters(self) -> list:
        """Parameters contrastive training updates."""
        return [p for p in self.parameters() if p.requires_grad]


class LogitScale(nn.Module):
    """The scale s of the logits s x cosine: fixed (AstroCLIP's 15.5) or learned.

    Book: {ref}`sec-starclip-model`

    Learned, it is parametrised as s = exp(t) (CLIP), starting from the given value and
    clamped to at most 100.
    """

    def __init__(self, value: float = ESSAY_LOGIT_SCALE, learnable: bool = False):
        super().__init__()
        if not (isinstance(value, (int, float)) and np.isfinite(value) and 0 < value <= 100):
            raise ValueError(f"logit_scale must be a number in (0, 100], got {value!r}")
        self.learnable = bool(learnable)
        t = torch.tensor(float(np.log(value)))
        self.log_scale = nn.Parameter(t, requires_grad=self.learnable)

    def forward(self) -> torch.Tensor:
        """The current scale."""
        return self.log_scale.clamp(max=float(np.log(100.0))).exp()


def clip_loss(za: torch.Tensor, zb: torch.Tensor, scale) -> torch.Tensor:
    """Symmetric InfoNCE: mean cross-entropy of matching a to b and b to a in a batch.

    Book: {ref}`sec-starclip-model`

    Parameters
    ----------
    za, zb : torch.Tensor, shape (B, d)
        Embeddings of the same B stars in two modalities (row i = star i); normalised here.
    scale : float or torch.Tensor
        Logit scale s: logits = s * cosine similarity.

    Returns
    -------
    torch.Tensor
        :math:`\\frac12 [\\mathrm{CE}(S, I) + \\mathrm{CE}(S^\\top, I)]` with
        :math:`S_{ij} = s \\cos(a_i, b_j)`.
    """
    if za.shape != zb.shape or za.ndim != 2:
        raise ValueError(f"clip_loss: embeddings of shape {tuple(za.shape)} and "
                         f"{tuple(zb.shape)} must both be (batch, dim) and equal")
    if za.shape[0] < 2:
        raise ValueError("clip_loss needs at least 2 stars per batch (one positive, >= 1 negative)")
    logits = scale * (F.normalize(za, dim=1) @ F.normalize(zb, dim=1).T)
    target = torch.arange(za.shape[0], device=za.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
