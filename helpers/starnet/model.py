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

__all__ = ["KERNEL", "POOL", "DEFAULT_CHUNK", "StarNet", "pooled_length", "reference_sequential"]

#: Spectra the fast convolution block processes at once (its arrays then stay in cache).
DEFAULT_CHUNK = 16
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
    """conv1 ELU conv2 max-pool ELU, in (batch, position, channel) layout; see module doc.

    The batch is processed ``chunk`` spectra at a time, so that the large intermediate
    arrays of one chunk (the unfolded windows, conv2's output and its gradient) stay in the
    processor's cache; the windows are rebuilt in the backward pass instead of kept.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, chunk):
        n, p = x.shape
        l1 = p - (KERNEL - 1)
        l3 = (l1 - (KERNEL - 1)) // POOL
        n2 = POOL * l3
        s_h = -(-l1 // 8)                      # blocks of 8 positions covering conv1's output
        rows = (s_h + 1) * 8                   # one zero block in front (see backward)
        w1m = w1.reshape(_C1, KERNEL).t()
        w2m = w2.permute(2, 1, 0).reshape(KERNEL * _C1, _C2)      # [(k, c), co]
        train = any(ctx.needs_input_grad[1:5])
        h1 = x.new_empty((n, l1, _C1))
        out = x.new_empty((n, l3, _C2))
        idx = torch.empty((n, l3, _C2), dtype=torch.uint8) if train else None
        u2 = x.new_zeros((min(chunk, n), rows, KERNEL * _C1))
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            m = b - a
            # conv1 as a product on windows of 8 pixels
            hc = h1[a:b].view(m * l1, _C1)
            torch.addmm(b1, x[a:b].unfold(1, KERNEL, 1).reshape(m * l1, KERNEL), w1m, out=hc)
            F.elu_(hc)
            # conv2: windows of 8 positions x 4 channels = 32 consecutive floats of h1
            uc = u2[:m]
            uc[:, 8:8 + n2].copy_(h1[a:b].view(m, l1 * _C1).unfold(1, KERNEL * _C1, _C1)[:, :n2])
            z2 = torch.addmm(b2, uc.view(-1, KERNEL * _C1), w2m).view(m, rows, _C2)
            zz = z2[:, 8:8 + n2].view(m, l3, POOL, _C2)
            m01 = torch.maximum(zz[:, :, 0], zz[:, :, 1])
            m23 = torch.maximum(zz[:, :, 2], zz[:, :, 3])
            F.elu_(torch.maximum(m01, m23, out=out[a:b]))
            if train:
                # index of the maximum, the first one on ties (as max_pool1d)
                hi = m23 > m01
                i = torch.where(hi, zz[:, :, 3] > zz[:, :, 2], zz[:, :, 1] > zz[:, :, 0])
                torch.add(i.to(torch.uint8), hi.to(torch.uint8), alpha=2, out=idx[a:b])
        if train:
            ctx.save_for_backward(x, h1, idx, out, w1, w2)
            ctx.geometry = (n, l1, l3, n2, s_h, rows, chunk)
        if ctx.needs_input_grad[0]:
            ctx.input_grad = True
        return out.view(n, l3 * _C2)

    @staticmethod
    def backward(ctx, gout):
        if getattr(ctx, "input_grad", False):
            raise NotImplementedError("StarNet's fast convolution block does not compute "
                                      "gradients with respect to the spectra; use "
                                      "impl='reference' for that")
        x, h1, idx, out, w1, w2 = ctx.saved_tensors
        n, l1, l3, n2, s_h, rows, chunk = ctx.geometry
        gout = gout.reshape(n, l3, _C2)
        ta, tb = _toeplitz(w2)
        gw1 = x.new_zeros((KERNEL, _C1))
        gw2 = x.new_zeros((KERNEL * _C1, _C2))
        gb1 = x.new_zeros(_C1)
        gb2 = x.new_zeros(_C2)
        m0 = min(chunk, n)
        u2 = x.new_zeros((m0, rows, KERNEL * _C1))
        g = x.new_empty((m0, rows, _C2))
        hfull = x.new_empty((m0 * (s_h + 1), 8 * _C1))
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            m = b - a
            o = out[a:b]
            gm = gout[a:b] * torch.where(o > 0, 1.0, o + 1.0)
            gb2 += gm.sum(dim=(0, 1))
            # gradient of conv2's output: gm at the position of each maximum, zero
            # elsewhere, in blocks of 8 positions after one zero block
            gc = g[:m]
            gc.zero_()
            gc[:, 8:8 + n2].view(m, l3, POOL, _C2).scatter_(
                2, idx[a:b].unsqueeze(2).to(torch.int64), gm.unsqueeze(2))
            uc = u2[:m]
            uc[:, 8:8 + n2].copy_(h1[a:b].view(m, l1 * _C1).unfold(1, KERNEL * _C1, _C1)[:, :n2])
            gw2.addmm_(uc.view(-1, KERNEL * _C1).t(), gc.view(-1, _C2))
            # input gradient of conv2: block s of h1 gets G[s] @ A + G[s-1] @ B
            gblk = gc.view(m * (s_h + 1), 8 * _C2)
            hc = hfull[:m * (s_h + 1)]
            torch.mm(gblk[1:], ta, out=hc[:-1])
            hc[:-1].addmm_(gblk[:-1], tb)
            gh1 = hc.view(m, s_h + 1, 8 * _C1)[:, :s_h].reshape(m, s_h * 8, _C1)[:, :l1]
            hb = h1[a:b]
            gz1 = (gh1 * torch.where(hb > 0, 1.0, hb + 1.0)).reshape(m * l1, _C1)
            gb1 += gz1.sum(dim=0)
            gw1.addmm_(x[a:b].unfold(1, KERNEL, 1).reshape(m * l1, KERNEL).t(), gz1)
        gw1 = gw1.t().reshape(_C1, 1, KERNEL)
        gw2 = gw2.reshape(KERNEL, _C1, _C2).permute(2, 1, 0).contiguous()
        return None, gw1, gb1, gw2, gb2, None


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
        self.chunk = DEFAULT_CHUNK
        self.conv1 = nn.Conv1d(1, _C1, KERNEL)
        self.conv2 = nn.Conv1d(_C1, _C2, KERNEL)
        self.fc1 = nn.Linear(_C2 * pooled_length(n_pixels), 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, n_labels)
        self.logvar = nn.Linear(128, n_labels)
        # input scaling, x -> (x - input_mean) * input_scale: identity until set
        self.register_buffer("input_mean", torch.zeros(self.n_pixels))
        self.register_buffer("input_scale", torch.ones(self.n_pixels))

    def set_input_scaling(self, mean, scale) -> None:
        """Fix the input scaling x -> (x - mean) * scale (per pixel; saved with the weights).

        Parameters
        ----------
        mean, scale : array_like, shape (n_pixels,) or scalar
        """
        for buf, v in ((self.input_mean, mean), (self.input_scale, scale)):
            v = np.array(np.broadcast_to(np.asarray(v, np.float64), (self.n_pixels,)))
            buf.copy_(torch.from_numpy(v))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened pooled convolution features, shape (n, 16 L), position-major."""
        if x.ndim != 2 or x.shape[1] != self.n_pixels:
            raise ValueError(f"StarNet expects spectra of shape (n, {self.n_pixels}), got "
                             f"{tuple(x.shape)}: spectra on another grid?")
        x = (x - self.input_mean) * self.input_scale
        args = (x, self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias)
        if self.impl == "fast":
            return _ConvBlock.apply(*args, self.chunk)
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
        """The weights for :func:`reference_sequential` (fc1 columns made channel-major).

        The plain network has no input scaling: feed it spectra already scaled.
        """
        sd = {k: v.detach().clone() for k, v in self.state_dict().items()
              if not k.startswith(("logvar", "input_"))}
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
