"""Benchmarks of helpers.ppca (book chapter 5, 'Step 1: PPCA with missing pixels').

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_ppca.py all            # everything, ~10 min
    .venv/bin/python benchmarks/bench_ppca.py all --quick    # small sizes, ~1 min
    .venv/bin/python benchmarks/bench_ppca.py compare|paper|scaling|gemm|ab
    .venv/bin/python benchmarks/bench_ppca.py fast           # method='fast': ~5 min
    .venv/bin/python benchmarks/bench_ppca.py fast-vs-exact-paper   # both, same files, ~6 min

Results are merged into benchmarks/results/ppca.json (or ppca_quick.json with --quick).
Synthetic data: rank-30 'spectra' (continuum 1, component amplitudes decaying as
exp(-k/10), 0.05 at k=0) plus white noise 0.01 (S/N ~ 100), with ~3% of the pixels missing:
2% at random and 1% in whole windows of 60 pixels (a different window per star).
The machine is shared with other engineers running their own jobs: timings are noisy and
every ratio below is measured within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from helpers.ppca import PPCA  # noqa: E402
from machine import fit_in_child, gemm_gflops  # noqa: E402  (benchmarks/machine.py)

WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"
D_APOGEE = 8575
RANK = 30


def _max_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def gemm_gflops_1():
    """NumPy's GEMM rate on one BLAS thread (the E-step runs chunks in parallel, one thread each)."""
    return gemm_gflops(threads=1)


def make_block(rng, n, D, basis, noise=0.01, p_rand=0.02, p_win=0.01, win=60):
    """n synthetic spectra (float32) and their observed mask."""
    k = basis.shape[0]
    X = rng.standard_normal((n, k), dtype=np.float32) @ basis
    X += noise * rng.standard_normal((n, D), dtype=np.float32)
    X += 1.0
    obs = rng.random((n, D), dtype=np.float32) >= p_rand
    nwin = rng.random(n) < p_win * D / win
    starts = rng.integers(0, D - win, n)
    for i in np.flatnonzero(nwin):
        obs[i, starts[i]:starts[i] + win] = False
    return X, obs


def make_basis(D, seed=0):
    rng = np.random.default_rng(seed)
    amp = 0.05 * np.exp(-np.arange(RANK) / 10.0)
    return (rng.standard_normal((RANK, D)) * amp[:, None]).astype(np.float32), amp


def true_axes(basis, K):
    q, _ = np.linalg.qr(basis.T.astype(np.float64))
    return q[:, :K]


def angles_deg(A, B):
    from scipy.linalg import subspace_angles
    return np.degrees(subspace_angles(A, B))


def flops_per_iter(N, D, K, n_missing):
    """Floating-point operations of one iteration of the missing-as-latent EM."""
    dense = 2 * (2.0 * N * D * (K + 1))                  # X @ [W m] and X^T @ [Z 1]
    missing = 2 * (2.0 * n_missing * K * K)              # W_m^T W_m and W_m Sigma
    small = N * (2.0 * K ** 3 + K ** 3 / 3)               # inverses and Cholesky
    return dense + missing + small


