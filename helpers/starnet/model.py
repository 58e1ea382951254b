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
* ``impl='fast'`` (default): the same PyTorch (oneDNN) operators, called on a
  (batch, position, channel) array seen as a channels-last (N, C, 1, L) image: in that
  layout oneDNN's kernels for 1, 4 and 16 channels are several times faster than on the
  (N, C, L) tensors of ``conv1d`` (``benchmarks/README_starnet.md``); the ELU is applied
  after the max-pool (ELU is increasing, so ``pool(elu(z)) == elu(pool(z))`` and four times
  fewer values pass through it); the backward pass calls the operators' own backward
  kernels chunk by chunk, so the block's large arrays stay in cache.

The pooled features are flattened position-major (pixel, then channel); PyTorch's
``nn.Flatten`` on an (N, C, L) tensor is channel-major. That is a fixed permutation of the
256 x (16 L) input weights of the first fully connected layer, so the two are the same
network; :meth:`StarNet.reference_state_dict` converts, and a test checks outputs and
gradients against a plain ``torch.nn.Sequential``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["KERNEL", "POOL", "DEFAULT_CHUNK", "PRECISIONS", "StarNet", "pooled_length",
           "reference_sequential", "starnet_loss", "training_step"]

#: Spectra the fast convolution block processes at once (its arrays then stay in cache; other
#: sizes change no number beyond float rounding, timings in ``benchmarks/README_starnet.md``).
DEFAULT_CHUNK = 16
#: Kernel width of both convolutions and the max-pool width (the essay's values).
KERNEL = 8
POOL = 4
_C1, _C2 = 4, 16
#: Arithmetic of the training steps: all float32, or the fully connected layers
#: under bfloat16 autocast (the default of training runs, :class:`helpers.starnet.TrainConfig`;
#: see :class:`StarNet`).
PRECISIONS = ("float32", "bf16-fc")


def pooled_length(n_pixels: int) -> int:
    """Pooled positions after the two convolutions and the max-pool: (n - 14) // 4.

    Book: {ref}`sec-starnet-architecture`
    """
    return (int(n_pixels) - 2 * (KERNEL - 1)) // POOL


def _channels_last(t: torch.Tensor, n: int, length: int, channels: int) -> torch.Tensor:
    """(n, length, channels) position-major memory as an NCHW channels-last (n, channels, 1, length) view."""
    return t.view(n, 1, length, channels).permute(0, 3, 1, 2)


def _unbf16(t: torch.Tensor) -> torch.Tensor:
    """A bfloat16 output of the autocast layers back to float32 (any other dtype as it is)."""
    return t.float() if t.dtype == torch.bfloat16 else t


