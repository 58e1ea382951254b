"""Shared pytest configuration: headless plotting, quiet progress bars."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top folder."""
    return REPO


@pytest.fixture
def flux_mask_memmaps(tmp_path):
    """``write(X, observed)``: store float32 flux and a boolean mask in two files and return
    them as read-only memory maps (as the spectra cache serves them)."""
    import numpy as np

    def write(X, observed):
        maps = []
        for name, arr, dt in (("flux.f32", X, np.float32), ("mask.bool", observed, bool)):
            m = np.memmap(tmp_path / name, dtype=dt, mode="w+", shape=arr.shape)
            m[:] = arr
            m.flush()
            maps.append(np.memmap(tmp_path / name, dtype=dt, mode="r", shape=arr.shape))
        return tuple(maps)

    return write
