"""PPCA on a dask.array, on a LocalCluster of two workers (helpers.ppca.dask_engine).

The distributed driver must give the single-machine engine's numbers on the same data, seed
and chunks: subspace angle <= 0.01 deg and noise variance to 1e-6 relative (measured here
at about 1e-6 deg and 1e-8).
"""
import logging
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from helpers.apogee.cache_zarr import open_zarr_store, write_zarr_store
from helpers.dask_cluster import ClusterError, check_workers, connect, data_paths
from helpers.ppca import PPCA

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

CS = 250          # rows per chunk, the same for both engines


def _data(N=2000, D=200, seed=0):
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((8, D)) * np.linspace(1, 0.2, 8)[:, None]
    X = (rng.standard_normal((N, 8)) @ basis + 0.1 * rng.standard_normal((N, D)) + 1)
    X = X.astype(np.float32)
    obs = rng.random((N, D)) > 0.05
    for i in range(0, N, 3):                       # windows of 30 missing pixels
        obs[i, i % 150:i % 150 + 30] = False
    weights = rng.uniform(0.5, 2.0, (N, D)).astype(np.float32)
    return X, obs, weights


def _agree(local, dist):
    angle = np.degrees(subspace_angles(local.components_.T, dist.components_.T)).max()
    rel = dist.noise_variance_ / local.noise_variance_ - 1
    assert angle <= 0.01, angle
    assert abs(rel) <= 1e-6, rel
    np.testing.assert_allclose(dist.mean_, local.mean_, atol=1e-5)
    assert dist.n_iter_ == local.n_iter_
    return angle, rel


def _dask(a):
    return None if a is None else da.from_array(a, chunks=(CS, -1))


@pytest.mark.parametrize("kw,weighted", [
    ({"tol": 1e-4}, False),                        # N <= n_init_rows: the kept centred copy
    ({"n_init_rows": 700, "tol": 1e-4}, False),    # streamed, start on a subsample
    ({"n_init_rows": 700, "tol": 1e-4, "method": "fast"}, False),
    ({"n_init_rows": 700, "max_iter": 3}, True),   # weighted EM
], ids=["kept", "streamed", "fast", "weighted"])
def test_same_numbers_as_one_machine(dask_client, kw, weighted):
    X, obs, w = _data()
    w = w if weighted else None
    local = PPCA(5, chunk_size=CS, **kw).fit(X, mask=obs, weights=w)
    with dask_client.as_current():
        dist = PPCA(5, **kw).fit(_dask(X), mask=_dask(obs), weights=_dask(w))
    _agree(local, dist)
    assert dist.n_chunks_ == 8
    assert dist.start_info_["rounds"] == local.start_info_["rounds"]
    np.testing.assert_allclose(dist.history_, local.history_, rtol=1e-6)


def test_nan_marks_missing_and_persisted_blocks(dask_client):
    X, obs, _ = _data(seed=1)
    Xn = np.where(obs, X, np.nan).astype(np.float32)
    local = PPCA(4, chunk_size=CS, n_init_rows=900).fit(Xn)
    with dask_client.as_current():
        Xd = dask_client.persist(_dask(Xn))          # blocks already on the workers
        dist = PPCA(4, n_init_rows=900).fit(Xd)
    _agree(local, dist)


def test_from_a_zarr_store(dask_client, tmp_path):
    """The benchmark's path: flux and observed mask in a Zarr store, read by the workers."""
    X, obs, _ = _data(seed=2)
    ids = [f"s{i}" for i in range(len(X))]
    grid = {"CRVAL1": 4.179, "CDELT1": 6e-6, "n_pixels": X.shape[1]}
    write_zarr_store(tmp_path / "in.zarr", {"flux": np.where(obs, X, 0), "observed": obs}, ids,
                     grid=grid, compress=["observed"], chunk_rows=125, progress=False)
    store = open_zarr_store(tmp_path / "in.zarr", grid=grid, chunk_rows=CS)
    assert data_paths(store["flux"], store["observed"]) == [str(tmp_path / "in.zarr")]
    local = PPCA(5, chunk_size=CS, n_init_rows=800).fit(X, mask=obs)
    with dask_client.as_current():
        dist = PPCA(5, n_init_rows=800).fit(store["flux"], mask=store["observed"])
    _agree(local, dist)


def test_bad_input(dask_client):
    X, obs, _ = _data(N=600, D=50)
    with dask_client.as_current():
        with pytest.raises(TypeError, match="mask must be one too"):
            PPCA(3).fit(_dask(X), mask=obs)
        bad = X.copy()
        bad[333, 7] = np.inf
        with pytest.raises(ValueError, match=r"non-finite value \(inf\) at star 83, pixel 7.*from row 250"):
            PPCA(3).fit(_dask(bad), mask=_dask(obs))
        with pytest.raises(ValueError, match="n_components=50 is too large"):
            PPCA(50).fit(_dask(X), mask=_dask(obs))


