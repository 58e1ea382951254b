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


@pytest.fixture(scope="session")
def dask_client():
    """A Dask client of a LocalCluster of two single-threaded worker processes (shared by
    the tests that scale out; not the default client: use ``with dask_client.as_current()``)."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                                       memory_limit="3GiB")
    client = distributed.Client(cluster, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    yield client
    client.close()
    cluster.close()
