"""Shared pytest configuration: headless plotting, quiet progress bars."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` that groups the chapters by their chain (tests/test_notebooks.py).

    pytest-xdist 3.8 groups tests by renaming their node ids, which pytest 9 no longer
    allows, so its ``xdist_group`` marks are silently ignored there. This scheduler computes
    the group from the node id instead: each chain of chapters is one unit of work, sent
    whole to one worker and run in order (chain "a" begins with the unit tests that fill its
    worker while the other makes the smoke survey); every other test is a unit of its own.
    Units are handed out largest first, so the two chains start at once, one per worker.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from notebook_tools import chain_of_nodeid
    from xdist.scheduler import LoadGroupScheduling

    class ChainScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return chain_of_nodeid(nodeid) or super()._split_scope(nodeid)

    return ChainScheduling(config, log)


def pytest_collection_modifyitems(items):
    """The tests at the head of chain "a" first (a chain runs in collection order, and they
    must run before its chapters), then the slow unit tests, then the others: the workers take
    the unit tests in collection order once their chain is done (``CHAIN_A_HEAD`` and
    ``SLOW_FIRST`` in tests/notebook_tools.py)."""
    from notebook_tools import run_order

    items.sort(key=lambda item: run_order(item.nodeid))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top folder."""
    return REPO


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread for the test (tiny networks: a second thread only waits for a
    busy core on a shared machine); the previous thread count is restored after it."""
    # only the tests that ask for it pay for importing torch
    from helpers.starnet import torch_threads

    with torch_threads(1):
        yield


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


@pytest.fixture(scope="module")
def dask_client():
    """A Dask client of a LocalCluster of two single-threaded worker processes (shared by
    the tests of one module that scale out; not the default client: use
    ``with dask_client.as_current()``). Module scope: an idle cluster costs about 5 s of CPU
    a minute (heartbeats of its nannies, workers and scheduler), which a session-wide one
    paid on each pytest worker until the end of ``make test``."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                                       memory_limit="3GiB")
    client = distributed.Client(cluster, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    yield client
    client.close()
    cluster.close()


TINY_CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# Tiny

```{code-cell} ipython3
:tags: [parameters]

K = 1
seed = 0
hold = ""
```

```{code-cell} ipython3
import os
import time

from helpers.paths import cache_dir
from helpers.sweep_record import record_result   # what a point imports: no pandas

if K == 3:
    raise RuntimeError("K = 3 is broken on purpose")
t0 = time.time()
while hold and os.path.exists(hold) and time.time() - t0 < 90:
    time.sleep(0.2)       # a slow point: it waits while the file `hold` exists
record_result(square=K * K, seed_plus=seed + 100, cache=str(cache_dir()), pid=os.getpid())
```
"""


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    """A two-cell chapter for the sweep tests (tests/test_sweep*.py): parameters ``K``, ``seed`` and
    ``hold`` (a file: the point waits while it exists, up to 90 s); ``K = 3`` fails on purpose; it records
    ``square``, ``seed_plus``, the cache folder it saw and its process id. The cache folder is
    ``tmp_path / "cache"``."""
    path = tmp_path / "99_tiny.md"
    path.write_text(TINY_CHAPTER)
    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path / "cache"))
    return path