# ------------------------------------------------------------------------------ compare
def bench_compare(N, D, K, seed=1, reps=4, py_reps=3):
    """pyppca vs helpers.ppca (exact and fast) on the same data, in one run, all stopping at
    a relative objective change of 1e-4.  Ours alternate exact/fast ``reps`` times; pyppca
    runs ``py_reps`` times in a child process.  Ratios of medians and of best times."""
    basis, _ = make_basis(D, seed)
    rng = np.random.default_rng(seed + 1)
    X32, obs = make_block(rng, N, D, basis)
    truth = true_axes(basis, K)
    out = {"N": N, "D": D, "K": K, "missing_fraction": float(1 - obs.mean()),
           "tolerance": "relative change of each code's own objective < 1e-4 "
                        "(pyppca 0.0.4 hard-codes threshold = 1e-4 and runs >= 5 iterations)",
           "load_avg_before": os.getloadavg()}
    times = {"exact": [], "fast": []}
    fits = {}
    for _ in range(reps):
        for meth in ("exact", "fast"):
            t = time.perf_counter()
            p = PPCA(K, tol=1e-4, method=meth).fit(X32, mask=obs)
            times[meth].append(time.perf_counter() - t)
            fits[meth] = p
            print(f"  ours {meth}: {times[meth][-1]:.2f} s "
                  f"({', '.join(f'{k} {v:.2f}' for k, v in p.timings_.items() if k != 'iterations')}"
                  f", iterations {[round(v, 2) for v in p.timings_['iterations']]})", flush=True)
    py = [_pyppca_child(X32, obs, K) for _ in range(py_reps)]
    py_s = [r[0] for r in py]
    print(f"  pyppca: {[round(v, 1) for v in py_s]} s", flush=True)
    C = py[-1][4]
    out["pyppca_s"] = py_s
    out["pyppca_iter"] = int(py[-1][1])
    out["pyppca_peak_rss_gb"] = float(py[-1][3])
    out["noise_variance_pyppca"] = float(py[-1][2])
    out["angle_pyppca_vs_truth_max_deg"] = float(angles_deg(C, truth).max())
    for meth, p in fits.items():
        a = angles_deg(p.components_.T, C)
        out[meth] = {
            "s": times[meth], "n_iter": int(p.n_iter_), "start_rounds": p.start_info_["rounds"],
            "timings_last_run": p.timings_,
            "speed_ratio_median": float(np.median(py_s) / np.median(times[meth])),
            "speed_ratio_best": float(min(py_s) / min(times[meth])),
            "angle_vs_pyppca_max_deg": float(a.max()),
            "angle_vs_pyppca_median_deg": float(np.median(a)),
            "angle_vs_truth_max_deg": float(angles_deg(p.components_.T, truth).max()),
            "noise_variance": p.noise_variance_, "history": p.history_.tolist()}
    out["load_avg_after"] = os.getloadavg()
    return out


# ------------------------------------------------------------------------------ paper scale
def write_memmaps(N, D, seed=2, block=4000):
    """Write flux (float32) and mask (bool) files with plain writes (no mapping)."""
    basis, _ = make_basis(D, seed)
    rng = np.random.default_rng(seed + 1)
    fx = WORK / f"flux_{N}x{D}.f32"
    fm = WORK / f"mask_{N}x{D}.bool"
    n_miss = 0
    with open(fx, "wb") as f1, open(fm, "wb") as f2:
        for a in range(0, N, block):
            X, obs = make_block(rng, min(block, N - a), D, basis)
            X[~obs] = 0.0
            n_miss += int((~obs).sum())
            f1.write(X.tobytes())
            f2.write(obs.tobytes())
    return fx, fm, basis, n_miss / (N * D)


def bench_paper(N, D, K, gflops, method="exact"):
    """Paper-scale memmap fit with one method (or, given a tuple, each method in turn on
    the same files; then also the principal angles between their subspaces)."""
    methods = (method,) if isinstance(method, str) else tuple(method)
    t = time.perf_counter()
    fx, fm, basis, miss = write_memmaps(N, D)
    t_write = time.perf_counter() - t
    try:
        runs = {m: _paper_fit(fx, fm, basis, miss, t_write, N, D, K, gflops, m)
                for m in methods}
    finally:
        for f in (fx, fm):
            Path(f).unlink(missing_ok=True)
    if len(methods) == 1:
        return runs[methods[0]][0]
    out = {m: r for m, (r, _) in runs.items()}
    if {"exact", "fast"} <= set(methods):
        a = angles_deg(runs["fast"][1].T, runs["exact"][1].T)
        out["angle_fast_vs_exact_max_deg"] = float(a.max())
        out["angle_fast_vs_exact_median_deg"] = float(np.median(a))
        out["wall_ratio_exact_over_fast"] = out["exact"]["wall_s"] / out["fast"]["wall_s"]
        out["iter_median_ratio_exact_over_fast"] = (out["exact"]["iter_median_s"]
                                                    / out["fast"]["iter_median_s"])
        out["sigma2_fast_over_exact_minus_1"] = out["fast"]["sigma2"] / out["exact"]["sigma2"] - 1
    return out


