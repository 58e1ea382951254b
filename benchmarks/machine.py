"""What the benchmarks measure about the machine itself: its load and its GEMM throughput.

Speeds in ``benchmarks/`` are quoted as ratios against a baseline measured in the same run;
for the compute-bound kernels (the PPCA E-step, StarNet's convolutions) the baseline is the
machine's float32 matrix-product rate, measured here with the library the kernel uses
(NumPy's BLAS for PPCA, PyTorch for the networks). The load average is recorded with every
timing because the machine is shared. Imported by the scripts run as
``python benchmarks/bench_*.py`` (their folder is then on ``sys.path``).
"""

from __future__ import annotations

import os
import time

import numpy as np

__all__ = ["load", "gemm_gflops"]


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
