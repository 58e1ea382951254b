"""The StarNet encoder of the StarCLIP essay, with a fast CPU implementation of its convolutions.

Book: {ref}`sec-starnet-architecture`

The network (Fabbro et al. 2018; the essay's encoder) maps a spectrum of ``n_pixels``
fluxes to 20 labels::

    conv1d(1 -> 4, k=8) ELU  conv1d(4 -> 16, k=8) ELU  max-pool 4  flatten
    FC 256 ELU  FC 128 ELU  FC 20

plus, beyond the essay, a second linear head on the 128 units that predicts the log
variance of each label (:class:`StarNet`; see the section on uncertainties).

Two implementations of the convolutional block compute the same function:

* ``impl='reference'``: ``torch.nn.functional.conv1d``, ELU, ``max_pool1d``;
* ``impl='fast'`` (default): each convolution as one matrix product on an unfolded copy of
  its input in (position, channel) order, ELU applied after the max-pool (ELU is
  increasing, so ``pool(elu(z)) == elu(pool(z))`` and four times fewer values pass through
  it), and a hand-written backward pass whose input gradient of the second convolution is
  two products with block-Toeplitz matrices instead of a scatter of 8 shifted copies.
  oneDNN's convolutions are slow for 1 and 4 channels on this CPU; this block is several
  times faster (``benchmarks/README_starnet.md``).

The pooled features are flattened position-major (pixel, then channel); PyTorch's
``nn.Flatten`` on an (N, C, L) tensor is channel-major. That is a fixed permutation of the
256 x (16 L) input weights of the first fully connected layer, so the two are the same
network; :meth:`StarNet.reference_state_dict` converts, and a test checks outputs and
gradients against a plain ``torch.nn.Sequential``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["KERNEL", "POOL", "StarNet", "pooled_length", "reference_sequential"]

#: Kernel width of both convolutions and the max-pool width (the essay's values).
KERNEL = 8
POOL = 4
_C1, _C2 = 4, 16


def pooled_length(n_pixels: int) -> int:
    """Pooled positions after the two convolutions and the max-pool: (n - 14) // 4.

    Book: {ref}`sec-starnet-architecture`
    """
    return (int(n_pixels) - 2 * (KERNEL - 1)) // POOL


@functools.lru_cache(maxsize=None)
def _toeplitz_index() -> tuple:
    """Index maps of the block-Toeplitz matrices of the second convolution's input gradient.

    For blocks of 8 positions, ``gh1[block s] = G[s] @ A + G[s - 1] @ B`` with ``G`` the
    output gradient in (position, channel) order; ``A`` and ``B`` (128 x 32) hold entries
    of the weight ``W[co, c, k]`` at the returned flat indices (-1: zero).
    """
    ia = -np.ones((8 * _C2, 8 * _C1), np.int64)
    ib = -np.ones((8 * _C2, 8 * _C1), np.int64)
    for r in range(8):
        for k in range(KERNEL):
            for co in range(_C2):
                for c in range(_C1):
                    w = (co * _C1 + c) * KERNEL + k
                    if k <= r:
                        ia[(r - k) * _C2 + co, r * _C1 + c] = w
                    else:
                        ib[(8 + r - k) * _C2 + co, r * _C1 + c] = w
    return torch.from_numpy(ia), torch.from_numpy(ib)


def _toeplitz(w2: torch.Tensor) -> tuple:
    flat = torch.cat([w2.reshape(-1), w2.new_zeros(1)])
    ia, ib = _toeplitz_index()
    return flat[ia], flat[ib]


class _ConvBlock(torch.autograd.Function):
    """conv1 ELU conv2 max-pool ELU, in (batch, position, channel) layout; see module doc."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        n, p = x.shape
        l1 = p - (KERNEL - 1)
        l3 = (l1 - (KERNEL - 1)) // POOL
        n2 = POOL * l3
        s_h = -(-l1 // 8)                      # blocks of 8 positions covering conv1's output
        rows = (s_h + 1) * 8                   # one zero block in front (see backward)
        # conv1 as a product: windows of 8 pixels (a strided view, copied once)
        u1 = x.unfold(1, KERNEL, 1).reshape(n * l1, KERNEL)
        z1 = torch.addmm(b1, u1, w1.reshape(_C1, KERNEL).t())
        h1 = F.elu(z1).view(n, l1, _C1)
        # conv2: windows of 8 positions x 4 channels = 32 consecutive floats of h1
        u2 = x.new_zeros((n, rows, KERNEL * _C1))
        u2[:, 8:8 + n2].copy_(h1.view(n, l1 * _C1).unfold(1, KERNEL * _C1, _C1)[:, :n2])
        w2m = w2.permute(2, 1, 0).reshape(KERNEL * _C1, _C2)      # [(k, c), co]
        z2 = torch.addmm(b2, u2.view(-1, KERNEL * _C1), w2m).view(n, rows, _C2)
        zz = z2[:, 8:8 + n2].view(n, l3, POOL, _C2)
        m01 = torch.maximum(zz[:, :, 0], zz[:, :, 1])
        m23 = torch.maximum(zz[:, :, 2], zz[:, :, 3])
        pooled = torch.maximum(m01, m23)
        out = F.elu(pooled)
        if any(ctx.needs_input_grad[1:]):
            # index of the maximum, the first one on ties (as max_pool1d)
            idx = torch.where(m23 > m01, (zz[:, :, 3] > zz[:, :, 2]).to(torch.int64) + 2,
                              (zz[:, :, 1] > zz[:, :, 0]).to(torch.int64))
            ctx.save_for_backward(u1, h1, u2, idx, out, w2)
            ctx.geometry = (n, l1, l3, n2, s_h, rows)
        if ctx.needs_input_grad[0]:
            ctx.input_grad = True
        return out.reshape(n, l3 * _C2)

    @staticmethod
    def backward(ctx, gout):
        if getattr(ctx, "input_grad", False):
            raise NotImplementedError("StarNet's fast convolution block does not compute "
                                      "gradients with respect to the spectra; use "
                                      "impl='reference' for that")
        u1, h1, u2, idx, out, w2 = ctx.saved_tensors
        n, l1, l3, n2, s_h, rows = ctx.geometry
        gm = gout.reshape(n, l3, _C2) * torch.where(out > 0, 1.0, out + 1.0)
        # gradient of conv2's output: gm at the position of each maximum, zero elsewhere,
        # stored in blocks of 8 positions after one zero block
        g = gm.new_zeros((n, rows, _C2))
        g[:, 8:8 + n2].view(n, l3, POOL, _C2).scatter_(2, idx.unsqueeze(2), gm.unsqueeze(2))
        gw2 = (u2.view(-1, KERNEL * _C1).t() @ g.view(-1, _C2))
        gw2 = gw2.reshape(KERNEL, _C1, _C2).permute(2, 1, 0).contiguous()
        gb2 = gm.sum(dim=(0, 1))
        # input gradient of conv2: block s of h1 gets G[s] @ A + G[s-1] @ B
        ta, tb = _toeplitz(w2)
        gblk = g.view(n * (s_h + 1), 8 * _C2)
        hfull = gm.new_empty((n * (s_h + 1), 8 * _C1))
        torch.mm(gblk[1:], ta, out=hfull[:-1])
        hfull[:-1].addmm_(gblk[:-1], tb)
        gh1 = hfull.view(n, s_h + 1, 8 * _C1)[:, :s_h].reshape(n, s_h * 8, _C1)[:, :l1]
        gz1 = gh1 * torch.where(h1 > 0, 1.0, h1 + 1.0)
        gz1 = gz1.reshape(n * l1, _C1)
        gw1 = (u1.t() @ gz1).t().reshape(_C1, 1, KERNEL)
        gb1 = gz1.sum(dim=0)
        return None, gw1, gb1, gw2, gb2


def _reference_block(x, w1, b1, w2, b2):
    h = F.elu(F.conv1d(x.unsqueeze(1), w1, b1))
    h = F.elu(F.max_pool1d(F.conv1d(h, w2, b2), POOL))
    return h.transpose(1, 2).flatten(1)            # position-major, as the fast block


class StarNet(nn.Module):
    """The StarNet encoder with a mean head (the essay's 20 outputs) and a log-variance head.

    Book: {ref}`sec-starnet-architecture`

    Parameters
    ----------
    n_pixels : int
        Pixels per input spectrum (8,575 for APOGEE; the NIRSpec grid's size for NIRSpec).
    n_labels : int
        Outputs (20: Teff, logg and 18 [X/H]).
    impl : {'fast', 'reference'}
        Implementation of the convolutional block (same function, see the module doc).

    Attributes
    ----------
    conv1, conv2 : torch.nn.Conv1d
        (1 -> 4) and (4 -> 16) channels, kernel 8.
    fc1, fc2, fc3 : torch.nn.Linear
        16 L -> 256, 256 -> 128, 128 -> n_labels (L = :func:`pooled_length`).
    logvar : torch.nn.Linear
        128 -> n_labels: log variance of each standardised label.
    """

    def __init__(self, n_pixels: int, n_labels: int = 20, impl: str = "fast"):
        super().__init__()
        if isinstance(n_pixels, bool) or int(n_pixels) != n_pixels or pooled_length(n_pixels) < 1:
            raise ValueError(f"n_pixels must be an integer >= {2 * (KERNEL - 1) + POOL}, "
                             f"got {n_pixels!r}")
        if impl not in ("fast", "reference"):
            raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
        self.n_pixels = int(n_pixels)
        self.n_labels = int(n_labels)
        self.impl = impl
        self.conv1 = nn.Conv1d(1, _C1, KERNEL)
        self.conv2 = nn.Conv1d(_C1, _C2, KERNEL)
        self.fc1 = nn.Linear(_C2 * pooled_length(n_pixels), 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, n_labels)
        self.logvar = nn.Linear(128, n_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened pooled convolution features, shape (n, 16 L), position-major."""
        if x.ndim != 2 or x.shape[1] != self.n_pixels:
            raise ValueError(f"StarNet expects spectra of shape (n, {self.n_pixels}), got "
                             f"{tuple(x.shape)}: spectra on another grid?")
        args = (x, self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias)
        if self.impl == "fast":
            return _ConvBlock.apply(*args)
        return _reference_block(*args)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-unit layer (after its ELU), shape (n, 128)."""
        h = F.elu(self.fc1(self.features(x)))
        return F.elu(self.fc2(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised labels (the essay's 20 outputs), shape (n, n_labels)."""
        return self.fc3(self.hidden(x))

    def predict_with_logvar(self, x: torch.Tensor) -> tuple:
        """Standardised labels and their log variances, each (n, n_labels).

        The variance head sees the 128 units detached: it learns the size of the mean
        head's errors without changing the network that makes them.
        """
        h = self.hidden(x)
        return self.fc3(h), self.logvar(h.detach())

    def reference_state_dict(self) -> dict:
        """The weights for :func:`reference_sequential` (fc1 columns made channel-major)."""
        sd = {k: v.detach().clone() for k, v in self.state_dict().items()
              if not k.startswith("logvar")}
        l3 = pooled_length(self.n_pixels)
        w = sd["fc1.weight"].view(256, l3, _C2).permute(0, 2, 1).reshape(256, _C2 * l3)
        sd["fc1.weight"] = w.contiguous()
        names = {"conv1": "1", "conv2": "3", "fc1": "7", "fc2": "9", "fc3": "11"}
        return {f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in sd.items()}


def reference_sequential(n_pixels: int, n_labels: int = 20) -> nn.Sequential:
    """The essay's encoder written with plain ``torch.nn`` layers (for checking).

    Book: {ref}`sec-starnet-architecture`
    """
    l3 = pooled_length(n_pixels)
    return nn.Sequential(nn.Unflatten(1, (1, n_pixels)), nn.Conv1d(1, _C1, KERNEL), nn.ELU(),
                         nn.Conv1d(_C1, _C2, KERNEL), nn.ELU(), nn.MaxPool1d(POOL),
                         nn.Flatten(), nn.Linear(_C2 * l3, 256), nn.ELU(), nn.Linear(256, 128),
                         nn.ELU(), nn.Linear(128, n_labels))
