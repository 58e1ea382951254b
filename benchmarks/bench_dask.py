"""Benchmarks of scaling out on Dask (book page 'Scaling out', issue 17).

Usage (from the repository root, on a quiet machine)::

    .venv/bin/python benchmarks/bench_dask.py all          # ~15 min at paper scale
    .venv/bin/python benchmarks/bench_dask.py overhead|scaling|zarr-read
    .venv/bin/python benchmarks/bench_dask.py all --n 12000 --quick   # a two-minute check

Data: spectra of the paper-scale synthetic survey (238,400 field stars; its spectra cache,
``STARS_BOOK_CACHE``): float32 flux on the 7,514 chip pixels, censored as chapter 4 does
(error above 0.05 or non-finite: missing).  The paper's N is 151,145.  Disk on the machine
was short (about 6 GB free), so the benchmark writes a Zarr store of a third of N (the
survey's first 50,382 stars: flux raw, 1.7 GB, the mask compressed) and builds N, 2N and 3N
by reading that store 3, 6 and 9 times (a dask array concatenated from the same chunks: no
copy is written).  The single-process engine reads exactly the same values (the same rows of
the survey's memory-mapped flux, repeated the same way).  ``--store-rows`` writes a bigger
store where disk allows.  The store is deleted at the end unless ``--keep``.

* ``overhead``: PPCA (K = 30, tol 1e-5, the exact E-step) of N stars, side by side in one
  run, alternating: the single-process engine on the memory map (a fresh process each
  time), the same fit on a LocalCluster of two single-threaded workers streaming from the
  Zarr store (every pass reads it), and, once, from worker memory (the blocks persisted
  first).  Goal: the cluster within 1.5x of the single process.
* ``scaling``: the cluster fit, streamed from Zarr, at N, 2N and 3N stars.  Every fit runs
  the same passes (scan, start, 2 EM iterations, the final objective pass: tol 0,
  max_iter 2) so that only N changes.  A straight line through the times extrapolates to
  DR17's 733,901 stars.
* ``report``: the figure ``results/dask_scaling.png`` and the results tables of
  ``README_dask.md`` and the top README, from ``dask.json`` (also done after every run).
* ``zarr-read``: seconds to read 20,000 stars' flux once: Zarr chunks of 256 and 2048 stars,
  raw and Zstandard-compressed, against the memory map.

Results go to ``benchmarks/results/dask.json`` (``dask_quick.json`` with ``--quick``); the
load average is recorded before and after each measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from helpers.apogee.cache_zarr import open_zarr_store, write_zarr_store  # noqa: E402
from helpers.dask_cluster import connect  # noqa: E402
from helpers.ppca import PPCA  # noqa: E402
from machine import fit_in_child, load  # noqa: E402  (benchmarks/machine.py)

WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"
K = 30
PAPER_N = 151_146     # the paper's 151,145 field giants, rounded up to a multiple of 3
DR17_N = 733_901      # rows of the DR17 allStar file (Abdurro'uf et al. 2022), as in issue 17


def survey_spectra():
    """The paper-scale survey's spectra cache (memory maps) and its folder."""
    from helpers.rsca.pipeline import chapter_source
    from helpers.survey import generate_survey, load_survey
    survey = load_survey(generate_survey(chapter_source(), progress=False))
    return survey.spectra


def censored(flux, error, rows):
    """Chapter 4's censoring of rows ``rows`` (a slice): observed mask, full grid."""
    from helpers.rsca.masking import censor
    out = np.empty((rows.stop - rows.start, flux.shape[1]), dtype=bool)
    for a in range(rows.start, rows.stop, 4096):
        b = min(a + 4096, rows.stop)
        out[a - rows.start:b - rows.start] = censor(np.asarray(flux[a:b]), np.asarray(error[a:b]),
                                                    0.05)
    return out


