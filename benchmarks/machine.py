"""What the benchmarks measure about the machine itself: its load and its GEMM throughput;
and the one way they run a fit in a fresh process (:func:`fit_in_child`).

Speeds in ``benchmarks/`` are quoted as ratios against a baseline measured in the same run;
for the compute-bound kernels (the PPCA E-step, StarNet's convolutions) the baseline is the
machine's float32 matrix-product rate, measured here with the library the kernel uses
(NumPy's BLAS for PPCA, PyTorch for the networks). The load average is recorded with every
timing because the machine is shared. Imported by the scripts run as
``python benchmarks/bench_*.py`` (their folder is then on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["load", "gemm_gflops", "fit_in_child"]


def load() -> list:
    """1, 5 and 15-minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def gemm_gflops(n: int = 3000, repeats: int = 3, library: str = "numpy",
                threads: int | None = None) -> float:
    """Best float32 matrix-product rate (GFLOP/s) of ``repeats`` n x n products, now.

    Parameters
    ----------
    n : int
        Side of the square matrices.
    repeats : int
        Timed products (after one untimed warm-up); the fastest counts.
    library : {'numpy', 'torch'}
        Whose GEMM: NumPy's BLAS or PyTorch's.
    threads : int, optional
        Limit NumPy's BLAS to this many threads (``threadpoolctl``); default: as configured.
    """
    if library == "torch":
        import torch
        a, b = torch.randn(n, n), torch.randn(n, n)
    elif library == "numpy":
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
    else:
        raise ValueError(f"library must be 'numpy' or 'torch', got {library!r}")
    if threads is not None:
        if library != "numpy":
            raise ValueError("threads applies to NumPy's BLAS only")
        from threadpoolctl import threadpool_limits
        with threadpool_limits(threads, user_api="blas"):
            return gemm_gflops(n, repeats, library)
    a @ b
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def fit_in_child(code: str, components: Path) -> tuple[dict, np.ndarray]:
    """Run a fit's Python ``code`` in a fresh interpreter and collect what it reports.

    A fresh process makes the fit's peak RSS its own (nothing the benchmark held before
    counts) and its timings free of the parent's warm caches.

    Parameters
    ----------
    code : str
        Python source; it must save the fitted components with ``np.save`` to ``components``
        and print its figures as one JSON object on its last line of standard output.
    components : pathlib.Path
        The ``.npy`` file ``code`` writes; read and removed here.

    Returns
    -------
    figures : dict
        The JSON object of the last line.
    components : ndarray
        What ``code`` saved.

    Raises
    ------
    RuntimeError
        The child failed; the message is its standard error.
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr)
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    C = np.load(components)
    components.unlink()
    return figures, C
