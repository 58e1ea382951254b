"""Benchmark: generate the synthetic survey at the RSCA paper's scale.

Generates ``paper_scale_params()`` (238,400 field giants, so that the RSCA selection
keeps ~151,000, plus the 22 OCCAM clusters and 19,000 JWST twins) into
benchmarks/_work/ (git-ignored), in a child process whose wall time and peak resident
memory are measured; reports the disk size of each part and the selection counts, then
deletes the output (``--keep`` keeps it).  Results go to stdout and
benchmarks/results/survey.json, and the figures into README_survey.md.

Usage::

    python benchmarks/bench_survey.py [--n-field N] [--n-jwst 19000] [--n-files 500]
                                      [--threads 2] [--keep]

Book: chapter 2, 'A survey of our own' (notebooks/02_survey.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

WORK = HERE / "_work" / "survey"
RESULTS = HERE / "results" / "survey.json"

CHILD = r"""
import json, sys, time
from helpers import survey as syn
kw = json.loads(sys.argv[1])
threads = kw.pop("n_threads")
p = syn.paper_scale_params(**kw)
t = time.perf_counter()
syn.generate_survey(p, sys.argv[2], progress=False, overwrite=True, n_threads=threads)
print(json.dumps({"wall_s": time.perf_counter() - t, "key": p.key()}))
"""


def du(path: Path) -> int:
    """Bytes on disk below ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


README = HERE / "README_survey.md"
START, END = "<!-- survey-bench:start -->", "<!-- survey-bench:end -->"


def table(r: dict) -> str:
    """The README's figures from a results dict."""
    return f"""Measured with `python benchmarks/bench_survey.py` on {r['date_utc']} UTC (generator version
{r.get('generator_version', '?')}), {r['machine']['cpus']} CPUs shared with other jobs (load average
{r['machine']['loadavg_at_start'][0]:.1f} at the start, {r['machine']['loadavg_at_end'][1]:.1f} over the run's last
5 minutes), {r['threads']} threads:

| quantity | value |
|---|---|
| field stars generated (`paper_scale_params()`) | {r['n_field']:,} |
| stars in allStar and the cache (with the clusters' members and contaminants) | {r['n_stars']:,} |
| field giants passing the RSCA selection (paper: 151,145) | {r['selected_field_giants']:,} |
| cluster stars after CG_PROB > 0.8, the cuts and the excluded star (paper: 185 in 22) | {r['cluster_stars_after_cuts']} in {r['clusters_after_cuts']} clusters |
| JWST/NIRSpec twins | {r['n_jwst']:,} |
| aspcapStar files written | {r['n_files']} |
| median S/N | {r['median_snr']:.1f} |
| wall time (catalogue {r['timings']['catalogue_s']:.0f} s, spectra {r['timings']['spectra_s']:.0f} s) | {r['generate_s']:.0f} s |
| peak resident memory | {r['peak_rss_gb']} GB |
| disk: cache / JWST / SAS files / truth | {r['disk_gb']['cache']} / {r['disk_gb']['jwst']} / {r['disk_gb']['sas']} / {r['disk_gb']['truth.npz']} GB |
| disk, total | {r['disk_total_gb']} GB |"""


def update_readme(r: dict) -> None:
    """Replace the figures between the markers of README_survey.md."""
    if not README.is_file():
        return
    text = README.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        README.write_text(f"{head}{START}\n{table(r)}\n{END}{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-field", type=int, default=None,
                    help="default: paper_scale_params().n_field")
    ap.add_argument("--n-jwst", type=int, default=None,
                    help="default: paper_scale_params().n_jwst")
    ap.add_argument("--n-files", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the generated survey")
    args = ap.parse_args(argv)
    from helpers.survey import paper_scale_params
    paper = paper_scale_params()
    args.n_field = paper.n_field if args.n_field is None else args.n_field
    args.n_jwst = paper.n_jwst if args.n_jwst is None else args.n_jwst
    load_start = os.getloadavg()

    out = WORK / "paper"
    if out.exists():
        shutil.rmtree(out)
    WORK.mkdir(parents=True, exist_ok=True)
    kw = {"n_field": args.n_field, "n_jwst": args.n_jwst, "n_files": args.n_files,
          "n_threads": args.threads}
    env = dict(os.environ, CI="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kw), str(out)],
                          capture_output=True, text=True, env=env, cwd=HERE.parent)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return proc.returncode
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss

    import numpy as np
    import pandas as pd
    from helpers import survey as syn
    s = syn.load_survey(out)
    a = s.allstar
    from helpers.rsca.selection import select_rsca_sample

    chosen = select_rsca_sample(a, s.occam_members)
    counts = pd.Series(chosen.cluster_labels).value_counts()
    sizes = {part: du(out / part) for part in ("cache", "jwst", "sas")}
    sizes["truth.npz"] = (out / "truth.npz").stat().st_size
    res = {
        "n_field": args.n_field, "n_jwst": args.n_jwst, "n_files": int(s.truth.HAS_FILE.sum()),
        "n_stars": int(len(a)), "threads": args.threads,
        "generator_version": s.manifest["generator_version"],
        "selected_field_giants": int(chosen.field_rows.size),
        "cluster_stars_after_cuts": int(counts.sum()), "clusters_after_cuts": int(len(counts)),
        "median_snr": float(np.median(a.SNR)),
        "wall_s": round(wall, 1), "generate_s": round(child["wall_s"], 1),
        "timings": s.manifest["timings"],
        "peak_rss_gb": round(peak_kb / 1024 ** 2, 2),
        "disk_gb": {k: round(v / 1e9, 2) for k, v in sizes.items()},
        "disk_total_gb": round(sum(sizes.values()) / 1e9, 2),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg()},
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    del s
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1))
    update_readme(res)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