def write_store(spectra, n_rows, path, chunk_rows=256):
    """The first ``n_rows`` stars' flux (raw) and censoring mask (compressed), full grid."""
    t = time.perf_counter()
    obs = censored(spectra.flux, spectra.error, slice(0, n_rows))
    write_zarr_store(path, {"flux": spectra.flux[:n_rows], "observed": obs},
                     spectra.apogee_ids[:n_rows], compress=["observed"], chunk_rows=chunk_rows,
                     progress=False,
                     attrs={"what": "benchmark copy of the survey's first stars",
                            "source_key": spectra.manifest["key"]})
    return time.perf_counter() - t


class RepeatRows:
    """Rows ``0..n-1`` of a matrix read ``reps`` times over, on some columns: what the single
    process reads to see the same values as the concatenated dask array (read lazily)."""

    def __init__(self, array, n, reps, columns):
        self.array, self.n, self.reps = array, int(n), int(reps)
        self.columns = np.flatnonzero(columns)
        self.shape = (self.n * self.reps, self.columns.size)
        self.dtype = array.dtype
        self.ndim = 2

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        idx = np.arange(self.shape[0])[rows] % self.n
        if idx.size and np.all(np.diff(idx) == 1):
            block = np.asarray(self.array[int(idx[0]):int(idx[-1]) + 1])
        else:
            block = np.asarray(self.array[idx])
        return block[:, self.columns]


def single_process_fit(flux_path, store, n_store, reps, tol, max_iter):
    """The single-process engine on the memory-mapped flux (rows repeated ``reps`` times,
    chip pixels), its mask read from the store into memory, in a fresh process."""
    code = (
        "import sys, time, json, resource, numpy as np, zarr\n"
        f"sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "from bench_dask import RepeatRows\n"
        "from helpers.apogee import chip_mask\n"
        "from helpers.ppca import PPCA\n"
        f"F = np.load({str(flux_path)!r}, mmap_mode='r')\n"
        f"obs = zarr.open_array({str(store / 'observed')!r}, mode='r')[:]\n"
        f"X = RepeatRows(F, {n_store}, {reps}, chip_mask())\n"
        f"M = RepeatRows(obs, {n_store}, {reps}, chip_mask())\n"
        "t = time.perf_counter()\n"
        f"p = PPCA({K}, tol={tol!r}, max_iter={max_iter}).fit(X, mask=M)\n"
        "dt = time.perf_counter() - t\n"
        f"np.save({str(WORK / 'single_C.npy')!r}, p.components_)\n"
        "print(json.dumps(dict(wall_s=dt, n_iter=int(p.n_iter_), sigma2=p.noise_variance_,"
        " scan_s=p.timings_['scan'], start_s=p.timings_['start'],"
        " iter_s=p.timings_['iterations'], start_rounds=p.start_info_['rounds'],"
        " peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)))\n")
    return fit_in_child(code, WORK / "single_C.npy")


def dask_inputs(store, n, chunk_rows):
    """The first ``n`` rows of the store's flux and mask repeated (whole copies, then part of
    one) until there are ``n`` rows, on the chip pixels (dask)."""
    import dask.array as da
    from helpers.apogee import chip_mask
    zs = open_zarr_store(store, chunk_rows=chunk_rows)
    chips = chip_mask()
    n_store = zs["flux"].shape[0]
    parts_x, parts_m = [], []
    while sum(p.shape[0] for p in parts_x) < n:
        take = min(n_store, n - sum(p.shape[0] for p in parts_x))
        parts_x.append(zs["flux"][:take, chips])
        parts_m.append(zs["observed"][:take, chips])
    return da.concatenate(parts_x), da.concatenate(parts_m)


def cluster_fit(client, X, M, tol, max_iter, n_init_rows=20000):
    t = time.perf_counter()
    with client.as_current():
        p = PPCA(K, tol=tol, max_iter=max_iter, n_init_rows=n_init_rows).fit(X, mask=M)
    dt = time.perf_counter() - t
    return dict(wall_s=dt, n_iter=int(p.n_iter_), sigma2=p.noise_variance_,
                scan_s=p.timings_["scan"], start_s=p.timings_["start"],
                iter_s=p.timings_["iterations"], start_rounds=p.start_info_["rounds"],
                n_chunks=p.n_chunks_), p.components_


