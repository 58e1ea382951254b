"""What makes StarNet training fast on a CPU, and a fair timing of the two precisions.

Book: {ref}`sec-starnet-speed`

* :func:`fast_allocation`: large blocks reused by the C allocator (glibc);
* :func:`torch_threads`: torch's intra-op threads for one block of code;
* :func:`training_step_seconds`: the median time of a training step in each precision
  (:data:`helpers.starnet.model.PRECISIONS`), measured in interleaved rounds so that every
  precision sees the same load ({ref}`sec-starnet-precision`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time

import numpy as np
import torch

from .data import SpectraSet
from .model import PRECISIONS, StarNet, training_step

__all__ = ["bf16_instructions", "fast_allocation", "torch_threads", "training_step_seconds"]


@contextlib.contextmanager
def fast_allocation():
    """Let the C allocator reuse freed memory instead of returning it to the system.

    Book: {ref}`sec-starnet-speed`

    A training step allocates and frees tensors of up to ~70 MB. glibc serves blocks that
    large with fresh ``mmap`` pages, which the kernel zeroes on first touch: on this machine
    that doubled the time of a step. Inside this context (Linux/glibc only; elsewhere it
    does nothing) large blocks come from the heap and are reused; on exit the defaults are
    restored and free memory is returned with ``malloc_trim``.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    m_trim_threshold, m_mmap_max = -1, -4
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 1 << 30)
    try:
        yield
    finally:
        mallopt(m_mmap_max, 65536)
        mallopt(m_trim_threshold, 128 * 1024)
        trim(0)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (None: leave the setting alone).

    Book: {ref}`sec-starnet-training`

    The previous setting is restored on exit.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bf16_instructions(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether the processor has bfloat16 instructions (None: cannot tell here).

    Book: {ref}`sec-starnet-precision`

    Reads the feature flags of Linux's ``/proc/cpuinfo``: ``avx512_bf16`` or ``amx_bf16``
    (x86), ``bf16`` (64-bit ARM). Without them PyTorch emulates bfloat16 products, and
    ``precision='float32'`` trains faster.
    """
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def training_step_seconds(data: SpectraSet, precisions=PRECISIONS, batches: int = 8,
                          rounds: int = 3, batch_size: int = 64, n_labels: int = 20,
                          threads: int | None = None, seed: int = 0) -> dict:
    """Median wall-clock seconds of one training step (forward, backward, AdamW) per precision.

    Book: {ref}`sec-starnet-precision`

    One fresh network per precision (same seed, so the same weights) takes ``batches`` steps
    on the same ``batch_size`` spectra of ``data`` in each of ``rounds`` rounds, the
    precisions taking turns within a round, so that a change of the machine's load falls on
    all of them alike. One untimed step per precision comes first (it allocates AdamW's
    state). The targets are zeros: the time of a step does not depend on the labels' values.

    Returns
    -------
    dict
        ``{precision: median seconds per step}``, plus ``'load'``: the 1-minute load average
        before and after.
    """
    for name, v, low in (("batches", batches, 1), ("rounds", rounds, 1),
                         ("batch_size", batch_size, 1)):
        if isinstance(v, bool) or int(v) != v or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ValueError(f"precisions must be among {PRECISIONS}, got {list(precisions)!r}")
    if batch_size > len(data):
        raise ValueError(f"batch_size ({batch_size}) exceeds the {len(data)} spectra of data")
    rng = np.random.default_rng(seed)
    rows = [np.sort(rng.choice(len(data), batch_size, replace=False)) for _ in range(batches)]
    y = torch.zeros((batch_size, n_labels))
    w = torch.ones((batch_size, n_labels))
    load = [round(os.getloadavg()[0], 2)]
    times = {p: [] for p in precisions}
    with fast_allocation(), torch_threads(threads):
        nets = {}
        for p in precisions:
            torch.manual_seed(seed)
            model = StarNet(data.n_pixels, n_labels, precision=p).train()
            nets[p] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True))

        def step(p, idx):
            training_step(*nets[p], torch.from_numpy(data.rows(idx)), y, w)

        for p in precisions:
            step(p, rows[0])
        for _ in range(rounds):
            for p in precisions:
                for idx in rows:
                    t = time.perf_counter()
                    step(p, idx)
                    times[p].append(time.perf_counter() - t)
    load.append(round(os.getloadavg()[0], 2))
    out = {p: float(np.median(v)) for p, v in times.items()}
    out["load"] = load
    return out
