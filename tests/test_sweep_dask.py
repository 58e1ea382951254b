"""Sweeps on a Dask cluster (python -m helpers.sweep ... --scheduler ADDRESS)."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from helpers.dask_cluster import ClusterError
from helpers.sweep import main, point_id, run_sweep

distributed = pytest.importorskip("distributed")


def test_sweep_on_a_cluster(tiny, tmp_path, dask_client):
    """Same table as the process pool; failures recorded; resumable; the cache folder and
    the results reach the points through the workers."""
    out = tmp_path / "out"
    table = run_sweep(tiny, {"K": [1, 2, 3]}, seeds=[0], out=out, scheduler=dask_client,
                      progress=False)
    assert table.status.tolist() == ["ok", "ok", "error"]
    assert table.square.tolist()[:2] == [1, 4]
    assert "broken on purpose" in table.error[2]
    assert set(table.cache.dropna()) == {str(tmp_path / "cache")}
    assert (out / "points" / f"{point_id(tiny, {'K': 1, 'seed': 0})}.ipynb").is_file()
    assert pd.read_csv(out / "results.csv").status.tolist() == ["ok", "ok", "error"]
    stamp = (out / "points" / f"{point_id(tiny, {'K': 2, 'seed': 0})}.json").stat().st_mtime_ns
    again = run_sweep(tiny, {"K": [1, 2, 3]}, seeds=[0], out=out, scheduler=dask_client,
                      progress=False)
    assert (out / "points" / f"{point_id(tiny, {'K': 2, 'seed': 0})}.json").stat().st_mtime_ns \
        == stamp                                   # finished points are not rerun
    assert again.status.tolist() == ["ok", "ok", "error"]


def test_unreachable_scheduler_is_one_clear_line(tiny, tmp_path, capsys):
    t = time.perf_counter()
    rc = main([str(tiny), "-p", "K", "1", "--out", str(tmp_path / "o"),
               "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9 within 2 s" in err
    assert time.perf_counter() - t < 30


def _start(args, **kw):
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kw)


def _scheduler(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    sched_file.unlink(missing_ok=True)
    proc = _start(["distributed.cli.dask_scheduler", "--port", "0", "--no-dashboard",
                   "--scheduler-file", str(sched_file)])
    for _ in range(600):
        if sched_file.is_file() and sched_file.stat().st_size:
            return proc, sched_file
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the test scheduler did not start")


def _stop(*procs):
    for p in procs:
        if p is not None and p.poll() is None:
            p.terminate()
    for p in procs:
        if p is not None:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_losing_the_scheduler_loses_no_finished_point(tiny, tmp_path, dask_client):
    """The scheduler dies while one point still runs: the finished point is on disk, the
    sweep says what happened, and the rerun (on another cluster: the module's local one)
    runs only the rest."""
    hold = tmp_path / "hold"
    hold.write_text("wait")
    out = tmp_path / "out"
    sched, sfile = _scheduler(tmp_path)
    worker = _start(["distributed.cli.dask_worker", "--scheduler-file", str(sfile),
                     "--nthreads", "2", "--no-dashboard"])
    try:
        import threading
        result = {}

        def sweep():
            try:
                result["table"] = run_sweep(tiny, {"K": [1], "hold": ["", str(hold)]}, out=out,
                                            scheduler=str(sfile), progress=False,
                                            connect_timeout=60)
            except Exception as exc:  # what the sweep raised is the point of the test
                result["error"] = exc

        th = threading.Thread(target=sweep)
        th.start()
        done = out / "points" / f"{point_id(tiny, {'K': 1, 'hold': ''})}.json"
        for _ in range(1200):
            if done.is_file() and json.loads(done.read_text()).get("status") == "ok":
                break
            time.sleep(0.1)
        assert done.is_file(), "the quick point never finished"
        sched.send_signal(signal.SIGKILL)
        th.join(timeout=180)
        assert not th.is_alive()
        assert isinstance(result.get("error"), ClusterError), result
        assert "1 of 2 grid points unfinished" in str(result["error"])
        assert json.loads(done.read_text())["status"] == "ok"
        table = pd.read_csv(out / "results.csv", keep_default_na=False)
        assert table.status.tolist() == ["ok", "not run"]
    finally:
        hold.unlink(missing_ok=True)
        _stop(worker, sched)
    stamp = done.stat().st_mtime_ns
    table = run_sweep(tiny, {"K": [1], "hold": ["", str(hold)]}, out=out, scheduler=dask_client,
                      progress=False)
    assert table.status.tolist() == ["ok", "ok"]
    assert done.stat().st_mtime_ns == stamp          # the finished point was not rerun


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_worker_without_the_cache_folder(tiny, tmp_path):
    """A worker that does not share the cache folder (its own mount namespace hides it):
    the sweep stops before any point runs, naming the worker."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"unshare -m not permitted here: {probe.stderr.decode().strip()}")
    (tmp_path / "cache").mkdir()
    sched, sfile = _scheduler(tmp_path)
    blind = subprocess.Popen(
        ["unshare", "-m", "sh", "-c",
         f"mount -t tmpfs none {tmp_path / 'cache'} && exec {sys.executable} -m "
         f"distributed.cli.dask_worker --scheduler-file {sfile} --nthreads 1 --no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(ClusterError, match=r"worker tcp://\S+ \(.*\) has no .*cache/"
                                               r"sweep-check-.*every worker mounts"):
            run_sweep(tiny, {"K": [1]}, out=tmp_path / "out", scheduler=str(sfile),
                      progress=False, connect_timeout=60)
        assert not list((tmp_path / "out" / "points").glob("*.json"))
    finally:
        _stop(blind, sched)