def _elu_grad(grad: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """Gradient through an ELU from its output: ``grad * (result + 1)`` where ``result <= 0``."""
    return torch.ops.aten.elu_backward(grad, 1.0, 1.0, 1.0, True, result)


def _conv_grads(grad, inp, weight, channels: int, need_input: bool) -> tuple:
    """oneDNN's backward of a stride-1, unpadded conv2d: (input grad or None, weight grad, bias grad)."""
    return torch.ops.aten.convolution_backward(grad, inp, weight, [channels], [1, 1], [0, 0],
                                               [1, 1], False, [0, 0], 1,
                                               [need_input, True, True])


def _space_to_depth_weight(w2c: torch.Tensor) -> torch.Tensor:
    """conv2's input gradient as a convolution over rows of 4 positions x 16 channels.

    ``gh1[4 t + r, c] = sum_{j, r', co} G[t + j - 2, (r', co)] W[co, c, k]`` with
    ``k = r - r' + 8 - 4 j`` (0 <= k < 8, j = 0, 1, 2): a kernel-3 convolution from 64 to 16
    (= 4 positions x 4 channels) channels, the shape for which oneDNN's kernels are fast
    (its own backward kernel for 16 -> 4 channels is several times slower). Returns the
    (16, 64, 1, 3) weight.
    """
    r = torch.arange(POOL).view(POOL, 1, 1, 1, 1)
    c = torch.arange(_C1).view(1, _C1, 1, 1, 1)
    rp = torch.arange(POOL).view(1, 1, POOL, 1, 1)
    co = torch.arange(_C2).view(1, 1, 1, _C2, 1)
    j = torch.arange(3).view(1, 1, 1, 1, 3)
    k = r - rp + 2 * POOL - POOL * j
    ok = (k >= 0) & (k < KERNEL)
    w = w2c[co, c, 0, k.clamp(0, KERNEL - 1)] * ok
    return w.reshape(POOL * _C1, POOL * _C2, 1, 3)


class _ConvBlock(torch.autograd.Function):
    """conv1 ELU conv2 max-pool ELU, in (batch, position, channel) layout; see module doc.

    Each convolution is PyTorch's (oneDNN's) ``conv2d`` on a channels-last (N, C, 1, L) view
    of a (batch, position, channel) array: the layout in which oneDNN's kernels for 1, 4
    and 16 channels are fast, and the order in which the features are flattened. The max-pool
    is ``max_pool2d`` with indices on the same layout; the ELU is applied after it. The
    backward pass calls the same operators' backward kernels (``convolution_backward``,
    ``max_pool2d_with_indices_backward``, ``elu_backward``). The batch is processed
    ``chunk`` spectra at a time so that the arrays of one chunk stay in the processor's cache.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, chunk):
        n, p = x.shape
        l1 = p - (KERNEL - 1)
        l2 = l1 - (KERNEL - 1)
        l3 = l2 // POOL
        w1c, w2c = w1.unsqueeze(2), w2.unsqueeze(2)
        train = any(ctx.needs_input_grad[:5])
        out = x.new_empty((n, l3, _C2))
        saved = []
        for a in range(0, n, chunk):
            m = min(a + chunk, n) - a
            xc = x[a:a + m].as_strided((m, 1, 1, p), (p, 1, p, 1))     # channels-last, C = 1
            h1 = F.elu_(F.conv2d(xc, w1c, b1).contiguous(memory_format=torch.channels_last))
            z2 = F.conv2d(h1, w2c, b2)
            pooled, idx = F.max_pool2d(z2, (1, POOL), return_indices=True)
            _channels_last(out[a:a + m], m, l3, _C2).copy_(pooled)
            if train:
                saved += [xc, h1, idx]
        F.elu_(out)
        if train:
            ctx.save_for_backward(out, w1c, w2c, *saved)
            ctx.geometry = (n, l2, l3, chunk)
        return out.view(n, l3 * _C2)

    @staticmethod
    def backward(ctx, gout):
        out, w1c, w2c, *saved = ctx.saved_tensors
        n, l2, l3, chunk = ctx.geometry
        need_x = ctx.needs_input_grad[0]
        p = saved[0].shape[-1]
        l1 = p - (KERNEL - 1)
        n2 = POOL * l3
        reach = min(l1, n2 + KERNEL - 1)       # h1 positions that reach a pooled output
        gm = _elu_grad(gout.reshape(n, l3, _C2), out)
        ws = _space_to_depth_weight(w2c)
        gw1, gb1, gw2, gb2 = (torch.zeros_like(t) for t in (w1c, w1c[:, 0, 0, 0], w2c,
                                                             w2c[:, 0, 0, 0]))
        gx = out.new_zeros((n, p)) if need_x else None
        gpad = None
        for c, a in enumerate(range(0, n, chunk)):
            xc, h1, idx = saved[3 * c:3 * c + 3]
            m = xc.shape[0]
            if gpad is None or gpad.shape[0] != m:
                gpad = out.new_empty((m, l3 + 4, POOL * _C2))
            # gradient of conv2's output: the pooled gradient at each maximum, zero elsewhere;
            # rows of 4 positions x 16 channels with two zero rows on each side
            gpad.zero_()
            gz2 = gpad.view(m, POOL * (l3 + 4), _C2)[:, 2 * POOL:2 * POOL + n2]
            gz2.scatter_(1, idx.permute(0, 2, 3, 1).reshape(m, l3, _C2), gm[a:a + m])
            _, gw, gb = _conv_grads(_channels_last(gz2, m, n2, _C2),
                                    h1[..., :n2 + KERNEL - 1], w2c, _C2, False)
            gw2 += gw
            gb2 += gb
            # its input gradient: one convolution of the rows with 16 output channels
            gh = F.conv2d(_channels_last(gpad, m, l3 + 4, POOL * _C2), ws)
            gh1 = gh.permute(0, 2, 3, 1).reshape(m, POOL * (l3 + 2), _C1)[:, :reach]
            h1r = h1[..., :reach]
            gz1 = _elu_grad(_channels_last(gh1, m, reach, _C1), h1r)
            xr = xc[..., :reach + KERNEL - 1]
            gx1, gw, gb = _conv_grads(gz1, xr, w1c, _C1, need_x)
            gw1 += gw
            gb1 += gb
            if need_x:
                gx[a:a + m, :reach + KERNEL - 1] = gx1.reshape(m, -1)
        return gx, gw1.squeeze(2), gb1, gw2.squeeze(2), gb2, None


def starnet_loss(model: StarNet, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple:
    """The training loss of a batch: masked MSE of the means plus the variance head's NLL.

    Book: {ref}`sec-starnet-uncertainty`

    Parameters
    ----------
    model : StarNet
    x : torch.Tensor, shape (n, n_pixels)
    y, w : torch.Tensor, shape (n, n_labels)
        Standardised labels (0 where missing) and weights (1 present, 0 missing).

    Returns
    -------
    mse, nll : torch.Tensor
        Mean over present labels of (mu - y)^2, and of the Gaussian negative log-likelihood
        0.5 (log s^2 + (y - mu)^2 / s^2) with mu detached (it trains only the variance head).
    """
    mu, logvar = model.predict_with_logvar(x)
    n = w.sum()
    mse = (w * (mu - y) ** 2).sum() / n
    nll = (w * 0.5 * (logvar + (y - mu.detach()) ** 2 * torch.exp(-logvar))).sum() / n
    return mse, nll


def training_step(model: StarNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                  w: torch.Tensor) -> float:
    """One optimiser step on a batch: :func:`starnet_loss`, its gradients, the update.

    Book: {ref}`sec-starnet-training`

    The step of every training epoch (:func:`helpers.starnet.train.train_epoch`) and the one
    the precisions are timed with (:func:`helpers.starnet.speed.training_step_seconds`).
    Arguments as for :func:`starnet_loss`; ``opt`` updates ``model``'s parameters.

    Returns
    -------
    float
        The batch's masked MSE before the update.
    """
    mse, nll = starnet_loss(model, x, y, w)
    opt.zero_grad(set_to_none=True)
    (mse + nll).backward()
    opt.step()
    return float(mse.detach())


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
    precision : {'float32', 'bf16-fc'}
        'bf16-fc': in training mode the fully connected layers (``fc1``-``fc3``, ``logvar``)
        run under ``torch.autocast('cpu', torch.bfloat16)`` (bfloat16 products on float32
        master weights; the convolution block and the loss stay float32). In evaluation
        mode every layer is float32 whatever the setting. Default 'float32' for a network
        built directly; training runs build it with ``TrainConfig.precision`` ('bf16-fc' by
        default).

    Attributes
    ----------
    conv1, conv2 : torch.nn.Conv1d
        (1 -> 4) and (4 -> 16) channels, kernel 8.
    fc1, fc2, fc3 : torch.nn.Linear
        16 L -> 256, 256 -> 128, 128 -> n_labels (L = :func:`pooled_length`).
    logvar : torch.nn.Linear
        128 -> n_labels: log variance of each standardised label.
    chunk : int
        Spectra the fast block processes at once (default :data:`DEFAULT_CHUNK`).
    """

    def __init__(self, n_pixels: int, n_labels: int = 20, impl: str = "fast",
                 precision: str = "float32"):
        super().__init__()
        if isinstance(n_pixels, bool) or int(n_pixels) != n_pixels or pooled_length(n_pixels) < 1:
            raise ValueError(f"n_pixels must be an integer >= {2 * (KERNEL - 1) + POOL}, "
                             f"got {n_pixels!r}")
        if impl not in ("fast", "reference"):
            raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
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

    def _fc_autocast(self):
        """bfloat16 autocast of the fully connected layers, on only when training in 'bf16-fc'."""
        return torch.autocast("cpu", dtype=torch.bfloat16,
                              enabled=self.training and self.precision == "bf16-fc")

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        with self._fc_autocast():
            return F.elu(self.fc2(F.elu(self.fc1(f))))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-unit layer (after its ELU), shape (n, 128)."""
        return _unbf16(self._hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised labels (the essay's 20 outputs), shape (n, n_labels)."""
        h = self._hidden(x)
        with self._fc_autocast():
            return _unbf16(self.fc3(h))

    def predict_with_logvar(self, x: torch.Tensor) -> tuple:
        """Standardised labels and their log variances, each (n, n_labels).

        The variance head sees the 128 units detached: it learns the size of the mean
        head's errors without changing the network that makes them.
        """
        h = self._hidden(x)
        with self._fc_autocast():
            return _unbf16(self.fc3(h)), _unbf16(self.logvar(h.detach()))

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