def _paper_fit(fx, fm, basis, miss, t_write, N, D, K, gflops, method):
    # fit in a fresh process so that its peak RSS is the fit's alone
    code = (
        "import sys, time, resource, json, numpy as np\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from helpers.ppca import PPCA\n"
        f"X = np.memmap({str(fx)!r}, dtype=np.float32, mode='r', shape=({N}, {D}))\n"
        f"M = np.memmap({str(fm)!r}, dtype=bool, mode='r', shape=({N}, {D}))\n"
        "import threading\n"
        "peak = {'RssAnon': 0, 'RssFile': 0, 'VmRSS': 0}\n"
        "stop = False\n"
        "def sample():\n"
        "    while not stop:\n"
        "        for line in open('/proc/self/status'):\n"
        "            k = line.split(':')[0]\n"
        "            if k in peak:\n"
        "                peak[k] = max(peak[k], int(line.split()[1]))\n"
        "        time.sleep(0.05)\n"
        "th = threading.Thread(target=sample, daemon=True); th.start()\n"
        "t = time.perf_counter()\n"
        f"p = PPCA({K}, tol=1e-5, chunk_size=2048, method={method!r}).fit(X, mask=M)\n"
        "dt = time.perf_counter() - t\n"
        f"np.save({str(WORK / 'paper_C.npy')!r}, p.components_)\n"
        "print(json.dumps(dict(wall_s=dt, n_iter=int(p.n_iter_), converged=bool(p.converged_),"
        " scan_s=p.timings_['scan'], start_s=p.timings_['start'],"
        " iter_s=p.timings_['iterations'], history=p.history_.tolist(),"
        " sigma2=p.noise_variance_,"
        " peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,"
        " sampled_peak_anon_gb=peak['RssAnon'] / 1024**2,"
        " sampled_peak_file_gb=peak['RssFile'] / 1024**2,"
        " sampled_peak_rss_gb=peak['VmRSS'] / 1024**2)))\n")
    res, C = fit_in_child(code, WORK / "paper_C.npy")
    res["angle_vs_truth_max_deg"] = float(angles_deg(C.T, true_axes(basis, K)).max())
    res.update(N=N, D=D, K=K, method=method, missing_fraction=miss, write_s=t_write,
               file_gb=(fx.stat().st_size + fm.stat().st_size) / 1e9)
    n_missing = miss * N * D
    it = np.median(res["iter_s"])
    res["iter_median_s"] = float(it)
    res["gflops_per_iter"] = flops_per_iter(N, D, K, n_missing) / it / 1e9
    res["fraction_of_gemm"] = res["gflops_per_iter"] / gflops
    if method == "fast":   # no per-star K x K products: count the two chunk GEMMs only
        res["gflops_per_iter"] = 2 * (2.0 * N * D * (K + 1)) / it / 1e9
        res["fraction_of_gemm"] = res["gflops_per_iter"] / gflops
        res["flops_counted"] = "the two chunk GEMMs only (X @ [W m], X^T @ [Z 1])"
    return res, C


