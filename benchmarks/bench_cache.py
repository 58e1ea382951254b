"""Benchmark: build the spectra cache from 10,000 aspcapStar files.

Writes N synthetic aspcapStar files (SAS DR16 layout, full 8,575-pixel grid) into
benchmarks/_work/ (git-ignored; reused by later runs), then times
``build_spectra_cache`` serially, with worker processes and with worker threads, and
reports files per second.  Results go to stdout and benchmarks/results/cache.json.

Usage::

    python benchmarks/bench_cache.py [--n 10000] [--jobs 2] [--repeat 2]

Book: chapter 2, 'The survey's files' (notebooks/02_survey.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers import apogee as ap  # noqa: E402
from helpers import apogee as sc  # noqa: E402

WORK = HERE / "_work"
RESULTS = HERE / "results" / "cache.json"


def catalogue(n: int) -> pd.DataFrame:
    """n stars spread over 50 fields of two telescopes."""
    i = np.arange(n)
    return pd.DataFrame({
        "APOGEE_ID": [f"2M{k:08d}+{k % 9999999:07d}" for k in i],
        "TELESCOPE": np.where(i % 5 == 0, "lco25m", "apo25m"),
        "FIELD": [f"{(k % 50) * 7:03d}+{k % 13:02d}" for k in i],
        "TEFF": 4000 + (i % 1000).astype(float),
    })


def _write_some(args):
    root, rows = args
    inside = ap.chip_mask()
    for apogee_id, tel, field, seed in rows:
        rng = np.random.default_rng(seed)
        flux = np.where(inside, 1 - 0.1 * rng.random(ap.N_PIXELS), 0).astype(np.float32)
        err = np.where(inside, 0.005 + 0.01 * rng.random(ap.N_PIXELS), 0).astype(np.float32)
        bad = rng.random(ap.N_PIXELS) < 0.02
        ap.write_aspcapstar(ap.aspcapstar_path(root, "dr16", tel, field, apogee_id),
                            flux, err, flux, apogee_id=apogee_id, bad=bad,
                            telescope=tel, field=field)
    return len(rows)


def make_files(df: pd.DataFrame, root: Path, jobs: int) -> float:
    """Write the aspcapStar files that do not exist yet; returns seconds spent."""
    todo = [(r.APOGEE_ID, r.TELESCOPE, r.FIELD, k) for k, r in enumerate(df.itertuples())
            if not ap.aspcapstar_path(root, "dr16", r.TELESCOPE, r.FIELD,
                                      r.APOGEE_ID).exists()]
    t0 = time.perf_counter()
    if todo:
        chunks = [(root, todo[s:s + 200]) for s in range(0, len(todo), 200)]
        with cf.ProcessPoolExecutor(jobs) as pool:
            done = 0
            for k in pool.map(_write_some, chunks):
                done += k
                print(f"\rwriting aspcapStar files: {done}/{len(todo)}", end="",
                      file=sys.stderr)
        print(file=sys.stderr)
    return time.perf_counter() - t0


def warm_page_cache(df: pd.DataFrame, root: Path) -> None:
    """Read every file once so that all timed runs see the same (warm) page cache."""
    os.sync()
    for r in df.itertuples():
        ap.aspcapstar_path(root, "dr16", r.TELESCOPE, r.FIELD, r.APOGEE_ID).read_bytes()


def _cpu_seconds() -> float:
    """User + system CPU time of this process, its threads and its reaped children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_build(df, root, out, n_jobs, executor, batch_size=64) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all processes) of one cache build."""
    if out.exists():
        shutil.rmtree(out)
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    c = sc.build_spectra_cache(df, out, apogee_root=root, release="dr16", n_jobs=n_jobs,
                               executor=executor, batch_size=batch_size, progress=False,
                               force=True)
    dt = time.perf_counter() - t0
    assert len(c) == len(df) and c.flux.shape == (len(df), ap.N_PIXELS)
    del c
    return dt, _cpu_seconds() - c0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of aspcapStar files")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="workers for the parallel runs (default: CPU count)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="timed rounds; the best per setting is reported")
    args = parser.parse_args(argv)

    df = catalogue(args.n)
    root = WORK / "sas"
    t_write = make_files(df, root, args.jobs)
    warm_page_cache(df, root)
    settings = [("serial", 1, "process"), ("processes", args.jobs, "process"),
                ("threads", args.jobs, "thread")]
    # Interleave the settings and keep the best of --repeat rounds: the machine may be
    # shared, and the minimum is the least contaminated by other load.
    times = {name: [] for name, _, _ in settings}
    cpu = {name: [] for name, _, _ in settings}
    load_before = os.getloadavg()
    for rep in range(args.repeat):
        for name, n_jobs, executor in settings:
            dt, ct = time_build(df, root, WORK / "cache", n_jobs, executor)
            times[name].append(round(dt, 2))
            cpu[name].append(round(ct, 2))
            print(f"round {rep + 1}: {name:10s} n_jobs={n_jobs}  {dt:7.2f} s  "
                  f"{args.n / dt:8.1f} files/s  cpu {ct:6.1f} s  load "
                  f"{os.getloadavg()[0]:.1f}", file=sys.stderr)
    load_after = os.getloadavg()
    runs = {}
    for name, n_jobs, executor in settings:
        best = min(times[name])
        runs[name] = {"n_jobs": n_jobs, "executor": executor, "seconds": best,
                      "files_per_second": round(args.n / best, 1),
                      "all_seconds": times[name],
                      "cpu_seconds": min(cpu[name]),
                      "cpu_ms_per_file": round(1e3 * min(cpu[name]) / args.n, 2)}
        print(f"{name:10s} n_jobs={n_jobs}  best {best:7.2f} s  "
              f"{args.n / best:8.1f} files/s")
    cache_bytes = sum(f.stat().st_size for f in (WORK / "cache").iterdir())
    shutil.rmtree(WORK / "cache")
    result = {
        "benchmark": "build_spectra_cache from aspcapStar files (DR16 layout)",
        "n_files": args.n,
        "file_bytes_each": ap.aspcapstar_path(root, "dr16", df.TELESCOPE[0], df.FIELD[0],
                                              df.APOGEE_ID[0]).stat().st_size,
        "cache_bytes": cache_bytes,
        "seconds_to_write_files": round(t_write, 1) if t_write > 0.5 else None,
        "page_cache": "warm (every file read once before timing; a cold disk or "
                      "network mirror will be slower and I/O bound)",
        "cpu_count": os.cpu_count(),
        "load_average_1min_before_after": [round(load_before[0], 2),
                                           round(load_after[0], 2)],
        "repeat": args.repeat,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "astropy": __import__("astropy").__version__,
        "runs": runs,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