def angle_deg(A, B):
    from scipy.linalg import subspace_angles
    return float(np.degrees(subspace_angles(A.T, B.T)).max())


def summarise_overhead(out, comps):
    """Medians, ratios and the agreement of the last fits (in place)."""
    med = {}
    for what in ("single", "dask_zarr", "dask_persisted"):
        w = [r["wall_s"] for r in out["runs"] if r["engine"] == what]
        if w:
            med[what] = float(np.median(w))
            if what != "single" and "single" in med:
                out[f"ratio_{what}_over_single"] = med[what] / med["single"]
    out["median_wall_s"] = med
    if "dask_zarr" in comps and "single" in comps:
        out["angle_dask_vs_single_deg"] = angle_deg(comps["dask_zarr"], comps["single"])
        s_single = [r["sigma2"] for r in out["runs"] if r["engine"] == "single"][-1]
        s_dask = [r["sigma2"] for r in out["runs"] if r["engine"] == "dask_zarr"][-1]
        out["sigma2_rel_diff"] = s_dask / s_single - 1
    out["load_after"] = load()
    return out


def bench_overhead(spectra, store, n, n_store, reps, chunk_rows, persisted, tol=1e-5,
                   max_iter=500, save=None, earlier=None):
    """``save(out)`` is called after every fit; ``earlier``: a previous run's results at
    the same N, whose runs are kept (more alternating pairs, added in a later run)."""
    from helpers.apogee import chip_mask
    base, reps_data = (n, 1) if n <= n_store else (n_store, n // n_store)
    if base * reps_data != n:
        raise ValueError(f"N = {n} must be at most {n_store} or a multiple of it")
    out = {"N": n, "D": int(spectra.flux.shape[1]), "pixels_used": int(chip_mask().sum()),
           "K": K, "tol": tol,
           "data": f"the survey's first {base} stars read {reps_data} time(s)",
           "dask_chunk_rows": chunk_rows, "load_before": load(), "runs": []}
    if earlier and earlier.get("N") == n and earlier.get("tol") == tol:
        out["runs"] = list(earlier["runs"])
        out["load_before"] = earlier["load_before"]
    first_rep = 1 + max([r["rep"] for r in out["runs"]], default=-1)
    Xd, Md = dask_inputs(store, n, chunk_rows)
    flux_path = spectra.path / "flux.npy"
    with connect(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        comps = {}
        for rep in range(first_rep, first_rep + reps):
            for what in ("single", "dask_zarr"):
                before = load()
                if what == "single":
                    res, C = single_process_fit(flux_path, store, base, reps_data, tol,
                                                max_iter)
                else:
                    res, C = cluster_fit(client, Xd, Md, tol, max_iter)
                res.update(engine=what, rep=rep, load_before=before, load_after=load())
                comps[what] = C
                out["runs"].append(res)
                print(f"  {what}: {res['wall_s']:.1f} s ({res['n_iter']} iterations, start "
                      f"{res['start_s']:.1f} s, scan {res['scan_s']:.1f} s), load {before}",
                      flush=True)
                if save is not None:
                    save(summarise_overhead(out, comps))
        if persisted:
            # the blocks in the workers' memory first (time to load reported apart)
            from distributed import wait
            t = time.perf_counter()
            Xp, Mp = client.persist([Xd, Md])
            wait([Xp, Mp])
            t_load = time.perf_counter() - t
            before = load()
            res, C = cluster_fit(client, Xp, Mp, tol, max_iter)
            res.update(engine="dask_persisted", rep=0, load_s=t_load, load_before=before,
                       load_after=load())
            out["runs"].append(res)
            comps["dask_persisted"] = C
            print(f"  persisted: {res['wall_s']:.1f} s (+ {t_load:.1f} s to load the blocks)",
                  flush=True)
            del Xp, Mp
        client.cluster.close()
    return summarise_overhead(out, comps)


def fit_line(out):
    """The straight line through the scaling rows, extrapolated to DR17 (in place)."""
    Ns = sorted({r["N"] for r in out["rows"]})
    out["medians"] = [{"N": n, "wall_s": float(np.median([r["wall_s"] for r in out["rows"]
                                                          if r["N"] == n])),
                       "fits": sum(r["N"] == n for r in out["rows"])} for n in Ns]
    N = np.array([m["N"] for m in out["medians"]], float)
    T = np.array([m["wall_s"] for m in out["medians"]])
    if len(N) < 2:
        return out
    slope, icept = np.polyfit(N, T, 1)
    pred = slope * N + icept
    out["linear_fit"] = {"seconds_per_star": float(slope), "intercept_s": float(icept),
                         "max_rel_residual": float(np.max(np.abs(T - pred) / T)),
                         "dr17_N": DR17_N, "dr17_predicted_s": float(slope * DR17_N + icept)}
    out["load_after"] = load()
    return out


def bench_scaling(store, n_store, Ns, chunk_rows, save=None, reps=1, earlier=None):
    """The cluster fit at each N of ``Ns``, ``reps`` times, in an interleaved order (so that
    a change in the machine's load falls on every N alike); the line goes through the
    medians.  ``earlier``: a previous run's results at the same Ns, whose fits are kept
    (``--more``: more repeats added in a later run, in the reverse order of the last)."""
    n_init = min(20000, min(Ns) // 2)       # every fit streams, with the same start subsample
    out = {"N_store": n_store, "N": list(Ns), "K": K, "tol": 0.0, "max_iter": 2,
           "n_init_rows": n_init, "pixels_used": None,
           "how": "N stars = the Zarr store of n_store stars read whole and in part until N "
                  "rows (a concatenated dask array; no copy written)", "load_before": load(),
           "rows": [], "order": []}
    if earlier and earlier.get("N") == list(Ns) and earlier.get("n_init_rows") == n_init:
        out["rows"], out["order"] = list(earlier["rows"]), list(earlier.get("order", []))
        out["load_before"] = earlier["load_before"]
    done_reps = len(out["rows"]) // len(Ns)
    with connect(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        order = [n for rep in range(done_reps, done_reps + reps)
                 for n in (Ns if rep % 2 == 0 else Ns[::-1])]
        out["order"] += order
        for n in order:
            X, M = dask_inputs(store, n, chunk_rows)
            before = load()
            res, _ = cluster_fit(client, X, M, 0.0, 2, n_init)
            res.update(N=n, load_before=before, load_after=load())
            out["rows"].append(res)
            print(f"  N = {n}: {res['wall_s']:.1f} s (scan {res['scan_s']:.1f}, "
                  f"start {res['start_s']:.1f}, iterations "
                  f"{np.round(res['iter_s'], 1).tolist()})", flush=True)
            out["pixels_used"] = int(X.shape[1])
            if save is not None:
                save(fit_line(out))
        client.cluster.close()
    return fit_line(out)


def bench_zarr_read(X, n, tmp):
    """Seconds to read the first n stars' flux once, several ways."""
    import zarr
    out = {"N": n, "load_before": load()}
    t = time.perf_counter()
    for a in range(0, n, 2048):
        np.array(X[a:a + 2048])
    out["memmap_s"] = time.perf_counter() - t
    for rows in (256, 2048):
        for comp in (False, True):
            path = tmp / f"read_{rows}_{int(comp)}.zarr"
            write_zarr_store(path, {"flux": X[:n]}, [str(i) for i in range(n)],
                             compress=["flux"] if comp else [], chunk_rows=rows, progress=False)
            za = zarr.open_array(path / "flux", mode="r")
            t = time.perf_counter()
            for a in range(0, n, 2048):
                za[a:a + 2048]
            key = f"zarr_{rows}_{'zstd' if comp else 'raw'}"
            out[key + "_s"] = time.perf_counter() - t
            out[key + "_gb"] = sum(f.stat().st_size for f in (path / "flux").rglob("*")
                                   if f.is_file()) / 1e9
            shutil.rmtree(path)
    out["flux_gb"] = n * X.shape[1] * 4 / 1e9
    out["load_after"] = load()
    return out


def summary_rows(res):
    """Markdown table rows (what, result, goal) computed from the results."""
    rows = []
    ov, sc = res.get("overhead"), res.get("scaling")
    if ov and "ratio_dask_zarr_over_single" in ov:
        med, loads = ov["median_wall_s"], [r["load_before"][0] for r in ov["runs"]]
        n_alt = sum(r["engine"] == "single" for r in ov["runs"])
        ratio = ov["ratio_dask_zarr_over_single"]
        rows.append((
            f"PPCA on a LocalCluster of 2 workers vs the single-process engine, "
            f"{ov['N']:,} x {ov['pixels_used']:,} chip pixels float32, K = {ov['K']}, "
            f"tol {ov['tol']:g} ({ov['data']})",
            f"{ratio:.2f}x (medians of {n_alt} alternating runs: cluster "
            f"{med['dask_zarr']:.0f} s from Zarr, single {med['single']:.0f} s from the "
            f"memory map; load average {min(loads):.0f}-{max(loads):.0f} on 2 cores); "
            f"subspaces {ov['angle_dask_vs_single_deg']:.0e} deg apart, sigma^2 "
            f"{abs(ov['sigma2_rel_diff']):.0e} relative",
            "<= 1.5x at the paper's N (" + (("met" if ratio <= 1.5 else "not met")
                                             if ov["N"] >= 151_145 else
                                             f"not tested: this run is at N = {ov['N']:,}")
            + ")"))
    if sc and "linear_fit" in sc:
        line, loads = sc["linear_fit"], [r["load_before"][0] for r in sc["rows"]]
        pts = ", ".join(f"{m['N']:,}: {m['wall_s']:.0f} s" for m in sc["medians"])
        pts += f" (median of {min(m['fits'] for m in sc['medians'])} fit(s) each)"
        ok = line["max_rel_residual"] <= 0.15
        rows.append((
            "PPCA time against N on the 2-worker cluster, streamed from Zarr (start + "
            f"{sc['max_iter']} EM iterations)" + ("" if sc["rows"][0]["N"] >= 151_145 else
                                                  "; not at the paper's N, 2N, 3N (this run)"),
            f"{pts}; straight line within {100 * line['max_rel_residual']:.0f} % of every "
            f"point, {1e6 * line['seconds_per_star']:.0f} s per million stars; DR17 "
            f"({line['dr17_N']:,} stars) extrapolated to {line['dr17_predicted_s'] / 60:.0f} min "
            f"for the same passes (load average {min(loads):.0f}-{max(loads):.0f}; the store "
            "re-read from the file cache, so computation only: DR17 would also read its disk)",
            "linear (" + ("met: every point within 15 %" if ok else
                          "not clearly: a point is more than 15 % off the line") + ")"))
    zr = res.get("zarr_read")
    if zr:
        per_star = {k: zr[f"zarr_{k}_gb"] / zr["N"] for k in ("256_raw", "256_zstd")}
        rows.append((
            f"reading {zr['N']:,} stars' flux (8,575 pixels float32, {zr['flux_gb']:.2f} GB) "
            "once, and the size of a paper-scale Zarr copy",
            f"memory map {zr['memmap_s']:.1f} s; Zarr chunks of 256 stars raw "
            f"{zr['zarr_256_raw_s']:.1f} s, Zstandard {zr['zarr_256_zstd_s']:.1f} s "
            f"(2048 stars: {zr['zarr_2048_raw_s']:.1f} s, {zr['zarr_2048_zstd_s']:.1f} s); "
            f"151,145 stars take {151_145 * per_star['256_raw']:.1f} GB raw, "
            f"{151_145 * per_star['256_zstd']:.1f} GB compressed "
            f"(load average {zr['load_before'][0]:.0f})",
            "figure"))
    return rows


def figure(res, out):
    """The scaling figure (time against N with the line to DR17; the overhead bars)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ov, sc = res.get("overhead"), res.get("scaling")
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(9.5, 3.4),
                                 gridspec_kw={"width_ratios": [1.4, 1]})
    colours = ["#E69F00", "#56B4E9", "#009E73"]
    if sc and "linear_fit" in sc:
        N = np.array([r["N"] for r in sc["rows"]], float)
        T = np.array([r["wall_s"] for r in sc["rows"]])
        line = sc["linear_fit"]
        a0.plot([m["N"] / 1e3 for m in sc["medians"]], [m["wall_s"] for m in sc["medians"]],
                "_", ms=14, color="k", label="median")
        grid = np.linspace(0, line["dr17_N"] * 1.05, 50)
        a0.plot(N / 1e3, T, "o", color=colours[0], label="each fit (2 workers)")
        a0.plot(grid / 1e3, line["seconds_per_star"] * grid + line["intercept_s"], "--",
                color=colours[1], label="straight line through them")
        a0.plot(line["dr17_N"] / 1e3, line["dr17_predicted_s"], "*", ms=12,
                color=colours[2], label="DR17, extrapolated")
        a0.legend(frameon=False, fontsize=8)
    a0.set_xlabel("stars N (thousands)")
    a0.set_ylabel("PPCA fit, wall time (s)")
    a0.set_title("Time against N (start + 2 EM iterations)", fontsize=10)
    if ov and "ratio_dask_zarr_over_single" in ov:
        med = ov["median_wall_s"]
        names = [(k, n) for k, n in (("single", "one process\n(memory map)"),
                                     ("dask_zarr", "cluster\n(Zarr, streamed)"),
                                     ("dask_persisted", "cluster\n(worker memory)"))
                 if k in med]
        a1.bar(range(len(names)), [med[k] for k, _ in names], color=colours[:len(names)])
        a1.set_xticks(range(len(names)), [n for _, n in names], fontsize=8)
        a1.set_title(f"PPCA to convergence, N = {ov['N']:,}", fontsize=10)
    a1.set_ylabel("wall time (s)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def report(res, out_png, readmes):
    """The figure and the results tables between ``<!-- dask:start -->`` and
    ``<!-- dask:end -->`` of each README, written from the results (never typed)."""
    if res.get("scaling") and "medians" not in res["scaling"]:
        fit_line(res["scaling"])       # results written before the medians were kept
    figure(res, out_png)
    rows = summary_rows(res)
    for readme, prefix in readmes:
        text = readme.read_text()
        a, b = "<!-- dask:start -->", "<!-- dask:end -->"
        if a not in text or b not in text:
            continue
        table = ["| what | result | goal |", "|---|---|---|"]
        table += [f"| {w} | {r} | {g} |" for w, r, g in rows]
        body = "\n".join(table) + f"\n\n![PPCA on Dask: time against N and the overhead]({prefix}{out_png.name})\n"
        text = text[:text.index(a) + len(a)] + "\n" + body + text[text.index(b):]
        readme.write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["all", "overhead", "scaling", "zarr-read", "report"])
    ap.add_argument("--n", type=int, default=PAPER_N,
                    help=f"stars N of the overhead fit and the scaling's base (default {PAPER_N})")
    ap.add_argument("--store-rows", type=int, default=None,
                    help="stars in the Zarr store (default N/3, rounded up; N must be a "
                         "multiple of it)")
    ap.add_argument("--quick", action="store_true", help="results to dask_quick.json")
    ap.add_argument("--reps", type=int, default=2, help="alternating repeats (overhead)")
    ap.add_argument("--chunk-rows", type=int, default=2048, help="stars per dask chunk")
    ap.add_argument("--more", action="store_true",
                    help="overhead and scaling: add repeats to those already in the results")
    ap.add_argument("--skip-done", action="store_true",
                    help="all: do not rerun zarr-read when its results exist")
    ap.add_argument("--keep", action="store_true", help="keep the Zarr store in _work/")
    ap.add_argument("--persisted", action="store_true",
                    help="overhead: also fit from worker memory (needs the cluster to hold N)")
    ap.add_argument("--scaling-reps", type=int, default=1,
                    help="scaling: fits at each N (interleaved: N, 2N, 3N, 3N, 2N, N, ...)")
    ap.add_argument("--scaling-base", type=int, default=None,
                    help="scaling: the first N (default the overhead's N); then 2x and 3x")
    args = ap.parse_args(argv)
    if args.what == "report":        # figure and README tables from the results file
        res = json.loads((RESULTS / "dask.json").read_text())
        report(res, RESULTS / "dask_scaling.png",
               [(ROOT / "benchmarks" / "README_dask.md", "results/"),
                (ROOT / "README.md", "benchmarks/results/")])
        return
    n_store = args.store_rows or -(-PAPER_N // 3)
    reps_data = max(1, round(args.n / n_store))
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / ("dask_quick.json" if args.quick else "dask.json")
    res = json.loads(out_path.read_text()) if out_path.exists() else {}
    import dask
    import distributed
    import zarr
    res["machine"] = dict(cpus=os.cpu_count(), python=platform.python_version(),
                          numpy=np.__version__, dask=dask.__version__,
                          distributed=distributed.__version__, zarr=zarr.__version__,
                          load_at_start=load(), disk_free_gb_at_start=round(
                              shutil.disk_usage(WORK).free / 1e9, 1),
                          note="2-core machine shared with other engineers' jobs")
    spectra = survey_spectra()
    print(f"survey spectra: {spectra.flux.shape} ({spectra.path}); N = {n_store} x {reps_data}",
          flush=True)
    store = WORK / f"survey_first_{n_store}.zarr"
    try:
        if args.what in ("all", "zarr-read") and not (args.what == "all" and "zarr_read" in res
                                                      and args.skip_done):
            res["zarr_read"] = bench_zarr_read(spectra.flux, 20000 if not args.quick else 4000,
                                               WORK)
            print(json.dumps(res["zarr_read"], indent=1), flush=True)
        if args.what in ("all", "overhead", "scaling"):
            have = open_zarr_store(store).flux.shape[0] if (store / "zarr.json").is_file() else 0
            if have != n_store:
                t_write = write_store(spectra, n_store, store)
                res["zarr_write"] = {"stars": n_store, "seconds": t_write,
                                     "gb": sum(f.stat().st_size for f in store.rglob("*")
                                               if f.is_file()) / 1e9}
                print(f"Zarr store of {n_store} stars written in {t_write:.0f} s", flush=True)
        def saver(key):
            def save(part):
                res[key] = part
                out_path.write_text(json.dumps(res, indent=1))
            return save

        if args.what in ("all", "overhead"):
            res["overhead"] = bench_overhead(spectra, store, args.n, n_store, args.reps,
                                             args.chunk_rows, args.persisted,
                                             save=saver("overhead"),
                                             earlier=res.get("overhead") if args.more else None)
            out_path.write_text(json.dumps(res, indent=1))
            print(json.dumps({k: v for k, v in res["overhead"].items() if k != "runs"},
                             indent=1), flush=True)
        if args.what in ("all", "scaling"):
            base = args.n if args.scaling_base is None else args.scaling_base
            res["scaling"] = bench_scaling(store, n_store, (base, 2 * base, 3 * base),
                                           args.chunk_rows, save=saver("scaling"),
                                           reps=args.scaling_reps,
                                           earlier=res.get("scaling") if args.more else None)
            print(json.dumps(res["scaling"]["linear_fit"], indent=1), flush=True)
    finally:
        res["load_at_end"] = load()
        out_path.write_text(json.dumps(res, indent=1))
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
            (WORK / "single_C.npy").unlink(missing_ok=True)
    print("wrote", out_path)
    if not args.quick:
        report(res, RESULTS / "dask_scaling.png",
               [(ROOT / "benchmarks" / "README_dask.md", "results/"),
                (ROOT / "README.md", "benchmarks/results/")])


if __name__ == "__main__":
    main()