# ------------------------------------------------------------------------------ fast
def _pyppca_child(X32, obs, K):
    """pyppca 0.0.4 in a child process: (wall s, iterations, sigma2, peak RSS GB, C)."""
    np.save(WORK / "cmp_X.npy", np.where(obs, X32, np.nan).astype(np.float64))
    code = (
        "import numpy as np, time, resource, io, contextlib, sys\n"
        "from pyppca import ppca\n"
        f"Y = np.load({str(WORK / 'cmp_X.npy')!r})\n"
        "np.random.seed(0)\n"
        "buf = io.StringIO()\n"
        "t = time.perf_counter()\n"
        f"with contextlib.redirect_stdout(buf): C, ss, M, Xl, Ye = ppca(Y, {K}, True)\n"
        "dt = time.perf_counter() - t\n"
        f"np.save({str(WORK / 'cmp_C.npy')!r}, C)\n"
        "print(dt, len(buf.getvalue().splitlines()), ss,"
        " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dt, nit, ss, rss = r.stdout.split()
    C = np.load(WORK / "cmp_C.npy")
    for f in ("cmp_X.npy", "cmp_C.npy"):
        (WORK / f).unlink(missing_ok=True)
    return float(dt), int(nit), float(ss), float(rss), C


def bench_fast(N, D, K, seed=1, reps=2):
    """pyppca vs PPCA(method='exact') vs PPCA(method='fast'), one run, same data, all at a
    relative objective change of 1e-4; ours alternate exact/fast `reps` times (best kept)."""
    basis, _ = make_basis(D, seed)
    rng = np.random.default_rng(seed + 1)
    X32, obs = make_block(rng, N, D, basis)
    truth = true_axes(basis, K)
    out = {"N": N, "D": D, "K": K, "missing_fraction": float(1 - obs.mean()), "tol": 1e-4,
           "load_avg_before": os.getloadavg()}
    fits = {}
    for _ in range(reps):
        for method in ("exact", "fast"):
            t = time.perf_counter()
            p = PPCA(K, tol=1e-4, method=method).fit(X32, mask=obs)
            dt = time.perf_counter() - t
            if method not in fits or dt < out[f"{method}_s"]:
                fits[method] = p
                out[f"{method}_s"] = dt
            out.setdefault(f"{method}_all_s", []).append(dt)
            print(f"  {method}: {dt:.2f} s", flush=True)
    dt, nit, ss, rss, C = _pyppca_child(X32, obs, K)
    out.update(pyppca_s=dt, pyppca_iter=nit, noise_variance_pyppca=ss, pyppca_peak_rss_gb=rss)
    print(f"  pyppca: {dt:.2f} s", flush=True)
    for method, p in fits.items():
        out[f"{method}_iter"] = int(p.n_iter_)
        out[f"{method}_scan_s"] = p.timings_["scan"]
        out[f"{method}_start_s"] = p.timings_["start"]
        out[f"{method}_iter_s"] = p.timings_["iterations"]
        out[f"{method}_history"] = p.history_.tolist()
        out[f"noise_variance_{method}"] = p.noise_variance_
        out[f"angle_{method}_vs_truth_max_deg"] = float(angles_deg(p.components_.T, truth).max())
        a = angles_deg(p.components_.T, C)
        out[f"angle_{method}_vs_pyppca_max_deg"] = float(a.max())
        out[f"speed_ratio_pyppca_over_{method}"] = out["pyppca_s"] / out[f"{method}_s"]
    out["cg_steps_fast"] = list(map(int, fits["fast"].cg_steps_))
    out["angle_pyppca_vs_truth_max_deg"] = float(angles_deg(C, truth).max())
    a = angles_deg(fits["fast"].components_.T, fits["exact"].components_.T)
    out["angle_fast_vs_exact_max_deg"] = float(a.max())
    out["angle_fast_vs_exact_median_deg"] = float(np.median(a))
    out["noise_variance_fast_over_exact_minus_1"] = (fits["fast"].noise_variance_
                                                      / fits["exact"].noise_variance_ - 1)
    out["mean_fast_minus_exact_max_abs"] = float(np.abs(fits["fast"].mean_
                                                        - fits["exact"].mean_).max())
    out["speed_ratio_exact_over_fast"] = out["exact_s"] / out["fast_s"]
    # the same fit run further (tol 1e-6, fixed number of iterations) to compare fixed points
    e = PPCA(K, tol=0.0, max_iter=8).fit(X32, mask=obs)
    f = PPCA(K, tol=0.0, max_iter=8, method="fast").fit(X32, mask=obs)
    a = angles_deg(f.components_.T, e.components_.T)
    out["after_8_iter"] = dict(
        angle_fast_vs_exact_max_deg=float(a.max()),
        noise_variance_fast_over_exact_minus_1=f.noise_variance_ / e.noise_variance_ - 1,
        mean_fast_minus_exact_max_abs=float(np.abs(f.mean_ - e.mean_).max()),
        history_fast_minus_exact_rel=((f.history_ - e.history_) / np.abs(e.history_)).tolist(),
        exact_iter_median_s=float(np.median(e.timings_["iterations"])),
        fast_iter_median_s=float(np.median(f.timings_["iterations"])))
    out["load_avg_after"] = os.getloadavg()
    return out


def bench_iter_inmemory(N, D, K, seed=1, reps=2):
    """Seconds per EM iteration, exact vs fast, in-memory data (no file reads), alternating."""
    basis, _ = make_basis(D, seed)
    X, obs = make_block(np.random.default_rng(seed + 1), N, D, basis)
    out = {"N": N, "D": D, "K": K, "gemm_gflops_before": gemm_gflops(), "runs": []}
    for _ in range(reps):
        for method in ("exact", "fast"):
            p = PPCA(K, tol=0.0, max_iter=2, method=method).fit(X, mask=obs)
            out["runs"].append(dict(method=method, iter_s=p.timings_["iterations"],
                                    scan_s=p.timings_["scan"], start_s=p.timings_["start"]))
            print(f"  {method}: iterations {np.round(p.timings_['iterations'], 2)}", flush=True)
    for m in ("exact", "fast"):
        out[f"{m}_iter_median_s"] = float(np.median(
            [t for r in out["runs"] if r["method"] == m for t in r["iter_s"]]))
    out["iter_ratio_exact_over_fast"] = out["exact_iter_median_s"] / out["fast_iter_median_s"]
    out["gemm_gflops_after"] = gemm_gflops()
    return out


# ------------------------------------------------------------------------------ scaling
def bench_scaling(Ns, Ks, D, gflops, n_iter=3):
    basis, _ = make_basis(D, 3)
    rng = np.random.default_rng(4)
    X, obs = make_block(rng, max(Ns), D, basis)
    rows = []
    for N in Ns:
        for K in Ks:
            p = PPCA(K, tol=0.0, max_iter=n_iter).fit(X[:N], mask=obs[:N])
            # full iterations (the last entry is the objective-only pass)
            it = float(np.median(p.timings_["iterations"][:-1]))
            n_missing = float((~obs[:N]).sum())
            gf = flops_per_iter(N, D, K, n_missing) / it / 1e9
            rows.append(dict(N=N, K=K, D=D, iter_s=it, start_s=p.timings_["start"],
                             last_pass_s=p.timings_["iterations"][-1],
                             start_rounds=p.start_info_["rounds"],
                             scan_s=p.timings_["scan"], gflops=gf, fraction_of_gemm=gf / gflops))
            print(f"  N={N:6d} K={K:3d}  {it:6.2f} s/iter  {gf:5.1f} GFLOP/s "
                  f"({gf / gflops:.0%} of GEMM)", flush=True)
    return rows


# ------------------------------------------------------------------------------ old vs new
def bench_ab(N, D, K, reps=2, n_iter=3):
    """Previous engine (benchmarks/_work/ppca_old.py, if present) vs the current one, same
    process, same data, alternating runs: wall and CPU seconds per EM iteration and per fit."""
    import importlib.util
    path = WORK / "ppca_old.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("ppca_old", path)
    old = importlib.util.module_from_spec(spec)
    sys.modules["ppca_old"] = old
    spec.loader.exec_module(old)
    import helpers.ppca as new
    basis, _ = make_basis(D, 3)
    X, obs = make_block(np.random.default_rng(4), N, D, basis)
    out = {"N": N, "D": D, "K": K, "n_iter": n_iter, "runs": []}
    for _ in range(reps):
        for name, mod in (("old", old), ("new", new)):
            c0 = time.process_time()
            t0 = time.perf_counter()
            p = mod.PPCA(K, tol=0.0, max_iter=n_iter).fit(X, mask=obs)
            out["runs"].append(dict(engine=name, fit_wall_s=time.perf_counter() - t0,
                                    fit_cpu_s=time.process_time() - c0,
                                    scan_s=p.timings_["scan"], start_s=p.timings_["start"],
                                    iter_s=p.timings_["iterations"]))
            print(f"  {name}: fit {out['runs'][-1]['fit_wall_s']:.2f} s, iterations "
                  f"{np.round(p.timings_['iterations'], 2)}", flush=True)
    for name in ("old", "new"):
        rr = [r for r in out["runs"] if r["engine"] == name]
        out[f"{name}_iter_median_s"] = float(np.median([t for r in rr for t in r["iter_s"]]))
        out[f"{name}_fit_median_s"] = float(np.median([r["fit_wall_s"] for r in rr]))
    out["iter_speedup"] = out["old_iter_median_s"] / out["new_iter_median_s"]
    out["fit_speedup"] = out["old_fit_median_s"] / out["new_fit_median_s"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["all", "compare", "paper", "scaling", "gemm", "ab",
                                     "fast", "fast-vs-exact-paper"])
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--compare-n", type=int, default=None)
    ap.add_argument("--paper-n", type=int, default=None)
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / ("ppca_quick.json" if args.quick else "ppca.json")
    res = json.loads(out_path.read_text()) if out_path.exists() else {}
    fast_only = args.what in ("fast", "fast-vs-exact-paper")
    kept = {k: res[k] for k in ("machine", "gemm_gflops_float32", "load_avg_at_end")
            if fast_only and k in res}
    from threadpoolctl import threadpool_info
    res["machine"] = dict(cpus=os.cpu_count(), python=platform.python_version(),
                          numpy=np.__version__,
                          blas=[(i["internal_api"], i["num_threads"]) for i in threadpool_info()],
                          load_avg_at_start=os.getloadavg(),
                          note="shared 2-core machine; other engineers' jobs ran concurrently")
    g = gemm_gflops()
    res["gemm_gflops_float32"] = g
    res["gemm_gflops_float32_one_thread"] = gemm_gflops_1()
    print(f"float32 GEMM: {g:.1f} GFLOP/s", flush=True)
    D = 2000 if args.quick else D_APOGEE
    if args.what in ("all", "compare"):
        n = args.compare_n or (2000 if args.quick else 20000)
        print(f"compare with pyppca at {n} x {D}, K=30 ...", flush=True)
        res["compare"] = bench_compare(n, D, 30)
        print(json.dumps({k: v for k, v in res["compare"].items() if k not in ("exact", "fast")}, indent=1), flush=True)
    if args.what in ("all", "paper"):
        n = args.paper_n or (20000 if args.quick else 151000)
        print(f"paper scale {n} x {D} from memmap ...", flush=True)
        res["paper"] = bench_paper(n, D, 30, g)
        print(json.dumps({k: v for k, v in res["paper"].items() if k != "history"}, indent=1),
              flush=True)
    if args.what == "fast":
        n = args.compare_n or (2000 if args.quick else 5000)
        print(f"pyppca vs exact vs fast at {n} x {D}, K=30 ...", flush=True)
        res["fast_compare"] = bench_fast(n, D, 30)
        print(json.dumps({k: v for k, v in res["fast_compare"].items() if "history" not in k},
                         indent=1), flush=True)
        n = 4000 if args.quick else 30000
        print(f"seconds per iteration in memory at {n} x {D}, exact vs fast ...", flush=True)
        res["fast_iter_inmemory"] = bench_iter_inmemory(n, D, 30)
        out_path.write_text(json.dumps({**res, **kept}, indent=1))  # kept if paper fails
        n = args.paper_n or (20000 if args.quick else 151000)
        print(f"paper scale {n} x {D} from memmap, method='fast' ...", flush=True)
        res["paper_fast"] = bench_paper(n, D, 30, g, method="fast")
        print(json.dumps({k: v for k, v in res["paper_fast"].items() if k != "history"},
                         indent=1), flush=True)
    if args.what == "fast-vs-exact-paper":
        n = args.paper_n or (20000 if args.quick else 151000)
        print(f"paper scale {n} x {D} from memmap, exact then fast on the same files ...",
              flush=True)
        res["paper_exact_vs_fast"] = bench_paper(n, D, 30, g, method=("exact", "fast"))
        print(json.dumps({k: v for k, v in res["paper_exact_vs_fast"].items()
                          if not isinstance(v, dict)}, indent=1), flush=True)
    if args.what in ("all", "ab"):
        n = 4000 if args.quick else 20000
        print(f"previous engine vs current at {n} x {D}, K=30 ...", flush=True)
        ab = bench_ab(n, D, 30)
        if ab is not None:
            res["old_vs_new"] = ab
            print(json.dumps({k: v for k, v in ab.items() if k != "runs"}, indent=1), flush=True)
    if args.what in ("all", "scaling"):
        print("scaling ...", flush=True)
        Ns = (2000, 4000) if args.quick else (5000, 10000, 20000)
        Ks = (10, 30) if args.quick else (10, 30, 60)
        res["scaling"] = bench_scaling(Ns, Ks, D, g)
    res["load_avg_at_end"] = os.getloadavg()
    if fast_only:    # this run's machine state goes with its own results
        res.setdefault("fast_run_machine", {})[args.what] = {
            k: res[k] for k in ("machine", "gemm_gflops_float32", "load_avg_at_end")}
        res.update(kept)
    out_path.write_text(json.dumps(res, indent=1))
    print("wrote", out_path)


if __name__ == "__main__":
    main()
