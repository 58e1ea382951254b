"""Accuracy of bfloat16 training (``TrainConfig(precision='bf16-fc')``, the default) at paper scale.

Writes ``benchmarks/results/starnet_bf16_accuracy.json``. Usage::

    STARS_BOOK_CACHE=/work/cache_v5 nice -n 10 .venv/bin/python benchmarks/bench_starnet_bf16.py \\
        --seeds 0 1

For each seed, the book's short recipe (5 epochs, StepLR step 3, centred input; chapter 7
makes the same comparison in its section on mixed precision) is trained on the paper-scale split (split seed 0, the survey's true labels) in
float32 and with the fully connected layers in bfloat16, with ``threads`` torch threads
(default one: the machine is shared; the thread count is not part of a run's key and
changes no number beyond float rounding). Runs are cached by
:func:`helpers.starnet.train_starnet` under their keys, so a run the book already holds
(float32, seed 0) is loaded, not retrained. Every run is evaluated in float32 on the test
split: RMSE per label, the ratio bf16 / float32 at the same seed, and, as the yardstick,
the ratio of float32 at one seed to float32 at another (how much the RMSE moves with the
seed alone). Training seconds (from the run's files) and the load average around this
call are recorded with each run; ``seconds_this_call`` tells a run trained now (minutes)
from one loaded from the cache (about a second).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from helpers.starnet import (LABEL_NAMES, TrainConfig, label_metrics, predict, starnet_data,
                             starnet_source, starnet_split, train_starnet)
from machine import load   # benchmarks/machine.py

RESULTS = Path(__file__).resolve().parent / "results" / "starnet_bf16_accuracy.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-field", type=int, default=238_400, help="synthetic survey size")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if len(args.seeds) < 2:
        p.error("--seeds needs at least two seeds (the float32 seed-to-seed spread)")

    source = starnet_source(n_field=args.n_field)
    split = starnet_split(source, seed=0)
    test = starnet_data(source, split, "apogee")["test"]
    truth = source.labels(test.ids, "true")
    res = {"source": source.key, "split": split.sizes, "labels": list(LABEL_NAMES),
           "threads": args.threads, "runs": {}}
    rmse = {}
    for seed in args.seeds:
        for precision in ("float32", "bf16-fc"):
            cfg = TrainConfig(seed=seed, precision=precision, threads=args.threads)
            la, t0 = load(), time.perf_counter()
            run = train_starnet(source, split, "apogee", "true", cfg)
            wall = time.perf_counter() - t0
            m = label_metrics(predict(run, test).mean, truth, LABEL_NAMES)
            rmse[precision, seed] = m["rmse"].to_numpy()
            res["runs"][f"{precision}/seed{seed}"] = {
                "key": run.meta["key"], "seconds_this_call": round(wall, 1),
                "train_seconds": round(run.meta["train_seconds"], 1),
                "n_threads": run.meta["n_threads"], "load_before": la, "load_after": load(),
                "val_loss": [round(h, 5) for h in run.history["val_loss"]],
                "test_rmse": dict(zip(LABEL_NAMES, np.round(rmse[precision, seed], 6).tolist()))}
            print(f"{precision} seed {seed}: Teff {rmse[precision, seed][0]:.2f} K, "
                  f"logg {rmse[precision, seed][1]:.4f}, train {run.meta['train_seconds']:.0f} s "
                  f"(load {la} -> {load()})", flush=True)
    ratio = {s: rmse["bf16-fc", s] / rmse["float32", s] for s in args.seeds}
    seedwise = {f"{a}/{b}": rmse["float32", b] / rmse["float32", a]
                for a, b in combinations(args.seeds, 2)}
    allr = np.concatenate(list(ratio.values()))
    alls = np.concatenate(list(seedwise.values()))
    res["ratio_bf16_over_float32"] = {f"seed{s}": dict(zip(LABEL_NAMES, np.round(r, 4).tolist()))
                                      for s, r in ratio.items()}
    res["ratio_float32_seed_over_seed"] = {k: dict(zip(LABEL_NAMES, np.round(r, 4).tolist()))
                                           for k, r in seedwise.items()}
    mean_b = np.mean([rmse["bf16-fc", s] for s in args.seeds], axis=0)
    mean_f = np.mean([rmse["float32", s] for s in args.seeds], axis=0)
    res["summary"] = {
        "bf16_over_float32": {"min": round(float(allr.min()), 4),
                              "median": round(float(np.median(allr)), 4),
                              "max": round(float(allr.max()), 4)},
        "float32_seed_over_seed": {"min": round(float(alls.min()), 4),
                                   "median": round(float(np.median(alls)), 4),
                                   "max": round(float(alls.max()), 4)},
        "seed_mean_bf16_over_float32": dict(zip(LABEL_NAMES, np.round(mean_b / mean_f, 4)
                                                .tolist())),
        "labels_bf16_worse_at_every_seed": [n for j, n in enumerate(LABEL_NAMES)
                                            if all(ratio[s][j] > 1 for s in args.seeds)]}
    print(json.dumps(res["summary"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