def test_no_client_is_a_clear_error():
    X, obs, _ = _data(N=300, D=40)
    if distributed.client._get_global_client() is not None:
        pytest.skip("a default Dask client is connected in this process")
    with pytest.raises(ClusterError, match="no Dask client is connected; connect first"):
        PPCA(3).fit(_dask(X), mask=_dask(obs))


def test_unreachable_scheduler_fails_fast():
    t = time.perf_counter()
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at "
                                           "tcp://127.0.0.1:9 within 2 s"):
        connect("tcp://127.0.0.1:9", timeout=2)
    assert time.perf_counter() - t < 30


def test_worker_that_cannot_see_the_data(dask_client, tmp_path, monkeypatch):
    """check_workers names the worker whose view of a path differs (simulated here by a
    worker that sees a different folder: its fingerprint function is replaced there)."""
    X, obs, _ = _data(N=300, D=40)
    write_zarr_store(tmp_path / "s.zarr", {"flux": X}, [str(i) for i in range(300)],
                     grid={"CRVAL1": 4.0, "CDELT1": 1e-5, "n_pixels": 40}, progress=False)
    reports = check_workers(dask_client, paths=[tmp_path / "s.zarr"], modules=["helpers.ppca"])
    assert len(reports) == 2
    victim = sorted(reports)[0]

    def blind():
        import helpers.dask_cluster as dc
        dc.path_fingerprint = lambda path: "missing"

    def restore():
        import importlib

        import helpers.dask_cluster as dc
        importlib.reload(dc)

    dask_client.run(blind, workers=[victim])
    try:
        with pytest.raises(ClusterError, match=f"worker {victim} .* has no {tmp_path}/s.zarr"):
            check_workers(dask_client, paths=[tmp_path / "s.zarr"])
    finally:
        dask_client.run(restore, workers=[victim])
    with pytest.raises(ClusterError, match="cannot import no_such_module_for_the_book"):
        check_workers(dask_client, modules=["no_such_module_for_the_book"])
    with pytest.raises(FileNotFoundError, match="does not exist here"):
        check_workers(dask_client, paths=[tmp_path / "nowhere"])


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_worker_without_the_shared_disk(tmp_path):
    """A real worker that mounts an empty folder over the data's path (its own mount
    namespace): the fit stops before any work with the worker named, instead of reading
    Zarr's fill values (zeros) for chunks it cannot see."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"unshare -m not permitted here: {probe.stderr.decode().strip()}")
    X, obs, _ = _data(N=400, D=40)
    grid = {"CRVAL1": 4.0, "CDELT1": 1e-5, "n_pixels": 40}
    write_zarr_store(tmp_path / "s.zarr", {"flux": X, "observed": obs},
                     [str(i) for i in range(400)], grid=grid, progress=False)
    # a scheduler without workers of its own: the blind worker is the cluster's only one
    cluster = distributed.LocalCluster(n_workers=0, dashboard_address=None)
    blind = None
    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            addr = cluster.scheduler_address
            blind = subprocess.Popen(
                ["unshare", "-m", "sh", "-c",
                 f"mount -t tmpfs none {tmp_path} && exec {sys.executable} -m distributed.cli."
                 f"dask_worker {addr} --nthreads 1 --no-dashboard --name blind"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            client.wait_for_workers(1, timeout=60)
            store = open_zarr_store(tmp_path / "s.zarr", grid=grid)
            with client.as_current():
                with pytest.raises(ClusterError, match=r"worker tcp://\S+ \(.*\) has no .*s.zarr: "
                                                       "the data must be on a file system"):
                    PPCA(3).fit(store["flux"], mask=store["observed"])
    finally:
        if blind is not None:
            blind.terminate()
            blind.wait(timeout=30)
        cluster.close()


def _worker_logs(text):
    """Run on a worker: log one warning and one error from the worker's state machine."""
    log = logging.getLogger("distributed.worker.state_machine")
    log.warning("%s: a warning", text)
    log.error("%s: an error", text)
    return True


@pytest.mark.parametrize("level, shown", [(None, ("an error",)),
                                          (logging.WARNING, ("a warning", "an error"))])
def test_local_workers_print_errors_not_warnings(capfd, level, shown):
    """A local cluster's worker processes write to this process's standard error (a notebook's
    output): by default connect() lets their errors through and keeps their warnings (such as
    the one for a task cancelled when the cluster closes, which failed the book's build) out."""
    kw = {} if level is None else {"silence_logs": level}
    with connect(None, n_workers=1, dashboard_address=None, **kw) as client:
        assert client.run(_worker_logs, f"marker-{level}")
        time.sleep(0.5)
        client.cluster.close()
    err = capfd.readouterr().err
    for what in ("a warning", "an error"):
        assert (f"marker-{level}: {what}" in err) == (what in shown), err[-2000:]
